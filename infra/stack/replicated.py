"""A replicated Redis as managed services run it: a primary, a replica (asynchronous
replication, no persistence on either, as a managed Redis without AOF) and a Sentinel that
promotes the replica when the primary dies. For failover fault tests and the `WAIT` bench.
The replication link runs through a relay (`Link`) so a test can make it lag.

Only the Sentinel's own timing is shortened (`down-after-milliseconds` 1 s, as against 30 s by
default): that is the deployment's choice, not the project's, and keeps a failover within a
test's bounds.
"""

from __future__ import annotations

import contextlib
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from infra.stack.processes import Proc, StackError, find_binary, free_port, wait_ready
from infra.stack.redis_server import redis_ready

MASTER = "mymaster"


def _argv(port: int, data: Path, *extra: str) -> list[str]:
    return [
        find_binary("redis-server"),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data),
        "--appendonly", "no",
        "--save", "",
        "--maxmemory-policy", "noeviction",
        "--daemonize", "no",
        *extra,
    ]  # fmt: skip


def _info(port: int, section: str) -> dict[str, Any]:
    with redis.Redis(port=port, socket_timeout=2) as r:
        return dict(r.info(section))


class Link:
    """The replication link, through a relay this process controls: `hold()` keeps what the
    primary sends from reaching the replica (a slow or congested link: the primary still
    counts the replica connected, its acknowledgements stop advancing), `cut()` drops what
    was held with the connection, as a primary's death does to what never left it. (Freezing
    the replica would not do: the kernel keeps buffering what the primary sends.)"""

    def __init__(self, primary_port: int) -> None:
        self.primary_port = primary_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.held = threading.Event()
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                replica, _ = self.server.accept()
                primary = socket.create_connection(("127.0.0.1", self.primary_port))
                self._socks += [replica, primary]
                threading.Thread(
                    target=self._pump, args=(primary, replica, True), daemon=True
                ).start()
                threading.Thread(
                    target=self._pump, args=(replica, primary, False), daemon=True
                ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, holdable: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if not (holdable and self.held.is_set()):  # held: read and dropped at cut
                    dst.sendall(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.close()

    def hold(self) -> None:
        self.held.set()

    def cut(self) -> None:
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        self.server.close()


class ReplicatedRedis:
    """`with ReplicatedRedis() as rr:` — `rr.env()` points workers and producers at it through
    the Sentinel; `rr.kill_primary()` SIGKILLs the primary; `rr.primary_port()` asks the
    Sentinel which one is primary now."""

    def __init__(self, *, relay: bool = True) -> None:
        self.relay = relay  # False: the replica links to the primary directly (benchmarks)
        self._tmp = tempfile.TemporaryDirectory(prefix="uq-replicated-")
        self.dir = Path(self._tmp.name)
        self.ports = {"a": free_port(), "b": free_port()}
        self.sentinel_port = free_port()
        self.procs: dict[str, Proc] = {}

    def __enter__(self) -> ReplicatedRedis:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        a, b = self.ports["a"], self.ports["b"]
        self.link = Link(a)
        upstream_port = self.link.port if self.relay else a
        replica_of = ("--replicaof", "127.0.0.1", str(upstream_port))
        for name, extra in (("a", ()), ("b", replica_of)):
            data = self.dir / name
            data.mkdir()
            port = self.ports[name]
            self._launch(name, _argv(port, data, *extra))
            wait_ready(self.procs[name], partial(redis_ready, port), 20)
        self.wait(lambda: _info(b, "replication").get("master_link_status") == "up", 20)
        conf = self.dir / "sentinel.conf"
        conf.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {a} 1\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            f"sentinel failover-timeout {MASTER} 10000\n"
        )
        self._launch("sentinel", [find_binary("redis-server"), str(conf), "--sentinel"])
        wait_ready(self.procs["sentinel"], lambda: redis_ready(self.sentinel_port), 20)
        # the Sentinel must know the replica before it can promote it
        self.wait(lambda: self._master().get("slaves") == 1, 30)

    def _launch(self, name: str, argv: list[str]) -> None:
        proc = Proc(name, argv, self.dir, self.dir / f"{name}.log")
        proc.start()
        self.procs[name] = proc

    @staticmethod
    def wait(cond: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if cond():
                    return
            except (OSError, redis.RedisError, KeyError):
                pass
            time.sleep(0.1)
        raise StackError(f"replicated Redis not ready within {timeout:.0f} s")

    def _master(self) -> dict[str, Any]:
        return dict(_info(self.sentinel_port, "sentinel").get("master0") or {})

    def primary_port(self) -> int:
        """The primary as the Sentinel names it now."""
        return int(str(self._master()["address"]).rsplit(":", 1)[1])

    def kill_primary(self) -> int:
        """SIGKILL the primary (no shutdown); what the link held never reaches the replica.
        Returns the primary's port."""
        port = self.primary_port()
        name = next(n for n, p in self.ports.items() if p == port)
        self.procs[name].kill()
        self.link.cut()
        return port

    def env(self) -> dict[str, str]:
        return {
            "REDIS_URL": f"redis://127.0.0.1:{self.ports['a']}/0",
            "UPSCALE_REDIS_SENTINELS": f'["127.0.0.1:{self.sentinel_port}"]',
            "UPSCALE_REDIS_SENTINEL_MASTER": MASTER,
        }

    def stop(self) -> None:
        if hasattr(self, "link"):
            self.link.cut()
        for proc in self.procs.values():
            proc.stop()
        self.procs.clear()
        self._tmp.cleanup()
