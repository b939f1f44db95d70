"""The admin API under `/_admin/` (no auth: a loopback test tool): counters and the log, reset,
a partial config patch, and wallets."""

from __future__ import annotations

from aiohttp import web

from infra.simulator import wallet
from infra.simulator.config import SimConfig
from infra.simulator.protocol import STATE


async def admin_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].stats())


async def admin_reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return web.json_response({"ok": True})


async def admin_config(request: web.Request) -> web.Response:
    state = request.app[STATE]
    patch = await request.json()
    state.config = SimConfig.model_validate({**state.config.model_dump(), **patch})
    return web.json_response(state.config.model_dump())


async def admin_wallet(request: web.Request) -> web.Response:
    """`{"set": usd|null}` / `{"add": usd}`, for one key's own wallet with `"key"`."""
    state = request.app[STATE]
    body = await request.json()
    key = str(body.get("key", ""))
    if key and key not in state.config.wallets_usd:
        state.config.wallets_usd[key] = None
    if "set" in body:
        wallet.set_balance(state, key, None if body["set"] is None else float(body["set"]))
    if "add" in body:
        wallet.set_balance(
            state, key, round((wallet.balance(state, key) or 0.0) + float(body["add"]), 6)
        )
    return web.json_response({"wallet_usd": wallet.balance(state, key)})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/_admin/stats", admin_stats)
    router.add_post("/_admin/reset", admin_reset)
    router.add_post("/_admin/config", admin_config)
    router.add_post("/_admin/wallet", admin_wallet)
