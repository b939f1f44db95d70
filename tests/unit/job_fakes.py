"""A runtime for unit tests of the job's steps (`worker/job/`): the real ledger and flow
control on the unit tests' redis-server, the real `Storage` over an in-memory S3 client, and a
scripted upstream (no simulator, no S3 server: the steps' own logic is what is tested; the
integration tests run the same job against the real parts)."""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from botocore.exceptions import ClientError
from PIL import Image
from redis.asyncio import Redis

from worker.contract import JobSpec, S3Object
from worker.flow import FlowControl
from worker.job.admit import admit
from worker.job.buy import Bought, buy
from worker.job.run import Job, Run, start
from worker.job.source import read
from worker.keys import Keys
from worker.ledger import Ledger
from worker.runtime import Runtime
from worker.settings import Settings
from worker.storage import Storage
from worker.upstream.base import CallResult, ImageInput, KeyCheck, UpscaleRequest, UpstreamOutput

SRC = S3Object.parse("s3://photos/cat.png")
DEST = S3Object.parse("s3://photos-upscaled/cat@2x.png")
PRICE = 60_000  # micro-USD: the default key's price per output


def png(w: int = 8, h: int = 8, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, "PNG")
    return buf.getvalue()


def client_error(code: str, status: int, op: str = "Op") -> ClientError:
    return ClientError(
        {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, op
    )


@dataclass
class Obj:
    body: bytes
    metadata: dict[str, str] = field(default_factory=dict)
    content_type: str = "image/png"
    version: str = "v1"

    @property
    def etag(self) -> str:
        return hashlib.md5(self.body).hexdigest()


class _Body:
    def __init__(self, data: bytes) -> None:
        self._io = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._io.read(n)

    def close(self) -> None:
        self._io.close()


class FakeS3:
    """The boto3 S3 client calls `worker.storage.Storage` makes, in memory, conditional PUTs
    included. `fail[op]` makes the next call of `op` raise that error."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], Obj] = {}
        self.fail: dict[str, Exception] = {}
        self.calls: list[tuple[str, str]] = []  # (operation, key)

    def put(self, obj: S3Object, body: bytes, **kw: Any) -> Obj:
        self.objects[(obj.bucket, obj.key)] = o = Obj(body, **kw)
        return o

    def get(self, obj: S3Object) -> Obj | None:
        return self.objects.get((obj.bucket, obj.key))

    def _find(self, op: str, Bucket: str, Key: str, VersionId: str | None = None) -> Obj:
        self.calls.append((op, Key))
        if op in self.fail:
            raise self.fail.pop(op)
        o = self.objects.get((Bucket, Key))
        if o is None or (VersionId is not None and VersionId != o.version):
            raise client_error("404", 404, op)
        return o

    @staticmethod
    def _meta(o: Obj) -> dict[str, Any]:
        return {
            "ContentLength": len(o.body),
            "ETag": f'"{o.etag}"',
            "ContentType": o.content_type,
            "Metadata": dict(o.metadata),
            "VersionId": o.version,
        }

    def head_object(self, **kw: Any) -> dict[str, Any]:
        return self._meta(self._find("head_object", **kw))

    def get_object(self, *, Range: str | None = None, **kw: Any) -> dict[str, Any]:
        o = self._find("get_object", **kw)
        return {**self._meta(o), "Body": _Body(o.body)}

    def put_object(
        self,
        *,
        Bucket: str,
        Key: str,
        Body: bytes,
        ContentType: str,
        Metadata: dict[str, str],
        IfNoneMatch: str | None = None,
        IfMatch: str | None = None,
    ) -> dict[str, Any]:
        self.calls.append(("put_object", Key))
        if "put_object" in self.fail:
            raise self.fail.pop("put_object")
        cur = self.objects.get((Bucket, Key))
        if (IfNoneMatch and cur is not None) or (
            IfMatch and (cur is None or f'"{cur.etag}"' != IfMatch)
        ):
            raise client_error("PreconditionFailed", 412, "PutObject")
        o = Obj(bytes(Body), dict(Metadata), ContentType)
        self.objects[(Bucket, Key)] = o
        return {"ETag": f'"{o.etag}"'}

    def delete_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        self.calls.append(("delete_object", Key))
        if "delete_object" in self.fail:
            raise self.fail.pop("delete_object")
        self.objects.pop((Bucket, Key), None)
        return {}

    def list_objects_v2(self, *, Bucket: str, Prefix: str) -> dict[str, Any]:
        self.calls.append(("list_objects_v2", Prefix))
        if "list_objects_v2" in self.fail:
            raise self.fail.pop("list_objects_v2")
        keys = sorted(k for b, k in self.objects if b == Bucket and k.startswith(Prefix))
        return {"Contents": [{"Key": k} for k in keys], "IsTruncated": False}

    def generate_presigned_url(self, op: str, *, Params: dict[str, str], ExpiresIn: int) -> str:
        return f"http://s3.test/{Params['Bucket']}/{Params['Key']}?X-Amz-Signature=sig"


class FakeUpstream:
    """A scripted upstream: each `send` / `poll` takes the next answer (a `CallResult`, or an
    exception to raise); every request sent is kept with its idempotency key."""

    def __init__(self, *, needs_bytes: bool = False) -> None:
        self.needs_bytes = needs_bytes
        self.answers: deque[CallResult | Exception] = deque()
        self.polls: deque[CallResult | Exception] = deque()
        self.sent: list[tuple[ImageInput, str | None]] = []
        self.polled: list[str] = []
        self._built: dict[int, ImageInput] = {}
        self.on_send: Callable[[], Awaitable[None]] | None = None  # runs while a call is out

    def answer(self, *answers: CallResult | Exception) -> FakeUpstream:
        self.answers.extend(answers)
        return self

    def build(self, req: UpscaleRequest) -> httpx.Request:
        request = httpx.Request("POST", "http://upstream.test/v1/images/generations")
        self._built[id(request)] = req.image
        return request

    async def send(self, request: httpx.Request, idempotency_key: str | None) -> CallResult:
        self.sent.append((self._built[id(request)], idempotency_key))
        if self.on_send is not None:
            await self.on_send()
        answer = self.answers.popleft() if self.answers else paid_answer()
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def poll(self, pending_id: str) -> CallResult:
        self.polled.append(pending_id)
        answer = self.polls.popleft()
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def check_key(self) -> KeyCheck:
        return KeyCheck(True, "fake")

    async def aclose(self) -> None:
        return None


_request_ids = itertools.count(1)


def paid_answer(image: bytes | None = None, *, safe: bool = True) -> CallResult:
    """A billed 200 with one inline (b64) output."""
    data = base64.b64encode(image or png(16, 16)).decode()
    out = UpstreamOutput(b64=data if safe else None, seed=7, resolution="16x16", safe=safe)
    return CallResult(request_id=f"req-{next(_request_ids)}", outputs=[out])


@dataclass
class Fakes:
    rt: Runtime
    s3: FakeS3
    upstream: FakeUpstream
    ledger: Ledger

    async def job(self, spec: JobSpec | None = None) -> Job:
        """A job enqueued in the ledger (its record created, as `upscale-queue` does)."""
        spec = spec or JobSpec(source=SRC, dest=DEST)
        (res,) = await self.ledger.enqueue([spec])
        return Job.new(self.rt, spec, res.job_id)

    async def job_for(self, key: str) -> Job:
        """A job for another source (uploaded here) with its own destination."""
        src = S3Object(bucket=SRC.bucket, key=key)
        self.s3.put(src, png())
        dest = S3Object(bucket=DEST.bucket, key=f"{key.rsplit('.', 1)[0]}@2x.png")
        return await self.job(JobSpec(source=src, dest=dest))

    async def started(self, spec: JobSpec | None = None) -> tuple[Job, Run]:
        """A job whose run took its lease."""
        job = await self.job(spec)
        run = await start(job)
        assert isinstance(run, Run)
        return job, run

    async def bought(self, job: Job) -> Bought:
        """The steps up to a paid result: admitted, the source read, the call made."""
        slot = await admit(job)
        return await buy(job, slot, await read(job, slot))

    async def inflight(self) -> int:
        """Slots held on the default key."""
        return int(await self.rt.redis.zcard(Keys.up("default").inflight))

    async def field(self, job: Job, name: str) -> str | None:
        """A field of the job's ledger record."""
        v = await self.rt.redis.hget(Keys.job(job.id), name)  # type: ignore[misc]  # redis-py's async stubs
        return v.decode() if v else None


@asynccontextmanager
async def fakes(
    r: Redis,
    upstream: FakeUpstream | None = None,
    *,
    downloads: Callable[[httpx.Request], httpx.Response] = lambda _: httpx.Response(404),
    **settings: Any,
) -> AsyncIterator[Fakes]:
    """The runtime the job's steps see, its source uploaded (`SRC`)."""
    s = Settings(redis_url="redis://unused", **settings)
    # Polls as often as the tests need: below the setting's floor (the gateway's 3 s), which
    # validation refuses, so set on the (frozen, cached) section past it.
    object.__setattr__(s.upstream, "async_poll_interval_s", 0.05)
    s3 = FakeS3()
    s3.put(SRC, png())
    up = upstream or FakeUpstream()
    ledger = Ledger(r)
    rt = Runtime(
        settings=s,
        redis=r,
        ledger=ledger,
        flow=FlowControl(r, s),
        storage=Storage(s.s3, client=s3),
        upstreams={"default": up},
        downloads=httpx.AsyncClient(transport=httpx.MockTransport(downloads)),
    )
    try:
        yield Fakes(rt, s3, up, ledger)
    finally:
        await rt.aclose()
