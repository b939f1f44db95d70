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


# -- S3 / SQS (AWS) -----------------------------------------------------------------------------
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
    "InvalidClientTokenId", "UnrecognizedClientException",
}  # fmt: skip
_NO_QUEUE_CODES = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}


@dataclass(frozen=True)
class Endpoint:
    """The AWS service a command talked to, where, where that came from (a flag, a variable,
    the profile, AWS's default), the setting to change, and the region: what an error names."""

    service: str  # "S3" or "SQS"
    url: str  # "" = AWS's default, not known
    origin: str
    variable: str
    region: str | None = None
    region_origin: str = ""

    def where(self, *, with_region: bool = False) -> str:
        at = f"{self.service} at {self.url or 'its endpoint'} (from {self.origin}"
        if with_region:
            origin = self.region_origin or "boto3's chain"
            at += f"; region {self.region} from {origin}" if self.region else "; no region"
        return at + ")"


def endpoint_of(
    service: str, *, used: str | None = None, flag: str | None = None, region: str | None = None
) -> Endpoint:
    """Where the `service` ("s3" / "sqs") endpoint came from, in botocore's order: the command's
    flag, `UPSCALE_S3_ENDPOINT_URL` (S3), `AWS_ENDPOINT_URL_<SERVICE>`, `AWS_ENDPOINT_URL`,
    the AWS profile's `endpoint_url`, else AWS's own endpoint for the region."""
    svc = service.upper()
    ours = env_var("s3_endpoint_url") if svc == "S3" else "--endpoint-url"
    env = next(
        (v for v in (f"AWS_ENDPOINT_URL_{svc}", "AWS_ENDPOINT_URL") if os.environ.get(v)), ""
    )
    aws_host = (urlsplit(used or "").hostname or "").endswith((".amazonaws.com", ".api.aws"))
    if flag or (svc == "S3" and _s3_setting("endpoint_url")):
        origin, var = ours, ours
    elif env:
        origin, var = env, env
    elif used and not aws_host:
        profile = os.environ.get("AWS_PROFILE") or "default"
        origin, var = f"the AWS profile {profile!r} (endpoint_url)", "AWS_PROFILE"
    else:
        hint = f"{ours} or AWS_ENDPOINT_URL_{svc}" if svc == "S3" else ours
        origin, var = f"AWS's default (set {hint} for another)", ours
    url = used or flag or (_s3_setting("endpoint_url") if svc == "S3" else None) or ""
    where = urlsplit(url or os.environ.get(env, ""))
    reg, reg_origin = _region_origin(region)
    shown = f"{where.scheme}://{where.netloc}" if where.netloc else ""
    return Endpoint(svc, shown, origin, var, reg, reg_origin)


def _s3_setting(name: str) -> str | None:
    try:
        return getattr(get_settings().s3, name)  # type: ignore[no-any-return]
    except Exception:  # the settings themselves are broken: another line names that
        return None


def _region_origin(used: str | None) -> tuple[str | None, str]:
    """The region and the setting it came from (the same chain `make_s3_client` follows)."""
    for value, origin in (
        (_s3_setting("region"), env_var("s3_region")),
        (os.environ.get("AWS_REGION"), "AWS_REGION"),
        (os.environ.get("AWS_DEFAULT_REGION"), "AWS_DEFAULT_REGION"),
    ):
        if value and (used is None or value == used):
            return value, origin
    return used, "the AWS profile" if used else ""


class AwsCallFailed(Exception):
    """A botocore error of a client other than the worker's S3 storage (the SQS consumer's)."""

    def __init__(self, endpoint: Endpoint, subject: str, cause: BaseException) -> None:
        super().__init__(f"{endpoint.service} {subject}: {cause}")
        self.endpoint, self.subject, self.cause = endpoint, subject, cause


