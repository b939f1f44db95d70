"""The report as its own arq job (`report`), queued when a batch ends, like the batch notice:
off the upstream path, retried on its own schedule when S3 does not answer.

Once per batch end: the arq job id names the end (`batch_end`: the batch's last transition),
so the finishers that all see the batch ended queue one job, and arq keeps its result a day
so a late one is refused too. The job is idempotent: a re-run overwrites the same keys.
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import structlog
from arq import ArqRedis, Retry, func
from arq.worker import Function

from worker.keys import QUEUE_NAME
from worker.redis_conn import REDIS_DOWN
from worker.report.writer import NothingToReport, write_report
from worker.runtime import Runtime
from worker.storage import StorageError, StorageUnavailable

log = structlog.get_logger("worker.report")
REPORT_FUNCTION = "report"
KEEP_RESULT_S = 86_400  # arq's result key: a second queueing of the same end is refused
MAX_TRIES = 8  # S3 unreachable: backoff 2 s .. 5 min, then `upscale report` by hand
# wait and try again
_UNAVAILABLE: tuple[type[BaseException], ...] = (StorageUnavailable, *REDIS_DOWN)
_EXPIRES = timedelta(days=7)  # a paused fleet picks nothing: the job must outlive a pause


async def queue_report(redis: ArqRedis, batch: str, end_ms: int) -> bool:
    """Queue the report of `batch`'s end at `end_ms`; False if that end's is queued already."""
    job = await redis.enqueue_job(
        REPORT_FUNCTION,
        batch,
        _job_id=f"report:batch:{batch}:{end_ms}",
        _queue_name=QUEUE_NAME,
        _expires=_EXPIRES,
    )
    return job is not None


async def report(ctx: dict[str, Any], batch: str) -> dict[str, Any]:
    """arq job: write `batch`'s full report to its default location."""
    rt: Runtime = ctx["runtime"]
    try:
        r = await write_report(rt.redis, rt.storage, rt.settings, batch)
    except _UNAVAILABLE as e:
        tries = int(ctx.get("job_try") or 1)
        if tries >= MAX_TRIES:
            log.error("report not written; run `upscale report`", batch=batch, error=str(e))
            return {"batch": batch, "error": str(e)}
        log.warning("report: S3 or Redis unavailable, retrying", batch=batch, error=str(e))
        raise Retry(defer=random.uniform(0, min(300.0, 2.0 * 2**tries))) from None
    except (StorageError, NothingToReport) as e:  # denied, refused: a person must look
        log.error("report not written", batch=batch, error=str(e))
        return {"batch": batch, "error": str(e)}
    log.info(
        "batch report written",
        batch=batch,
        manifest=r.manifest,
        rows=r.row_count,
        parts=len(r.parts),
        expiring=r.expiring,
    )
    return {"batch": batch, "manifest": r.manifest, "rows": r.row_count}


def report_function(job_timeout_s: int) -> Function:
    """The arq function, as workers register it."""
    return func(
        report,
        name=REPORT_FUNCTION,
        max_tries=MAX_TRIES,
        timeout=max(3600, job_timeout_s),  # 10M rows take minutes, not seconds
        keep_result=KEEP_RESULT_S,
    )
