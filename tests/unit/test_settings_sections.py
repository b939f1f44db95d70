"""The settings by concern: each declared once, in its section; one flat parser of the
environment built from those declarations (errors name the variable), read as frozen sections
(`settings.redis`, `.s3`, `.upstream`, `.flow`, `.jobs`, `.callbacks`, `.producers`, `.ops`);
pool members hold their own upstream and per-key flow sections."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

import worker.app
from producers.errors import explain
from worker.keys import BULK_QUEUE_NAME, QUEUE_NAME
from worker.settings import (
    CallbackSettings,
    FlowSettings,
    JobsSettings,
    OpsSettings,
    ProducerSettings,
    RedisSettings,
    S3Settings,
    Settings,
    UpstreamFlowSettings,
    UpstreamSettings,
    get_settings,
)
from worker.settings.fields import BY_NAME, SETTINGS, section_fields
from worker.settings.sections import SECTIONS
from worker.upstream.pool import load_pool

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No UPSCALE_* / REDIS_URL from the machine and no `.env`: only what a test sets."""
    monkeypatch.chdir(tmp_path)
    for k in list(os.environ):
        if k.startswith("UPSCALE_") or k == "REDIS_URL":
            monkeypatch.delenv(k)
    yield


def test_every_setting_is_declared_once_in_its_section() -> None:
    """The flat fields of `Settings` are the sections' declarations (plus the pool), each
    read into exactly one section field, under one flat name and its own variables."""
    assert set(Settings.model_fields) == set(BY_NAME) | {"upstreams"}
    assert len(BY_NAME) == len(SETTINGS), "two declarations share a flat name"
    variables = [v.lower() for s in SETTINGS for v in s.env_names]
    assert len(variables) == len(set(variables)), "two settings share a variable"
    s, derived = Settings(), set()
    for name, cls in SECTIONS.items():
        section = getattr(s, name)
        assert type(section) is cls  # `settings.<name>` is the section `SECTIONS` lists
        declared = {x.field for x in SETTINGS if x.section == name}
        own = {f for f, info in section_fields(cls).items() if info.is_required()}
        assert set(section_fields(cls)) == declared | own
        derived |= {(name, f) for f in own}
        for x in SETTINGS:
            if x.section == name:
                assert x.info.description, f"{x.env_names[0]} has no description (the docs)"
                assert Settings.model_fields[x.name].description == x.info.description
    assert derived == {("flow", "inflight_cap")}  # `Settings.flow` computes it


