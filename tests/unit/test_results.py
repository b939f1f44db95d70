"""Result downloads from a local server: allowed hosts only, no redirects, size cap, truncation.
A refused result on the real stack is `tests/integration/test_results.py`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from tests.support import HTTP_TIMEOUT_S, serving
from worker.results import DownloadFailed, ResultRejected, stream_url

BODY = b"x" * 300_000


async def _ok(_: web.Request) -> web.Response:
    return web.Response(body=BODY)


async def _redirect(_: web.Request) -> web.Response:
    raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")


async def _truncated(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Length": str(len(BODY))})
    await resp.prepare(request)
    await resp.write(BODY[:1000])
    request.transport.close()  # type: ignore[union-attr]  # the connection drops mid-body
    return resp


@pytest.fixture
async def files() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/ok", _ok)
    app.router.add_get("/redirect", _redirect)
    app.router.add_get("/truncated", _truncated)
    async with serving(app) as url:
        yield url


async def _fetch(url: str, *, hosts: set[str] | None = None, cap: int = 10_000_000) -> bytes:
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as client:
        chunks = [
            c
            async for c in stream_url(
                client, url, allowed_hosts=hosts or {"127.0.0.1"}, max_bytes=cap
            )
        ]
    return b"".join(chunks)


async def test_download_rules(files: str) -> None:
    assert await _fetch(f"{files}/ok") == BODY
    with pytest.raises(ResultRejected, match="not in the allowed result hosts"):
        await _fetch(f"{files}/ok?sig=secret", hosts={"cdn.example.com"})
    with pytest.raises(ResultRejected, match="redirected"):
        await _fetch(f"{files}/redirect")
    with pytest.raises(ResultRejected, match="cap"):
        await _fetch(f"{files}/ok", cap=1000)
    with pytest.raises(DownloadFailed):
        await _fetch(f"{files}/truncated")
