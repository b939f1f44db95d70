"""Pause reasons as data, wallets and in-flight groups (issue 24): what an upstream's refusal
says, what each reason does in flow control (`report.lua`, `admit.lua`, `gate.lua`,
`observe.lua`, on a real Redis), and what `status` says of it."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace

import httpx
import pytest
from redis.asyncio import Redis

from producers.cli.fleet import _upstream_line
from tests.support import fleet_status
from worker.flow import Admitted, Denied, FlowControl
from worker.flow.status import PauseInfo
from worker.settings import Settings
from worker.upstream import errors as e
from worker.upstream.base import RateInfo
from worker.upstream.http import raise_for_status
from worker.upstream.pool import PoolConfigError, load_pool


def _refusal(status: int, body: object, **headers: str) -> e.UpstreamError:
    resp = httpx.Response(
        status,
        content=json.dumps(body).encode(),
        headers=headers,
        request=httpx.Request("POST", "http://u/x"),
    )
    with pytest.raises(e.UpstreamError) as info:
        raise_for_status(resp)
    return info.value


@pytest.mark.parametrize(
    ("status", "body", "headers", "reason"),
    [
        (402, {"error": "no money", "reject_reason": "insufficient_funds"}, {}, "credits"),
        (402, {"error": {"type": "insufficient_credits", "message": "top up"}}, {}, "credits"),
        (402, {"error": "limit", "reject_reason": "daily_limit"}, {"Retry-After": "30"}, "daily_limit"),
        (402, {"error": {"type": "budget_exceeded"}}, {"Retry-After": "30"}, "daily_limit"),
        (402, {"error": {"type": "budget_exceeded", "message": "sub-account cap"}}, {}, "cap_reached"),
        (403, {"error": {"type": "scope_exceeded", "message": "cap"}}, {}, "cap_reached"),
        (403, {"error": "no access"}, {}, "forbidden"),
        (401, {"error": "bad key"}, {}, "auth"),
    ],
)  # fmt: skip
def test_a_refusal_names_its_pause_reason(
    status: int, body: object, headers: dict[str, str], reason: str
) -> None:
    err = _refusal(status, body, **headers)
    assert isinstance(err, e.PauseError) and err.pause_reason == reason


def test_a_daily_limit_says_when_it_resets() -> None:
    err = _refusal(402, {"reject_reason": "daily_limit"}, **{"Retry-After": "125"})
    assert err.retry_after_s == 125
    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    err = _refusal(402, {"reject_reason": "daily_limit"}, **{"X-Daily-Limit-Reset": soon})
    assert err.retry_after_s is not None and 3590 < err.retry_after_s <= 3600
    assert _refusal(402, {"reject_reason": "daily_limit"}).retry_after_s is None


def test_an_inflight_429_names_the_cap() -> None:
    body = {"error": "busy", "reject_reason": "inflight_limit", "max_inflight_requests": 3}
    err = _refusal(429, body)
    assert isinstance(err, e.RateLimited) and err.max_inflight == 3
    assert _refusal(429, {"error": "slow down"}).max_inflight is None


POOL = [
    {"name": "a", "api_key_env": "KEY_A", "wallet": "acme", "inflight_group": "acme"},
    {"name": "b", "api_key_env": "KEY_B", "wallet": "acme", "inflight_group": "acme"},
    {"name": "c", "api_key_env": "KEY_C"},
]


def _settings(
    monkeypatch: pytest.MonkeyPatch, pool: Sequence[Mapping[str, object]], **kw: object
) -> Settings:
    monkeypatch.setenv("UPSCALE_UPSTREAMS", json.dumps(pool))
    for name in ("KEY_A", "KEY_B", "KEY_C"):
        monkeypatch.setenv(name, name.lower())
    return Settings(redis_url="redis://unused", rate_rpm=6000, **kw)  # type: ignore[arg-type]


def test_pool_entries_declare_a_wallet_and_an_inflight_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b, c = load_pool(_settings(monkeypatch, POOL, group_max_inflight=4))
    assert (a.wallet, a.inflight_group, a.group_cap) == ("acme", "acme", 4)
    assert a.canary_lock == b.canary_lock != a.keys.canary  # one canary lock for the wallet
    assert a.cap_word == b.cap_word != a.keys.said
    assert (c.wallet, c.group_cap, c.canary_lock, c.cap_word) == (
        None,
        0,
        c.keys.canary,
        c.keys.said,
    )


def test_entries_of_a_group_must_agree_on_its_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = [{**POOL[0], "group_max_inflight": 3}, {**POOL[1], "group_max_inflight": 5}]
    with pytest.raises(PoolConfigError, match=r"inflight_group 'acme'.*3, 5"):
        load_pool(_settings(monkeypatch, pool))


async def _flow(r: Redis, monkeypatch: pytest.MonkeyPatch, **kw: object) -> FlowControl:
    return FlowControl(r, _settings(monkeypatch, POOL, **kw))


async def test_an_empty_wallet_pauses_every_upstream_of_it_and_one_canary_lifts_it(
    r: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow = await _flow(r, monkeypatch, canary_interval_s=0.2)
    await flow.report_paused("a", "credits", "HTTP 402")
    status = await flow.status()
    assert [u.state for u in status.upstreams] == ["paused", "paused", "open"]
    first = await flow.admit(job_id="j1")
    assert isinstance(first, Admitted) and first.upstream == "c"  # the other wallet's
    await flow.pause(upstream="c")
    assert (await flow.gate()).state == "closed"  # the first canary waits a full interval
    await r.delete(flow.pool[0].canary_lock)  # ... which has passed
    assert (await flow.gate()).state == "canary"
    canary = await flow.admit(job_id="j2")
    assert isinstance(canary, Admitted) and canary.kind == "canary"
    other = await flow.admit(job_id="j3")  # one canary for the whole wallet
    assert isinstance(other, Denied) and other.reason == "paused:credits"
    await flow.observe(canary.upstream, RateInfo(), 200, slot=canary.token)
    status = await flow.status()
    assert [u.state for u in status.upstreams] == ["open", "open", "paused"]


async def test_a_daily_limit_lifts_itself_at_the_reset_and_is_never_probed(
    r: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow = await _flow(r, monkeypatch, canary_interval_s=0.001)
    await flow.pause(upstream="c")
    await flow.report_paused("a", "daily_limit", "HTTP 402: daily_limit", retry_after_s=1.0)
    status = await flow.status()
    a, b, _ = status.upstreams
    assert a.pause is not None and a.pause.until_ms > 0 and "lifts itself at" in a.line
    # on the gateway a daily limit may be one key's own: its wallet goes on (on Ideogram keys
    # cannot be scoped, so the workspace's limit pauses the wallet: tests/integration)
    assert b.state == "open"
    await flow.report_paused("b", "daily_limit", "HTTP 402", retry_after_s=1.0)
    for _ in range(20):  # however often it is asked: no canary through a daily limit
        assert isinstance(await flow.admit(job_id="j"), Denied)
    assert 0 < await r.pttl(flow.pool[0].keys.pause) <= 1000  # Redis lifts it at the reset


async def test_an_inflight_group_is_one_cap_across_its_upstreams(
    r: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    flow = await _flow(r, monkeypatch, group_max_inflight=10, max_inflight=2)
    await flow.pause(upstream="c")
    await flow.learn_inflight_cap("a", 3)  # a 429 named it
    got = [await flow.admit(job_id=f"j{i}") for i in range(4)]
    assert [g.upstream for g in got if isinstance(g, Admitted)] == ["a", "a", "b"]
    assert isinstance(got[3], Denied) and got[3].reason == "concurrency"
    status = await flow.status()
    assert [(u.group_inflight, u.group_cap) for u in status.upstreams[:2]] == [(3, 3), (3, 3)]


def test_status_lines_say_why_and_what_lifts_it() -> None:
    now = 1_800_000_000_000
    daily = PauseInfo("daily_limit", "HTTP 402", now, "a", until_ms=now + 3_700_000)
    assert "daily limit reached; lifts itself at" in daily.line(now) and "(in 1h01m)" in daily.line(
        now
    )
    wallet = PauseInfo("credits", "", now, "b", scope="wallet", wallet="acme", via="a", probe=True)
    assert wallet.line(now).startswith("wallet empty: top up (wallet acme, via a)")
    cap = PauseInfo("cap_reached", "scoped key spend limit reached", now, "a", probe=True)
    assert cap.line(now).startswith("cap reached") and "auth" not in cap.line(now)


def test_upscale_status_shows_each_upstream_of_a_pool() -> None:
    pause = PauseInfo("cap_reached", "HTTP 403: scope_exceeded", 0, "a", probe=True)
    u = replace(
        fleet_status().flow_control.upstreams[0],
        name="a",
        state="paused",
        pause=pause,
        inflight=1,
        inflight_cap=10,
        spend_usd=0.12,
        wallet="acme",
        inflight_group="acme",
        group_inflight=3,
        group_cap=10,
        line=pause.line(),
    )
    line = _upstream_line(u)
    assert "upstream [bold]a[/] (gateway wallet acme): [red]cap reached" in line
    assert "in flight 1/10 (group acme 3/10)" in line and "$0.12" in line
