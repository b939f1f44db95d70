"""`UPSCALE_UPSTREAMS`: a pool of keys from JSON or a file; what an entry leaves out is inherited."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from worker.keys import PREFIX
from worker.settings import Settings
from worker.upstream.pool import PoolConfigError, load_pool

POOL = [
    {"name": "gw", "api_key_env": "GW_KEY", "rpm": 60, "budget_usd": 5},
    {"name": "byok", "route": "ideogram", "api_key_env": "IDEOGRAM_KEY", "price_usd": 0.05},
]


def test_no_pool_is_one_key_named_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UPSCALE_UPSTREAMS", raising=False)
    (m,) = load_pool(Settings(api_key="k", rate_rpm=120))
    assert (m.name, m.flow.rpm_ceiling, m.flow.inflight_cap, m.budget_micros) == (
        "default",
        120,
        64,
        -1,
    )


def test_entries_inherit_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSCALE_UPSTREAMS", json.dumps(POOL))
    monkeypatch.setenv("GW_KEY", "gw-secret")
    monkeypatch.setenv("IDEOGRAM_KEY", "ig-secret")
    gw, byok = load_pool(Settings(rate_rpm=600, price_usd=0.06))
    assert (gw.upstream.route, gw.flow.rpm_ceiling, gw.flow.inflight_cap) == (
        "gateway",
        60,
        64,
    )
    assert gw.upstream.api_key_value == "gw-secret" and gw.budget_micros == 5_000_000
    assert gw.price_micros == 60_000
    # another route: that route's in-flight default (10) and its own URL setting
    assert (byok.upstream.route, byok.flow.inflight_cap, byok.price_micros) == (
        "ideogram",
        10,
        50_000,
    )
    assert byok.upstream.api_key_value == "ig-secret" and byok.flow.rpm_ceiling == 600
    assert (
        gw.keys.inflight == PREFIX + "up:gw:inflight"
        and byok.keys.rate_bulk == PREFIX + "up:byok:rate-bulk"
    )


def test_a_file_holds_the_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "pool.json"
    f.write_text(json.dumps(POOL[:1]))
    monkeypatch.setenv("UPSCALE_UPSTREAMS", str(f))
    assert [u.name for u in Settings().upstreams] == ["gw"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("/nonexistent/pool.json", "expected a JSON list or a readable file"),
        ('[{"name": "a"}, {"name": "a"}]', "upstream names must be unique: a appears twice"),
        ('[{"name": "Has Space"}]', "String should match pattern"),
        ('[{"name": "a", "rpm": 0}]', "greater than or equal to 1"),
        ('[{"name": "a", "url": "ftp://x"}]', "expected an http:// or https:// URL"),
        ('[{"name": "a", "key": "literal"}]', "Extra inputs are not permitted"),
    ],
)
def test_bad_pools_say_what_to_fix(
    value: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UPSCALE_UPSTREAMS", value)
    with pytest.raises(ValidationError, match=message):
        Settings()


def test_a_missing_key_variable_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSCALE_UPSTREAMS", json.dumps(POOL[:1]))
    monkeypatch.delenv("GW_KEY", raising=False)
    monkeypatch.chdir("/")  # no .env to fall back on
    with pytest.raises(PoolConfigError, match="takes its key from GW_KEY, which is not set"):
        load_pool(Settings())
