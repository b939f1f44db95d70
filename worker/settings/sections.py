"""Every setting, declared once: its section, name, type, default, bounds, checks and meaning.

A section is what one component takes (`settings.redis`, `.s3`, ...): a frozen dataclass.
Each field with a default is a setting, read from the variable `UPSCALE_` + the section's
`ENV_PREFIX` + its name (`s3.region` <- `UPSCALE_S3_REGION`), or from the names its
`validation_alias` gives; a field without a default is derived by `Settings` (the in-flight
cap). `worker.settings.fields` lists them flat; `Settings` parses the environment into them;
`docs/configuration.md` is rendered from their descriptions (`python -m worker.settings.docs`).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, ConfigDict, Field, SecretStr
from pydantic.dataclasses import dataclass

from worker.contract import DEFAULT_DEST_TEMPLATE
from worker.settings.checks import (
    Duration,
    GatewayUrl,
    HttpUrl,
    LogLevel,
    OptionalHttpUrl,
    RedisUrl,
    WritableFormat,
)

Route = Literal["gateway", "ideogram"]
ImageMode = Literal["url", "data_url", "edits"]
ResponseFormat = Literal["url", "b64_json"]
# Where the direct route's `async` flag goes (where the legacy `/upscale` reads it is not published)
AsyncParam = Literal["form", "query", "image_request"]
# A direct-route submit whose answer never came (no generation id to read): what happens next
LostSubmit = Literal["fail", "resubmit"]

# Sections are frozen (read on every step of every job) and built by field name, although
# some fields are read from the environment under other names.
_BY_NAME = ConfigDict(validate_by_name=True)


class Section:
    """What every section says: where its settings are read from."""

    # `UPSCALE_` + this + a field's name is its variable (unless the field gives others)
    ENV_PREFIX: ClassVar[str] = ""


def default_inflight_cap(route: Route) -> int:
    """Ideogram organisations may have 10 images in progress; the gateway is limited per minute."""
    return 10 if route == "ideogram" else 64


@dataclass(frozen=True, kw_only=True, config=_BY_NAME)
class RedisSettings(Section):
    """Redis holds the queues, the job ledger and the fleet's flow control."""

    ENV_PREFIX: ClassVar[str] = "redis_"

    url: RedisUrl = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("REDIS_URL", "UPSCALE_REDIS_URL"),
        description="`redis://[:password@]host:port/db` (`rediss://` for TLS, `unix://` for a "
        "socket). Run Redis with AOF (`appendfsync always`) and `noeviction`: the queue and the "
        "ledger are the source of truth.",
    )
    sentinels: tuple[str, ...] = Field(
        default=(),
        description='Redis Sentinel, as "host:port" entries: the primary is found by name and '
        "the URL gives only the password and database. Redis Cluster is not supported (arq "
        "and the scripts use multi-key operations).",
    )
    sentinel_master: str = Field(default="mymaster", description="The primary's name in Sentinel.")
    wait_replicas: int | None = Field(
        default=None,
        ge=0,
        description="Replicas that must acknowledge a money write (an enqueue, a call journaled "
        "before it leaves, a saved answer) before it counts (Redis `WAIT`). Unset: every "
        "replica the primary reports connected (re-read every 10 s and whenever a `WAIT` falls "
        "short); `0`: never wait.",
    )
    wait_timeout_ms: int = Field(
        default=1000,
        ge=10,
        description="How long one `WAIT` for replicas may take before the connected replicas "
        "are counted again (a lagging replica is waited out, `WAIT` after `WAIT`).",
    )


@dataclass(frozen=True, kw_only=True, config=_BY_NAME)
class S3Settings(Section):
    """Where sources are read and outputs, staged inputs and reports are written (boto3)."""

    ENV_PREFIX: ClassVar[str] = "s3_"

    endpoint_url: OptionalHttpUrl = Field(
        default=None,
        description="An S3-compatible endpoint (MinIO, SeaweedFS); unset: AWS (boto3's own "
        "resolution).",
    )
    region: str | None = Field(
        default=None,
        description="Unset: `AWS_REGION`, else boto3's chain (`AWS_DEFAULT_REGION`, the "
        "profile). Also the SQS client's region.",
    )
    access_key_id: str | None = Field(
        default=None,
        description="With the secret below; unset: boto3's chain (environment, profile, IAM role).",
    )
    secret_access_key: SecretStr | None = Field(default=None, description="Never logged.")
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        default="auto", description="`path` for most self-hosted S3."
    )
    max_pool_connections: int = Field(
        default=32, ge=1, description="Connections per S3 client (boto3's pool)."
    )
    presign_ttl_s: int = Field(
        default=3600,
        ge=1,
        validation_alias="UPSCALE_PRESIGN_TTL_S",
        description="How long the presigned source URL sent to the upstream (`url` image "
        "mode) stays valid.",
    )
    upload_part_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1,
        validation_alias="UPSCALE_UPLOAD_PART_BYTES",
        description="Multipart upload part size for outputs and reports (S3's minimum, 5 MiB, "
        "if smaller); results stream in such parts, never held whole in memory.",
    )