@pytest.mark.parametrize(
    ("var", "value", "section", "field", "expected"),
    [
        # the variables that do not follow UPSCALE_ + prefix + field, and an old spelling
        ("REDIS_URL", "redis://a:1/0", "redis", "url", "redis://a:1/0"),
        ("UPSCALE_REDIS_URL", "redis://b:1/0", "redis", "url", "redis://b:1/0"),
        ("UPSCALE_PRESIGN_TTL_S", "60", "s3", "presign_ttl_s", 60),
        ("UPSCALE_UPLOAD_PART_BYTES", "6000000", "s3", "upload_part_bytes", 6_000_000),
        ("UPSCALE_LEDGER_RETENTION", "7d", "jobs", "ledger_retention_s", 7 * 86_400),
        ("UPSCALE_LEDGER_RETENTION_S", "90", "jobs", "ledger_retention_s", 90),
        ("UPSCALE_CALLBACK_BACKOFF_S", "5", "callbacks", "backoff_s", 5.0),
        ("UPSCALE_S3_ADDRESSING_STYLE", "path", "s3", "addressing_style", "path"),
        ("upscale_max_jobs", "3", "jobs", "max_jobs", 3),  # any case, as before
    ],
)
def test_each_variable_reaches_its_section_field(
    var: str,
    value: str,
    section: str,
    field: str,
    expected: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(var, value)
    assert getattr(getattr(Settings(), section), field) == expected


def test_dotenv_is_read_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("UPSCALE_MAX_JOBS=3\nUPSCALE_RATE_RPM=120\n")
    monkeypatch.setenv("UPSCALE_RATE_RPM", "60")
    s = Settings()
    assert (s.jobs.max_jobs, s.flow.rate_rpm) == (3, 60)


def test_sections_hold_the_values_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "REDIS_URL": "redis://r:6380/2",
        "UPSCALE_REDIS_SENTINELS": '["s1:26379", "s2:26379"]',
        "UPSCALE_S3_ENDPOINT_URL": "http://s3.local:8333",
        "UPSCALE_S3_REGION": "eu-west-2",
        "UPSCALE_PRESIGN_TTL_S": "60",
        "UPSCALE_ROUTE": "ideogram",
        "UPSCALE_API_KEY": "k-123456",
        "UPSCALE_RESULT_HOSTS": '["CDN.example.com"]',
        "UPSCALE_RATE_RPM": "auto",
        "UPSCALE_BUDGET_DAILY_USD": "12.5",
        "UPSCALE_MAX_JOBS": "4",
        "UPSCALE_BULK_MAX_JOBS": "2",
        "UPSCALE_MAX_SOURCE_BYTES": "1000",
        "UPSCALE_CALLBACK_HOSTS": '[".example.com"]',
        "UPSCALE_CALLBACK_MAX_TRIES": "3",
        "UPSCALE_API_TOKEN": "tok-123456",
        "UPSCALE_GUARD_PREFIXES": '["s3://out/x/"]',
        "UPSCALE_METRICS_PORT": "9100",
        "UPSCALE_LOG_LEVEL": "debug",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = Settings()
    assert s.redis == RedisSettings(
        url="redis://r:6380/2",
        sentinels=("s1:26379", "s2:26379"),
        sentinel_master="mymaster",
        wait_replicas=None,
        wait_timeout_ms=1000,
    )
    assert isinstance(s.s3, S3Settings)
    assert (s.s3.endpoint_url, s.s3.region, s.s3.presign_ttl_s) == (
        "http://s3.local:8333",
        "eu-west-2",
        60,
    )
    up = s.upstream
    assert isinstance(up, UpstreamSettings)
    assert (up.route, up.api_key_value, up.base_url) == (
        "ideogram",
        "k-123456",
        "https://api.ideogram.ai/upscale",
    )
    assert up.allowed_result_hosts() == {"cdn.example.com"}
    flow = s.flow
    assert isinstance(flow, FlowSettings)
    assert (flow.rate_rpm, flow.rpm_ceiling, flow.inflight_cap, flow.budget_daily_usd) == (
        "auto",
        0,
        10,  # the Ideogram route's default
        12.5,
    )
    jobs = s.jobs
    assert isinstance(jobs, JobsSettings)
    assert (jobs.lane_max_jobs("live"), jobs.lane_max_jobs("bulk"), jobs.max_source_bytes) == (
        4,
        2,
        1000,
    )
    assert s.callbacks == CallbackSettings(
        secret=SecretStr(""),
        hosts=(".example.com",),
        allow_http=False,
        max_tries=3,
        backoff_s=2.0,
    )
    assert s.producers == ProducerSettings(
        api_token=SecretStr("tok-123456"),
        eventbridge_keys_encoded=False,
        guard_prefixes=("s3://out/x/",),
    )
    assert s.ops == OpsSettings(
        log_format="auto", log_level="DEBUG", metrics_port=9100, health_bucket=None
    )
    assert set(s.secrets()) == {"k-123456", "tok-123456"}


def test_derived_values_belong_to_their_section() -> None:
    assert Settings().flow.inflight_cap == 64  # the gateway's default
    assert Settings(route="ideogram", max_inflight=3).flow.inflight_cap == 3
    assert Settings(rate_rpm=120).flow.rpm_ceiling == 120
    assert Settings().upstream.allowed_result_hosts() == {"127.0.0.1"}  # the gateway's host
    assert Settings().jobs.lane_max_jobs("bulk") == 16  # unset: max_jobs


def test_sections_are_frozen() -> None:
    s = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.redis.url = "redis://elsewhere"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.flow.rate_rpm = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("REDIS_URL", "http://r:1"),
        ("UPSCALE_S3_ENDPOINT_URL", "ftp://s3"),
        ("UPSCALE_IMAGE_MODE", "pigeon"),
        ("UPSCALE_RATE_RPM", "abc"),
        ("UPSCALE_OUTPUT_QUALITY", "0"),
        ("UPSCALE_CALLBACK_HOSTS", "a.example.com"),
        ("UPSCALE_GUARD_PREFIXES", "s3://out/"),
        ("UPSCALE_METRICS_PORT", "x"),
    ],
)
def test_a_bad_value_names_its_variable(
    var: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError) as info:
        _ = Settings().redis  # no section is read without the whole environment parsed
    problem = explain(info.value)
    assert problem.variable == var
    assert problem.message.startswith(f"{var}=") and "is invalid" in problem.message


