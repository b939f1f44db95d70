"""The simulator follows the upstreams' published rules (issue 24), each exercised over real
HTTP against a simulator on a free port: Ideogram's missing idempotency key, asynchronous
generations and their polling, 402 reasons and daily limits, organisations sharing a wallet
and an in-flight cap, the gateway's scoped keys / sub-accounts, usage reports, the model
schema, async jobs' links, files and cancel, deprecated endpoints, and the admin API.

Tests wait on what the simulator shows (work held, counters, statuses), never on sleeps: work
is held in flight with `hold_work` and let through with `POST /_admin/release`."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from PIL import Image

from infra.simulator import RunningSimulator, SimConfig, run_simulator
from tests.support import png

MODEL = "ideogram/ideogram-upscale"
KEYS = {"key-aaaa": 6000, "key-bbbb": 6000, "key-cccc": 6000, "key-dddd": 6000}
NOON = "2026-03-10T12:00:00Z"  # a fixed clock for the tests that read days


class Upstream:
    """The running simulator and an HTTP client for it."""

    def __init__(self, sim: RunningSimulator, http: httpx.AsyncClient) -> None:
        self.sim, self.http = sim, http

    async def configure(self, **cfg: Any) -> None:
        (await self.http.post("/_admin/config", json=cfg)).raise_for_status()

    async def admin(self, path: str, body: dict[str, Any] | None = None) -> Any:
        r = await self.http.post(f"/_admin/{path}", json=body or {})
        r.raise_for_status()
        return r.json()

    async def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = (await self.http.get("/_admin/stats")).json()
        return data

    async def accounts(self) -> dict[str, Any]:
        data: dict[str, Any] = (await self.http.get("/_admin/accounts")).json()
        return data

    async def until(self, what: Callable[[], Awaitable[bool]], timeout: float = 20) -> None:
        """Wait until the simulator shows `what` (the timeout only bounds a failure)."""
        async with asyncio.timeout(timeout):
            while not await what():
                await asyncio.sleep(0.01)

    async def held(self, n: int) -> None:
        async def reached() -> bool:
            return int((await self.stats())["held"]) == n

        await self.until(reached)

    async def upscale(
        self,
        key: str,
        knobs: dict[str, Any] | None = None,
        *,
        form: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """`POST /upscale` (Ideogram direct)."""
        return await self.http.post(
            "/upscale",
            headers={"Api-Key": key, **(headers or {})},
            params=params,
            files={"image_file": ("a.png", png(8, 6), "image/png")},
            data={"image_request": json.dumps(knobs or {}), **(form or {})},
        )

    async def generate(
        self, key: str, tag: str | None = None, idem: str | None = None, **body: Any
    ) -> httpx.Response:
        """`POST /v1/images/generations` (the gateway), the image as a data URL."""
        data_url = "data:image/png;base64," + base64.b64encode(png(8, 6)).decode()
        headers = {"Authorization": f"Bearer {key}"}
        headers |= ({"x-aig-tag": tag} if tag else {}) | ({"Idempotency-Key": idem} if idem else {})
        payload = {"model": MODEL, "image": data_url, **body}
        return await self.http.post("/v1/images/generations", headers=headers, json=payload)

    async def poll(self, gen_id: str, key: str = "key-aaaa", v: int = 2) -> httpx.Response:
        return await self.http.get(f"/v{v}/generations/{gen_id}", headers={"Api-Key": key})

    async def finished(self, gen_id: str, key: str = "key-aaaa") -> dict[str, Any]:
        """The generation's answer once it has completed or failed."""
        out: dict[str, Any] = {}

        async def done() -> bool:
            out.update((await self.poll(gen_id, key)).json())
            return out["status"] in ("completed", "failed")

        await self.until(done)
        return out


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with (
        run_simulator(SimConfig(api_keys=dict(KEYS))) as sim,
        httpx.AsyncClient(base_url=sim.url, timeout=20) as http,
    ):
        yield Upstream(sim, http)


def _size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        return img.size


# -- Ideogram: no idempotency key ------------------------------------------------------------


