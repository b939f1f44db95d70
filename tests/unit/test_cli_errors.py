"""Errors and exit codes: every command, with a bad setting or an unreachable Redis, S3 or
gateway, prints one line naming the variable (or service) and exits non-zero within 5 s.

Most tests run `upscale` as a real process (a clean environment, a temp working directory)
against closed ports: no service is needed. The checks against the real local stack (S3, gateway,
not found, `.env`, dashboard and webhook errors) are `tests/integration/test_cli_errors.py`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra.stack import free_port
from producers.events import parse_notification
from tests.support import s3_event
from worker.settings import Settings, env_var

# "Fast" is against the ~30 s a retrying client would take: a command's own 3 s look at an
# unreachable service, plus its start-up. A loaded machine stretches start-up (10 s seen with
# both cores busy), so the bound is the machine's own start-up time now, measured, plus 5 s.
# Re-measured when a command takes longer: the load may have grown since.
_STARTUP: list[float] = []


def startup_s(cwd: Path, *, again: bool = False) -> float:
    if again or not _STARTUP:
        t0 = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "producers.cli", "--help"],
            env=clean_env(),
            cwd=cwd,
            capture_output=True,
            timeout=60,
        )
        _STARTUP[:] = [time.monotonic() - t0]
    return _STARTUP[0]


def assert_fast(r: Run) -> None:
    if r.elapsed >= 2 * startup_s(Path.cwd()) + 5:
        assert r.elapsed < 2 * startup_s(Path.cwd(), again=True) + 5, r


@dataclass
class Run:
    rc: int
    out: str
    err: str
    elapsed: float

    @property
    def err_lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.strip()]


def clean_env(**extra: str) -> dict[str, str]:
    """The machine's environment without our settings or AWS configuration."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("UPSCALE_", "AWS_")) and k != "REDIS_URL"
    }
    env.update(
        AWS_CONFIG_FILE="/nonexistent/aws-config",
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent/aws-credentials",
        AWS_EC2_METADATA_DISABLED="true",
        UPSCALE_LOG_LEVEL="WARNING",
    )
    env.update(extra)
    return env


def upscale(*args: str, env: dict[str, str], cwd: Path, timeout: float = 30) -> Run:
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", "producers.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Run(p.returncode, p.stdout, p.stderr, time.monotonic() - t0)


def assert_one_line(r: Run, *needles: str) -> str:
    assert r.rc != 0, r
    assert len(r.err_lines) == 1, r.err
    line = r.err_lines[0]
    assert "Traceback" not in r.err and "Traceback" not in r.out
    for n in needles:
        assert n in line, (n, line)
    assert_fast(r)
    return line


def unreachable_env(port: int, **extra: str) -> dict[str, str]:
    return clean_env(
        REDIS_URL=f"redis://127.0.0.1:{port}/0",
        UPSCALE_S3_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        UPSCALE_GATEWAY_URL=f"http://127.0.0.1:{port}",
        AWS_REGION="us-east-1",
        **extra,
    )


def every_command(port: int) -> list[list[str]]:
    return [
        ["status"],
        ["status", "uq-nope"],
        ["status", "--batch", "nope"],
        ["spend"],
        ["enqueue", "s3://photos/a.png"],
        ["backfill", "s3://photos/"],
        ["pause"],
        ["resume"],
        ["retry", "uq-nope"],
        ["sqs", "--queue-url", f"http://127.0.0.1:{port}/q", "--until-empty"],
        ["dashboard", "--host", "127.0.0.1", "--port", str(free_port())],
        ["webhook", "--host", "127.0.0.1", "--port", str(free_port())],
        ["health"],
        ["worker", "--wait-for-redis", "0"],
    ]


# -- Redis unreachable ------------------------------------------------------------------------
@pytest.mark.parametrize("index", range(14))
def test_unreachable_redis_one_line_fast(index: int, closed_port: int, tmp_path: Path) -> None:
    args = every_command(closed_port)[index]
    r = upscale(*args, env=unreachable_env(closed_port), cwd=tmp_path)
    line = assert_one_line(r, "REDIS_URL", f"127.0.0.1:{closed_port}")
    assert "Redis" in line
    if args[0] != "health":
        assert r.rc == 69 and "Connection refused" in line, line


def test_hung_redis_fails_within_seconds(silent_port: int, tmp_path: Path) -> None:
    r = upscale(
        "status", env=clean_env(REDIS_URL=f"redis://127.0.0.1:{silent_port}/0"), cwd=tmp_path
    )
    assert "no answer within" in assert_one_line(r, "REDIS_URL")
    assert r.rc == 69


