"""Prometheus metrics.

Two kinds, served from different places on purpose:
- per-process counters/histograms (what *this* worker did): served by each worker on
  `UPSCALE_METRICS_PORT` (`upscale worker --processes N` gives child i port + i, so processes
  sharing a host never share a registry; Prometheus sums them);
- fleet gauges read from Redis (queue depth, states, pause, spend, budgets, circuit): rendered
  on demand by ONE process, the dashboard (`upscale dashboard` → `/metrics`), so N workers do
  not report N copies of the same number.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from worker.contract import JobState
from worker.fleet import FleetStatus
from worker.flow.status import CIRCUIT_STATES
from worker.reconcile.model import Reconciliation
from worker.redis_conn import watch_away
from worker.replicas import watch_waits
from worker.upstream import deprecation

UPSTREAM_CALLS = Counter(
    "upscale_upstream_calls_total",
    "Upstream calls made by this process, by HTTP status.",
    ["status"],
)
UPSTREAM_LATENCY = Histogram(
    "upscale_upstream_latency_seconds",
    "Upstream call latency.",
    buckets=(0.25, 0.5, 1, 2, 3, 5, 10, 20, 40, 80, 160),
)
JOBS_FINISHED = Counter(
    "upscale_jobs_finished_total", "Jobs this process brought to a final state.", ["state"]
)
JOB_WAITS = Counter("upscale_job_waits_total", "Jobs handed back to wait, by reason.", ["reason"])
UPSTREAM_DEPRECATED = Counter(
    "upscale_upstream_deprecated_answers_total",
    "Upstream answers saying their endpoint is deprecated (`Deprecation` or a `Link` with "
    'rel="successor-version"), by endpoint.',
    ["endpoint"],
)
deprecation.watch(lambda endpoint: UPSTREAM_DEPRECATED.labels(endpoint).inc())
RESULT_BYTES = Counter("upscale_result_bytes_total", "Bytes of results stored to S3.")
SPEND_USD = Counter("upscale_spend_usd_total", "USD billed by upstream calls this process made.")
RESULT_LINKS_REFRESHED = Counter(
    "upscale_result_links_refreshed_total",
    "Expired or unreachable result links signed anew by re-reading their upstream async job "
    "(each one a new call avoided).",
)
REDIS_AWAY = Counter(
    "upscale_redis_unavailable_total",
    "Redis commands of this process that found Redis away and were waited out, by kind: "
    "connection, timeout, or a refusal (oom, readonly, loading, masterdown, noreplicas, ...).",
    ["kind"],
)
watch_away(lambda kind: REDIS_AWAY.labels(kind).inc())
REPLICA_WAIT = Histogram(
    "upscale_redis_replica_wait_seconds",
    "Time money writes waited for replicas to acknowledge them (Redis WAIT).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5, 30),
)
REPLICA_SHORT = Counter(
    "upscale_redis_replica_short_total",
    "Money writes whose first WAIT fell short of the replicas wanted (a lagging replica).",
)


def _replica_wait(seconds: float, short: bool) -> None:
    REPLICA_WAIT.observe(seconds)
    if short:
        REPLICA_SHORT.inc()


watch_waits(_replica_wait)


def fleet_metrics(status: FleetStatus) -> bytes:
    """Render fleet gauges from `Producer.fleet_status()` in the text exposition format."""
    registry = CollectorRegistry(auto_describe=False)

    class Fleet:
        def collect(self) -> Iterator[GaugeMetricFamily]:
            flow = status.flow_control
            depth = GaugeMetricFamily(
                "upscale_queue_depth",
                "Jobs in the arq queue (incl. running, deferred).",
                labels=["lane"],
            )
            for lane, v in status.lanes.items():
                depth.add_metric([lane], v.depth)
            yield depth
            total = GaugeMetricFamily("upscale_queue_depth_total", "Jobs in all lanes' queues.")
            total.add_metric([], status.queue_depth)
            yield total
            admissible = GaugeMetricFamily(
                "upscale_jobs_admissible",
                "Queued jobs the fleet could start calling the upstream for now: 0 while paused, "
                "in a 429 cooldown, with the circuit open or a budget spent (the scaling signal).",
            )
            admissible.add_metric([], status.admissible)
            yield admissible
            jobs = GaugeMetricFamily("upscale_jobs", "Jobs per ledger state.", labels=["state"])
            for state in JobState:
                jobs.add_metric([state], status.states.get(state, 0))
            yield jobs
            pause = flow.pause
            paused = GaugeMetricFamily(
                "upscale_paused", "1 while the fleet is paused, with the reason.", labels=["reason"]
            )
            paused.add_metric([pause.reason if pause else ""], 1 if pause else 0)
            yield paused
            spend = GaugeMetricFamily("upscale_spend_usd", "Spend in USD.", labels=["period"])
            spend.add_metric(["today"], status.spend.today_usd)
            spend.add_metric(["total"], status.spend.total_usd)
            yield spend
            left = GaugeMetricFamily(
                "upscale_budget_remaining_usd",
                "Budget left (absent cap: not reported).",
                labels=["cap"],
            )
            for cap, left_usd in (
                ("total", status.budgets.total_left_usd),
                ("daily", status.budgets.daily_left_usd),
            ):
                if left_usd is not None:
                    left.add_metric([cap], left_usd)
            yield left
            circuit = GaugeMetricFamily(
                "upscale_circuit_state",
                "Circuit breaker (1 for the current state).",
                labels=["state"],
            )
            for st in CIRCUIT_STATES:
                circuit.add_metric([st], 1 if flow.circuit == st else 0)
            yield circuit
            for name, doc, value in (
                ("upscale_cooldown_seconds", "Seconds left in the global 429 cooldown.", flow.cooldown_s),
                ("upscale_inflight_calls", "Upstream calls in flight, fleet-wide.", flow.inflight),
                ("upscale_calls_last_minute", "Upstream calls started in the last 60 s.", flow.calls_last_minute),
            ):  # fmt: skip
                g = GaugeMetricFamily(name, doc)
                g.add_metric([], value)
                yield g

    registry.register(Fleet())
    return bytes(generate_latest(registry))


def reconcile_metrics(last: Reconciliation | None) -> bytes:
    """The last `upscale reconcile` as gauges (nothing before the first): the drift per route
    (the upstream's books minus our ledger, USD), the rows over the threshold, and when."""
    if last is None:
        return b""
    registry = CollectorRegistry(auto_describe=False)
    rec: Reconciliation = last

    class Books:
        def collect(self) -> Iterator[GaugeMetricFamily]:
            drift = GaugeMetricFamily(
                "upscale_reconcile_drift_usd",
                "The upstream's books minus our ledger over the last reconciliation's days "
                "(USD; > 0: billed more than we counted).",
                labels=["route"],
            )
            for route, usd in sorted(rec.drift_by_route().items()):
                drift.add_metric([route], usd)
            yield drift
            over = GaugeMetricFamily(
                "upscale_reconcile_rows_over_threshold",
                "Days (gateway: days and batches) whose difference was over "
                "UPSCALE_RECONCILE_THRESHOLD_USD at the last reconciliation.",
            )
            over.add_metric([], len(rec.over))
            yield over
            at = GaugeMetricFamily(
                "upscale_reconcile_timestamp_seconds", "When the last reconciliation ran."
            )
            at.add_metric([], rec.at)
            yield at

    registry.register(Books())
    return bytes(generate_latest(registry))
