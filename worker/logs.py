"""structlog, configured once: JSON lines in production, console in a terminal; secrets redacted last."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# What must never reach a log line, a ledger error or S3 metadata.
_REDACTIONS: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)(bearer\s+)?[^\s\"',}]+"),
        r"\1\2[redacted]",
    ),
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=\-]+"), "Bearer [redacted]"),
    (re.compile(r"(?i)(api[-_]?key[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"), r"\1[redacted]"),
    (
        re.compile(
            r"(?i)([?&](?:X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|sig|signature|token)=)[^&\s\"'#]+"
        ),
        r"\1[redacted]",
    ),
    (re.compile(r"data:[\w/+.\-]+;base64,[A-Za-z0-9+/=]{16,}"), "data:[redacted]"),
]
_secrets: set[str] = set()


def register_secret(value: str) -> None:
    """Literal values (API keys, webhook secrets) that are scrubbed wherever they appear."""
    if value and len(value) >= 6:
        _secrets.add(value)


def redact(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "[redacted]")
    for pattern, repl in _REDACTIONS:
        text = pattern.sub(repl, text)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v) for v in value)
    if isinstance(value, BaseException):
        return redact(f"{type(value).__name__}: {value}")
    return value


def redaction_processor(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in list(event_dict.items()):
        event_dict[key] = _redact_value(value)
    return event_dict


def _redact_rendered(_logger: Any, _name: str, rendered: Any) -> Any:
    # Runs after the renderer too, so formatted tracebacks are scrubbed as well.
    return redact(rendered) if isinstance(rendered, str) else rendered


def _add_logger_name(
    logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """`logger`: the stdlib logger's name (arq, botocore, aiohttp) or the structlog one's."""
    record = event_dict.get("_record")
    name = record.name if record is not None else getattr(logger, "name", None)
    if name and "logger" not in event_dict:
        event_dict["logger"] = name
    return event_dict


class _NamedPrintLogger(structlog.PrintLogger):
    def __init__(self, file: Any, name: str | None) -> None:
        super().__init__(file)
        self.name = name


class _NamedPrintLoggerFactory:
    """PrintLoggerFactory that remembers `structlog.get_logger(name)`'s name."""

    def __init__(self, file: Any) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _NamedPrintLogger:
        return _NamedPrintLogger(self._file, str(args[0]) if args and args[0] else None)


_configured = False


def configure_logging(fmt: str = "auto", level: str = "INFO", *, force: bool = False) -> None:
    global _configured
    if _configured and not force:
        return
    _configured = True
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # JSON: a traceback becomes the `exception` string (from structlog and from stdlib
    # records alike); the console renderer prints `exc_info` itself.
    exc: list[Any] = [structlog.processors.format_exc_info] if use_json else []
    structlog.configure(
        processors=[
            *shared,
            *(exc or [structlog.dev.set_exc_info]),
            redaction_processor,
            renderer,
            _redact_rendered,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=_NamedPrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    # arq, botocore and friends log through stdlib logging: route them through the same
    # processors (and the redaction) instead of letting them print on their own.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *exc,
                redaction_processor,
                renderer,
                _redact_rendered,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.getLevelNamesMapping().get(level.upper(), logging.INFO))
    for noisy in ("botocore", "boto3", "urllib3", "httpx", "httpcore", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