def test_json_error_line_and_debug_traceback(closed_port: int, tmp_path: Path) -> None:
    env = unreachable_env(closed_port)
    r = upscale("pause", "--json", env=env, cwd=tmp_path)
    assert_one_line(r)
    body = json.loads(r.err_lines[0])
    assert body["variable"] == "REDIS_URL" and body["exit_code"] == 69 and body["error"]
    r = upscale("--debug", "status", env=env, cwd=tmp_path)
    assert r.rc != 0 and "Traceback" in r.err


def test_no_aws_region_for_sqs_names_aws_region(tmp_path: Path) -> None:
    r = upscale("sqs", "--queue-url", "http://127.0.0.1:1/q", env=clean_env(), cwd=tmp_path)
    assert_one_line(r, "AWS_REGION", "UPSCALE_S3_REGION")
    assert r.rc == 78


def test_version(tmp_path: Path) -> None:
    r = upscale("--version", env=clean_env(), cwd=tmp_path)
    assert r.rc == 0 and r.out.startswith("upscale, version ")


# -- bad settings -----------------------------------------------------------------------------
BAD = {
    "UPSCALE_RATE_RPM": ("abc", "valid integer"),
    "REDIS_URL": ("http://localhost:6379", "redis://"),
    "UPSCALE_LOG_LEVEL": ("bogus", "INFO"),
    "UPSCALE_RESULT_HOSTS": ("cdn.example.com", "JSON list, e.g. '[\"cdn.example.com\"]'"),
    "UPSCALE_MAX_JOBS": ("-3", "greater than or equal to 1"),
}
SERVICE_COMMANDS = ["health", "worker", "dashboard", "webhook", "backfill", "status"]


def _command(name: str) -> list[str]:
    return {
        "backfill": ["backfill", "s3://photos/"],
        "enqueue": ["enqueue", "s3://photos/a.png"],
        "retry": ["retry", "uq-nope"],
        "sqs": ["sqs", "--queue-url", "http://127.0.0.1:1/q"],
        "dashboard": ["dashboard", "--port", "1"],
        "webhook": ["webhook", "--port", "1"],
    }.get(name, [name])


@pytest.mark.parametrize(
    ("var", "command"),
    [(v, c) for v in BAD for c in SERVICE_COMMANDS]
    + [
        ("UPSCALE_RATE_RPM", c)
        for c in ("enqueue", "spend", "pause", "resume", "retry", "sqs", "run")
    ],
)
def test_bad_setting_names_the_variable(var: str, command: str, tmp_path: Path) -> None:
    value, why = BAD[var]
    r = upscale(*_command(command), env=clean_env(**{var: value}), cwd=tmp_path)
    line = assert_one_line(r, var, why, "fix or unset")
    assert r.rc == 78
    field = var.removeprefix("UPSCALE_").lower()
    assert f" {field}" not in line  # the variable, not the field


