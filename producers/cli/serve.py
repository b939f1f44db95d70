"""Long-running roles: `worker`, `dashboard`, `webhook`, `sqs`, and `run` (the local demo)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

import click

from producers.api import Producer
from producers.cli.common import JSON_HELP, console, echo_json, json_logs, main, with_producer
from worker.api import RedisUnavailable, Settings, configure_logging, connect, run_worker_process


# -- processes --------------------------------------------------------------------------------
@main.command(help="Run a worker process (arq). Many can run, on many machines.")
@click.option("--burst", is_flag=True, help="Exit when the queue is empty.")
@click.option(
    "--processes",
    default=1,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Worker processes on this host (each serves both lanes; flow control stays global).",
)
@click.option(
    "--wait-for-redis",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds to wait for Redis at start-up (a restart in progress) before giving up.",
)
@click.option("--json", "as_json", is_flag=True, help="JSON log lines (and errors).")
def worker(burst: bool, processes: int, wait_for_redis: float, as_json: bool) -> None:
    settings = json_logs(as_json)  # a bad setting stops here, before any process starts
    asyncio.run(_wait_for_redis(settings, wait_for_redis))
    if processes == 1:
        run_worker_process(burst=burst)
        return
    from producers.supervise import supervise

    argv = [sys.executable, "-m", "producers.cli", "worker", *(["--burst"] if burst else [])]
    sys.exit(supervise(argv, processes))


async def _wait_for_redis(settings: Settings, seconds: float) -> None:
    """Until Redis answers, quietly, for up to `seconds`; then `RedisUnavailable` (one line)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            redis = await connect(settings.redis, fail_fast=True)
        except RedisUnavailable as e:
            if e.auth or time.monotonic() + 1 > deadline:
                raise
            await asyncio.sleep(1)
        else:
            await redis.aclose()
            return


HOST_HELP = (
    "Address to listen on: loopback by default; 0.0.0.0 (or {var}=0.0.0.0) exposes it, e.g. in a "
    "container behind a Service."
)
DEFAULT_HOST = "127.0.0.1"


def host_option(var: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """`--host` of a server command (loopback by default; `var` sets it too)."""
    return click.option(
        "--host",
        default=DEFAULT_HOST,
        show_default=True,
        envvar=var,
        help=HOST_HELP.format(var=var),
    )


WEBHOOK_PORT = 8070  # not 8080: the default gateway URL's port (and the simulator's)


@main.command(help="Serve the status page, its JSON API and the fleet's /metrics.")
@host_option("UPSCALE_DASHBOARD_HOST")
@click.option("--port", default=8090, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON log lines (and errors).")
def dashboard(host: str, port: int, as_json: bool) -> None:
    from producers.dashboard import serve

    _serve_http(serve, host, port, as_json)


@main.command(help="Serve bucket notifications and HTTP enqueue (needs UPSCALE_API_TOKEN).")
@host_option("UPSCALE_WEBHOOK_HOST")
@click.option("--port", default=WEBHOOK_PORT, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON log lines (and errors).")
def webhook(host: str, port: int, as_json: bool) -> None:
    from producers.webhook import serve

    _serve_http(serve, host, port, as_json)


def _serve_http(
    serve: Callable[[Settings, str, int], Coroutine[Any, Any, None]],
    host: str,
    port: int,
    as_json: bool,
) -> None:
    settings = json_logs(as_json)
    configure_logging(settings.ops.log_format, settings.ops.log_level)
    # Once serving, SIGINT/SIGTERM stop it cleanly; a Ctrl-C before that is no error either.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings, host, port))


@main.command(help="Consume S3 notifications from an SQS queue.")
@click.option("--queue-url", required=True)
@click.option(
    "--dlq-url", help="Dead-letter queue for malformed messages (else Redis uq:dead-letters)."
)
@click.option("--endpoint-url", help="SQS endpoint (default: AWS).")
@click.option("--wait", default=20, show_default=True, help="Long-poll seconds.")
@click.option("--until-empty", is_flag=True, help="Exit when a poll returns nothing.")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP + " Log lines are JSON too.")
def sqs(
    queue_url: str,
    dlq_url: str | None,
    endpoint_url: str | None,
    wait: int,
    until_empty: bool,
    as_json: bool,
) -> None:
    import dataclasses

    import boto3
    from botocore.exceptions import BotoCoreError

    from producers.errors import AwsCallFailed, endpoint_of
    from producers.sqs import SqsConsumer

    s = json_logs(as_json)
    configure_logging(s.ops.log_format, s.ops.log_level)
    # The region as for S3: UPSCALE_S3_REGION, AWS_REGION, then boto3's chain (the profile).
    region = s.s3.region or os.environ.get("AWS_REGION")
    try:
        client = boto3.client("sqs", region_name=region, endpoint_url=endpoint_url)
    except BotoCoreError as e:  # no region, a missing profile: name SQS, not S3
        raise AwsCallFailed(endpoint_of("sqs", flag=endpoint_url), queue_url, e) from e

    async def go(p: Producer) -> Any:
        consumer = SqsConsumer(
            p, client, queue_url, dlq_url=dlq_url, wait_s=wait, endpoint_flag=endpoint_url
        )
        return await consumer.run(until_empty=until_empty)

    st = with_producer(go)
    if as_json:
        echo_json(dataclasses.asdict(st))
        return
    console.print(
        f"sqs: {st.messages} message(s), {st.enqueued} job(s) enqueued, {st.duplicates} duplicate(s), "
        f"{st.ignored} ignored, {st.dead_lettered} dead-lettered, {st.errors} redelivered"
    )


@main.command(help="The main job on the embedded local stack: sample images in, 2x images out.")
@click.option("--images", default=6, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON log lines (and errors).")
def run(images: int, as_json: bool) -> None:
    json_logs(as_json)
    from infra.run import main as run_main

    sys.exit(run_main(images=images))
