"""What a command prints when it fails: one line that says what is wrong and what to fix.

Every `upscale` command runs through `Command.invoke`, which turns any exception into a
`Problem` (`explain`) and prints it on stderr as one line (a JSON object with `--json`), with an
exit code by kind; `upscale --debug <command>` re-raises instead, for the traceback. A bad
setting names its environment variable (derived from the settings field, so a new setting needs
nothing here); a service that does not answer is named with where it is and the setting to fix.
"""

from __future__ import annotations

import errno
import json
import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import click
from pydantic import SecretStr, ValidationError
from pydantic_settings import SettingsError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeout

from worker.api import (
    RedisUnavailable,
    Settings,
    env_var,
    get_settings,
    redact,
    redis_reason,
    redis_where,
    register_secret,
)

EXIT_FAILED = 1  # the command ran and the answer is "no": unhealthy, no such job or batch
EXIT_USAGE = 2  # a bad argument (click's own code)
EXIT_UNAVAILABLE = 69  # a service did not answer: Redis, S3, the gateway (sysexits EX_UNAVAILABLE)
EXIT_CONFIG = 78  # a setting or credential is wrong (sysexits EX_CONFIG)


@dataclass(frozen=True)
class Problem:
    message: str
    exit_code: int = EXIT_FAILED
    variable: str | None = None

    def line(self, as_json: bool = False) -> str:
        message = redact(" ".join(self.message.split()))  # one line, secrets scrubbed
        if not as_json:
            return f"error: {message}"
        body: dict[str, Any] = {"error": message, "exit_code": self.exit_code}
        if self.variable:
            body["variable"] = self.variable
        return json.dumps(body)


class CommandError(Exception):
    """A failure a command recognised itself (no such job, a missing bucket): printed as is."""

    def __init__(
        self, message: str, exit_code: int = EXIT_FAILED, variable: str | None = None
    ) -> None:
        super().__init__(message)
        self.problem = Problem(message, exit_code, variable)


def explain(exc: BaseException) -> Problem:
    """The one line (and exit code) for any exception a command can raise."""
    if isinstance(exc, CommandError):
        return exc.problem
    if isinstance(exc, ValidationError) and exc.title == Settings.__name__:
        return _settings_problem(exc)
    if isinstance(exc, SettingsError):
        m = re.search(r'field "(\w+)"', str(exc))
        var = env_var(m.group(1)) if m else None
        cause = exc.__cause__ or exc.__context__
        why = f": {cause}" if cause else ""
        return Problem(f"{var or 'a setting'} could not be read{why}", EXIT_CONFIG, var)
    if isinstance(exc, RedisUnavailable):
        var = env_var("redis_sentinels" if exc.where.startswith("Sentinel ") else "redis_url")
        if exc.auth:
            return Problem(f"{exc}; fix the password in {var}", EXIT_CONFIG, var)
        return Problem(f"{exc}; start Redis or fix {var}", EXIT_UNAVAILABLE, var)
    s3 = _s3_problem(exc)
    if s3 is not None:
        return s3
    if isinstance(exc, RedisConnectionError | RedisTimeout):  # Redis went away mid-command
        var = env_var("redis_url")
        return Problem(f"lost Redis: {redis_reason(exc)}; is it up? ({var})", EXIT_UNAVAILABLE, var)
    if isinstance(exc, ValidationError):  # a request (job, URI) rather than a setting
        return Problem(_validation_text(exc), EXIT_USAGE)
    if isinstance(exc, ValueError):
        return Problem(str(exc) or type(exc).__name__, EXIT_USAGE)
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return Problem(f"{exc.strerror}: choose another --port (or stop what listens)")
    return Problem(
        f"{type(exc).__name__}: {exc} (run `upscale --debug ...` for the traceback)", EXIT_FAILED
    )


def describe(exc: BaseException) -> str:
    """The message alone (for `upscale health`'s per-check details)."""
    return explain(exc).message


# -- settings ------------------------------------------------------------------------------
def _settings_problem(exc: ValidationError) -> Problem:
    parts, first = [], None
    for err in exc.errors(include_url=False):
        name = str(err["loc"][0]) if err["loc"] else ""
        var = env_var(name)
        first = first or var
        msg = str(err["msg"]).removeprefix("Value error, ")
        shown = _shown_value(name, err.get("input"))
        origin = "" if var in os.environ or not _in_dotenv(var) else " (in .env)"
        parts.append(f"{var}{origin}{shown} is invalid: {msg}")
    fix = f"fix or unset {first}" if len(parts) == 1 else "fix or unset them"
    return Problem("; ".join(parts) + f" - {fix}", EXIT_CONFIG, first)


