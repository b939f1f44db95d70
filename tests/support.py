"""Helpers for unit and integration tests alike: generated images, S3 event bodies, a local
aiohttp server. Nothing here starts or needs a service."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

from aiohttp import web
from PIL import Image, ImageCms

from worker.api import (
    Budgets,
    FleetStatus,
    FlowStatus,
    JobState,
    LaneStatus,
    PauseInfo,
    SpendSummary,
    UpstreamStatus,
)
from worker.flow.status import CircuitState

TOKEN = "test-token-0123456789"

# A test client waits this long for our own servers and the simulator: a loaded machine (CI, a
# shared runner) stretches a 50 ms answer past httpx's 5 s default; a hang is still caught.
HTTP_TIMEOUT_S = 60.0


def png(
    width: int = 64, height: int = 48, fmt: str = "PNG", color: tuple[int, int, int] = (200, 60, 30)
) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, fmt)
    return buf.getvalue()


def s3_event(bucket: str, key: str, etag: str = "abc", name: str = "ObjectCreated:Put") -> str:
    """An S3 -> SQS notification as AWS sends it (form-encoded key)."""
    return json.dumps(
        {
            "Records": [
                {
                    "eventVersion": "2.1",
                    "eventSource": "aws:s3",
                    "eventName": name,
                    "eventTime": "2026-11-24T10:00:00.000Z",
                    "s3": {
                        "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                        "object": {
                            "key": quote_plus(key),
                            "size": 100,
                            "eTag": etag,
                            "sequencer": "0065A1B2C3D4E5F6",
                        },
                    },
                }
            ]
        }
    )


@asynccontextmanager
async def serving(app: web.Application, port: int = 0) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{bound}"
    finally:
        await runner.cleanup()


# A camera-like JPEG (output format tests): EXIF tags and an sRGB ICC profile to keep or drop.
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
MAKE, ORIENTATION, EXIF_IFD, DATE_ORIGINAL = 0x010F, 0x0112, 0x8769, 0x9003


def photo(w: int = 64, h: int = 48, fmt: str = "JPEG", orientation: int = 6) -> bytes:
    """A camera-like source: EXIF (make, date, orientation) and an sRGB ICC profile."""
    exif = Image.Exif()
    exif[MAKE] = "UQCam"
    exif[ORIENTATION] = orientation
    exif.get_ifd(EXIF_IFD)[DATE_ORIGINAL] = "2024:05:06 07:08:09"
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (180, 90, 40)).save(buf, fmt, exif=exif, icc_profile=SRGB)
    return buf.getvalue()


def fleet_status(
    *,
    live: int = 12,
    bulk: int = 30,
    pause: PauseInfo | None = None,
    cooldown_s: float = 0.0,
    circuit: CircuitState = "closed",
    budgets: Budgets | None = None,
) -> FleetStatus:
    """A fleet of one upstream, as `Producer.fleet_status()` would read it."""
    upstream = UpstreamStatus(
        name="default",
        route="gateway",
        state="open",
        pause=None,
        cooldown_s=cooldown_s,
        circuit=circuit,
        inflight=2,
        inflight_cap=64,
        calls_last_minute=17,
        rpm=600,
        remaining=None,
        spend_usd=9.6,
        budget_usd=None,
    )
    return FleetStatus(
        states={JobState.QUEUED: 30, JobState.RUNNING: 2},
        lanes={
            "live": LaneStatus(depth=live, calls_last_minute=17, oldest_age_s=1.0),
            "bulk": LaneStatus(depth=bulk, calls_last_minute=0, oldest_age_s=0.0),
        },
        spend=SpendSummary(today_usd=1.2, total_usd=9.6, day="2026-12-01"),
        budgets=budgets or Budgets(),
        finished_per_minute=[0] * 60,
        depth_per_minute=[None] * 60,
        flow_control=FlowStatus(manual_pause=pause, upstreams=[upstream]),
    )


@dataclass(frozen=True)
class StoredOutput:
    """What a job stored, read from S3 (a final record keeps only its destination)."""

    resolution: str
    content_type: str
    size: int


def stored_output(s3: Any, dest_uri: str) -> StoredOutput:
    bucket, _, key = dest_uri.removeprefix("s3://").partition("/")
    head = s3.head_object(Bucket=bucket, Key=key)
    return StoredOutput(
        resolution=head["Metadata"].get("upscale-resolution", ""),
        content_type=head["ContentType"],
        size=head["ContentLength"],
    )
