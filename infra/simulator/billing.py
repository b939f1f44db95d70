"""The price of a call: held from its wallet when it starts, within its key's and
organisation's limits, then billed on completion or given back on failure (Ideogram's
published rules: a request refused before it runs, or a failed generation, is not billed;
a completed one is, even when the safety check withheld the image).

Refusals, in this order: a scoped key's model allow-list or monthly cap (403 scope_exceeded),
a sub-account's monthly cap (402 budget_exceeded), the wallet (402 insufficient_funds /
insufficient_credits), the key's then the organisation's daily limit (402 daily_limit /
budget_exceeded)."""

from __future__ import annotations

import math

from infra.simulator import clock, wallet, wire
from infra.simulator.accounts import Account
from infra.simulator.protocol import IDEOGRAM, ApiError, reject
from infra.simulator.records import Bill, Hold
from infra.simulator.state import SimState

_EPS = 1e-9


def counters(state: SimState, account: Account, t: float) -> list[str]:
    """The spend counters a charge at `t` adds to: the key's and its organisation's, per
    billing day and per calendar month."""
    day, mon = f"d{clock.billing_day(state.config, t)}", f"m{clock.month(t)}"
    return [f"{scope}|{p}" for scope in (f"apikey:{account.key}", account.org) for p in (day, mon)]


def hold(state: SimState, account: Account, n: int, route: int, model: str) -> Hold:
    """Hold the price of `n` images, or refuse the call (`ApiError`)."""
    cfg = state.config
    usd = round(cfg.price_usd * n, 6)
    t = state.now()
    cs = counters(state, account, t)
    key_day, key_month, org_day, _ = cs
    rule = account.rule
    if rule.models is not None and model not in rule.models:
        raise ApiError(403, f"this key may not use {model}", kind=wire.SCOPE_EXCEEDED)
    if rule.spend_cap_usd is not None and state.spend[key_month] + usd > rule.spend_cap_usd + _EPS:
        if rule.kind == "sub_account":
            raise ApiError(402, "sub-account spend cap reached", kind=wire.BUDGET_EXCEEDED)
        raise ApiError(403, "scoped key spend limit reached", kind=wire.SCOPE_EXCEEDED)
    have = wallet.balance(state, account.wallet)
    if have is not None and have + _EPS < usd:
        raise ApiError(
            402,
            "insufficient credits: top up your wallet",
            extra=reject(route, wire.INSUFFICIENT_FUNDS),
        )
    for spent, limit in (
        (state.spend[key_day], rule.daily_limit_usd),
        (state.spend[org_day], account.org_daily_limit_usd),
    ):
        if limit is not None and spent + usd > limit + _EPS:
            raise daily_limit(state, route, t)
    wallet.debit(state, account.wallet, usd)
    held = Hold(account=account, n=n, usd=usd, counters=cs)
    for c in held.counters:
        state.spend[c] += usd
    return held


def daily_limit(state: SimState, route: int, t: float) -> ApiError:
    reset = clock.next_reset(state.config, t)
    return ApiError(
        402,
        "daily spend limit reached",
        kind=wire.BUDGET_EXCEEDED if route != IDEOGRAM else None,
        headers={
            wire.DAILY_RESET_HEADER: clock.iso(reset),
            "Retry-After": str(max(1, math.ceil(reset - t))),
        },
        extra=reject(route, wire.DAILY_LIMIT),
    )


def release(state: SimState, held: Hold | None) -> None:
    """Not billed (refused after the hold, failed, cancelled): the price goes back."""
    if held is None or held.done:
        return
    held.done = True
    wallet.credit(state, held.account.wallet, held.usd)
    for c in held.counters:
        state.spend[c] = round(state.spend[c] - held.usd, 6)


def charge(
    state: SimState,
    held: Hold,
    *,
    route: int,
    endpoint: str,
    tag: str = "",
    image_sha: str = "",
    idem: str = "",
) -> None:
    """Billed: the held price is spent and the bill gets its line."""
    held.done = True
    state.record_bill(
        Bill(
            t=state.now(),
            key=held.account.key,
            org_name=held.account.org_name,
            n=held.n,
            usd=held.usd,
            route="ideogram" if route == IDEOGRAM else "gateway",
            endpoint=endpoint,
            tag=tag,
            image_sha=image_sha,
            idem=idem,
        )
    )


def inject(state: SimState, bill: Bill, account: Account) -> None:
    """A bill the caller never saw (a test's reconcile case): spent from the wallet (which
    may go below zero) and counted on its day, as if it had run."""
    wallet.credit(state, account.wallet, -bill.usd)
    for c in counters(state, account, bill.t):
        state.spend[c] += bill.usd
    state.record_bill(bill)