@dataclass(frozen=True, kw_only=True, config=_BY_NAME)
class UpstreamSettings(Section):
    """The upscale API: route, URL, key, request shape, price and timeouts. Each upstream of a
    pool (`UPSCALE_UPSTREAMS`) has its own, taking what its entry leaves out from these."""

    route: Route = Field(
        default="gateway",
        description="`gateway` (OpenAI-compatible, `UPSCALE_GATEWAY_URL`) or `ideogram` (the "
        "direct multipart API, `UPSCALE_IDEOGRAM_URL`).",
    )
    gateway_url: GatewayUrl = Field(
        default="http://127.0.0.1:8080",
        description="The gateway's base URL (a trailing `/v1`, as the OpenAI SDK spells it, is "
        "accepted). The default is where `make run` / `make stack` start the simulator.",
    )
    ideogram_url: HttpUrl = Field(
        default="https://api.ideogram.ai/upscale",
        description="The direct route's upscale endpoint.",
    )
    api_key: SecretStr = Field(
        default=SecretStr(""),
        description="The gateway's bearer key, or the Ideogram `Api-Key` on the direct route. "
        "Never logged.",
    )
    model: str = Field(
        default="ideogram/ideogram-upscale",
        description="The model a job asks the gateway for, set at enqueue (`upscale health` "
        "checks the gateway offers it).",
    )
    gateway_path: str = Field(
        default="/v1/images/generations",
        description="The gateway's JSON endpoint (`url` and `data_url` image modes).",
    )
    gateway_edits_path: str = Field(
        default="/v1/images/edits",
        description="The gateway's multipart endpoint (`edits` image mode).",
    )
    gateway_jobs_path: str = Field(
        default="/v1/jobs/{id}",
        description="Where an async (202) gateway job is polled; `{id}` is its id.",
    )
    image_mode: ImageMode = Field(
        default="url",
        description="How the gateway gets the image: `url` (a presigned S3 GET), `data_url` "
        "(inline base64; for an upstream that cannot reach S3) or `edits` (multipart to the "
        "edits endpoint).",
    )
    image_field: str = Field(
        default="image", description="The JSON field that carries the image (`url`, `data_url`)."
    )
    response_format: ResponseFormat = Field(
        default="url", description="What the gateway returns: `url` or `b64_json`."
    )
    price_usd: float = Field(
        default=0.06,
        ge=0,
        description="Billed per output image: spend, budgets and reports count with it.",
    )
    result_hosts: tuple[str, ...] = Field(
        default=(),
        description="Hosts result URLs may be downloaded from; empty: the upstream's own host. "
        "Downloads never follow redirects.",
    )
    connect_timeout_s: float = Field(
        default=10.0, gt=0, description="Connect timeout of upstream calls."
    )
    read_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="Read timeout of upstream calls; a call that times out after it was sent "
        "counts as possibly billed and is asked again under its idempotency key.",
    )
    async_poll_interval_s: float = Field(
        default=3.0, ge=3.0, description="How often an async (202) job is polled (at least 3 s)."
    )
    ideogram_async: bool = Field(
        default=True,
        description="Submit to the direct route asynchronously: the generation id is journaled "
        "before the wait and the generation is read (never submitted again) until it ends. "
        "Off: synchronous calls, whose read timeout is at least `UPSCALE_IDEOGRAM_GENERATION_S`.",
    )
    ideogram_async_param: AsyncParam = Field(
        default="form",
        description="Where the `async` flag goes: a `form` field, a `query` parameter or a key "
        "of `image_request` (the legacy `/upscale` page does not say).",
    )
    ideogram_generations_path: str = Field(
        default="/v2/generations/{id}",
        description="Where a generation is read, on the host of `UPSCALE_IDEOGRAM_URL`; `{id}` is "
        "its generation id (v1: `/v1/generations/{id}`).",
    )
    ideogram_poll_interval_s: float = Field(
        default=2.0,
        ge=0.2,
        description="How often a direct-route generation is read (polls are free, limited per "
        "organisation).",
    )
    ideogram_generation_s: float = Field(
        default=300.0,
        gt=0,
        description="The longest a direct-route generation runs: a synchronous call's read "
        "timeout is at least this (a timeout does not stop the work); `resubmit` waits this "
        "long after a lost submit.",
    )
    ideogram_lost_submit: LostSubmit = Field(
        default="fail",
        description="A direct-route submit whose answer never came has no generation id to read "
        "and may run and be billed. `fail`: the job fails `SubmitLost` (counted as possibly "
        "billed; `upscale retry` buys it again). `resubmit`: submit again once "
        "`UPSCALE_IDEOGRAM_GENERATION_S` has passed since it left (may buy the image twice).",
    )

    @property
    def api_key_value(self) -> str:
        return self.api_key.get_secret_value()

    @property
    def base_url(self) -> str:
        """The URL of this key's route."""
        return self.gateway_url if self.route == "gateway" else self.ideogram_url

    def allowed_result_hosts(self) -> set[str]:
        hosts = {h.lower() for h in self.result_hosts}
        if not hosts:
            hosts.add((urlsplit(self.base_url).hostname or "").lower())
        return hosts


