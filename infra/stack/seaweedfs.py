"""SeaweedFS for the local stack: one `weed server` (master, volume, filer, S3) on loopback ports
we choose, with one S3 identity, no telemetry, and optional filer notifications to a webhook."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.stack.processes import find_binary

ACCESS_KEY = "localadmin"
SECRET_KEY = "local-secret-key-0000"
# SeaweedFS derives gRPC ports as HTTP + 10000 unless told; we pass every port explicitly, and
# keep them below 55535 so a derived default could never overflow either.
MAX_WEED_PORT = 55_000


@dataclass(frozen=True)
class WebhookTarget:
    """SeaweedFS filer notifications -> an HTTP endpoint (a real event source for producers)."""

    endpoint: str
    bearer_token: str
    event_types: tuple[str, ...] = ("create",)
    path_prefixes: tuple[str, ...] = ("/buckets/",)

    def toml(self) -> str:
        def arr(xs: tuple[str, ...]) -> str:
            return "[" + ", ".join(json.dumps(x) for x in xs) + "]"

        return (
            "[notification.webhook]\n"
            "enabled = true\n"
            f"endpoint = {json.dumps(self.endpoint)}\n"
            f"bearer_token = {json.dumps(self.bearer_token)}\n"
            f"event_types = {arr(self.event_types)}\n"
            f"path_prefixes = {arr(self.path_prefixes)}\n"
            "max_retries = 3\n"
            "backoff_seconds = 1\n"
        )


@dataclass(frozen=True)
class WeedPorts:
    s3: int
    master: int
    volume: int
    filer: int
    grpc: tuple[int, int, int, int]  # master, volume, filer, s3


def write_config(base: Path, webhook: WebhookTarget | None) -> Path:
    """The S3 identities, the master's volume growth and the filer's notifications, in `base`
    (weed's working directory); returns the S3 config's path."""
    s3_config = base / "s3.json"
    s3_config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "admin",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    # Every bucket is a SeaweedFS collection with volumes of its own: grow one volume at a
    # time (not 7) and size the volume count from free disk, or a test run that makes many
    # buckets exhausts the volume slots ("InternalError" on PutObject).
    (base / "master.toml").write_text("[master.volume_growth]\ncopy_1 = 1\ncopy_other = 1\n")
    if webhook:
        # weed reads notification.toml from its working directory
        (base / "notification.toml").write_text(webhook.toml())
    return s3_config


def weed_argv(base: Path, data: Path, logs: Path, ports: WeedPorts, s3_config: Path) -> list[str]:
    mg, vg, fg, sg = ports.grpc
    return [
        find_binary("weed"),
        f"-logdir={logs}",
        "server",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",  # never report usage to an outside host
        f"-master.port={ports.master}", f"-master.port.grpc={mg}",
        f"-volume.port={ports.volume}", f"-volume.port.grpc={vg}",
        "-filer", f"-filer.port={ports.filer}", f"-filer.port.grpc={fg}",
        f"-filer.localSocket={base / 'filer.sock'}",
        "-s3", f"-s3.port={ports.s3}", f"-s3.port.grpc={sg}",
        f"-s3.config={s3_config}",
        "-s3.port.iceberg=0",  # on by default, on fixed ports (8181, 9101): off
        "-s3.port.lance=0",
        f"-s3.localSocket={base / 's3.sock'}",
        "-master.volumeSizeLimitMB=64",
        "-volume.max=0",
    ]  # fmt: skip


def s3_client(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    )


def ensure_buckets(s3: Any, *names: str) -> None:
    for name in names:
        with contextlib.suppress(
            s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists
        ):
            s3.create_bucket(Bucket=name)


def s3_ready(endpoint: str) -> bool:
    # A listing answers before a volume is writable: probe with a real write and read.
    s3 = s3_client(endpoint)
    ensure_buckets(s3, "stack-probe")
    s3.put_object(Bucket="stack-probe", Key="probe", Body=b"ok")
    return bool(s3.get_object(Bucket="stack-probe", Key="probe")["Body"].read() == b"ok")
