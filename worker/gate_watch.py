"""Picking follows the fleet's gate: a worker stops picking jobs while nothing can be admitted
(pause, cooldown, open circuit, spent budget) and picks again just before a known reopening."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import structlog
from arq import Worker

from worker.flow import PICKUP_LEAD_S, TIMED_DENIALS, Gate
from worker.redis_conn import REDIS_DOWN, note_away
from worker.runtime import Runtime

log = structlog.get_logger("worker.app")


async def watch_gate(rt: Runtime, workers: Sequence[Worker]) -> None:
    """Keep `allow_pick_jobs` in step with the fleet's gate: no picking while nothing can be
    admitted (pause, cooldown, open circuit, budget), and never again once draining.

    While paused, a worker picks jobs only when a canary call is due, so one job per interval
    can probe the upstream and a long pause does not cycle the whole queue.
    """
    closed_by_us = False
    sampled_minute = 0
    while True:
        wait_s = rt.settings.flow.pause_poll_s  # also after a failure before the gate was read
        try:
            if rt.draining:
                for w in workers:
                    w.allow_pick_jobs = False
                return
            minute = int(time.time() // 60)
            if minute != sampled_minute:
                await rt.ledger.sample_depth(minute)  # the dashboard's depth-over-the-hour chart
                sampled_minute = minute
            gate = await rt.flow.gate()
            if gate.state == "closed" and gate.reason in TIMED_DENIALS:
                # it reopens at a known moment: pick again just before it (jobs wait out the
                # rest in line) instead of up to a poll interval after it
                wait_s = min(wait_s, max(0.05, gate.wait_s - PICKUP_LEAD_S))
                if gate.wait_s <= PICKUP_LEAD_S:
                    gate = Gate("open")
            if gate.state == "closed" and not closed_by_us:
                for w in workers:
                    w.allow_pick_jobs = False
                closed_by_us = True
                log.info("nothing can be admitted: not picking jobs", reason=gate.reason)
            elif gate.state != "closed" and closed_by_us and not rt.draining:
                for w in workers:
                    w.allow_pick_jobs = True
                closed_by_us = False
                log.info("picking jobs again", gate=gate.state)
        except REDIS_DOWN as e:  # also a full or read-only Redis: picking stays as it was
            kind = note_away(e, "gate watch")
            log.warning("gate watch: redis unavailable", error=type(e).__name__, kind=kind)
        except Exception:
            log.exception("gate watch failed")
        await asyncio.sleep(wait_s)
