"""The embedded local stack: redis-server, SeaweedFS (S3) and the gateway simulator.

Everything runs on free loopback ports inside one temp dir, is health-checked before use, and is
torn down by PID (process groups) on exit — also via atexit, so a crash leaves no orphans.

    with LocalStack() as stack:
        os.environ.update(stack.env())

`python -m infra.stack` starts it, prints `export K=V` lines, and runs until Ctrl-C.

`local.py` is the stack, `processes.py` the process plumbing (free ports, process groups,
health waits), `redis_server.py` and `seaweedfs.py` the two services.
"""

from __future__ import annotations

from infra.stack.local import API_KEY, LocalStack
from infra.stack.processes import StackError, die_with_parent, free_port
from infra.stack.seaweedfs import ACCESS_KEY, SECRET_KEY, WebhookTarget, ensure_buckets

__all__ = [
    "ACCESS_KEY",
    "API_KEY",
    "SECRET_KEY",
    "LocalStack",
    "StackError",
    "WebhookTarget",
    "die_with_parent",
    "ensure_buckets",
    "free_port",
]
