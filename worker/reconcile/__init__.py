"""Reconciling with the upstream's books (`upscale reconcile`): `reconcile` reads our ledger's
spend per day, pool upstream and batch and each upstream's usage, `Reconciliation` holds them
side by side, and the last one is kept in Redis for the status page and `/metrics`."""

from worker.reconcile.books import BooksUnreadable
from worker.reconcile.model import ALL_BATCHES, Reconciliation, last_reconciliation, save_last
from worker.reconcile.model import Row as ReconciliationRow
from worker.reconcile.run import reconcile

__all__ = [
    "ALL_BATCHES",
    "BooksUnreadable",
    "Reconciliation",
    "ReconciliationRow",
    "last_reconciliation",
    "reconcile",
    "save_last",
]
