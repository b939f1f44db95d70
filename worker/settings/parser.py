"""`Settings`: the environment parsed in one flat model (the fields of `SettingsFields`), so a
bad value is reported by its variable (`env_var`); its checks, and the sections components
take (`settings.redis`, `.s3`, `.upstream`, `.flow`, `.jobs`, `.callbacks`, `.producers`,
`.ops`). Nothing is read at import: `get_settings()` parses on first call.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import fields
from functools import lru_cache
from types import UnionType
from typing import TYPE_CHECKING, Any, Self, TypeVar, Union, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import AliasChoices, PrivateAttr, ValidationInfo, field_validator

from worker.formats import OutputFormat, check_setting
from worker.settings.env import SettingsFields
from worker.settings.pool import UpstreamSpec
from worker.settings.sections import (
    CallbackSettings,
    FlowSettings,
    JobsSettings,
    OpsSettings,
    ProducerSettings,
    RedisSettings,
    S3Settings,
    UpstreamSettings,
    default_inflight_cap,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_S = TypeVar("_S", bound="DataclassInstance")  # a section


class Settings(SettingsFields):
    """The settings: every field of `SettingsFields`, checked, and read as sections (built on
    first read, then kept: a job reads them on every step)."""

    _sections: dict[str, Any] = PrivateAttr(default_factory=dict)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copy = super().model_copy(update=update, deep=deep)
        copy._sections = {}  # the copy's fields differ: its sections are its own
        return copy

    @field_validator("*", mode="before")
    @classmethod
    def _json_value(cls, v: Any, info: ValidationInfo) -> Any:
        """List (and dict) settings come from the environment as JSON: say so when they are not."""
        if not isinstance(v, str) or not info.field_name:
            return v
        if info.field_name == "upstreams" and not v.lstrip().startswith("["):
            return v  # a file name: `_upstreams_file`
        kinds = {get_origin(a) or a for a in _flat(cls.model_fields[info.field_name].annotation)}
        if not kinds & {list, dict, set, tuple}:
            return v
        try:
            return json.loads(v)
        except ValueError:
            if dict in kinds:
                raise ValueError('expected a JSON object, e.g. {"name": "value"}') from None
            example = json.dumps([x.strip() for x in v.split(",") if x.strip()] or ["..."])
            raise ValueError(f"expected a JSON list, e.g. '{example}'") from None

    @field_validator("upstreams", mode="before")
    @classmethod
    def _upstreams_file(cls, v: Any) -> Any:
        """`UPSCALE_UPSTREAMS` may name a JSON file (e.g. a mounted ConfigMap) instead."""
        if isinstance(v, str) and v.strip() and not v.lstrip().startswith("["):
            try:
                with open(v.strip(), encoding="utf-8") as f:
                    return json.load(f)
            except OSError as e:
                raise ValueError(
                    f"expected a JSON list or a readable file ({e.strerror})"
                ) from None
            except ValueError as e:
                raise ValueError(f"the file {v.strip()} is not JSON ({e})") from None
        return v

    @field_validator("upstreams")
    @classmethod
    def _upstream_names(cls, v: list[UpstreamSpec]) -> list[UpstreamSpec]:
        names = [u.name for u in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"upstream names must be unique: {', '.join(dup)} appears twice")
        for u in v:
            if u.url is not None:
                _http_url(u.url)
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str) -> str:
        if urlsplit(v).scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                "expected redis://[:password@]host:port/db (rediss:// for TLS, unix:// for a socket)"
            )
        return v

    @field_validator("gateway_url")
    @classmethod
    def _gateway_url(cls, v: str) -> str:
        # The gateway's base URL: "…/v1" (how the OpenAI SDK spells it) is accepted as well.
        v = _http_url(v).rstrip("/")
        return v.removesuffix("/v1") if v.endswith("/v1") else v

    @field_validator("ideogram_url", "s3_endpoint_url")
    @classmethod
    def _urls(cls, v: str | None) -> str | None:
        return None if v is None else _http_url(v)

    @field_validator("output_format", mode="before")
    @classmethod
    def _output_format_spelling(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip().lower()
            return "jpeg" if v == "jpg" else v
        return v

    @field_validator("output_format")
    @classmethod
    def _output_format_writable(cls, v: OutputFormat) -> OutputFormat:
        check_setting(v)
        return v

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, v: str) -> str:
        if v.upper() not in _LEVELS:
            raise ValueError(f"expected one of {', '.join(_LEVELS)}")
        return v.upper()

    # --- the sections: what each component takes ---------------------------------------
    @property
    def redis(self) -> RedisSettings:
        return self._cached("redis", lambda: _section(RedisSettings, self, "redis_"))

    @property
    def s3(self) -> S3Settings:
        return self._cached("s3", lambda: _section(S3Settings, self, "s3_"))

    @property
    def upstream(self) -> UpstreamSettings:
        """The upstream of the flat settings (pool member `default`, or what entries of
        `UPSCALE_UPSTREAMS` leave out)."""
        return self._cached("upstream", lambda: _section(UpstreamSettings, self))

    @property
    def flow(self) -> FlowSettings:
        return self._cached(
            "flow",
            lambda: _section(
                FlowSettings,
                self,
                inflight_cap=self.max_inflight or default_inflight_cap(self.route),
            ),
        )

    @property
    def jobs(self) -> JobsSettings:
        return self._cached("jobs", lambda: _section(JobsSettings, self))

    @property
    def callbacks(self) -> CallbackSettings:
        return self._cached("callbacks", lambda: _section(CallbackSettings, self, "callback_"))

    @property
    def producers(self) -> ProducerSettings:
        return self._cached("producers", lambda: _section(ProducerSettings, self))

    @property
    def ops(self) -> OpsSettings:
        return self._cached("ops", lambda: _section(OpsSettings, self))

    def _cached(self, name: str, build: Callable[[], _S]) -> _S:
        if name not in self._sections:
            self._sections[name] = build()
        section: _S = self._sections[name]
        return section

    def secrets(self) -> list[str]:
        """Every secret value set (never to be logged)."""
        values = (self.api_key, self.callback_secret, self.api_token, self.s3_secret_access_key)
        return [v.get_secret_value() for v in values if v is not None and v.get_secret_value()]


_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _flat(annotation: Any) -> tuple[Any, ...]:
    if get_origin(annotation) in (Union, UnionType):
        return get_args(annotation)
    return (annotation,)


def _http_url(v: str) -> str:
    v = v.strip()
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("expected an http:// or https:// URL")
    return v


def _section(cls: type[_S], flat: Settings, prefix: str = "", **derived: Any) -> _S:
    """Section `cls` from the flat settings: each field from the flat field `prefix` + its
    name, else its name (`redis.url` <- `redis_url`, `s3.presign_ttl_s` <- `presign_ttl_s`),
    or from `derived`; lists become tuples (sections are frozen)."""
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in derived:
            values[f.name] = derived[f.name]
            continue
        name = prefix + f.name if prefix + f.name in Settings.model_fields else f.name
        value = getattr(flat, name)
        values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def env_var(name: str) -> str:
    """The environment variable that sets a setting, from its field (or alias) name:
    `rate_rpm` -> `UPSCALE_RATE_RPM`, `redis_url` -> `REDIS_URL` (or the alias actually set)."""
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias
        names = (
            [c for c in alias.choices if isinstance(c, str)]
            if isinstance(alias, AliasChoices)
            else [alias]
            if isinstance(alias, str)
            else []
        )
        if name == field or name in names:
            names = names or [f"{Settings.model_config.get('env_prefix', '')}{field}".upper()]
            return next((n for n in names if n in os.environ), names[0])
    return name


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
