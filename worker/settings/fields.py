"""The settings as one flat list, from their declarations in `sections`: each with its flat
name (the field of `Settings`, e.g. `redis_url`, `presign_ttl_s`) and its environment variables.

The flat name is the section's `ENV_PREFIX` + the field's name, unless the field is read from
other variables (`validation_alias`): then it is the `UPSCALE_` one without the prefix.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import cached_property
from types import GenericAlias
from typing import Any, get_args, get_origin

from pydantic import AliasChoices
from pydantic.dataclasses import is_pydantic_dataclass
from pydantic.fields import FieldInfo

from worker.settings.sections import SECTIONS, Section

ENV_PREFIX = "UPSCALE_"


def section_fields(cls: type[Section]) -> dict[str, FieldInfo]:
    """A section's fields (inherited ones first), settings and derived alike."""
    assert is_pydantic_dataclass(cls), f"{cls.__name__} is not a section"
    return cls.__pydantic_fields__


@dataclass(frozen=True)
class Setting:
    section: str  # `settings.<section>.<field>`
    field: str
    name: str  # the flat name: the field of `Settings`
    info: FieldInfo  # as declared in the section

    @property
    def env_names(self) -> tuple[str, ...]:
        """The variables it is read from, the first preferred (and shown in docs and errors)."""
        return _aliases(self.info) or (f"{ENV_PREFIX}{self.name.upper()}",)

    @cached_property
    def flat_field(self) -> FieldInfo:
        """The declaration as a field of `Settings`: lists parse as lists (the section holds a
        tuple), and an alias only where the variable is not `UPSCALE_` + the flat name."""
        flat = copy.copy(self.info)
        if get_origin(flat.annotation) is tuple:
            flat.annotation = GenericAlias(list, get_args(flat.annotation)[:1])  # type: ignore[assignment]
        if self.env_names == (f"{ENV_PREFIX}{self.name.upper()}",):
            flat.validation_alias = None
        return flat


def _aliases(info: FieldInfo) -> tuple[str, ...]:
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return tuple(c for c in alias.choices if isinstance(c, str))
    return (alias,) if isinstance(alias, str) else ()


def _flat_name(prefix: str, field: str, info: FieldInfo) -> str:
    own = prefix + field
    aliases = _aliases(info)
    if not aliases or f"{ENV_PREFIX}{own.upper()}" in aliases:
        return own
    return next(a for a in aliases if a.startswith(ENV_PREFIX)).removeprefix(ENV_PREFIX).lower()


def _settings() -> tuple[Setting, ...]:
    found: list[Setting] = []
    for section, cls in SECTIONS.items():
        for field, info in section_fields(cls).items():
            if info.is_required():
                continue  # derived by `Settings`, not read
            found.append(Setting(section, field, _flat_name(cls.ENV_PREFIX, field, info), info))
    return tuple(found)


# Every setting, in the sections' order (the order of the docs).
SETTINGS: tuple[Setting, ...] = _settings()
BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


def flat_fields() -> dict[str, Any]:
    """The fields of `Settings`, for `pydantic.create_model`."""
    return {s.name: (s.flat_field.annotation, s.flat_field) for s in SETTINGS}