async def test_ideogram_ignores_idempotency_key_every_request_is_billed(upstream: Upstream) -> None:
    # even with the gateway's replay rule on, the Ideogram route runs (and bills) each request
    await upstream.configure(honour_idempotency=True)
    same = {"Idempotency-Key": "job-1"}
    first = await upstream.upscale("key-aaaa", headers=same)
    second = await upstream.upscale("key-aaaa", headers=same)
    assert first.status_code == second.status_code == 200
    assert "Idempotent-Replayed" not in second.headers
    assert first.json()["data"][0]["url"] != second.json()["data"][0]["url"]
    assert (await upstream.stats())["billed_calls"] == 2
    # the gateway route still replays when told to (today's behaviour, switched by config)
    g1 = await upstream.generate("key-aaaa", idem="job-2")
    g2 = await upstream.generate("key-aaaa", idem="job-2")
    assert g1.status_code == g2.status_code == 200
    assert g2.headers["Idempotent-Replayed"] == "true"
    assert (await upstream.stats())["billed_calls"] == 3  # 2 Ideogram + 1 gateway (1 replay)
    # and the Ideogram route can be told to replay too
    await upstream.configure(ideogram_honour_idempotency=True)
    await upstream.upscale("key-aaaa", headers={"Idempotency-Key": "job-3"})
    again = await upstream.upscale("key-aaaa", headers={"Idempotency-Key": "job-3"})
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (await upstream.stats())["billed_calls"] == 4


# -- Ideogram: asynchronous generations --------------------------------------------------------


@pytest.mark.parametrize(
    "how",
    [
        {"form": {"async": "true"}},
        {"params": {"async": "true"}},
        {"knobs": {"async": True}},
        {"params": {"webhook_url": "https://hooks.example.com/done"}},
    ],
    ids=["form-async", "query-async", "image_request-async", "webhook_url"],
)
async def test_async_generation_answers_an_id_at_once_then_completes_and_bills(
    upstream: Upstream, how: dict[str, Any]
) -> None:
    await upstream.configure(hold_work=True, orgs={"acme": {"keys": ["key-aaaa"]}})
    knobs = {"num_images": 2, "seed": 7, **how.get("knobs", {})}
    r = await upstream.upscale(
        "key-aaaa", knobs, form=how.get("form"), params=how.get("params")
    )  # answered while its work is still held: the id comes at once
    assert r.status_code == 200, r.text
    gen_id = r.json()["generation_id"]
    assert r.json()["request_id"] == gen_id and "data" not in r.json()
    await upstream.held(1)
    for v in (2, 1):
        pending = (await upstream.poll(gen_id, v=v)).json()
        assert pending == {
            "generation_id": gen_id,
            "created": pending["created"],
            "status": "pending",
        }
    assert (await upstream.stats())["billed_calls"] == 0
    assert (await upstream.accounts())["orgs"]["acme"]["inflight_images"] == 2
    await upstream.admin("release")
    done = await upstream.finished(gen_id)
    assert done["status"] == "completed" and done["response_type"] == "image"
    assert done["usage_cost_usd_micros"] == 120_000  # 2 images x $0.06
    assert len(done["data"]) == 2
    item = done["data"][0]
    assert item["resolution"] == "8x6" and item["seed"] == 7 and item["is_image_safe"] is True
    image = await upstream.http.get(item["url"])
    assert image.status_code == 200 and _size(image.content) == (16, 12)
    stats = await upstream.stats()
    assert stats["billed_calls"] == 1 and stats["billed_usd"] == 0.12
    assert stats["bills"][0]["n"] == 2 and stats["bills"][0]["route"] == "ideogram"
    assert (await upstream.accounts())["orgs"]["acme"]["inflight_images"] == 0
    assert stats["generations"] == {"completed": 1}


async def test_a_failed_generation_is_not_billed(upstream: Upstream) -> None:
    await upstream.configure(async_fail_next=1, wallet_usd=1.0, ideogram_pending_status="running")
    gen_id = (await upstream.upscale("key-aaaa", {"async": True})).json()["generation_id"]
    failed = await upstream.finished(gen_id)
    assert failed["status"] == "failed" and failed["failure_reason"]
    assert set(failed) == {"generation_id", "created", "status", "failure_reason"}
    stats = await upstream.stats()
    assert stats["billed_calls"] == 0 and stats["wallet_usd"] == 1.0  # the hold came back
    # resubmitting after `failed` is the documented recipe: this one completes and bills
    again = (await upstream.upscale("key-aaaa", {"async": True})).json()["generation_id"]
    assert (await upstream.finished(again))["status"] == "completed"
    assert (await upstream.stats())["wallet_usd"] == 0.94