@dataclass(frozen=True, kw_only=True, config=_BY_NAME)
class UpstreamFlowSettings(Section):
    """One upstream's limits (each upstream of the pool has its own)."""

    rate_rpm: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        default=600,
        description="The upstream's requests per minute, shared by all workers: where pacing "
        "starts and its ceiling (`auto`: the upstream's `x-ratelimit-limit-requests`). A "
        "smaller limit the upstream reports wins.",
    )
    inflight_cap: int = Field(
        description="The in-flight cap in force: `UPSCALE_MAX_INFLIGHT`, else the route's."
    )
    rate_burst_factor: float | None = Field(
        default=None,
        ge=0,
        description="Unset: no burst cap of our own (a burst rule is learned from a 429). "
        "`<= 1`: even pacing, 60/RPM s apart. `> 1`: at most factor x RPM per burst window.",
    )
    rate_burst_window_s: float = Field(
        default=10.0, gt=0, description="The burst window (set, or learned from a 429)."
    )
    burst_learn_s: float = Field(
        default=600.0, gt=0, description="How long a burst cap learned from a 429 holds."
    )
    rate_window_margin_s: float = Field(
        default=0.5,
        description="Added to every window the fleet counts over (60 s, the burst window): "
        "the network jitter between a call leaving and the upstream counting it.",
    )

    @property
    def rpm_ceiling(self) -> int:
        """The configured tier (0 = `auto`: whatever the upstream's headers say)."""
        return 0 if self.rate_rpm == "auto" else self.rate_rpm

    def for_upstream(self, **changes: Any) -> UpstreamFlowSettings:
        """Just the per-upstream limits (of a fleet section: the default upstream's), with
        `changes`."""
        limits = {f.name: getattr(self, f.name) for f in fields(UpstreamFlowSettings)}
        return UpstreamFlowSettings(**{**limits, **changes})


