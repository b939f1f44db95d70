"""`upscale` — the command line: enqueue, status, spend, pause/resume, cancel, retry, report,
reconcile, worker, run.

A failing command prints one line on stderr (`producers.errors`) and exits non-zero:
1 = the answer is no (unhealthy, no such job), 2 = a bad argument, 69 = a service did not answer,
78 = a setting or credential is wrong. `upscale --debug <command>` shows the traceback instead.

Commands by group: `jobs` (enqueue, backfill), `control` (cancel, retry), `fleet` (status,
spend, pause, resume), `serve` (worker, dashboard, webhook, sqs, run), `checks` (health),
`reports` (report), `reconcile` (reconcile); `common` holds the group.
"""

from producers.cli import (  # noqa: F401  # registers them
    checks,
    control,
    fleet,
    jobs,
    reconcile,
    reports,
    serve,
)
from producers.cli.common import _aws_from_dotenv, main

__all__ = ["_aws_from_dotenv", "main"]