async def test_a_webhook_url_must_be_https(upstream: Upstream) -> None:
    r = await upstream.upscale("key-aaaa", {"webhook_url": "http://127.0.0.1:9/hook"})
    assert r.status_code == 400 and "webhook_url" in r.json()["error"]
    assert (await upstream.stats())["billed_calls"] == 0


async def test_polling_is_rate_limited_per_organisation(upstream: Upstream) -> None:
    await upstream.configure(
        orgs={"acme": {"keys": ["key-aaaa", "key-bbbb"]}, "other": {"keys": ["key-cccc"]}},
        ideogram_poll_limit=3,
        ideogram_poll_window_s=600,
    )
    gen_id = (await upstream.upscale("key-aaaa", {"async": True})).json()["generation_id"]
    for key in ("key-aaaa", "key-bbbb", "key-aaaa"):
        assert (await upstream.poll(gen_id, key)).status_code == 200
    over = await upstream.poll(gen_id, "key-bbbb")  # the 4th poll of the organisation
    assert over.status_code == 429 and 1 <= int(over.headers["Retry-After"]) <= 600
    assert "error" in over.json()
    # another organisation polls on its own budget, and cannot see acme's generation
    assert (await upstream.poll(gen_id, "key-cccc")).status_code == 404
    assert (await upstream.poll("no-such-id", "key-dddd")).status_code == 404
    assert (await upstream.poll(gen_id, "not-a-key")).status_code == 401
    polls = (await upstream.stats())["poll_log"]
    assert [p["status"] for p in polls] == [200, 200, 200, 429, 404, 404, 401]


async def test_a_sync_request_whose_client_went_away_completes_and_bills(
    upstream: Upstream,
) -> None:
    await upstream.configure(hold_work=True)
    call = asyncio.create_task(upstream.upscale("key-aaaa"))
    await upstream.held(1)  # the call runs at the upstream...
    call.cancel()  # ...when its client gives up (as on a timeout) and closes the connection
    with pytest.raises(asyncio.CancelledError):
        await call
    await upstream.admin("release")

    async def billed() -> bool:
        return int((await upstream.stats())["billed_calls"]) == 1

    await upstream.until(billed)  # the work went on and was billed
    (entry,) = (await upstream.stats())["log"]
    assert entry["status"] == 200 and entry["path"] == "/upscale"


# -- 402: insufficient funds vs the daily limit -------------------------------------------------


async def test_402_insufficient_funds_is_not_a_daily_limit(upstream: Upstream) -> None:
    await upstream.configure(orgs={"acme": {"keys": ["key-aaaa"], "wallet_usd": 0.06}})
    assert (await upstream.upscale("key-aaaa")).status_code == 200
    empty = await upstream.upscale("key-aaaa")
    assert empty.status_code == 402
    assert empty.json()["reject_reason"] == "insufficient_funds"
    assert isinstance(empty.json()["error"], str)  # Ideogram's documented error body
    assert "X-Daily-Limit-Reset" not in empty.headers
    # the gateway says it its own way
    gw = await upstream.generate("key-aaaa")
    assert gw.status_code == 402 and gw.json()["error"]["type"] == "insufficient_credits"
    stats = await upstream.stats()
    assert stats["billed_calls"] == 1 and stats["orgs_wallet_usd"] == {"acme": 0.0}
    await upstream.admin("wallet", {"org": "acme", "add": 0.06})
    assert (await upstream.upscale("key-aaaa")).status_code == 200


