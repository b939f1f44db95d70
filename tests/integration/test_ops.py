"""Operations: SIGTERM drains a running paid call; secrets never leak; --processes N."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from infra.stack import LocalStack
from producers.api import Producer
from tests.integration.conftest import FAST, Buckets, Sim, WorkerProcs, put, wait_state
from tests.support import png
from worker.contract import Keys


async def _until_inflight(sim: Sim) -> None:
    async with asyncio.timeout(30):
        while sim.stats()["inflight"] == 0:
            await asyncio.sleep(0.05)


async def test_sigterm_drains_the_running_call_then_exits(
    stack: LocalStack, sim: Sim, producer: Producer, buckets: Buckets, workers: WorkerProcs
) -> None:
    sim.configure(latency_ms=[3000, 3000])
    put(stack, buckets.src, "a.png", png(20, 20))
    job_id = (await producer.enqueue(f"s3://{buckets.src}/a.png")).job_id
    (proc,) = workers.start(1, job_timeout_s=20, **FAST)
    await _until_inflight(sim)
    proc.send_signal(signal.SIGTERM)  # a rollout, mid-call
    rc = await asyncio.to_thread(proc.wait, 25)  # within the grace period (> job timeout)
    assert rc == 0
    rec = await producer.status(job_id)
    assert rec is not None and rec.state == "succeeded", rec  # the paid result was stored
    assert rec.billed_calls == 1 and sim.stats()["billed_calls"] == 1


async def test_secrets_never_reach_logs_ledger_or_metadata(
    stack: LocalStack, sim: Sim, producer: Producer, buckets: Buckets, tmp_path: object
) -> None:
    key = "sk-live-RECOGNISABLE-0123456789abcdef"
    sim.configure(api_keys={key: 6000}, fail_next=[500])  # one failure: errors get recorded too
    put(stack, buckets.src, "a.png", png(20, 20))
    put(stack, buckets.src, "broken.png", b"\x89PNG not really")
    ok = (await producer.enqueue(f"s3://{buckets.src}/a.png")).job_id
    bad = (await producer.enqueue(f"s3://{buckets.src}/broken.png")).job_id
    log_path = os.path.join(str(tmp_path), "worker.log")
    env = {
        **os.environ,
        **stack.env(),
        "UPSCALE_API_KEY": key,
        "UPSCALE_LOG_FORMAT": "json",
        "UPSCALE_LOG_LEVEL": "DEBUG",
        "UPSCALE_BACKOFF_BASE_S": "0.05",
        "UPSCALE_BACKOFF_MAX_S": "0.1",
    }

    def run_worker() -> int:
        with open(log_path, "wb") as out:
            argv = [sys.executable, "-m", "producers.cli", "worker", "--burst"]
            return subprocess.run(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=60
            ).returncode

    assert await asyncio.to_thread(run_worker) == 0
    assert (await wait_state(producer, ok, "succeeded")).calls == 2
    assert (await wait_state(producer, bad, "failed")).error
    logs = await asyncio.to_thread(Path(log_path).read_text, encoding="utf-8")
    assert '"job_id"' in logs and "upstream call failed" in logs  # it did log, as JSON
    ledger = repr([await producer.redis.hgetall(Keys.job(j)) for j in (ok, bad)])  # type: ignore[misc]  # redis-py's async stubs
    s3 = stack.s3_client()
    meta = json.dumps(s3.head_object(Bucket=buckets.dest, Key="a@2x.png")["Metadata"])
    for where, text in (("logs", logs), ("ledger", ledger), ("S3 metadata", meta)):
        assert key not in text, f"API key leaked into {where}"
        assert "RECOGNISABLE" not in text, f"API key fragment leaked into {where}"
        assert "X-Amz-Signature=" not in text.replace("X-Amz-Signature=[REDACTED]", ""), where
        assert stack.env()["UPSCALE_S3_SECRET_ACCESS_KEY"] not in text, where


def test_processes_option_runs_and_drains_n_workers(stack_env: None) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "producers.cli", "worker", "--processes", "2", "--burst"],
        env={**os.environ, "UPSCALE_LOG_LEVEL": "WARNING"},
    )
    assert proc.wait(60) == 0  # both children ran (burst: empty queue) and exited cleanly


def test_webhook_and_dashboard_exit_cleanly_on_sigterm(stack_env: None) -> None:
    import httpx

    from infra.stack import free_port

    for command in ("webhook", "dashboard"):
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "producers.cli", command, "--host", "127.0.0.1", "--port", str(port)],
            env={**os.environ, "UPSCALE_API_TOKEN": "t", "UPSCALE_LOG_LEVEL": "WARNING"},
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60  # start-up on a loaded machine takes seconds
            while time.monotonic() < deadline:
                try:
                    httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)  # a subprocess starting: nothing to await
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, command
        finally:
            if proc.poll() is None:
                proc.kill()
