"""All configuration, from the environment (prefix `UPSCALE_`; `REDIS_URL` also accepted).

`Settings` parses the environment (and `.env`) in one flat model, so a bad value is reported by
its variable; components take its sections (`settings.redis`, `.s3`, `.upstream`, `.flow`,
`.jobs`, `.callbacks`, `.producers`, `.ops`): small frozen models holding only their fields.
Nothing here is read at import: `get_settings()` parses on first call.

- `env`: every variable (field, default, bounds), as `SettingsFields`;
- `parser`: `Settings` (those fields, their checks, the sections), `env_var`, `get_settings`;
- `sections`: the section types and the route's default in-flight cap;
- `pool`: `UpstreamSpec`, one entry of the pool of keys (`UPSCALE_UPSTREAMS`).
"""

from worker.settings.parser import Settings, env_var, get_settings
from worker.settings.pool import UpstreamSpec
from worker.settings.sections import (
    CallbackSettings,
    FlowSettings,
    ImageMode,
    JobsSettings,
    KeyFlowSettings,
    OpsSettings,
    ProducerSettings,
    RedisSettings,
    ResponseFormat,
    Route,
    S3Settings,
    UpstreamSettings,
    default_inflight_cap,
)

__all__ = [
    "CallbackSettings",
    "FlowSettings",
    "ImageMode",
    "JobsSettings",
    "KeyFlowSettings",
    "OpsSettings",
    "ProducerSettings",
    "RedisSettings",
    "ResponseFormat",
    "Route",
    "S3Settings",
    "Settings",
    "UpstreamSettings",
    "UpstreamSpec",
    "default_inflight_cap",
    "env_var",
    "get_settings",
]
