"""Completion notices: POST a job's ledger record (or a batch summary) to its callback URL.

Delivery is its own arq job (`notify`), queued when a job or a whole batch reaches a final
state, so it never holds an upstream slot and retries with backoff on its own schedule (a
batch's end also queues its completion report the same way: `worker.report.job`). Each POST
is signed: `X-Upscale-Signature: sha256=<hex>` = HMAC-SHA256(secret, "<timestamp>.<body>") with
`X-Upscale-Timestamp` (unix seconds), so receivers can verify and reject replays. Callback hosts
must be on the allow-list (no SSRF into the worker's network); delivery is recorded in the ledger.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog
from arq import ArqRedis, Retry

from worker.contract import QUEUE_NAME, Keys
from worker.ledger.records import CallbackState
from worker.report.batch import batch_end
from worker.report.job import queue_report
from worker.runtime import Runtime
from worker.settings import CallbackSettings

log = structlog.get_logger("worker.callbacks")
NOTIFY_FUNCTION = "notify"


class CallbackRefused(ValueError):
    """The callback URL may not be called (scheme or host not allowed)."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secret: str, timestamp: str, body: bytes, signature: str, *, max_age_s: int = 300
) -> bool:
    """For receivers (and tests): a valid, fresh signature."""
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > max_age_s:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)


def check_url(url: str, settings: CallbackSettings) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise CallbackRefused(f"callback URL must be http(s)://host/...: {url!r}")
    if parts.scheme == "http" and not settings.allow_http:
        raise CallbackRefused("callback URL must use https (UPSCALE_CALLBACK_ALLOW_HTTP=false)")
    host = parts.hostname.lower()
    allowed = [h.lower() for h in settings.hosts]
    ok = any(host == h or (h.startswith(".") and host.endswith(h)) for h in allowed)
    if not ok:
        raise CallbackRefused(
            f"callback host {host!r} is not in UPSCALE_CALLBACK_HOSTS ({allowed or 'empty'})"
        )


async def queue_job_notice(redis: ArqRedis, job_id: str) -> None:
    await redis.enqueue_job(
        NOTIFY_FUNCTION, "job", job_id, _job_id=f"notify:job:{job_id}", _queue_name=QUEUE_NAME
    )


async def queue_batch_notice_if_done(redis: ArqRedis, batch: str) -> None:
    """A job of `batch` became final: if the batch has ended, queue its completion report
    (once per end) and, if it has a callback URL, its notice."""
    end_ms = await batch_end(redis, batch)
    if end_ms is None:
        return
    await queue_report(redis, batch, end_ms)
    if not await redis.hget(Keys.batch(batch), "callback_url"):  # type: ignore[misc]
        return
    await redis.enqueue_job(
        NOTIFY_FUNCTION, "batch", batch, _job_id=f"notify:batch:{batch}", _queue_name=QUEUE_NAME
    )


async def notify(ctx: dict[str, Any], kind: str, ident: str) -> str:
    """arq job: deliver one notice (kind `job` or `batch`), retrying with backoff."""
    rt: Runtime = ctx["runtime"]
    s = rt.settings.callbacks
    if kind == "job":
        rec = await rt.ledger.get(ident)
        url = (rec.payload or {}).get("callback_url") if rec else None
        body_obj: dict[str, Any] = {"type": "job", "job": rec.model_dump() if rec else None}
        ledger_key = Keys.job(ident)
    else:
        url = await rt.redis.hget(Keys.batch(ident), "callback_url")  # type: ignore[misc]
        url = url.decode() if isinstance(url, bytes) else url
        body_obj = {"type": "batch", "batch": await rt.ledger.batch_summary(ident)}
        ledger_key = Keys.batch(ident)
    if not url:
        return "no callback"
    tries = await rt.ledger.callback_try(ledger_key)
    if tries == 0:
        return "record gone"  # its retention ended meanwhile: nothing to tell about
    try:
        check_url(str(url), s)
    except CallbackRefused as e:
        await _record(rt, ledger_key, "refused", str(e))
        log.warning("callback refused", kind=kind, id=ident, reason=str(e))
        return "refused"
    body = json.dumps(body_obj, default=str, separators=(",", ":")).encode()
    ts = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "X-Upscale-Timestamp": str(ts),
        "X-Upscale-Signature": sign(s.secret.get_secret_value(), ts, body),
        "X-Upscale-Delivery": f"{kind}:{ident}:{tries}",
    }
    try:
        resp = await rt.downloads.post(str(url), content=body, headers=headers, timeout=10)
        error = None if resp.is_success else f"HTTP {resp.status_code}"
    except httpx.HTTPError as e:
        error = f"{type(e).__name__}"
    if error is None:
        await _record(rt, ledger_key, "delivered", "")
        log.info("callback delivered", kind=kind, id=ident, tries=tries)
        return "delivered"
    if tries >= s.max_tries:
        await _record(rt, ledger_key, "failed", f"{error} after {tries} tries")
        log.warning("callback failed", kind=kind, id=ident, error=error, tries=tries)
        return "failed"
    await _record(rt, ledger_key, "retrying", error)
    delay = random.uniform(0, min(300.0, s.backoff_s * 2**tries))
    raise Retry(defer=delay)


async def _record(rt: Runtime, key: str, state: CallbackState, detail: str) -> None:
    await rt.ledger.callback_state(key, state, detail)
