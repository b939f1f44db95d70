"""What every command group shares: the `upscale` click group, running a coroutine with a
Producer, `--json` output and log settings, and `.env` for boto3."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
from rich.console import Console

from producers.api import Producer
from producers.errors import Group
from worker.api import Settings, get_settings

T = TypeVar("T")
console = Console()
err_console = Console(stderr=True)
JSON_HELP = "Print JSON (errors too: one JSON object on stderr)."


def with_producer(fn: Callable[[Producer], Awaitable[T]]) -> T:
    """Run `fn` with a Producer; Redis must answer within a few seconds (errors: see main)."""

    async def go() -> T:
        async with Producer.connect(get_settings(), fail_fast=True) as p:
            return await fn(p)

    return asyncio.run(go())


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def json_logs(as_json: bool) -> Settings:
    """Settings for a long-running command; `--json` makes its log lines JSON."""
    if as_json:
        os.environ["UPSCALE_LOG_FORMAT"] = "json"  # children (--processes) inherit it
        get_settings.cache_clear()
    return get_settings()


def _aws_from_dotenv(path: str = ".env") -> None:
    """`AWS_*` lines of `.env` (profile, region, keys) reach boto3 too; the environment wins.
    (Settings read `.env` themselves.)"""
    try:
        from dotenv import dotenv_values
    except ImportError:  # pragma: no cover - a dependency of pydantic-settings
        return
    if not os.path.isfile(path):
        return
    for k, v in dotenv_values(path).items():
        if k.startswith("AWS_") and v is not None:
            os.environ.setdefault(k, v)


@click.group(
    cls=Group, help="Upscale images stored in S3 with the Ideogram Upscale model, at scale."
)
@click.version_option(package_name="upscale-queue", prog_name="upscale")
@click.option(
    "--debug", is_flag=True, envvar="UPSCALE_DEBUG", help="Show tracebacks instead of one line."
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="The command's --json, given before its name (`upscale --json status`).",
)
@click.pass_context
def main(ctx: click.Context, debug: bool, as_json: bool) -> None:
    if as_json:  # every command's own `--json` defaults to on (click reads default_map per name)
        group = ctx.command
        assert isinstance(group, click.Group)
        ctx.default_map = {name: {"as_json": True} for name in group.commands}
    _aws_from_dotenv()
