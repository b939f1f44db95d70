"""What every route shares: the app's state, how a caller presents its key, and the error body.
The gateway's is `{"error": {"type", "message", "code"}}` (or, with `error_body_style="string"`,
a bare string, as some gateways answer); Ideogram's is documented as `{"error": "<message>"}`
plus fields such as `reject_reason`."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from infra.simulator.state import SimState

STATE: web.AppKey[SimState] = web.AppKey("state", SimState)
GATEWAY, IDEOGRAM = 1, 2  # the routes: Route 1 (OpenAI-compatible), Route 2 (Ideogram direct)
ERROR_TYPES = {
    400: "invalid_request", 401: "authentication_error", 402: "insufficient_credits",
    403: "scope_exceeded", 404: "not_found", 409: "conflict", 413: "payload_too_large",
    422: "safety_check_failed", 429: "rate_limit_error", 500: "server_error",
    503: "service_unavailable",
}  # fmt: skip


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """`kind`: the gateway error type, when not the status's usual one (`ERROR_TYPES`)."""
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.headers = headers or {}
        self.extra = extra or {}


def error_response(state: SimState, err: ApiError, route: int = GATEWAY) -> web.Response:
    kind = err.kind or ERROR_TYPES.get(err.status, "error")
    body: dict[str, Any]
    if route == IDEOGRAM or state.config.error_body_style == "string":
        body = {"error": err.message}
    else:
        body = {"error": {"type": kind, "message": err.message, "code": kind}}
    body.update(err.extra)
    return web.json_response(body, status=err.status, headers=err.headers)


def reject(route: int, reason: str) -> dict[str, Any]:
    """Ideogram names why it refused (`reject_reason`); the gateway does not."""
    return {"reject_reason": reason} if route == IDEOGRAM else {}


def api_key(request: web.Request, route: int) -> str:
    if route == IDEOGRAM:
        return request.headers.get("Api-Key", "")
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


Handler = Callable[[web.Request], Awaitable[web.Response]]


def read_endpoint(route: int, *, polled: bool = False) -> Callable[[Handler], Handler]:
    """A free endpoint (never billed, not in the call log): an `ApiError` it raises becomes the
    route's error answer; with `polled`, every answer is logged in the poll log."""

    def wrap(fn: Handler) -> Handler:
        @functools.wraps(fn)
        async def handler(request: web.Request) -> web.Response:
            state = request.app[STATE]
            status = 500
            try:
                resp = await fn(request)
                status = resp.status
                return resp
            except ApiError as err:
                status = err.status
                return error_response(state, err, route)
            finally:
                if polled:
                    state.record_poll(request.path, status, api_key(request, route))

        return handler

    return wrap
