"""`upscale worker --processes N`: run N worker processes and pass signals on to them.

SIGTERM/SIGINT are forwarded, so every child drains (its running jobs finish, see arq's
`job_completion_wait`) and the supervisor exits when they all have. A child that dies is not
restarted here: that is the job of the process manager (systemd, Kubernetes) around us.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from types import FrameType

import structlog

log = structlog.get_logger("producers.supervise")


def supervise(argv: list[str], n: int) -> int:
    base = os.environ.get("UPSCALE_METRICS_PORT")

    def env(i: int) -> dict[str, str]:
        # each child serves its own /metrics: port + i (one registry per process)
        return {**os.environ, **({"UPSCALE_METRICS_PORT": str(int(base) + i)} if base else {})}

    children = [subprocess.Popen(argv, env=env(i)) for i in range(n)]
    log.info("worker processes started", processes=n, pids=[c.pid for c in children])

    def forward(signum: int, _frame: FrameType | None) -> None:
        for c in children:
            if c.poll() is None:
                c.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    while any(c.poll() is None for c in children):
        time.sleep(0.2)
    codes = [c.returncode for c in children]
    log.info("worker processes exited", codes=codes)
    return max((abs(c) for c in codes), default=0)
