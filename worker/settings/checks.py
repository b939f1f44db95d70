"""The checks and spellings a setting's type carries (as `Annotated` validators), so its
declaration in `sections` says all there is to know about it."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator

from worker.formats import OutputFormat, check_setting

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def duration_s(v: object) -> object:
    """`90`, `90s`, `30m`, `24h` or `7d` as seconds (anything else is left to the int check)."""
    if isinstance(v, str) and v.strip()[-1:].lower() in _UNITS and v.strip()[:-1].isdigit():
        return int(v.strip()[:-1]) * _UNITS[v.strip()[-1].lower()]
    return v


def http_url(v: str) -> str:
    v = v.strip()
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("expected an http:// or https:// URL")
    return v


def _optional_http_url(v: str | None) -> str | None:
    return None if v is None else http_url(v)


def _redis_url(v: str) -> str:
    if urlsplit(v).scheme not in ("redis", "rediss", "unix"):
        raise ValueError(
            "expected redis://[:password@]host:port/db (rediss:// for TLS, unix:// for a socket)"
        )
    return v


def _gateway_url(v: str) -> str:
    # The gateway's base URL: "…/v1" (how the OpenAI SDK spells it) is accepted as well.
    v = http_url(v).rstrip("/")
    return v.removesuffix("/v1") if v.endswith("/v1") else v


def _format_spelling(v: Any) -> Any:
    if isinstance(v, str):
        v = v.strip().lower()
        return "jpeg" if v == "jpg" else v
    return v


def _log_level(v: str) -> str:
    if v.upper() not in LEVELS:
        raise ValueError(f"expected one of {', '.join(LEVELS)}")
    return v.upper()


Duration = Annotated[int, BeforeValidator(duration_s)]
HttpUrl = Annotated[str, AfterValidator(http_url)]
OptionalHttpUrl = Annotated[str | None, AfterValidator(_optional_http_url)]
RedisUrl = Annotated[str, AfterValidator(_redis_url)]
GatewayUrl = Annotated[str, AfterValidator(_gateway_url)]
LogLevel = Annotated[str, AfterValidator(_log_level)]
# `jpg` and any case are accepted; a fixed format must be one this Pillow can write.
WritableFormat = Annotated[
    OutputFormat, BeforeValidator(_format_spelling), AfterValidator(check_setting)
]