POOL = [
    {"name": "gw", "url": "http://gw2:9000/v1", "rpm": 60, "price_usd": 0.02},
    {"name": "byok", "route": "ideogram", "api_key_env": "IDEOGRAM_KEY", "max_inflight": 2},
]


def test_a_pool_member_holds_its_own_sections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSCALE_UPSTREAMS", json.dumps(POOL))
    monkeypatch.setenv("IDEOGRAM_KEY", "ig-secret")
    s = Settings(api_key="gw-secret", model="m1", read_timeout_s=7, rate_burst_factor=2)
    gw, byok = load_pool(s)
    assert isinstance(gw.upstream, UpstreamSettings) and type(gw.flow) is UpstreamFlowSettings
    assert (gw.upstream.route, gw.upstream.gateway_url, gw.upstream.api_key_value) == (
        "gateway",
        "http://gw2:9000",  # the OpenAI SDK's spelling, `/v1`, is accepted
        "gw-secret",
    )
    assert (gw.upstream.price_usd, gw.flow.rpm_ceiling, gw.flow.inflight_cap) == (0.02, 60, 64)
    assert (byok.upstream.route, byok.upstream.api_key_value, byok.upstream.price_usd) == (
        "ideogram",
        "ig-secret",
        0.06,
    )
    assert (byok.flow.rpm_ceiling, byok.flow.inflight_cap) == (600, 2)
    assert byok.upstream.allowed_result_hosts() == {"api.ideogram.ai"}
    for m in (gw, byok):  # what an entry leaves out comes from the flat settings
        assert (m.upstream.model, m.upstream.read_timeout_s) == ("m1", 7)
        assert m.flow.rate_burst_factor == 2


def test_the_default_member_is_the_flat_settings_sections() -> None:
    s = Settings(rate_rpm=90, max_inflight=5, price_usd=0.1)
    (m,) = load_pool(s)
    assert (m.name, m.upstream, m.flow) == ("default", s.upstream, s.flow.for_upstream())
    assert (m.flow.rpm_ceiling, m.flow.inflight_cap, m.price_micros) == (90, 5, 100_000)


def test_importing_the_arq_entry_reads_no_settings(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UPSCALE_")}
    code = (
        "import worker.app\n"
        "try:\n"
        "    worker.app.WorkerSettings\n"
        "except Exception as e:\n"
        "    print(type(e).__name__)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "UPSCALE_RATE_RPM": "abc", "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # the import succeeds; only asking for WorkerSettings parses the (bad) environment
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ValidationError"


def test_worker_settings_are_built_from_the_settings_when_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("UPSCALE_MAX_JOBS", "3")
    monkeypatch.setenv("UPSCALE_JOB_TIMEOUT_S", "42")
    get_settings.cache_clear()
    worker.app.arq_settings.cache_clear()
    try:
        # what arq reads: the class's own attributes (`arq.worker.get_kwargs`)
        live = dict(vars(worker.app.WorkerSettings))
        bulk = dict(vars(worker.app.BulkWorkerSettings))
    finally:
        get_settings.cache_clear()
        worker.app.arq_settings.cache_clear()
    assert (live["queue_name"], live["max_jobs"], live["job_timeout"]) == (QUEUE_NAME, 3, 42)
    assert bulk["queue_name"] == BULK_QUEUE_NAME and bulk["job_completion_wait"] == 42
    assert live["redis_settings"].host == "127.0.0.1" and live["on_startup"] is worker.app.startup
    with pytest.raises(AttributeError):
        _ = worker.app.NoSuchSettings


def test_sections_are_built_once_and_a_copy_has_its_own() -> None:
    s = Settings()
    assert s.jobs is s.jobs and s.flow is s.flow  # read on every step of every job
    copy = s.model_copy(update={"max_attempts": 9, "max_inflight": 3})
    assert (copy.jobs.max_attempts, copy.flow.inflight_cap) == (9, 3)
    assert s.jobs.max_attempts != 9 and s.flow.inflight_cap != 3