@pytest.mark.parametrize("scope", ["org", "key"])
async def test_402_daily_limit_resets_at_the_configured_moment(
    upstream: Upstream, scope: str
) -> None:
    limit: dict[str, Any] = {"daily_limit_usd": 0.12}
    await upstream.configure(
        daily_reset_utc="06:30",
        orgs={
            "acme": {"keys": ["key-aaaa"], "wallet_usd": 5.0, **(limit if scope == "org" else {})}
        },
        key_rules={"key-aaaa": limit} if scope == "key" else {},
    )
    await upstream.admin("clock", {"to": NOON})
    for _ in range(2):
        assert (await upstream.upscale("key-aaaa")).status_code == 200
    over = await upstream.upscale("key-aaaa")
    assert over.status_code == 402 and over.json()["reject_reason"] == "daily_limit"
    assert over.headers["X-Daily-Limit-Reset"] == "2026-03-11T06:30:00Z"
    assert 18 * 3600 + 29 * 60 <= int(over.headers["Retry-After"]) <= 18 * 3600 + 30 * 60
    gw = await upstream.generate("key-aaaa")
    assert gw.status_code == 402 and gw.json()["error"]["type"] == "budget_exceeded"
    stats = await upstream.stats()
    assert stats["billed_calls"] == 2 and stats["orgs_wallet_usd"]["acme"] == 4.88  # not billed
    state = await upstream.accounts()
    assert state["keys"]["aaaa"]["spent_today_usd"] == 0.12
    assert state["clock"]["next_daily_reset"] == "2026-03-11T06:30:00Z"
    await upstream.admin("clock", {"to": "2026-03-11T06:29:00Z"})
    assert (await upstream.upscale("key-aaaa")).status_code == 402  # not yet
    await upstream.admin("clock", {"advance_s": 60})
    assert (await upstream.upscale("key-aaaa")).status_code == 200  # a new day


# -- organisations: one wallet, one in-flight cap ----------------------------------------------


async def test_an_organisation_shares_one_wallet_and_one_inflight_cap(upstream: Upstream) -> None:
    await upstream.configure(
        hold_work=True,
        orgs={"acme": {"keys": ["key-aaaa", "key-bbbb"], "wallet_usd": 1.0, "inflight_limit": 3}},
    )
    calls = [
        asyncio.create_task(upstream.upscale("key-aaaa")),
        asyncio.create_task(upstream.upscale("key-aaaa")),
    ]
    await upstream.held(2)
    gen = await upstream.upscale("key-bbbb", {"async": True})  # every endpoint counts
    await upstream.held(3)
    for key, knobs in (("key-bbbb", {}), ("key-aaaa", {"async": True})):
        over = await upstream.upscale(key, knobs)
        assert over.status_code == 429
        assert over.json()["reject_reason"] == "inflight_limit"
        assert over.json()["max_inflight_requests"] == 3
        assert "Retry-After" not in over.headers  # not documented for this refusal
    other = asyncio.create_task(upstream.upscale("key-cccc"))  # another organisation
    await upstream.held(4)
    await upstream.admin("release")
    assert all(r.status_code == 200 for r in await asyncio.gather(*calls, other))
    await upstream.finished(gen.json()["generation_id"], "key-bbbb")
    await upstream.configure(hold_work=False)
    # a request for 4 images takes 4 places: over a cap of 3 even with nothing in flight
    four = await upstream.upscale("key-aaaa", {"num_images": 4})
    assert four.status_code == 429 and four.json()["reject_reason"] == "inflight_limit"
    three = await upstream.upscale("key-bbbb", {"num_images": 3})
    assert three.status_code == 200 and len(three.json()["data"]) == 3
    state = await upstream.accounts()
    assert state["orgs"]["acme"]["wallet_usd"] == 0.64  # 3 + 3 images from one balance
    assert state["orgs"]["acme"]["inflight_images"] == 0
    assert state["keys"]["aaaa"]["billed_usd"] == 0.12
    assert state["keys"]["bbbb"]["billed_usd"] == 0.24
    assert state["keys"]["cccc"]["wallet"] == "shared"


# -- the gateway: scoped keys and sub-accounts ----------------------------------------------------


async def test_scoped_keys_and_sub_accounts_bill_the_master_wallet(upstream: Upstream) -> None:
    await upstream.configure(
        orgs={"master": {"keys": ["key-aaaa", "key-bbbb", "key-cccc"], "wallet_usd": 1.0}},
        key_rules={
            "key-bbbb": {"kind": "scoped", "spend_cap_usd": 0.06},
            "key-cccc": {"kind": "sub_account", "spend_cap_usd": 0.06},
            "key-dddd": {"kind": "scoped", "models": ["other/model"]},
        },
    )
    for key in ("key-bbbb", "key-cccc", "key-aaaa"):
        assert (await upstream.generate(key)).status_code == 200
    scoped = await upstream.generate("key-bbbb")
    assert scoped.status_code == 403 and scoped.json()["error"]["type"] == "scope_exceeded"
    sub = await upstream.generate("key-cccc")
    assert sub.status_code == 402 and sub.json()["error"]["type"] == "budget_exceeded"
    assert (await upstream.generate("key-aaaa")).status_code == 200  # the master key goes on
    denied = await upstream.generate("key-dddd")  # not on its model allow-list
    assert denied.status_code == 403 and denied.json()["error"]["type"] == "scope_exceeded"
    state = await upstream.accounts()
    assert state["orgs"]["master"]["wallet_usd"] == 0.76  # 4 images, all from the master
    assert state["keys"]["bbbb"]["spent_month_usd"] == 0.06
    assert (await upstream.stats())["billed_calls"] == 4


