"""`Settings`: the environment parsed in one flat model, whose fields are the declarations of
`sections` (`worker.settings.fields`), so a bad value is reported by its variable (`env_var`),
all bad values at once; read as the sections components take (`settings.redis`, `.s3`,
`.upstream`, `.flow`, `.jobs`, `.callbacks`, `.producers`, `.ops`). Nothing is read at import:
`get_settings()` parses on first call.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from functools import lru_cache
from types import UnionType
from typing import TYPE_CHECKING, Any, Self, TypeVar, Union, get_args, get_origin

from pydantic import AliasChoices, Field, PrivateAttr, SecretStr, ValidationInfo, create_model
from pydantic import field_validator as check
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.settings.checks import http_url
from worker.settings.fields import SETTINGS, flat_fields
from worker.settings.pool import UpstreamSpec
from worker.settings.sections import (
    SECTIONS,
    CallbackSettings,
    FlowSettings,
    JobsSettings,
    OpsSettings,
    ProducerSettings,
    RedisSettings,
    S3Settings,
    Section,
    UpstreamSettings,
    default_inflight_cap,
)

_S = TypeVar("_S", bound=Section)

# The declared settings as fields (built at import from the declarations; for the type checker
# `Settings` has only its own: components read the sections, which it types).
if TYPE_CHECKING:
    _Declared = BaseSettings
else:
    _Declared = create_model("_Declared", __base__=BaseSettings, **flat_fields())


class Settings(_Declared):
    """Every setting (the fields of the sections, flat, plus the pool), checked, and read as
    sections: built on first read, then kept (a job reads them on every step)."""

    # `.env` in the working directory is read too (the environment wins). List settings are
    # JSON, decoded by `_json_value` so a plain value gets a message saying so.
    model_config = SettingsConfigDict(
        env_prefix="UPSCALE_",
        extra="ignore",
        env_file=".env",
        env_file_encoding="utf-8",
        enable_decoding=False,
        frozen=True,  # read once; its sections are built from it and kept
    )

    upstreams: list[UpstreamSpec] = Field(
        default_factory=list,
        description="The pool of upstreams: a JSON list, or the path of a JSON file holding "
        "one (see the pool's fields below). Unset: one upstream named `default`, from the "
        "upstream and flow settings.",
    )

    _sections: dict[type[Section], Section] = PrivateAttr(default_factory=dict)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copy = super().model_copy(update=update, deep=deep)
        copy._sections = {}  # the copy's fields differ: its sections are its own
        return copy

    @check("*", mode="before")
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

    @check("upstreams", mode="before")
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

    @check("upstreams")
    @classmethod
    def _upstream_names(cls, v: list[UpstreamSpec]) -> list[UpstreamSpec]:
        names = [u.name for u in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"upstream names must be unique: {', '.join(dup)} appears twice")
        for u in v:
            if u.url is not None:
                http_url(u.url)
        return v

    # --- the sections: what each component takes ---------------------------------------
    @property
    def redis(self) -> RedisSettings:
        return self._section(RedisSettings)

    @property
    def s3(self) -> S3Settings:
        return self._section(S3Settings)

    @property
    def upstream(self) -> UpstreamSettings:
        """The upstream of the flat settings (pool member `default`, or what entries of
        `UPSCALE_UPSTREAMS` leave out)."""
        return self._section(UpstreamSettings)

    @property
    def flow(self) -> FlowSettings:
        return self._section(
            FlowSettings,
            lambda values: {
                "inflight_cap": values["max_inflight"] or default_inflight_cap(self.upstream.route)
            },
        )

    @property
    def jobs(self) -> JobsSettings:
        return self._section(JobsSettings)

    @property
    def callbacks(self) -> CallbackSettings:
        return self._section(CallbackSettings)

    @property
    def producers(self) -> ProducerSettings:
        return self._section(ProducerSettings)

    @property
    def ops(self) -> OpsSettings:
        return self._section(OpsSettings)

    def _section(
        self,
        cls: type[_S],
        derive: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> _S:
        """Section `cls` from the fields declared in it (lists become tuples: sections are
        frozen), plus what `derive` computes from them."""
        if cls not in self._sections:
            values = {
                s.field: tuple(v) if isinstance(v := getattr(self, s.name), list) else v
                for s in SETTINGS
                if s.section == _SECTION_NAMES[cls]
            }
            self._sections[cls] = cls(**values, **(derive(values) if derive else {}))
        section = self._sections[cls]
        assert isinstance(section, cls)
        return section

    def secrets(self) -> list[str]:
        """Every secret value set (never to be logged)."""
        values = (getattr(self, name) for name in type(self).model_fields)
        return [s for v in values if isinstance(v, SecretStr) and (s := v.get_secret_value())]


def _flat(annotation: Any) -> tuple[Any, ...]:
    if get_origin(annotation) in (Union, UnionType):
        return get_args(annotation)
    return (annotation,)


_SECTION_NAMES: dict[type[Section], str] = {cls: name for name, cls in SECTIONS.items()}


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
