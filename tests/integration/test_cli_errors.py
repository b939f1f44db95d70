"""Errors and exit codes against the real local stack: `upscale` as a real process (a clean
environment, a temp working directory) with a wrong S3 or gateway setting, a missing job or batch,
a `.env` pointing at the stack; the dashboard's and webhook's 400s and 500s. The same checks
against closed ports and bad settings, which need no service, are `tests/unit/test_cli_errors.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import redis as redis_sync
import structlog
from pydantic import SecretStr
from redis.asyncio import Redis

from infra.stack import LocalStack
from producers.api import Producer
from tests.integration.conftest import Buckets, Sim
from tests.support import HTTP_TIMEOUT_S, TOKEN, s3_event, serving
from tests.unit.test_cli_errors import assert_one_line, clean_env, upscale
from worker.settings import Settings


@pytest.fixture
def fresh_redis(stack: LocalStack) -> None:
    r = redis_sync.Redis.from_url(stack.redis_url)
    r.flushdb()
    r.close()


# -- S3 ---------------------------------------------------------------------------------------
def _stack_env(stack: LocalStack, **extra: str) -> dict[str, str]:
    return clean_env(**{**stack.env(), **extra})


def test_backfill_without_s3_credentials(stack: LocalStack, tmp_path: Path) -> None:
    env = _stack_env(stack)
    del env["UPSCALE_S3_ACCESS_KEY_ID"], env["UPSCALE_S3_SECRET_ACCESS_KEY"]
    r = upscale("backfill", "s3://photos/", env=env, cwd=tmp_path)
    assert_one_line(r, "UPSCALE_S3_ACCESS_KEY_ID", "UPSCALE_S3_SECRET_ACCESS_KEY", "credentials")
    assert r.rc == 78


def test_backfill_missing_bucket(stack: LocalStack, tmp_path: Path) -> None:
    r = upscale("backfill", "s3://no-such-bucket-here/", env=_stack_env(stack), cwd=tmp_path)
    assert_one_line(r, "no-such-bucket-here", "does not exist")
    assert r.rc == 1


def test_backfill_unreachable_s3(stack: LocalStack, closed_port: int, tmp_path: Path) -> None:
    env = _stack_env(stack, UPSCALE_S3_ENDPOINT_URL=f"http://127.0.0.1:{closed_port}")
    r = upscale("backfill", "s3://photos/", env=env, cwd=tmp_path)
    assert_one_line(r, "UPSCALE_S3_ENDPOINT_URL", f"127.0.0.1:{closed_port}")
    assert r.rc == 69


def test_aws_endpoint_url_nowhere_names_it_for_s3(
    stack: LocalStack, closed_port: int, tmp_path: Path
) -> None:
    """S3 through `AWS_ENDPOINT_URL` (no UPSCALE_S3_ENDPOINT_URL): the line names the variable
    that really set the endpoint, not the unset one."""
    env = _stack_env(stack, AWS_ENDPOINT_URL=f"http://127.0.0.1:{closed_port}")
    del env["UPSCALE_S3_ENDPOINT_URL"]
    r = upscale("backfill", "s3://photos/", "--json", env=env, cwd=tmp_path)
    line = assert_one_line(r, "cannot reach S3", f"127.0.0.1:{closed_port}", "AWS_ENDPOINT_URL")
    assert "UPSCALE_S3_ENDPOINT_URL" not in line
    assert json.loads(line)["variable"] == "AWS_ENDPOINT_URL" and r.rc == 69


@pytest.mark.parametrize("how", ["flag", "AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL"])
def test_unreachable_sqs_names_sqs_and_where_its_endpoint_came_from(
    how: str, stack: LocalStack, closed_port: int, tmp_path: Path
) -> None:
    nowhere = f"http://127.0.0.1:{closed_port}"
    env = _stack_env(
        stack, AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y", AWS_REGION="eu-west-1"
    )
    args = ["sqs", "--queue-url", f"{nowhere}/123/q", "--until-empty", "--wait", "0"]
    if how == "flag":
        args += ["--endpoint-url", nowhere]
    else:
        env[how] = nowhere
    r = upscale(*args, env=env, cwd=tmp_path)
    want = "--endpoint-url" if how == "flag" else how
    line = assert_one_line(r, "cannot reach SQS", f"127.0.0.1:{closed_port}", f"from {want}")
    assert "S3" not in line and r.rc == 69


# -- upscale health: gateway URL, key, model, never billed ---------------------------------------
def test_health_passes_and_accepts_a_v1_base_url(
    stack: LocalStack, sim: Sim, tmp_path: Path
) -> None:
    for url in (stack.simulator_url, stack.simulator_url + "/v1", stack.simulator_url + "/v1/"):
        r = upscale(
            "health", "--json", env=_stack_env(stack, UPSCALE_GATEWAY_URL=url), cwd=tmp_path
        )
        assert r.rc == 0, r
        assert all(c["ok"] for c in json.loads(r.out).values())
    assert sim.stats()["billed_calls"] == 0


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ({"UPSCALE_GATEWAY_URL": "closed"}, ["UPSCALE_GATEWAY_URL", "cannot reach the gateway"]),
        ({"UPSCALE_GATEWAY_URL": "silent"}, ["UPSCALE_GATEWAY_URL", "no answer in time"]),
        ({"UPSCALE_GATEWAY_URL": "sim/api"}, ["UPSCALE_GATEWAY_URL", "404"]),
        ({"UPSCALE_API_KEY": "wrong-key"}, ["UPSCALE_API_KEY", "key invalid"]),
        ({"UPSCALE_MODEL": "ideogram/no-such-model"}, ["UPSCALE_MODEL", "not offered"]),
    ],
)
def test_health_fails_for_a_wrong_gateway(
    override: dict[str, str],
    needles: list[str],
    stack: LocalStack,
    sim: Sim,
    closed_port: int,
    silent_port: int,
    tmp_path: Path,
) -> None:
    url = override.get("UPSCALE_GATEWAY_URL", "")
    urls = {
        "closed": f"http://127.0.0.1:{closed_port}",
        "silent": f"http://127.0.0.1:{silent_port}",
        "sim/api": stack.simulator_url + "/api",
    }
    env = _stack_env(stack, **{**override, **({"UPSCALE_GATEWAY_URL": urls[url]} if url else {})})
    r = upscale("health", env=env, cwd=tmp_path)
    assert r.rc == 1
    assert_one_line(r, "unhealthy", "upstream:", *needles)
    assert "FAIL upstream" in r.out and "ok   redis" in r.out
    assert sim.stats()["billed_calls"] == 0


def test_health_without_s3_credentials(stack: LocalStack, tmp_path: Path) -> None:
    env = _stack_env(stack)
    del env["UPSCALE_S3_ACCESS_KEY_ID"], env["UPSCALE_S3_SECRET_ACCESS_KEY"]
    r = upscale("health", env=env, cwd=tmp_path)
    assert_one_line(r, "s3:", "UPSCALE_S3_ACCESS_KEY_ID")


# -- not found, already paused, --json everywhere -----------------------------------------------
def test_not_found_exit_non_zero_and_pause_twice(
    stack: LocalStack, fresh_redis: None, tmp_path: Path
) -> None:
    env = _stack_env(stack)
    r = upscale("retry", "uq-nope", env=env, cwd=tmp_path)
    assert_one_line(r, "no such job: uq-nope")
    assert r.rc == 1
    r = upscale("retry", "uq-nope", "--json", env=env, cwd=tmp_path)
    assert r.rc == 1 and json.loads(r.out) == [{"job_id": "uq-nope", "outcome": None}]
    assert json.loads(r.err)["error"] == "no such job: uq-nope"
    r = upscale("status", "--batch", "nope", env=env, cwd=tmp_path)
    assert_one_line(r, "no such batch: nope")
    r = upscale("status", "uq-nope", "--json", env=env, cwd=tmp_path)
    assert r.rc == 1 and json.loads(r.err)["error"] == "no such job: uq-nope"

    first = upscale("pause", "--json", env=env, cwd=tmp_path)
    assert first.rc == 0 and json.loads(first.out)["already"] is False
    again = upscale("pause", env=env, cwd=tmp_path)
    assert again.rc == 0 and "already paused" in again.out
    r = upscale("resume", "--json", env=env, cwd=tmp_path)
    assert r.rc == 0 and json.loads(r.out)["resumed"] is True
    r = upscale("resume", "--json", env=env, cwd=tmp_path)
    assert json.loads(r.out)["resumed"] is False


# -- .env and the AWS region ------------------------------------------------------------------
def test_dotenv_is_honoured(stack: LocalStack, fresh_redis: None, tmp_path: Path) -> None:
    lines = [f"{k}='{v}'" for k, v in stack.env().items()]
    (tmp_path / ".env").write_text("\n".join(lines) + "\n")
    r = upscale("status", "--json", env=clean_env(), cwd=tmp_path)
    assert r.rc == 0, r
    assert "queue_depth" in json.loads(r.out)


# -- dashboard, webhook, event batches ----------------------------------------------------------
async def test_dashboard_bad_limit_is_400_and_errors_keep_the_traceback(
    producer: Producer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from producers.dashboard import create_app

    async with (
        serving(create_app(producer)) as url,
        httpx.AsyncClient(base_url=url, timeout=HTTP_TIMEOUT_S) as c,
    ):
        for bad in ("abc", "0", "-1", "100000"):
            r = await c.get("/api/failures", params={"limit": bad})
            assert r.status_code == 400 and "limit" in r.json()["error"], bad
        assert (await c.get("/api/failures", params={"limit": "5"})).status_code == 200

        async def broken() -> None:
            raise RuntimeError("kaboom")

        monkeypatch.setattr(producer, "fleet_status", broken)
        with structlog.testing.capture_logs() as logs:
            r = await c.get("/api/status")
        assert r.status_code == 500 and r.json() == {"error": "internal error (logged)"}
        (entry,) = [e for e in logs if e["event"] == "request failed"]
        assert entry["exc_info"] is True and entry["path"] == "/api/status"


async def test_webhook_type_errors_are_400_and_good_records_survive_bad_ones(
    redis: Redis, settings: Settings, buckets: Buckets
) -> None:
    from producers.webhook import create_app

    p = Producer(redis, settings.model_copy(update={"api_token": SecretStr(TOKEN)}))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        serving(create_app(p)) as url,
        httpx.AsyncClient(base_url=url, headers=headers, timeout=HTTP_TIMEOUT_S) as c,
    ):
        for body in (
            {"source": 123},
            {"source": None},
            {"jobs": [{"source": f"s3://{buckets.src}/a.png"}, {"source": ["x"]}]},
            {"source": f"s3://{buckets.src}/a.png", "dest": 5},
        ):
            r = await c.post("/jobs", json=body)
            assert r.status_code == 400 and "must be a string" in r.json()["error"], body
        good = json.loads(s3_event(buckets.src, "good.png"))["Records"][0]
        batch = {"Records": [good, {"eventName": "ObjectCreated:Put"}, "junk"]}
        r = await c.post("/events", json=batch)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["enqueued"] == 1 and len(out["rejected"]) == 2, out
        assert "Records[1]" in out["rejected"][0]
        r = await c.post("/events", json={"Records": ["junk"]})
        assert r.status_code == 400  # nothing usable at all: still a malformed notification


def test_pause_and_resume_one_key_of_the_pool(
    stack: LocalStack, fresh_redis: None, tmp_path: Path
) -> None:
    pool = '[{"name": "key-a", "api_key_env": "K_A"}, {"name": "key-b", "api_key_env": "K_B"}]'
    env = _stack_env(stack, UPSCALE_UPSTREAMS=pool, K_A="a", K_B="b")
    r = upscale("pause", "--upstream", "key-c", env=env, cwd=tmp_path)
    assert_one_line(r, "no upstream named 'key-c'")
    assert r.rc == 2
    r = upscale("pause", "--upstream", "key-a", "--json", env=env, cwd=tmp_path)
    assert r.rc == 0 and json.loads(r.out) == {"paused": True, "upstream": "key-a"}
    r = upscale("status", "--json", env=env, cwd=tmp_path)
    keys = {u["name"]: u["state"] for u in json.loads(r.out)["upstreams"]}
    assert keys == {"key-a": "paused", "key-b": "open"} and json.loads(r.out)["pause"] is None
    r = upscale("resume", "--upstream", "key-a", env=env, cwd=tmp_path)
    assert r.rc == 0 and "resumed" in r.out
