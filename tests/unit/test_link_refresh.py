"""`fresh_link`: a result link signed anew by re-reading its async job. Only the upstream
saying the result is gone (404, failed) allows a new call; anything else is waited out."""

from __future__ import annotations

import httpx
import pytest

from worker.results import DownloadFailed, fresh_link
from worker.settings import Settings
from worker.upstream.errors import ResultUnavailable
from worker.upstream.gateway import GatewayUpstream


def _gateway(status: int, body: object = None) -> GatewayUpstream:
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/jobs/job_1"
        return httpx.Response(status, json=body) if body is not None else httpx.Response(status)

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    return GatewayUpstream(Settings(api_key="k", gateway_url="https://gw").upstream, client)


async def test_a_completed_job_gives_a_fresh_link() -> None:
    done = {"id": "job_1", "status": "completed", "result": {"file_url": "https://gw/f?sig=2"}}
    assert await fresh_link(_gateway(200, done), "job_1") == "https://gw/f?sig=2"


@pytest.mark.parametrize(
    ("status", "body"),
    [(404, {"error": {"message": "job expired"}}), (200, {"id": "job_1", "status": "failed"})],
)
async def test_gone_upstream_allows_a_new_call(status: int, body: object) -> None:
    with pytest.raises(ResultUnavailable, match="is gone"):
        await fresh_link(_gateway(status, body), "job_1")


@pytest.mark.parametrize(("status", "body"), [(503, {"error": "busy"}), (304, None)])
async def test_anything_else_waits(status: int, body: object) -> None:
    with pytest.raises(DownloadFailed):
        await fresh_link(_gateway(status, body), "job_1")
