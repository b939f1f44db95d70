"""`python -m infra.simulator --host 127.0.0.1 --port 8080 [--config-json '{...}']`"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from infra.simulator import SimConfig, run_simulator


async def _serve(host: str, port: int, config: SimConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with run_simulator(config, host, port) as sim:
        print(f"gateway simulator on {sim.url}", file=sys.stderr, flush=True)
        await stop.wait()


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m infra.simulator", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--config-json", default="{}", help="SimConfig fields as JSON")
    args = ap.parse_args()
    asyncio.run(_serve(args.host, args.port, SimConfig.model_validate_json(args.config_json)))


if __name__ == "__main__":
    main()