@dataclass(frozen=True, kw_only=True, config=_BY_NAME)
class FlowSettings(UpstreamFlowSettings):
    """The fleet-wide flow control, in Redis: in-flight slots, pause, circuit, budgets, lanes.
    The per-upstream limits it inherits are the default upstream's."""

    max_inflight: int | None = Field(
        default=None,
        ge=1,
        description="Fleet-wide cap on upstream calls in flight. Unset: 64 on the gateway "
        "(limited per minute), 10 on the Ideogram route (10 images in progress per "
        "organisation).",
    )
    lease_s: int = Field(
        default=20,
        ge=3,
        description="An in-flight slot's lease, renewed while its call runs: a dead worker's "
        "slot returns after it.",
    )
    pause_poll_s: float = Field(
        default=2.0,
        gt=0,
        description="How soon a waiting job or an idle worker looks again while the fleet is "
        "paused or full (over a budget cap: 5x this).",
    )
    canary_interval_s: float = Field(
        default=0.0,
        description="While an upstream (or its wallet) is paused by an empty wallet, a spend "
        "cap, a 401 or a 403: one real call per interval (one per wallet), the first a full "
        "interval after the pause (0: only `upscale resume` lifts it). A daily limit is never "
        "probed: it lifts itself when the upstream said it resets.",
    )
    group_max_inflight: int = Field(
        default=10,
        ge=1,
        description="The in-flight cap of an `inflight_group` of the pool (Ideogram: images in "
        "progress per organisation, across its keys and endpoints) unless its entries say; a "
        "smaller cap a 429 names (`max_inflight_requests`) wins.",
    )
    circuit_threshold: int = Field(
        default=5,
        ge=1,
        description="Upstream server errors (5xx) in a row that open the circuit: no calls.",
    )
    circuit_open_s: float = Field(
        default=30.0,
        description="How long an open circuit stays open before one probe call (half-open).",
    )
    budget_total_usd: float | None = Field(
        default=None,
        description="Cap on all spend (billed and possibly billed); a job over a cap waits.",
    )
    budget_daily_usd: float | None = Field(
        default=None, description="Cap on spend per UTC day; a job over it waits."
    )
    budget_batch_usd: float | None = Field(
        default=None,
        description="Cap on each batch's spend (`upscale backfill --budget` sets one batch's).",
    )
    bulk_floor: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Share of the rate the bulk lane keeps while live work waits.",
    )


@dataclass(frozen=True, kw_only=True, config=_BY_NAME)
class JobsSettings(Section):
    """A job and its data path: destination, output, attempts, timeouts, concurrency, size caps,
    reports and retention."""

    # completion reports go here in the batch's first destination bucket unless
    # `UPSCALE_REPORT_URI` says otherwise (the recursion guard ignores it in every bucket)
    REPORT_PREFIX: ClassVar[str] = ".upscale-reports/"

    dest_template: str = Field(
        default=DEFAULT_DEST_TEMPLATE,
        description="Where an output goes; variables `bucket key key_stem ext basename "
        "dirname` (`--dest` / `--dest-template` per job).",
    )
    output_format: WritableFormat = Field(
        default="source",
        description="`source` (the source's format), `upstream` (its bytes as they are), or "
        "`png` / `jpeg` / `webp` / `avif` (if this Pillow writes it). Set it for producers "
        "too: a fixed format is the destination's `{ext}`.",
    )
    output_quality: int = Field(
        default=92, ge=1, le=100, description="Quality of re-encoded JPEG, lossy WebP and AVIF."
    )
    max_attempts: int = Field(
        default=5,
        ge=1,
        description="Real failures (5xx, timeouts) before a job fails; waiting never counts.",
    )
    backoff_base_s: float = Field(
        default=2.0, description="Backoff after a failed attempt: exponential, full jitter."
    )
    backoff_max_s: float = Field(default=300.0, description="The backoff's ceiling.")
    job_timeout_s: int = Field(
        default=600,
        ge=1,
        description="arq's job timeout, and the SIGTERM drain time; crash recovery does not "
        "wait for it (run leases).",
    )
    run_lease_s: int = Field(
        default=20,
        ge=3,
        le=300,
        description="A job run's lease, renewed by its worker's heartbeat; any live worker "
        "puts an expired run back on its queue.",
    )
    max_jobs: int = Field(default=16, ge=1, description="Concurrent jobs per worker process.")
    bulk_max_jobs: int | None = Field(
        default=None,
        ge=1,
        description="Concurrent bulk-lane jobs per process; unset: `UPSCALE_MAX_JOBS`.",
    )
    max_input_bytes: int = Field(
        default=10 * 1024 * 1024,
        ge=1,
        description="The upstream's input cap (its docs say 25 MB, an older spec 10 MB).",
    )
    max_source_bytes: int = Field(
        default=200 * 1024 * 1024,
        ge=1,
        description="Largest source read; one over the input cap is re-encoded to fit.",
    )
    convert_inputs: bool = Field(
        default=True,
        description="TIFF/BMP/GIF/... become PNG before the call (`false`: such inputs fail).",
    )
    reencode_oversize: bool = Field(
        default=True,
        description="An input over the cap is re-encoded to fit: lossless PNG/WebP first, "
        "then JPEG q95...q85 (`false`: it fails).",
    )
    max_result_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=1,
        description="Largest result downloaded; a bigger one fails the job and keeps the paid "
        "result for `upscale retry`.",
    )
    report_uri: str | None = Field(
        default=None,
        pattern=r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$",
        description="Where batch completion reports go, as `s3://bucket/prefix/` (a folder per "
        "batch). Unset: `.upscale-reports/<batch>/` in the batch's first destination bucket.",
    )
    ledger_retention_s: Duration = Field(
        default=86_400,
        ge=1,
        validation_alias=AliasChoices("UPSCALE_LEDGER_RETENTION", "UPSCALE_LEDGER_RETENTION_S"),
        description="How long a final job record stays in Redis (a batch's records: after its "
        "report is written). Records holding money never expire; after expiry the output's "
        "job-id metadata still prevents a second purchase.",
    )

    def report_root(self, dest_bucket: str) -> str:
        """Where the folders of batch reports go: `s3://bucket/prefix/`."""
        root = self.report_uri or f"s3://{dest_bucket}/{self.REPORT_PREFIX}"
        return root if root.endswith("/") else root + "/"

    def lane_max_jobs(self, lane: str) -> int:
        """Concurrent jobs per process on `lane` (bulk: `bulk_max_jobs`, else `max_jobs`)."""
        return self.max_jobs if lane == "live" else self.bulk_max_jobs or self.max_jobs