def test_bad_setting_in_dotenv_is_read_and_named(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("UPSCALE_MAX_INFLIGHT=0\n")
    r = upscale("status", env=clean_env(), cwd=tmp_path)
    assert_one_line(r, "UPSCALE_MAX_INFLIGHT (in .env)", "greater than or equal to 1")


def test_secret_values_are_not_echoed(tmp_path: Path) -> None:
    r = upscale(
        "status",
        env=clean_env(REDIS_URL="http://user:hunter2-secret@host:1", UPSCALE_RATE_RPM="x"),
        cwd=tmp_path,
    )
    line = assert_one_line(r, "REDIS_URL", "UPSCALE_RATE_RPM")
    assert "hunter2" not in line


# -- --json everywhere -----------------------------------------------------------------------
def test_every_command_takes_json(tmp_path: Path) -> None:
    from producers.cli import main

    missing = [
        name for name, cmd in main.commands.items() if "as_json" not in {p.name for p in cmd.params}
    ]
    assert missing == []


# -- .env and the AWS region ------------------------------------------------------------------
def test_region_comes_from_boto3_unless_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from producers.cli import _aws_from_dotenv
    from worker.contract import S3Object
    from worker.storage import Storage, make_s3_client

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AWS_REGION", "unset-after-the-test")  # so teardown removes it
    for k in list(os.environ):
        if k.startswith(("UPSCALE_", "AWS_")):
            monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("UPSCALE_S3_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("UPSCALE_S3_SECRET_ACCESS_KEY", "secret-example")
    assert Settings().s3.region is None
    (tmp_path / ".env").write_text("AWS_REGION=eu-west-2\n")
    _aws_from_dotenv()  # what the CLI does first: AWS_* from .env reach boto3 too
    assert os.environ["AWS_REGION"] == "eu-west-2"
    s = Settings()
    assert make_s3_client(s.s3).meta.region_name == "eu-west-2"
    url = Storage(s.s3).presign_get(S3Object.parse("s3://photos/a.png"))
    assert "eu-west-2" in url
    monkeypatch.setenv("UPSCALE_S3_REGION", "ap-south-1")
    assert make_s3_client(Settings().s3).meta.region_name == "ap-south-1"


def test_settings_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    assert env_var("rate_rpm") == "UPSCALE_RATE_RPM"
    assert env_var("redis_url") == "REDIS_URL"
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("UPSCALE_REDIS_URL", "redis://h:1/0")
    assert env_var("redis_url") == "UPSCALE_REDIS_URL"  # the alias actually set
    for url in ("http://gw:8080", "http://gw:8080/", "http://gw:8080/v1", "http://gw:8080/v1/"):
        assert Settings(gateway_url=url).upstream.gateway_url == "http://gw:8080"
    assert Settings(gateway_url="https://gw/api/v1").upstream.gateway_url == "https://gw/api"


# -- event batches ---------------------------------------------------------------------------
def test_parse_keeps_good_records_of_a_batch() -> None:
    good = json.loads(s3_event("photos", "a.png"))["Records"][0]
    parsed = parse_notification({"Records": [good, {"eventName": "x"}, good | {"s3": 1}]})
    assert len(parsed.created) == 1 and len(parsed.rejected) == 2


# -- logs -------------------------------------------------------------------------------------
def test_json_logs_keep_tracebacks_and_logger_names(tmp_path: Path) -> None:
    script = (
        "import logging, structlog\n"
        "from worker.logs import configure_logging\n"
        "configure_logging('json', 'INFO')\n"
        "try:\n    1 / 0\n"
        "except ZeroDivisionError:\n"
        "    logging.getLogger('arq.worker').exception('job failed')\n"
        "    structlog.get_logger('worker.job').exception('call failed')\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=30
    )
    lines = [json.loads(ln) for ln in p.stderr.splitlines()]
    assert [ln["logger"] for ln in lines] == ["arq.worker", "worker.job"]
    for ln in lines:
        assert "Traceback" in ln["exception"] and "ZeroDivisionError" in ln["exception"]
        assert "exc_info" not in ln


# -- group-level --json, and which AWS service / endpoint / region an error names ---------------
def test_json_before_the_command_name(closed_port: int, tmp_path: Path) -> None:
    r = upscale("--json", "status", env=unreachable_env(closed_port), cwd=tmp_path)
    assert_one_line(r, "REDIS_URL")
    assert json.loads(r.err_lines[0])["exit_code"] == 69


def test_sqs_errors_name_sqs_its_endpoint_origin_and_region(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError

    from producers.errors import AwsCallFailed, endpoint_of, explain

    for k in list(os.environ):
        if k.startswith(("UPSCALE_", "AWS_")):
            monkeypatch.delenv(k)
    monkeypatch.chdir(tmp_path)
    from worker.settings import get_settings

    get_settings.cache_clear()  # the endpoint's origin reads the settings
    config = tmp_path / "aws-config"
    config.write_text("[profile dev]\nendpoint_url = http://10.0.0.9:4566\nregion = ap-south-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "dev")
    ep = endpoint_of("sqs", used="http://10.0.0.9:4566", region="ap-south-1")
    assert ep.origin == "the AWS profile 'dev' (endpoint_url)" and ep.variable == "AWS_PROFILE"
    assert ep.region_origin == "the AWS profile"
    down = EndpointConnectionError(endpoint_url="http://10.0.0.9:4566/")
    p = explain(AwsCallFailed(ep, "https://x/q", down))
    assert "cannot reach SQS at http://10.0.0.9:4566 (from the AWS profile 'dev'" in p.message
    assert p.exit_code == 69 and p.variable == "AWS_PROFILE"
    # a queue URL naming another region than the client's: the fix is named
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    ep = endpoint_of("sqs", used="https://sqs.eu-west-1.amazonaws.com", region="eu-west-1")
    assert ep.origin.startswith("AWS's default") and ep.region_origin == "AWS_REGION"
    gone = ClientError(
        {"Error": {"Code": "AWS.SimpleQueueService.NonExistentQueue", "Message": "nope"}},
        "ReceiveMessage",
    )
    url = "https://sqs.us-east-1.amazonaws.com/123456789012/events"
    p = explain(AwsCallFailed(ep, url, gone))
    assert "region eu-west-1 from AWS_REGION" in p.message
    assert "names region us-east-1: set AWS_REGION=us-east-1" in p.message
    assert p.message.startswith("SQS ReceiveMessage") and p.variable == "AWS_REGION"
    # S3 through AWS_ENDPOINT_URL_S3: named, not the unset UPSCALE_S3_ENDPOINT_URL
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1")
    p = explain(EndpointConnectionError(endpoint_url="http://127.0.0.1:1/photos"))
    assert "cannot reach S3 at http://127.0.0.1:1 (from AWS_ENDPOINT_URL_S3" in p.message
    assert p.variable == "AWS_ENDPOINT_URL_S3"