def _s3_problem(exc: BaseException) -> Problem | None:
    """botocore errors, bare or inside a `worker.storage.StorageError` (which names the bucket
    or object as `what: ...`) or an `AwsCallFailed` (which names its service and endpoint)."""
    from botocore import exceptions as bx  # here: boto is slow to import, most commands skip it

    from worker.api import AccessDenied, SourceMissing, StorageError

    subject = ""
    endpoint: Endpoint | None = None
    if isinstance(exc, AwsCallFailed):
        endpoint, subject, exc = exc.endpoint, exc.subject, exc.cause
    elif isinstance(exc, StorageError):
        subject = str(exc).split(": ")[0]
        cause = exc.__cause__ or exc.__context__
        if not isinstance(cause, bx.BotoCoreError | bx.ClientError):
            kind = EXIT_CONFIG if isinstance(exc, AccessDenied) else EXIT_UNAVAILABLE
            return Problem(str(exc), EXIT_FAILED if isinstance(exc, SourceMissing) else kind)
        exc = cause
    if not isinstance(exc, bx.BotoCoreError | bx.ClientError):
        return None
    if endpoint is None:
        used = str(getattr(exc, "kwargs", {}).get("endpoint_url") or "") or None
        endpoint = endpoint_of("s3", used=used)
    return _aws_problem(exc, endpoint, subject)


def _aws_problem(exc: BaseException, ep: Endpoint, subject: str) -> Problem:
    from botocore import exceptions as bx

    svc, key_var = ep.service, env_var("s3_access_key_id")
    keys = f"{key_var} and {env_var('s3_secret_access_key')}"
    if svc != "S3":  # the SQS client takes boto3's chain
        keys, key_var = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"
    if isinstance(
        exc, bx.NoCredentialsError | bx.PartialCredentialsError | bx.CredentialRetrievalError
    ):
        why = f"no usable AWS credentials for {svc} ({exc})"
        return Problem(f"{why}: set {keys}, or AWS_PROFILE / an IAM role", EXIT_CONFIG, key_var)
    if isinstance(exc, bx.ProfileNotFound):
        return Problem(f"{exc}: fix AWS_PROFILE", EXIT_CONFIG, "AWS_PROFILE")
    if isinstance(exc, bx.NoRegionError):
        fix = f"set AWS_REGION (or {env_var('s3_region')})"
        return Problem(f"no AWS region for {svc}: {fix}", EXIT_CONFIG, "AWS_REGION")
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectionError | bx.HTTPClientError):
        why = "no answer in time" if "timeout" in type(exc).__name__.lower() else "no connection"
        fix = ep.variable + (" (unset = AWS)" if ep.variable.startswith("UPSCALE_") else "")
        at = ep.where(with_region=ep.origin.startswith("AWS's default"))
        line = f"cannot reach {at} ({why}): check {fix} and the network"
        return Problem(line, EXIT_UNAVAILABLE, ep.variable)
    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code") or "")
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        what = (
            subject if svc == "S3" and subject else f"{svc} {exc.operation_name} {subject}".strip()
        )
        if code in _CREDENTIAL_CODES:
            why = f"{ep.where()} rejected the credentials ({code})"
            return Problem(
                f"{what}: {why}: check {keys} (or the AWS profile)", EXIT_CONFIG, key_var
            )
        if code in _NO_QUEUE_CODES:
            return Problem(_no_queue(what, ep, subject), EXIT_FAILED, "AWS_REGION")
        if code in ("NoSuchBucket",) or (status == "404" and "Bucket" in exc.operation_name):
            return Problem(f"{what}: no such bucket at {ep.where(with_region=True)}", EXIT_FAILED)
        if code in ("AccessDenied", "Forbidden", "AllAccessDisabled") or status == "403":
            why = f"access denied ({code or status}) by {ep.where()}"
            return Problem(f"{what}: {why}: check the credentials and the IAM policy", EXIT_CONFIG)
        line = f"{what}: {err.get('Message') or code or status} ({ep.where(with_region=True)})"
        return Problem(line, EXIT_UNAVAILABLE if status.startswith("5") else EXIT_FAILED)
    return Problem(f"{svc}: {exc} ({ep.where(with_region=True)})", EXIT_FAILED)


def _no_queue(what: str, ep: Endpoint, queue_url: str) -> str:
    """A queue another region holds looks like no queue at all: say which region we asked."""
    named = (re.findall(r"^https?://sqs[.-]([a-z0-9-]+)\.amazonaws\.com", queue_url) or [""])[0]
    line = f"{what}: the queue does not exist at {ep.where(with_region=True)}"
    if named and named != ep.region:
        return line + f"; the queue URL names region {named}: set AWS_REGION={named}"
    return line + "; check --queue-url and the region (AWS_REGION): a queue lives in one region"


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