def _shown_value(field: str, value: Any) -> str:
    info = Settings.model_fields.get(field)
    secret = info is not None and SecretStr in _types(info.annotation)
    if secret or not isinstance(value, str) or len(value) > 120:
        return ""
    if "://" in value:
        value = redis_where(value)  # never a password in a URL
    return f"={value!r}"


def _types(annotation: Any) -> set[Any]:
    args = getattr(annotation, "__args__", None)
    return {annotation, *(args or ())}


def _in_dotenv(var: str) -> bool:
    try:
        with open(".env", encoding="utf-8") as f:
            return any(re.match(rf"\s*(export\s+)?{re.escape(var)}\s*=", ln, re.I) for ln in f)
    except OSError:
        return False


def _validation_text(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(x) for x in e['loc']) or 'input'}: {e['msg']}"
        for e in exc.errors(include_url=False)
    )


# -- S3 / AWS ----------------------------------------------------------------------------------
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
}


def _s3_problem(exc: BaseException) -> Problem | None:
    """botocore errors, bare or inside a `worker.storage.StorageError` (which names the bucket
    or object as `what: ...`)."""
    from botocore import exceptions as bx  # here: boto is slow to import, most commands skip it

    from worker.api import AccessDenied, SourceMissing, StorageError

    subject = ""
    if isinstance(exc, StorageError):
        subject = str(exc).split(": ")[0]
        cause = exc.__cause__ or exc.__context__
        if not isinstance(cause, bx.BotoCoreError | bx.ClientError):
            kind = EXIT_CONFIG if isinstance(exc, AccessDenied) else EXIT_UNAVAILABLE
            return Problem(str(exc), EXIT_FAILED if isinstance(exc, SourceMissing) else kind)
        exc = cause
    keys = f"{env_var('s3_access_key_id')} and {env_var('s3_secret_access_key')}"
    if isinstance(
        exc, bx.NoCredentialsError | bx.PartialCredentialsError | bx.CredentialRetrievalError
    ):
        return Problem(
            f"no usable AWS credentials for S3 ({exc}): set {keys}, or AWS_PROFILE / an IAM role",
            EXIT_CONFIG,
            env_var("s3_access_key_id"),
        )
    if isinstance(exc, bx.ProfileNotFound):
        return Problem(f"{exc}: fix AWS_PROFILE", EXIT_CONFIG, "AWS_PROFILE")
    if isinstance(exc, bx.NoRegionError):
        var = env_var("s3_region")
        return Problem(f"no AWS region: set AWS_REGION (or {var})", EXIT_CONFIG, "AWS_REGION")
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectionError | bx.HTTPClientError):
        url = urlsplit(str(getattr(exc, "kwargs", {}).get("endpoint_url") or ""))
        endpoint = f"{url.scheme}://{url.netloc}" if url.netloc else "its endpoint"
        var = env_var("s3_endpoint_url")
        why = "no answer in time" if "timeout" in type(exc).__name__.lower() else "no connection"
        return Problem(
            f"cannot reach S3 at {endpoint} ({why}): check {var} (unset = AWS) and the network",
            EXIT_UNAVAILABLE,
            var,
        )
    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code") or "")
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        what = subject or f"S3 {exc.operation_name}"
        if code in _CREDENTIAL_CODES:
            return Problem(
                f"{what}: S3 rejected the credentials ({code}): check {keys} (or the AWS profile)",
                EXIT_CONFIG,
                env_var("s3_access_key_id"),
            )
        if code in ("NoSuchBucket",) or (status == "404" and "Bucket" in exc.operation_name):
            return Problem(f"{what}: no such bucket", EXIT_FAILED)
        if code in ("AccessDenied", "Forbidden", "AllAccessDisabled") or status == "403":
            return Problem(
                f"{what}: access denied ({code or status}): check the credentials and the "
                "IAM policy",
                EXIT_CONFIG,
            )
        detail = err.get("Message") or code or status
        return Problem(
            f"{what}: {detail}", EXIT_UNAVAILABLE if status.startswith("5") else EXIT_FAILED
        )
    if isinstance(exc, bx.BotoCoreError):
        return Problem(f"AWS: {exc}", EXIT_FAILED)
    return None


# -- click ------------------------------------------------------------------------------------
class Command(click.Command):
    """Runs a command; on failure prints `explain(exc)` as one line (JSON with `--json`)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:
            if ctx.find_root().params.get("debug"):
                raise
            _register_secrets()
            problem = explain(exc)
            click.echo(problem.line(bool(ctx.params.get("as_json"))), err=True)
            ctx.exit(problem.exit_code)


def _register_secrets() -> None:
    """So that `redact` scrubs the configured secrets from the line, whatever raised."""
    try:
        s = get_settings()
    except Exception:  # the settings themselves are what is wrong
        return
    for secret in s.secrets():
        register_secret(secret)


class Group(click.Group):
    command_class = Command
