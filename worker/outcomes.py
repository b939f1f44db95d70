"""One table from every exception a job can raise to what happens next.

- `fail`: the job cannot succeed; it ends `failed` with a reason a person can act on, or
  `skipped` (`JobSkipped`: superseded, deleted or our own output) when there is nothing to act
  on: an operator alerting on `failed` is never paged for normal S3 life.
- `wait`: nothing is wrong with the job (pause, 429, outage, budget); it goes back to its queue
  and no attempt is used.
- `attempt`: a real failure; it uses an attempt and backs off (and fails at `max_attempts`).

Anything not listed is an attempt: an unexpected error is retried, never a silent loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from worker.images import ImageRejected
from worker.ledger import KeyPaused
from worker.logs import redact
from worker.redis_conn import REDIS_DOWN
from worker.results import DownloadFailed, ResultRejected
from worker.storage import AccessDenied, SourceMissing, StorageRejected, StorageUnavailable
from worker.upstream import errors as ue

Action = Literal["fail", "wait", "attempt"]
# What the outcome also tells the fleet's flow control.
Effect = Literal["none", "pause", "cooldown", "server_error"]


class JobFailed(Exception):
    """The job cannot succeed: ends `failed` with this reason."""

    def __init__(self, error_class: str, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.message = redact(message)[:1000]


class JobSkipped(Exception):
    """Nothing to do and nothing for a person to fix: ends `skipped` with the reason as its
    note, no call. `kind` names the reason (the row's error class, for logs)."""

    kind = "Skipped"


class OwnOutput(JobSkipped):
    """The source is one of our outputs (its provenance metadata): the recursion guard."""

    kind = "OwnOutput"


class Superseded(JobSkipped):
    """The source has a newer version than the one the job asked for: that version has (or
    gets) its own job, and an older one must not overwrite its output."""

    kind = "Superseded"


class SourceDeleted(JobSkipped):
    """The source (or the asked version of it) was deleted after the job was made."""

    kind = "SourceDeleted"


class JobWaits(Exception):
    """The job waits (no attempt used): back to the queue for `wait_s`."""

    def __init__(self, reason: str, wait_s: float, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.wait_s = wait_s
        self.detail = redact(detail)[:300]


@dataclass(frozen=True)
class Outcome:
    action: Action
    error_class: str
    message: str
    wait_reason: str = ""
    wait_s: float = 0.0
    effect: Effect = "none"


def outcome_for(exc: BaseException, *, pause_poll_s: float, outage_wait_s: float) -> Outcome:
    """The row of the table for `exc`. Pure: no I/O."""
    name = type(exc).__name__
    msg = redact(str(exc))[:1000]
    match exc:
        case JobFailed():
            return Outcome("fail", exc.error_class, exc.message)
        case JobSkipped():  # final, not retried; `run` ends it `skipped`, not `failed`
            return Outcome("fail", exc.kind, msg)
        case JobWaits():
            return Outcome("wait", "", exc.detail, exc.reason, exc.wait_s)
        case KeyPaused():  # admitted, then paused before it left: admission picks again
            return Outcome("wait", name, msg, f"paused:{exc.reason}", 0.0)
        case ue.PauseError():
            reason = f"paused:{exc.pause_reason}"
            return Outcome("wait", name, exc.describe(), reason, pause_poll_s, "pause")
        case ue.RateLimited():
            return Outcome(
                "wait", name, exc.describe(), "rate_limited", exc.retry_after, "cooldown"
            )
        case ue.PermanentError():
            return Outcome("fail", name, f"upstream rejected the job: {exc.describe()}")
        case ue.UpstreamJobFailed() | ue.ResultUnavailable():
            return Outcome("attempt", name, exc.describe())
        case ue.UpstreamError():  # 5xx, timeouts, lost connections: the upstream is struggling
            return Outcome("attempt", name, exc.describe(), effect="server_error")
        case StorageUnavailable():
            return Outcome("wait", name, msg, "storage", outage_wait_s)
        case DownloadFailed():
            return Outcome("wait", name, msg, "download", outage_wait_s)
        case AccessDenied() | SourceMissing() | StorageRejected():
            return Outcome("fail", name, msg)
        case ResultRejected():
            return Outcome("fail", name, msg)
        case ImageRejected():
            return Outcome("fail", "InvalidImage", msg)
        case TimeoutError():
            return Outcome("attempt", "Timeout", msg or "the job ran out of time")
        case _ if isinstance(exc, REDIS_DOWN):
            return Outcome("wait", name, msg, "redis", outage_wait_s)
        case _:
            return Outcome("attempt", name, f"unexpected error: {name}: {msg}")
