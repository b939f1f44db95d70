"""`LocalStack`: redis-server, SeaweedFS (S3) and the gateway simulator as real processes on free
loopback ports in one temp dir, each health-checked before use and torn down by process group."""

from __future__ import annotations

import atexit
import json
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from infra.stack import seaweedfs
from infra.stack.processes import Proc, exit_on_sigterm, free_port, wait_ready
from infra.stack.redis_server import redis_argv, redis_ready
from infra.stack.seaweedfs import ACCESS_KEY, MAX_WEED_PORT, SECRET_KEY, WebhookTarget, WeedPorts

API_KEY = "sim-key"
ROOT = Path(__file__).resolve().parents[2]  # the repository: `python -m infra.simulator` runs here


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
            free_port(MAX_WEED_PORT) for _ in range(4)
        )
        self._grpc = [free_port(MAX_WEED_PORT) for _ in range(4)]
        self.sim_port = free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.s3_endpoint = f"http://127.0.0.1:{self.s3_port}"
        self.simulator_url = f"http://127.0.0.1:{self.sim_port}"
        self.procs: dict[str, Proc] = {}
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
        exit_on_sigterm()
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
            self._stop(name)
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
        proc = self._launch("redis", redis_argv(self.redis_port, data))
        wait_ready(proc, lambda: redis_ready(self.redis_port), 20)

    def stop_redis(self) -> None:
        self._stop("redis")

    def kill_redis(self) -> None:
        """SIGKILL redis-server (it comes back on its AOF with `start_redis`)."""
        proc = self.procs.pop("redis", None)
        if proc:
            proc.kill()

    # -- SeaweedFS --------------------------------------------------------------------------
    def start_s3(self) -> None:
        data, logs = self.dir / "weed", self.dir / "weed-logs"
        data.mkdir(exist_ok=True)
        logs.mkdir(exist_ok=True)
        s3_config = seaweedfs.write_config(self.dir, self.webhook)
        mg, vg, fg, sg = self._grpc
        ports = WeedPorts(
            s3=self.s3_port,
            master=self.master_port,
            volume=self.volume_port,
            filer=self.filer_port,
            grpc=(mg, vg, fg, sg),
        )
        proc = self._launch("weed", seaweedfs.weed_argv(self.dir, data, logs, ports, s3_config))
        wait_ready(proc, lambda: seaweedfs.s3_ready(self.s3_endpoint), 60)

    def stop_s3(self) -> None:
        self._stop("weed")

    def freeze_s3(self, frozen: bool) -> None:
        """SIGSTOP / SIGCONT SeaweedFS: requests in flight hang, as on a stalled endpoint."""
        proc = self.procs.get("weed")
        if proc:
            proc.signal_group(signal.SIGSTOP if frozen else signal.SIGCONT)

    def s3_client(self) -> Any:
        return seaweedfs.s3_client(self.s3_endpoint)

    # -- simulator --------------------------------------------------------------------------
    def start_simulator(self) -> None:
        argv = [
            sys.executable, "-m", "infra.simulator",
            "--host", "127.0.0.1", "--port", str(self.sim_port),
            "--config-json", json.dumps(self.simulator_config),
        ]  # fmt: skip
        proc = self._launch("simulator", argv, cwd=ROOT)
        wait_ready(
            proc,
            lambda: httpx.get(f"{self.simulator_url}/healthz", timeout=1).status_code == 200,
            30,
        )

    # -- plumbing -----------------------------------------------------------------------------
    def _launch(self, name: str, argv: list[str], cwd: Path | None = None) -> Proc:
        proc = Proc(name, argv, cwd or self.dir, self.dir / f"{name}.log")
        proc.start()
        self.procs[name] = proc
        return proc

    def _stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc:
            proc.stop()

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
