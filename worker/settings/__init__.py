"""All configuration, from the environment (prefix `UPSCALE_`; `REDIS_URL` also accepted).

Each setting is declared once, in its section (`settings.redis`, `.s3`, `.upstream`, `.flow`,
`.jobs`, `.callbacks`, `.producers`, `.ops`: small frozen dataclasses holding only their
fields); `Settings` parses the environment (and `.env`) into all of them at once, so a bad
value is reported by its variable. Nothing here is read at import: `get_settings()` parses on
first call.

- `sections`: the section types, and every setting in them (name, type, default, bounds,
  variable, meaning);
- `checks`: the checks and spellings a setting's type carries;
- `fields`: the settings as one flat list (flat name, variables);
- `parser`: `Settings` (those fields, the pool, the sections), `env_var`, `get_settings`;
- `pool`: `UpstreamSpec`, one entry of the pool of keys (`UPSCALE_UPSTREAMS`);
- `docs`: `docs/configuration.md`, rendered from the declarations (`make docs`).
"""

from worker.settings.parser import Settings, env_var, get_settings
from worker.settings.pool import UpstreamSpec
from worker.settings.sections import (
    CallbackSettings,
    FlowSettings,
    ImageMode,
    JobsSettings,
    OpsSettings,
    ProducerSettings,
    RedisSettings,
    ResponseFormat,
    Route,
    S3Settings,
    UpstreamFlowSettings,
    UpstreamSettings,
    default_inflight_cap,
)

__all__ = [
    "CallbackSettings",
    "FlowSettings",
    "ImageMode",
    "JobsSettings",
    "OpsSettings",
    "ProducerSettings",
    "RedisSettings",
    "ResponseFormat",
    "Route",
    "S3Settings",
    "Settings",
    "UpstreamFlowSettings",
    "UpstreamSettings",
    "UpstreamSpec",
    "default_inflight_cap",
    "env_var",
    "get_settings",
]
