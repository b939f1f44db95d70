"""redis-server for the local stack: durable as in production (AOF, fsync on every write,
`noeviction`), on a loopback port."""

from __future__ import annotations

import socket
from pathlib import Path

from infra.stack.processes import find_binary


def redis_argv(port: int, data: Path) -> list[str]:
    return [
        find_binary("redis-server"),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data),
        # An evicted job key is a lost job; AOF keeps the queue across restarts, and fsync on
        # every write keeps a paid result recorded by a Lua script across a crash (losing
        # the last second of writes could buy an image twice).
        "--appendonly", "yes", "--appendfsync", "always",
        "--maxmemory-policy", "noeviction",
        "--save", "",
        "--daemonize", "no",
        "--protected-mode", "yes",
    ]  # fmt: skip


def redis_ready(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")
