"""Wallets: one per organisation (`orgs[name].wallet_usd`), one per key in `wallets_usd`, and
the shared `wallet_usd` (None = unlimited). The live balance is kept in the config, so a
config patch that does not name a wallet leaves it as it is."""

from __future__ import annotations

from infra.simulator.accounts import WalletRef
from infra.simulator.state import SimState


def balance(state: SimState, ref: WalletRef) -> float | None:
    cfg = state.config
    kind, name = ref
    if kind == "org":  # an organisation since removed from the config: nothing to take
        return cfg.orgs[name].wallet_usd if name in cfg.orgs else None
    if kind == "key":
        return cfg.wallets_usd.get(name, cfg.wallet_usd)
    return cfg.wallet_usd


def set_balance(state: SimState, ref: WalletRef, usd: float | None) -> None:
    cfg = state.config
    kind, name = ref
    if kind == "org":
        if name in cfg.orgs:
            cfg.orgs[name].wallet_usd = usd
    elif kind == "key":
        cfg.wallets_usd[name] = usd
    else:
        cfg.wallet_usd = usd


def debit(state: SimState, ref: WalletRef, usd: float) -> bool:
    """Take `usd` if the wallet holds it (concurrent calls cannot overdraw); False if not."""
    w = balance(state, ref)
    if w is None:
        return True
    if w + 1e-9 < usd:
        return False
    set_balance(state, ref, round(w - usd, 6))
    return True


def credit(state: SimState, ref: WalletRef, usd: float) -> None:
    w = balance(state, ref)
    if w is not None:
        set_balance(state, ref, round(w + usd, 6))
