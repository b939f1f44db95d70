"""Wallets: one shared (`wallet_usd`) and one per key in `wallets_usd` (None = unlimited). A call
holds its price when it starts (concurrent calls cannot overdraw) and is billed on completion
(`SimState.bill`); a failed generation gives the hold back."""

from __future__ import annotations

from infra.simulator.protocol import ApiError, reject
from infra.simulator.state import SimState


def balance(state: SimState, key: str) -> float | None:
    cfg = state.config
    return cfg.wallets_usd.get(key, cfg.wallet_usd)


def set_balance(state: SimState, key: str, usd: float | None) -> None:
    if key in state.config.wallets_usd:
        state.config.wallets_usd[key] = usd
    else:
        state.config.wallet_usd = usd


def hold(state: SimState, n: int, key: str = "") -> bool:
    w = balance(state, key)
    cost = state.config.price_usd * n
    if w is not None:
        if w + 1e-9 < cost:
            return False
        set_balance(state, key, round(w - cost, 6))
    return True


def release(state: SimState, n: int, key: str = "") -> None:
    """A failed generation is not billed: give the hold back."""
    w = balance(state, key)
    if w is not None:
        set_balance(state, key, round(w + state.config.price_usd * n, 6))


def hold_or_refuse(state: SimState, n: int, key: str, route: int) -> None:
    """Hold the price of `n` images, or refuse the call with a 402 (`ApiError`)."""
    if not hold(state, n, key):
        raise ApiError(
            402,
            "insufficient credits: top up your wallet",
            extra=reject(route, "insufficient_funds"),
        )
