"""`upscale health`: Redis, S3 and the upstream (its key, then the model's published request
shape), checked at once."""

from __future__ import annotations

import asyncio
import json

import click

from producers.cli.common import JSON_HELP, console, main
from producers.errors import EXIT_FAILED, CommandError, describe
from worker.api import check_health, get_settings, register_secret


@main.command(
    help="Check Redis, S3 and the upstream (URL, key, model, and the model's request shape "
    "against UPSCALE_IMAGE_MODE / UPSCALE_IMAGE_FIELD); exit 1 if a check fails."
)
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def health(as_json: bool) -> None:
    settings = get_settings()
    register_secret(settings.upstream.api_key_value)
    # All three at once, each with a short timeout: the answer comes within ~5 s.
    results = asyncio.run(check_health(settings, describe))
    failed = {name: detail for name, (good, detail) in results.items() if not good}
    if as_json:
        click.echo(json.dumps({k: {"ok": v[0], "detail": v[1]} for k, v in results.items()}))
    else:
        for name, (good, detail) in results.items():
            mark = "[green]ok  [/]" if good else "[red]FAIL[/]"
            console.print(f"{mark} {name:<9} {detail}", soft_wrap=True)  # one line each
        console.print("healthy" if not failed else "[bold red]unhealthy[/]")
    if failed:
        raise CommandError(
            "unhealthy: " + "; ".join(f"{k}: {v}" for k, v in failed.items()), EXIT_FAILED
        )
