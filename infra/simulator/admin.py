"""The admin API under `/_admin/` (no auth: a loopback test tool): counters and the log, reset,
a partial config patch, wallets, the clock daily limits and links run on, held work, injected
bills, and each key's / wallet's / organisation's state."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import ValidationError

from infra.simulator import accounts, async_jobs, billing, clock, wallet
from infra.simulator.config import SimConfig
from infra.simulator.protocol import STATE
from infra.simulator.records import Bill
from infra.simulator.state import SimState


def stats(state: SimState) -> dict[str, Any]:
    async_jobs.settle(state)  # jobs past their ready time are billed, polled or not
    return state.stats()


def _bad(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


async def _body(request: web.Request) -> dict[str, Any]:
    body = await request.json() if request.can_read_body else {}
    return body if isinstance(body, dict) else {}


async def admin_stats(request: web.Request) -> web.Response:
    return web.json_response(stats(request.app[STATE]))


async def admin_reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return web.json_response({"ok": True})


async def admin_config(request: web.Request) -> web.Response:
    state = request.app[STATE]
    patch = await _body(request)
    try:
        state.config = SimConfig.model_validate({**state.config.model_dump(), **patch})
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "config"
        return _bad(f"simulator config {where}: {err['msg']}")
    state.gate.wake()  # held work re-reads `hold_work`
    return web.json_response(state.config.model_dump())


async def admin_wallet(request: web.Request) -> web.Response:
    """`{"set": usd|null}` / `{"add": usd}`: the shared wallet; with `"org"`, an organisation's;
    with `"key"`, that key's own (made on first use) or its organisation's."""
    state = request.app[STATE]
    body = await _body(request)
    key, org = str(body.get("key", "")), str(body.get("org", ""))
    if org and org not in state.config.orgs:
        return _bad(f"wallet: no organisation {org!r} in the config's orgs")
    if key and accounts.org_name_of(state.config, key) is None:
        state.config.wallets_usd.setdefault(key, None)
    ref: accounts.WalletRef = ("shared", "")
    if org or key:
        ref = ("org", org) if org else accounts.wallet_of(state.config, key)
    if "set" in body:
        wallet.set_balance(state, ref, None if body["set"] is None else float(body["set"]))
    if "add" in body:
        wallet.credit(state, ref, float(body["add"]))
        if wallet.balance(state, ref) is None:  # adding to "unlimited" starts a balance
            wallet.set_balance(state, ref, float(body["add"]))
    return web.json_response({"wallet_usd": wallet.balance(state, ref)})


def _clock(state: SimState) -> dict[str, Any]:
    now = state.now()
    return {
        "now": clock.iso(now),
        "t": now,
        "offset_s": state.clock_offset_s,
        "next_daily_reset": clock.iso(clock.next_reset(state.config, now)),
    }


async def admin_clock(request: web.Request) -> web.Response:
    """`{"advance_s": s}`, `{"offset_s": s}` or `{"to": RFC 3339}`; a GET reads it."""
    state = request.app[STATE]
    body = await _body(request) if request.method == "POST" else {}
    try:
        if "advance_s" in body:
            state.clock_offset_s += float(body["advance_s"])
        if "offset_s" in body:
            state.clock_offset_s = float(body["offset_s"])
        if "to" in body:
            state.clock_offset_s += clock.parse_time(str(body["to"])) - state.now()
    except ValueError:
        return _bad("clock: advance_s / offset_s are seconds, to is an RFC 3339 time")
    return web.json_response(_clock(state))


async def admin_release(request: web.Request) -> web.Response:
    """Let `{"n": k}` held calls / generations through (no body: all those held now)."""
    state = request.app[STATE]
    body = await _body(request)
    state.gate.tokens += int(body.get("n", state.gate.waiting))
    state.gate.wake()
    return web.json_response({"held": state.gate.waiting, "tokens": state.gate.tokens})


async def admin_bill(request: web.Request) -> web.Response:
    """Inject a bill the caller never saw: `{"key", "n"=1, "usd"=n x price, "tag"="",
    "route"="gateway"|"ideogram", "endpoint", "day": YYYY-MM-DD (noon UTC) | "t": unix}`."""
    state = request.app[STATE]
    body = await _body(request)
    key = str(body.get("key", ""))
    if key not in state.config.api_keys:
        return _bad("bill: key must be one of the config's api_keys")
    route = body.get("route", "gateway")
    if route not in ("gateway", "ideogram"):
        return _bad("bill: route must be gateway or ideogram")
    try:
        n = int(body.get("n", 1))
        t = float(body["t"]) if "t" in body else state.now()
        if "day" in body:
            t = clock.parse_time(str(body["day"])) + 43_200
        usd = round(float(body.get("usd", state.config.price_usd * n)), 6)
    except ValueError:
        return _bad("bill: n is an integer, usd and t numbers, day YYYY-MM-DD")
    account = accounts.of(state.config, key)
    default_endpoint = "/upscale" if route == "ideogram" else "/v1/images/generations"
    bill = Bill(
        t=t,
        key=key,
        org_name=account.org_name,
        n=n,
        usd=usd,
        route=route,
        endpoint=str(body.get("endpoint", default_endpoint)),
        tag=str(body.get("tag", "")),
        injected=True,
    )
    billing.inject(state, bill, account)
    return web.json_response(bill.public(clock.date(t)))


def _spent(state: SimState, scope: str, t: float) -> dict[str, float]:
    day, mon = f"d{clock.billing_day(state.config, t)}", f"m{clock.month(t)}"
    return {
        "spent_today_usd": round(state.spend[f"{scope}|{day}"], 6),
        "spent_month_usd": round(state.spend[f"{scope}|{mon}"], 6),
    }


async def admin_accounts(request: web.Request) -> web.Response:
    """Per key (by its last 4 characters), per organisation and per wallet."""
    state = request.app[STATE]
    async_jobs.settle(state)
    cfg, now = state.config, state.now()
    keys: dict[str, Any] = {}
    for key in cfg.api_keys:
        acc = accounts.of(cfg, key)
        billed = [b for b in state.bill_log if b.key == key]
        keys[key[-4:]] = {
            "org": acc.org_name,
            "wallet": f"org:{acc.wallet[1]}" if acc.wallet[0] == "org" else acc.wallet[0],
            **acc.rule.model_dump(exclude={"models"}),
            **_spent(state, f"apikey:{key}", now),
            "inflight_calls": state.inflight_by_key[key],
            "org_inflight_images": state.inflight_images[acc.org],
            "inflight_limit": acc.inflight_limit,
            "billed_calls": len(billed),
            "billed_usd": round(sum(b.usd for b in billed), 6),
        }
    orgs = {
        name: {
            "keys": [k[-4:] for k in org.keys],
            "wallet_usd": org.wallet_usd,
            "inflight_images": state.inflight_images[f"org:{name}"],
            "inflight_limit": org.inflight_limit,
            "daily_limit_usd": org.daily_limit_usd,
            "polls_in_window": len(state.poll_windows.get(f"org:{name}", ())),
            **_spent(state, f"org:{name}", now),
        }
        for name, org in cfg.orgs.items()
    }
    wallets = {
        "shared": cfg.wallet_usd,
        "keys": {k[-4:]: v for k, v in cfg.wallets_usd.items()},
        "orgs": {name: org.wallet_usd for name, org in cfg.orgs.items()},
    }
    body = {"clock": _clock(state), "keys": keys, "orgs": orgs, "wallets": wallets}
    return web.json_response(body)


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/_admin/stats", admin_stats)
    router.add_post("/_admin/reset", admin_reset)
    router.add_post("/_admin/config", admin_config)
    router.add_post("/_admin/wallet", admin_wallet)
    router.add_get("/_admin/clock", admin_clock)
    router.add_post("/_admin/clock", admin_clock)
    router.add_post("/_admin/release", admin_release)
    router.add_post("/_admin/bill", admin_bill)
    router.add_get("/_admin/accounts", admin_accounts)
