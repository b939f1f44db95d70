"""The Ideogram direct route under real faults, real `upscale worker` processes at default
settings, against a simulator that ignores `Idempotency-Key` there (as Ideogram does): no image
is ever bought twice. Workers killed while generations run resume by reading them; a submit
whose answer was dropped after the upstream accepted it (and billed it) is never submitted
again: it fails `SubmitLost`, counted as possibly billed. Judged by the simulator's bill and
S3 (tests/faults.py); faults are triggered on what the simulator and the ledger show."""

from __future__ import annotations

from typing import Any

import pytest

from infra.stack import LocalStack
from producers.api import Producer
from tests.faults import Fault, Report, Run, in_flight, nothing
from tests.integration.conftest import Buckets, Sim, WorkerProcs
from tests.integration.test_faults import _run as run_scenario
from worker.keys import Keys

pytestmark = pytest.mark.slow

DEADLINE_S = 90
PRICE = 0.06


async def _run(
    stack: LocalStack,
    producer: Producer,
    buckets: Buckets,
    workers: WorkerProcs,
    name: str,
    fault: Fault,
    *,
    jobs: int,
    procs: int,
    sim_config: dict[str, Any],
) -> Report:
    """`test_faults._run` on the direct route (UPSCALE_ROUTE=ideogram)."""
    direct = {"route": "ideogram", "ideogram_url": f"{stack.simulator_url}/upscale"}
    return await run_scenario(
        stack,
        producer,
        buckets,
        workers,
        name,
        fault,
        jobs=jobs,
        procs=procs,
        sim_config=sim_config,
        worker_env=direct,
    )


def _submits(stats: dict[str, Any]) -> int:
    return sum(1 for c in stats["log"] if c["path"] == "/upscale")


def _never_bought_twice(r: Report) -> None:
    assert r.all_final_s is not None, f"jobs still not final after {DEADLINE_S} s: {r}"
    assert r.stranded == 0, r
    # (`bought_after_answer` does not apply: an accepted submit is answered before its bill)
    assert r.paid_twice == 0, r
    # the only failures are lost submits, and only those are without an output
    lost = [rec for rec in r.records if rec.state == "failed"]
    assert all(rec.error_class == "SubmitLost" for rec in lost), lost
    assert r.bad_outputs == len(lost), r
    # ledger = bill, but for a lost submit the upstream never billed (killed before it arrived):
    # counted as possibly billed, as every unknown outcome is
    unbilled_lost = len(lost) - r.paid_not_stored
    assert abs(r.ledger_usd - (r.billed_usd + PRICE * unbilled_lost)) < 1e-9, r


async def test_workers_killed_while_their_generations_run_read_them_never_resubmit(
    stack: LocalStack, sim: Sim, producer: Producer, buckets: Buckets, workers: WorkerProcs
) -> None:
    jobs = 6
    notes: dict[str, Any] = {}

    async def fault(run: Run) -> None:
        async def all_journaled() -> bool:
            # every generation held at the upstream, and its id journaled by the worker
            if (await run.sim_stats())["held"] < jobs:
                return False
            states = [await run.producer.redis.hget(Keys.call(j), "state") for j in run.job_ids]  # type: ignore[misc]  # redis-py's async stubs
            return all(s == b"pending" for s in states)

        await run.until(all_journaled)
        run.kill_workers()
        await run.sim.post("/_admin/config", json={"hold_work": False})
        notes["released"] = (await run.sim.post("/_admin/release", json={})).json()

    r = await _run(
        stack,
        producer,
        buckets,
        workers,
        "direct: SIGKILL while generations run",
        fault,
        jobs=jobs,
        procs=2,
        sim_config={"hold_work": True},
    )
    assert r.failed == 0 and r.bad_outputs == 0 and r.paid_not_stored == 0, r
    assert r.paid_twice == 0 and abs(r.ledger_usd - r.billed_usd) < 1e-9, r
    assert abs(r.billed_usd - jobs * PRICE) < 1e-9
    stats = sim.stats()
    assert _submits(stats) == jobs  # one submission per image: the rest were reads
    assert stats["polls"] >= jobs


async def test_a_submit_dropped_after_the_upstream_accepted_it_is_never_resubmitted(
    stack: LocalStack, sim: Sim, producer: Producer, buckets: Buckets, workers: WorkerProcs
) -> None:
    r = await _run(
        stack,
        producer,
        buckets,
        workers,
        "direct: connection lost after accept",
        nothing,
        jobs=6,
        procs=1,
        sim_config={"disconnect_next": 3},
    )
    _never_bought_twice(r)
    assert r.failed == 3 and r.paid_not_stored == 3, r  # each ran and was billed upstream
    assert abs(r.ledger_usd - r.billed_usd) < 1e-9 and abs(r.billed_usd - 6 * PRICE) < 1e-9
    assert sum(rec.unknown_calls for rec in r.records) == 3
    assert _submits(sim.stats()) == 6


async def test_sigkills_and_dropped_connections_never_buy_an_image_twice(
    stack: LocalStack, sim: Sim, producer: Producer, buckets: Buckets, workers: WorkerProcs
) -> None:
    async def fault(run: Run) -> None:
        for _ in range(3):
            await in_flight(run)  # generations running upstream: a kill lands mid-work
            run.kill_worker()

    r = await _run(
        stack,
        producer,
        buckets,
        workers,
        "direct: SIGKILLs + dropped connections",
        fault,
        jobs=12,
        procs=2,
        sim_config={"latency_ms": [1000, 2500], "disconnect_next": 2},
    )
    _never_bought_twice(r)
    assert r.failed >= 2, r  # the two dropped answers at least


async def test_generations_hold_their_slot_so_the_organisation_cap_is_never_overrun(
    stack: LocalStack, sim: Sim, producer: Producer, buckets: Buckets, workers: WorkerProcs
) -> None:
    """Ideogram counts a generation against the organisation's in-flight cap (10) until it
    completes, not until its submit is answered: a slot freed at the submit's answer lets the
    fleet submit past the cap, into free but useless 429s. Held until the generation ends,
    20 jobs on 2 workers at default settings meet no 429 at all."""
    report = await _run(
        stack,
        producer,
        buckets,
        workers,
        "org cap",
        nothing,
        jobs=20,
        procs=2,
        sim_config={"latency_ms": [1500, 1500]},
    )
    _never_bought_twice(report)
    stats = sim.stats()
    refused = [c for c in stats["log"] if c["path"] == "/upscale" and c["status"] == 429]
    assert refused == [], f"{len(refused)} submits refused over the organisation's cap"
    assert stats["max_inflight"] <= 10, stats["max_inflight"]