# -- usage reports -------------------------------------------------------------------------------


async def test_usage_by_tag_per_day_with_an_injected_bill(upstream: Upstream) -> None:
    await upstream.configure(orgs={"acme": {"keys": ["key-aaaa", "key-bbbb"]}})
    await upstream.admin("clock", {"to": NOON})
    for key, tag in (("key-aaaa", "batch-1"), ("key-bbbb", "batch-1"), ("key-aaaa", "batch-2")):
        assert (await upstream.generate(key, tag=tag)).status_code == 200
    assert (await upstream.generate("key-aaaa")).status_code == 200  # untagged
    assert (await upstream.generate("key-cccc", tag="batch-1")).status_code == 200  # not acme's
    extra = await upstream.admin("bill", {"key": "key-bbbb", "tag": "batch-1", "day": "2026-03-09"})
    assert extra["injected"] is True and extra["day"] == "2026-03-09" and extra["usd"] == 0.06
    auth = {"Authorization": "Bearer key-aaaa"}

    async def by_tag(**q: str) -> list[dict[str, Any]]:
        r = await upstream.http.get("/v1/usage/by-tag", params=q, headers=auth)
        assert r.status_code == 200, r.text
        rows: list[dict[str, Any]] = r.json()
        return rows

    month = await by_tag()  # this month (the clock's)
    assert [(r["tag"], r["requests"], r["cost_cents"]) for r in month] == [
        (None, 1, 6.0),
        ("batch-1", 3, 18.0),
        ("batch-2", 1, 6.0),
    ]
    daily = await by_tag(group_by="day", tag="batch-1")
    assert [(r["date"], r["requests"], r["cost_usd"]) for r in daily] == [
        ("2026-03-09", 1, 0.06),
        ("2026-03-10", 2, 0.12),
    ]
    assert [r["tag"] for r in await by_tag(day="2026-03-09")] == ["batch-1"]
    assert await by_tag(month="2026-02") == []
    bad = await upstream.http.get("/v1/usage/by-tag", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401


async def test_ideogram_account_usage_per_day_for_an_admin_key(upstream: Upstream) -> None:
    await upstream.configure(
        orgs={"acme": {"keys": ["key-aaaa", "key-bbbb"]}},
        key_rules={"key-aaaa": {"admin": True}},
    )
    await upstream.admin("clock", {"to": NOON})
    assert (await upstream.upscale("key-aaaa", {"num_images": 2})).status_code == 200
    assert (await upstream.upscale("key-bbbb")).status_code == 200
    await upstream.admin("bill", {"key": "key-bbbb", "route": "ideogram", "day": "2026-03-09"})
    q = {"start_time": "2026-03-09T08:00:00Z", "end_time": "2026-03-10T13:00:00Z"}
    r = await upstream.http.get("/v2/account/usage", params=q, headers={"Api-Key": "key-aaaa"})
    assert r.status_code == 200, r.text
    usage = r.json()
    assert usage["bucket_width"] == "1d" and usage["start_time"] == "2026-03-09T00:00:00Z"
    day1, day2 = usage["buckets"]
    assert [i["cost_total"] for i in day1["line_items"]] == [0.06]
    items = {i["api_key"]["redacted_key"]: i for i in day2["line_items"]}
    assert items["...aaaa"]["billed_units"] == {"unit": "image", "quantity": 2, "unit_price": 0.06}
    assert items["...bbbb"]["cost_total"] == 0.06 and items["...bbbb"]["product"] == "upscale"
    hourly = {**q, "bucket_width": "1h"}
    r = await upstream.http.get("/v2/account/usage", params=hourly, headers={"Api-Key": "key-aaaa"})
    assert len(r.json()["buckets"]) == 29
    member = await upstream.http.get("/v2/account/usage", params=q, headers={"Api-Key": "key-bbbb"})
    assert member.status_code == 404  # documented: a key of a non-admin member
    no_start = await upstream.http.get("/v2/account/usage", headers={"Api-Key": "key-aaaa"})
    assert no_start.status_code == 400


# -- the model catalogue's request shape ----------------------------------------------------------


async def test_model_schema_declares_the_configured_image_mode_and_field(
    upstream: Upstream,
) -> None:
    auth = {"Authorization": "Bearer key-aaaa"}
    model = (await upstream.http.get(f"/v1/models/{MODEL}", headers=auth)).json()
    assert model["id"] == MODEL and model["image"] == {"mode": "url", "field": "image"}
    assert model["endpoint"] == "POST /v1/images/generations"
    schema = (await upstream.http.get(f"/v1/models/{MODEL}/schema", headers=auth)).json()
    assert schema["input_schema"]["required"] == ["model", "image"]
    assert schema["input_schema"]["properties"]["image"]["format"] == "uri"
    await upstream.configure(model_schema_image_mode="edits")
    schema = (await upstream.http.get(f"/v1/models/{MODEL}/schema", headers=auth)).json()
    assert schema["endpoint"] == "POST /v1/images/edits"
    assert schema["content_type"] == "multipart/form-data"
    await upstream.configure(
        model_schema_image_mode="data_url",
        model_schema_image_field="image_url",
        model_schema_enforced=True,
    )
    schema = (await upstream.http.get(f"/v1/models/{MODEL}/schema", headers=auth)).json()
    assert schema["image"] == {"mode": "data_url", "field": "image_url"}
    data_url = "data:image/png;base64," + base64.b64encode(png(8, 6)).decode()
    wrong_field = await upstream.generate("key-aaaa")  # sends `image`
    assert wrong_field.status_code == 400 and "image_url" in wrong_field.json()["error"]["message"]
    wrong_mode = await upstream.generate("key-aaaa", image_url="https://example.com/a.png")
    assert wrong_mode.status_code == 400
    right = await upstream.generate("key-aaaa", image_url=data_url)
    assert right.status_code == 200, right.text
    assert (await upstream.stats())["billed_calls"] == 1
    missing = await upstream.http.get("/v1/models/nope/nope/schema", headers=auth)
    assert missing.status_code == 404
    assert (await upstream.http.get(f"/v1/models/{MODEL}")).status_code == 401


# -- gateway async jobs: fresh links, kept files, cancel -------------------------------------------


async def test_a_job_reread_signs_a_fresh_link_while_the_file_is_kept(upstream: Upstream) -> None:
    await upstream.configure(async_mode=True, async_min_poll_s=0)
    auth = {"Authorization": "Bearer key-aaaa"}
    job = (await upstream.generate("key-aaaa")).json()
    assert job["status"] == "queued" and job["object"] == "job"
    first = (await upstream.http.get(f"/v1/jobs/{job['id']}", headers=auth)).json()
    assert first["status"] == "completed"
    url = first["result"]["file_url"]
    assert (await upstream.http.get(url)).status_code == 200
    await upstream.admin("clock", {"advance_s": 25 * 3600})  # the link (24 h) has expired
    expired = await upstream.http.get(url)
    assert expired.status_code == 403 and "expired" in expired.text
    fresh = (await upstream.http.get(f"/v1/jobs/{job['id']}", headers=auth)).json()
    new_url = fresh["result"]["file_url"]
    assert new_url != url and (await upstream.http.get(new_url)).status_code == 200
    # a link valid for 30 days outlives the file, which is kept 7 days
    await upstream.configure(result_url_ttl_s=30 * 86400)
    long_url = (await upstream.http.get(f"/v1/jobs/{job['id']}", headers=auth)).json()
    await upstream.admin("clock", {"advance_s": 6 * 86400})
    gone = await upstream.http.get(f"/v1/jobs/{job['id']}", headers=auth)
    assert gone.status_code == 404
    assert (await upstream.http.get(long_url["result"]["file_url"])).status_code == 404
    assert (await upstream.stats())["billed_calls"] == 1


async def test_a_cancelled_or_failed_job_costs_nothing(upstream: Upstream) -> None:
    # a job ready only after 10 minutes: still running while this test cancels it
    await upstream.configure(
        async_mode=True, async_min_poll_s=0, latency_ms=[600_000, 600_000], wallet_usd=1.0
    )
    auth = {"Authorization": "Bearer key-aaaa"}
    job_id = (await upstream.generate("key-aaaa")).json()["id"]
    running = (await upstream.http.get(f"/v1/jobs/{job_id}", headers=auth)).json()
    assert running["status"] == "running"
    assert (await upstream.stats())["wallet_usd"] == 0.94  # held while it runs
    cancel = await upstream.http.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
    assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled"
    polled = await upstream.http.get(f"/v1/jobs/{job_id}", headers=auth)
    assert polled.json()["status"] == "cancelled"
    stats = await upstream.stats()
    assert stats["billed_calls"] == 0 and stats["wallet_usd"] == 1.0
    # a failed job: its error says why, and its price comes back
    await upstream.configure(latency_ms=[0, 0], async_fail_next=1)
    failed_id = (await upstream.generate("key-aaaa")).json()["id"]
    failed = (await upstream.http.get(f"/v1/jobs/{failed_id}", headers=auth)).json()
    assert failed["status"] == "failed" and failed["error"]["message"]
    # a finished job cannot be cancelled
    done_id = (await upstream.generate("key-aaaa")).json()["id"]
    assert (await upstream.http.get(f"/v1/jobs/{done_id}", headers=auth)).json()["status"] == (
        "completed"
    )
    late = await upstream.http.post(f"/v1/jobs/{done_id}/cancel", headers=auth)
    assert late.status_code == 409
    stats = await upstream.stats()
    assert stats["billed_calls"] == 1 and stats["wallet_usd"] == 0.94


# -- deprecated endpoints -------------------------------------------------------------------------


async def test_v1_endpoints_name_their_successor_and_say_when_deprecated(
    upstream: Upstream,
) -> None:
    ok = await upstream.upscale("key-aaaa")
    assert 'rel="successor-version"' in ok.headers["Link"]
    assert "Deprecation" not in ok.headers and "notice" not in ok.json()
    await upstream.configure(ideogram_v1_deprecated_at=1777420800)
    ok = await upstream.upscale("key-aaaa")
    assert ok.headers["Deprecation"] == "@1777420800"
    assert ok.json()["notice"].startswith("This endpoint is deprecated. Use POST /v2/")
    refused = await upstream.upscale("not-a-key")
    assert refused.status_code == 401 and refused.headers["Deprecation"] == "@1777420800"
    assert "notice" not in refused.json()  # only successful answers carry it
    gen_id = (await upstream.upscale("key-aaaa", {"async": True})).json()["generation_id"]
    v1 = await upstream.poll(gen_id, v=1)
    assert v1.headers["Deprecation"] == "@1777420800"
    assert "/v2/generations" in v1.json()["notice"]
    assert "get-generation" in v1.headers["Link"]
    v2 = await upstream.poll(gen_id, v=2)
    assert "Deprecation" not in v2.headers and "Link" not in v2.headers
    assert "notice" not in v2.json()


# -- the admin API ----------------------------------------------------------------------------


async def test_admin_api_keeps_its_fields_and_names_a_bad_setting(upstream: Upstream) -> None:
    stats = await upstream.stats()
    assert {
        "calls", "by_status", "billed_calls", "billed_usd", "wallet_usd", "wallets_usd",
        "inflight", "max_inflight", "downloads", "by_tag", "log", "bills",
    } <= set(stats)  # fmt: skip
    typo = await upstream.http.post("/_admin/config", json={"hold_wrok": True})
    assert typo.status_code == 400 and "hold_wrok" in typo.json()["error"]
    unknown = await upstream.http.post(
        "/_admin/config", json={"orgs": {"acme": {"keys": ["not-configured"]}}}
    )
    assert unknown.status_code == 400
    assert "orgs.acme.keys" in unknown.json()["error"] and "api_keys" in unknown.json()["error"]
    clock = await upstream.admin("clock", {"to": NOON})
    assert clock["now"] == NOON and clock["next_daily_reset"] == "2026-03-11T00:00:00Z"
    later = await upstream.admin("clock", {"advance_s": 3600})
    assert 0 <= later["t"] - (clock["t"] + 3600) < 60
    bad_bill = await upstream.http.post("/_admin/bill", json={"key": "nope"})
    assert bad_bill.status_code == 400
    await upstream.admin("reset")
    assert (await upstream.http.get("/_admin/clock")).json()["offset_s"] == 0.0
