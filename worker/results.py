"""Fetch a paid result (a signed URL or inline base64) as a stream of chunks, and get a fresh
link for one whose link expired (`fresh_link`: re-reading its upstream async job)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx

from worker.upstream import errors as ue
from worker.upstream.base import Upstream
from worker.upstream.errors import ResultUnavailable

CHUNK = 1024 * 1024


class DownloadFailed(Exception):
    """A transient download problem (truncation, reset, 5xx): retry the download, not the call."""


class ResultRejected(Exception):
    """Our policy refuses this result (host not allowed, redirect, over the size cap). A new
    call would be refused the same way, so the job fails and keeps the paid result for a retry
    once the setting is fixed."""


def check_host(url: str, allowed: set[str]) -> None:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("https", "http") or host not in allowed:
        # Never reveal the query string: it carries the signature.
        raise ResultRejected(
            f"result URL host {host or '?'!r} is not in the allowed result hosts "
            "(UPSCALE_RESULT_HOSTS)"
        )


async def stream_url(
    client: httpx.AsyncClient, url: str, *, allowed_hosts: set[str], max_bytes: int
) -> AsyncIterator[bytes]:
    check_host(url, allowed_hosts)
    try:
        async with client.stream("GET", url, follow_redirects=False) as resp:
            if resp.is_redirect:
                raise ResultRejected(f"result URL redirected (HTTP {resp.status_code}): refused")
            if resp.status_code in (401, 403, 404, 410):
                raise ResultUnavailable(f"result URL no longer valid (HTTP {resp.status_code})")
            if resp.status_code >= 400:
                raise DownloadFailed(f"result download failed (HTTP {resp.status_code})")
            expected = resp.headers.get("content-length")
            if expected and int(expected) > max_bytes:
                raise ResultRejected(
                    f"result is {expected} bytes, over the {max_bytes}-byte cap "
                    "(UPSCALE_MAX_RESULT_BYTES)"
                )
            got = 0
            async for chunk in resp.aiter_raw(CHUNK):
                got += len(chunk)
                if got > max_bytes:
                    raise ResultRejected(
                        f"result exceeds the {max_bytes}-byte cap (UPSCALE_MAX_RESULT_BYTES)"
                    )
                yield chunk
            if expected is not None and got != int(expected):
                raise DownloadFailed(f"result download truncated: {got} of {expected} bytes")
            if got == 0:
                raise DownloadFailed("result download was empty")
    except httpx.HTTPError as e:
        raise DownloadFailed(f"result download failed: {type(e).__name__}") from None


async def stream_b64(payload: str) -> AsyncIterator[bytes]:
    """Decode base64 in slices (multiples of 4 chars) so the decoded copy is never whole."""
    step = (CHUNK // 3) * 4
    try:
        for i in range(0, len(payload), step):
            yield base64.b64decode(payload[i : i + step], validate=False)
    except ValueError as e:
        raise ResultUnavailable(f"b64_json result is not valid base64: {e}") from None


async def fresh_link(upstream: Upstream, upstream_job: str) -> str:
    """A freshly signed link to the result of async job `upstream_job`: the gateway signs a new
    one on each read of the job while it keeps the file (7 days). Raises ResultUnavailable
    only when the upstream says the result is gone (then a new call is justified), and
    DownloadFailed when it could not be asked now (wait and try again: never a new call)."""
    try:
        result = await upstream.poll(upstream_job)
    except ue.UpstreamJobFailed as e:  # 404 (file no longer kept) included: UpstreamJobLost
        raise ResultUnavailable(f"the result of upstream job {upstream_job} is gone: {e}") from None
    except ue.UpstreamError as e:
        raise DownloadFailed(
            f"could not re-read upstream job {upstream_job} for a fresh link: {e.describe()}"
        ) from None
    url = result.outputs[0].url if result.outputs else None
    if result.pending_id is not None or not url:  # polled too soon (304): ask again later
        raise DownloadFailed(f"upstream job {upstream_job} gave no fresh link yet")
    return url
