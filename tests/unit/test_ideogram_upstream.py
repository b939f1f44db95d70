"""The direct route's adapter (`worker.upstream.ideogram`) against scripted answers: the `async`
flag where configured, a generation id as a pending call, reads of v2 or v1 generations (the
cost the upstream reports, a failed one free, an unknown one lost), a free key check, the read
timeout of synchronous calls, and deprecation headers counted and logged once."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from worker import metrics
from worker.contract import UpscaleParams
from worker.settings import Settings
from worker.upstream import deprecation
from worker.upstream import errors as e
from worker.upstream.base import ImageInput, UpscaleRequest
from worker.upstream.ideogram import IdeogramUpstream

URL = "https://api.ideogram.test/upscale"
REQ = UpscaleRequest(image=ImageInput(data=b"png"), params=UpscaleParams(), model="m")


def _upstream(answer: Any, **cfg: Any) -> tuple[IdeogramUpstream, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        response: httpx.Response = answer(request) if callable(answer) else answer
        return response

    s = Settings(route="ideogram", ideogram_url=URL, api_key="k-secret", **cfg).upstream
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return IdeogramUpstream(s, client), seen


def _form(request: httpx.Request) -> str:
    return request.read().decode(errors="replace")


@pytest.mark.parametrize("where", ["form", "query", "image_request"])
async def test_the_async_flag_goes_where_configured_and_the_id_is_a_pending_call(
    where: str,
) -> None:
    answer = httpx.Response(200, json={"created": "x", "generation_id": "g1", "request_id": "g1"})
    up, seen = _upstream(answer, ideogram_async_param=where)
    result = await up.send(up.build(REQ), "job:1")
    assert result.pending_id == "g1" and not result.outputs
    body, query = _form(seen[0]), seen[0].url.params
    assert (query.get("async") == "true") == (where == "query")
    assert ('name="async"' in body) == (where == "form")
    request_json = body.split('name="image_request"', 1)[1].split("\r\n\r\n", 1)[1]
    assert ('"async": true' in request_json.split("\r\n", 1)[0]) == (where == "image_request")


async def test_a_synchronous_answer_is_a_billed_result() -> None:
    answer = httpx.Response(200, json={"created": "x", "data": [{"url": "https://r/x.png"}]})
    up, _ = _upstream(answer, ideogram_async=False)
    result = await up.send(up.build(REQ), None)
    assert result.pending_id is None and result.outputs[0].url == "https://r/x.png"
    # a timeout does not stop the work: a synchronous call waits the whole generation out
    own = IdeogramUpstream(
        Settings(route="ideogram", ideogram_async=False, ideogram_generation_s=500).upstream
    )
    assert own.client.timeout.read == 530
    await own.aclose()


async def test_an_accepted_answer_without_an_id_is_an_unknown_outcome() -> None:
    up, _ = _upstream(httpx.Response(200, json={"created": "x"}))
    with pytest.raises(e.OutcomeUnknown):
        await up.send(up.build(REQ), None)


@pytest.mark.parametrize("path", ["/v2/generations/{id}", "/v1/generations/{id}"])
async def test_a_generation_is_read_on_the_configured_path(path: str) -> None:
    answers = iter(
        [
            httpx.Response(200, json={"generation_id": "g1", "status": "pending"}),
            httpx.Response(
                200,
                json={
                    "generation_id": "g1",
                    "status": "completed",
                    "data": [{"url": "https://r/y.png", "is_image_safe": True}],
                    "usage_cost_usd_micros": 45_000,
                },
            ),
        ]
    )
    up, seen = _upstream(lambda _: next(answers), ideogram_generations_path=path)
    assert (await up.poll("g1")).pending_id == "g1"
    done = await up.poll("g1")
    assert done.pending_id is None and done.cost_micros == 45_000
    assert done.request_id == "g1"  # the generation names the billed call
    assert [r.url.path for r in seen] == [path.format(id="g1")] * 2
    assert seen[0].headers["Api-Key"] == "k-secret"


async def test_a_failed_generation_is_free_and_an_unknown_one_lost() -> None:
    failed = httpx.Response(
        200, json={"generation_id": "g1", "status": "failed", "failure_reason": "boom"}
    )
    up, _ = _upstream(failed)
    with pytest.raises(e.UpstreamJobFailed) as err:
        await up.poll("g1")
    assert not isinstance(err.value, e.UpstreamJobLost) and "boom" in err.value.message
    up, _ = _upstream(httpx.Response(404, json={"error": "generation not found"}))
    with pytest.raises(e.UpstreamJobLost):
        await up.poll("g1")


@pytest.mark.parametrize(("status", "ok"), [(404, True), (401, False), (500, False)])
async def test_the_key_check_reads_a_generation_for_free(status: int, ok: bool) -> None:
    up, seen = _upstream(httpx.Response(status, json={"error": "x"}))
    check = await up.check_key()
    assert check.ok is ok and seen[0].method == "GET"
    assert "/v2/generations/" in seen[0].url.path


async def test_deprecation_is_counted_each_time_and_logged_once_per_endpoint() -> None:
    link = '<https://developer.ideogram.ai/api-reference/images/upscale>; rel="successor-version"'
    headers = {"Deprecation": "@1700000000", "Link": link}
    body = {"created": "x", "generation_id": "g1", "notice": "This endpoint is deprecated."}
    up, _ = _upstream(httpx.Response(200, json=body, headers=headers))
    deprecation._logged.discard("/upscale")
    counter = metrics.UPSTREAM_DEPRECATED.labels("/upscale")
    before = counter._value.get()
    with capture_logs() as logs:
        for _ in range(3):
            await up.send(up.build(REQ), None)
    assert counter._value.get() - before == 3
    warned = [x for x in logs if x["event"].startswith("upstream endpoint deprecated")]
    assert len(warned) == 1
    assert warned[0]["successor"].endswith("/images/upscale")
    assert warned[0]["notice"] == "This endpoint is deprecated."
    assert json.dumps(warned[0]).count("k-secret") == 0
