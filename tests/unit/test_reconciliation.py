"""The reconciliation's rows: the difference per day and batch, which are over the threshold,
the drift per route; kept in Redis and read back (the status page, `/metrics`)."""

from __future__ import annotations

from redis.asyncio import Redis

from worker.metrics import reconcile_metrics
from worker.reconcile import Reconciliation, ReconciliationRow, last_reconciliation, save_last


def _rec() -> Reconciliation:
    rows = [
        ReconciliationRow(route="gateway", day="2026-01-02", batch="b1", ledger_micros=120_000,
                          upstream_micros=180_000),
        ReconciliationRow(route="gateway", day="2026-01-02", batch="", ledger_micros=60_000,
                          upstream_micros=60_000),
        ReconciliationRow(route="ideogram", day="2026-01-02", batch="*", ledger_micros=60_000,
                          upstream_micros=55_000),
    ]  # fmt: skip
    return Reconciliation(at=1.0, since="2026-01-01", until="2026-01-02", threshold_usd=0.01,
                          rows=rows)  # fmt: skip


async def test_rows_over_the_threshold_and_the_drift(r: Redis) -> None:
    rec = _rec()
    assert [x.where for x in rec.over] == ["2026-01-02 batch b1 (gateway)"]
    assert rec.drift_usd == 0.055 and rec.drift_by_route() == {"gateway": 0.06, "ideogram": -0.005}
    assert await last_reconciliation(r) is None
    await save_last(r, rec)
    back = await last_reconciliation(r)
    assert back == rec
    gauges = reconcile_metrics(back).decode()
    assert 'upscale_reconcile_drift_usd{route="ideogram"} -0.005' in gauges
    assert reconcile_metrics(None) == b""
