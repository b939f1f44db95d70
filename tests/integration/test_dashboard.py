"""The status page and its API, the fleet /metrics, worker health, and `upscale health`."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator

import httpx
import pytest
from click.testing import CliRunner
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from infra.stack import LocalStack
from producers.api import Producer
from producers.cli import main as cli
from producers.dashboard import create_app
from tests.integration.conftest import Buckets, Sim, drain, put, wait_state
from tests.support import HTTP_TIMEOUT_S, png, serving
from worker.settings import Settings

TOKEN = "dash-token-42"


@pytest.fixture
async def dash(producer: Producer, settings: Settings) -> AsyncIterator[str]:
    p = Producer(producer.redis, settings.model_copy(update={"api_token": SecretStr(TOKEN)}))
    async with serving(create_app(p)) as url:
        yield url


async def _paused_and_failed(
    stack: LocalStack, sim: Sim, settings: Settings, producer: Producer, buckets: Buckets
) -> tuple[str, str]:
    put(stack, buckets.src, "bad.png", b"definitely not an image")
    bad = (await producer.enqueue(f"s3://{buckets.src}/bad.png", batch="dash")).job_id
    sim.wallet(set=0)
    put(stack, buckets.src, "ok.png", png(10, 10))
    ok = (await producer.enqueue(f"s3://{buckets.src}/ok.png", batch="dash")).job_id
    await drain(settings, timeout=20, until_paused=True)
    return ok, bad


async def test_dashboard_api_pause_resume_failures_retry_and_metrics(
    stack: LocalStack, sim: Sim, settings: Settings, producer: Producer, buckets: Buckets, dash: str
) -> None:
    ok, bad = await _paused_and_failed(stack, sim, settings, producer, buckets)
    async with httpx.AsyncClient(base_url=dash, timeout=HTTP_TIMEOUT_S) as anon:
        # a token is set: reads need it too (job ids, keys, errors, spend); probes stay open
        for path in ("/api/status", "/api/failures", "/api/batches"):
            r = await anon.get(path)
            assert r.status_code == 401 and "token" in r.json()["error"], path
        page = await anon.get("/")
        assert page.status_code == 401 and "?token=" in page.text
        assert (await anon.get("/healthz")).status_code == 200
        assert (await anon.get("/metrics")).status_code == 200
        assert (await anon.get("/api/status", headers={"Authorization": "Bearer no"})).is_error
    async with httpx.AsyncClient(base_url=dash, timeout=HTTP_TIMEOUT_S) as c:
        page = await c.get(f"/?token={TOKEN}")  # as the page is opened: it sets the cookie
        assert page.status_code == 200 and "upscale-queue" in page.text
        cookie = page.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        st = (await c.get("/api/status")).json()  # the cookie carries the token
        assert st["pause"]["reason"] == "credits" and st["states"]["failed"] == 1
        assert len(st["finished_per_minute"]) == 60 and sum(st["finished_per_minute"]) >= 1
        assert any(v is not None for v in st["depth_per_minute"])  # sampled by the workers
        (f,) = (await c.get("/api/failures")).json()
        assert f["job_id"] == bad and "not an image" in f["error"]
        (b,) = (await c.get("/api/batches")).json()
        assert b["batch"] == "dash" and b["total"] == 2
        text = (await c.get("/metrics")).text
        assert 'upscale_paused{reason="credits"} 1.0' in text
        assert 'upscale_queue_depth{lane="live"} 1.0' in text
        assert 'upscale_jobs{state="failed"} 1.0' in text
        # writes need the header, never the cookie alone
        assert (await c.post("/api/resume")).status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        sim.wallet(add=5)
        assert (await c.post("/api/resume", headers=auth)).json() == {"resumed": True}
        r = await c.post(f"/api/retry/{bad}", headers=auth)
        assert r.json()["outcome"] == "requeued"
    await drain(settings)
    assert (await wait_state(producer, ok, "succeeded")).state == "succeeded"


async def test_worker_serves_metrics_and_readiness(
    stack: LocalStack, sim: Sim, settings: Settings, producer: Producer, buckets: Buckets
) -> None:
    from infra.stack import free_port
    from worker.app import build_worker

    port = free_port()
    put(stack, buckets.src, "a.png", png(10, 10))
    job_id = (await producer.enqueue(f"s3://{buckets.src}/a.png")).job_id
    workers = build_worker(settings.model_copy(update={"metrics_port": port}), burst=False,
                           handle_signals=False, poll_delay=0.05)  # fmt: skip

    def value(text: str, name: str, **labels: str) -> float:
        for fam in text_string_to_metric_families(text):
            for sample in fam.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return 0.0

    # The registry is per process (pytest's here): compare with what it held before.
    before = value(generate_latest().decode(), "upscale_jobs_finished_total", state="succeeded")
    calls = value(generate_latest().decode(), "upscale_upstream_calls_total", status="200")
    task = asyncio.create_task(workers.async_run())
    try:
        rec = await producer.wait_for(job_id, timeout=40)
        assert rec.state == "succeeded", rec
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=HTTP_TIMEOUT_S
        ) as c:
            async with asyncio.timeout(60):  # the counter moves just after the ledger's event
                while True:
                    m = (await c.get("/metrics")).text
                    if value(m, "upscale_jobs_finished_total", state="succeeded") > before:
                        break
                    await asyncio.sleep(0.05)
            assert value(m, "upscale_jobs_finished_total", state="succeeded") == before + 1
            assert value(m, "upscale_upstream_calls_total", status="200") == calls + 1
            assert (await c.get("/healthz")).json()["ok"] is True
            ready = (await c.get("/readyz")).json()
            assert ready["ok"] and ready["checks"]["redis"]["ok"] and ready["checks"]["s3"]["ok"]
    finally:
        task.cancel()
        await workers.close()


def test_health_command(stack_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    r = CliRunner().invoke(cli, ["health", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["upstream"] == {"ok": True, "detail": "key ok"}
    monkeypatch.setenv("UPSCALE_API_KEY", "wrong-key")
    from worker.settings import get_settings

    get_settings.cache_clear()
    r = CliRunner().invoke(cli, ["health"])
    assert r.exit_code == 1 and "key invalid" in r.output


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make test installs it)")
async def test_status_page_in_a_real_browser(
    stack: LocalStack, sim: Sim, settings: Settings, producer: Producer, buckets: Buckets, dash: str
) -> None:
    from playwright.async_api import async_playwright

    _, bad = await _paused_and_failed(stack, sim, settings, producer, buckets)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1200, "height": 900})
            await page.goto(f"{dash}/?token={TOKEN}")
            await page.wait_for_selector("#paused")
            assert "credits" in (await page.inner_text("#paused"))
            reason = await page.inner_text("tr.failure .reason")
            assert "InvalidImage" in reason and "not an image" in reason
            assert "2" in await page.inner_text("#batches")
            if os.environ.get("UQ_SCREENSHOT"):  # refreshes docs/dashboard.png (docs/operations.md)
                await page.screenshot(path=os.environ["UQ_SCREENSHOT"], full_page=True)
            sim.wallet(add=5)
            await page.click("#resume")
            await page.wait_for_selector("#running")
            assert await producer.flow.pause_info() is None
            await page.click("tr.failure button.retry")
            rec = await wait_state(producer, bad, "queued")
            assert rec.attempts == 0
            # a token is set: without it the page says how to open it, and shows nothing
            other = await browser.new_page()  # a new context: no cookie
            await other.goto(dash)
            assert "?token=" in await other.inner_text("body")
        finally:
            await browser.close()


async def test_dashboard_without_a_token_is_read_only(producer: Producer) -> None:
    """No UPSCALE_API_TOKEN: reads are open (the server binds loopback by default), writes are
    refused; the CLI's defaults bind 127.0.0.1 for both servers, the webhook off the gateway's
    port."""
    async with (
        serving(create_app(producer)) as url,
        httpx.AsyncClient(base_url=url, timeout=HTTP_TIMEOUT_S) as c,
    ):
        assert (await c.get("/api/status")).status_code == 200
        assert (await c.get("/")).status_code == 200
        assert (await c.post("/api/resume")).status_code == 401
    defaults = {
        name: {p.name: p.default for p in cli.commands[name].params}
        for name in ("dashboard", "webhook")
    }
    assert defaults["dashboard"]["host"] == defaults["webhook"]["host"] == "127.0.0.1"
    assert defaults["webhook"]["port"] != 8080  # the default gateway URL's port
