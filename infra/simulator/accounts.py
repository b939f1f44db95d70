"""Who a key belongs to: its organisation (a group in `orgs`, or the key alone), its wallet and
its rules. An organisation has one wallet, one in-flight cap and one daily limit for all its
keys; a key outside `orgs` is an organisation of its own with the wallet it had before
(`wallets_usd[key]`, else the shared `wallet_usd`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from infra.simulator.config import KeyRule, SimConfig

WalletKind = Literal["org", "key", "shared"]
WalletRef = tuple[WalletKind, str]
_PLAIN = KeyRule()


@dataclass(frozen=True)
class Account:
    key: str
    org: str  # "org:<name>", or "key:<key>" for a key of its own
    org_name: str | None
    rule: KeyRule
    wallet: WalletRef
    inflight_limit: int
    org_daily_limit_usd: float | None


def org_name_of(cfg: SimConfig, key: str) -> str | None:
    return next((name for name, org in cfg.orgs.items() if key in org.keys), None)


def wallet_of(cfg: SimConfig, key: str) -> WalletRef:
    name = org_name_of(cfg, key)
    if name is not None:
        return ("org", name)
    return ("key", key) if key in cfg.wallets_usd else ("shared", "")


def of(cfg: SimConfig, key: str) -> Account:
    name = org_name_of(cfg, key)
    org = cfg.orgs[name] if name is not None else None
    return Account(
        key=key,
        org=f"org:{name}" if name is not None else f"key:{key}",
        org_name=name,
        rule=cfg.key_rules.get(key, _PLAIN),
        wallet=wallet_of(cfg, key),
        inflight_limit=org.inflight_limit if org else cfg.ideogram_inflight_limit,
        org_daily_limit_usd=org.daily_limit_usd if org else None,
    )


def org_keys(cfg: SimConfig, account: Account) -> list[str]:
    """Every key of `account`'s organisation (what its usage reports cover)."""
    if account.org_name is None:
        return [account.key]
    return list(cfg.orgs[account.org_name].keys)