@dataclass(frozen=True, kw_only=True, config=_BY_NAME)
class CallbackSettings(Section):
    """Completion notices: where they may go and how they are signed and retried."""

    ENV_PREFIX: ClassVar[str] = "callback_"

    secret: SecretStr = Field(
        default=SecretStr(""),
        description="HMAC-SHA256 key that signs notices (`X-Upscale-Signature`). Never logged.",
    )
    hosts: tuple[str, ...] = Field(
        default=(),
        description="Hosts notices may be sent to (`.example.com`: any subdomain); empty: none.",
    )
    allow_http: bool = Field(default=False, description="Allow plain-http callback URLs.")
    max_tries: int = Field(default=6, ge=1, description="Delivery tries per notice.")
    backoff_s: float = Field(
        default=2.0, description="Base of the exponential backoff between tries (at most 300 s)."
    )


@dataclass(frozen=True, kw_only=True, config=_BY_NAME)
class ProducerSettings(Section):
    """What only producers read: the HTTP token, event decoding, the recursion guard."""

    api_token: SecretStr = Field(
        default=SecretStr(""),
        description="Bearer token of `upscale webhook` (events and HTTP enqueue; empty: every "
        "endpoint but `/healthz` answers 503) and of the status page (its Resume and Retry "
        "need it; set, its reads too).",
    )
    eventbridge_keys_encoded: bool = Field(
        default=False, description="URL-decode EventBridge object keys (AWS sends them raw)."
    )
    guard_prefixes: tuple[str, ...] = Field(
        default=(),
        description="Extra `s3://bucket/prefix` locations that hold outputs: events there "
        "never become jobs.",
    )


@dataclass(frozen=True, kw_only=True, config=_BY_NAME)
class OpsSettings(Section):
    """Logs, the worker's HTTP port, readiness, reconciling with the upstream's books."""

    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="`auto`: console on a terminal, else JSON lines."
    )
    log_level: LogLevel = Field(
        default="INFO", description="DEBUG, INFO, WARNING, ERROR or CRITICAL (any case)."
    )
    metrics_port: int | None = Field(
        default=None,
        description="Worker HTTP port for `/metrics`, `/healthz`, `/readyz` (`--processes N`: "
        "port + i per child); unset: off.",
    )
    health_bucket: str | None = Field(
        default=None,
        description="A bucket readiness checks may HEAD (S3 reachable and allowed); unset: "
        "the S3 endpoint answering.",
    )
    reconcile_threshold_usd: float = Field(
        default=0.01,
        ge=0,
        description="`upscale reconcile` exits 1 when the ledger and the upstream's books "
        "differ by more than this (USD) on a day (gateway: a day and batch).",
    )
    reconcile_admin_key: SecretStr | None = Field(
        default=None,
        description="An Ideogram organisation admin's key, for `upscale reconcile` to read "
        "`GET /v2/account/usage` (other keys are answered 404); unset: the Ideogram route's "
        "own key is tried. Never logged.",
    )


# The sections, in the order the documentation lists them: `settings.<name>`.
SECTIONS: dict[str, type[Section]] = {
    "redis": RedisSettings,
    "s3": S3Settings,
    "upstream": UpstreamSettings,
    "flow": FlowSettings,
    "jobs": JobsSettings,
    "callbacks": CallbackSettings,
    "producers": ProducerSettings,
    "ops": OpsSettings,
}
