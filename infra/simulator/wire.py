"""Every path, field and header name the new rules use, in one place, each marked with where it
comes from: DOC (developer.ideogram.ai / aigateway.sh pages, as stored) or GUESS (not
published; the most likely shape, to verify against a live key)."""

from __future__ import annotations

# -- Ideogram: asynchronous submission and polling -------------------------------------------
ASYNC_FIELD = "async"  # DOC: "set `async`" (a form field, a query parameter or in image_request)
WEBHOOK_FIELD = "webhook_url"  # DOC
GENERATION_ID = "generation_id"  # DOC
REQUEST_ID = "request_id"  # DOC: the legacy /upscale's name for the same id
POLL_V2 = "/v2/generations/{id}"  # DOC
POLL_V1 = "/v1/generations/{id}"  # DOC
STATUS_COMPLETED, STATUS_FAILED = "completed", "failed"  # DOC (in progress: `pending`)
FAILURE_REASON = "failure_reason"  # DOC
USAGE_COST = "usage_cost_usd_micros"  # DOC
RESPONSE_TYPE = "response_type"  # DOC; its value "image" is a GUESS
OBJECT_TYPE = "object_type"  # DOC; its value "image" is a GUESS

# -- Ideogram: refusals ----------------------------------------------------------------------
REJECT_REASON = "reject_reason"  # DOC
INSUFFICIENT_FUNDS, DAILY_LIMIT, INFLIGHT_LIMIT = (
    "insufficient_funds",
    "daily_limit",
    "inflight_limit",
)
MAX_INFLIGHT = "max_inflight_requests"  # DOC (counts images, despite its name)
# GUESS: when a daily limit resets is not published; a 402 daily_limit says it in this header
# (RFC 3339, UTC) and in Retry-After (seconds).
DAILY_RESET_HEADER = "X-Daily-Limit-Reset"

# -- Ideogram: deprecated endpoints (DOC: "Model Lifecycle and Deprecations") ----------------
SUCCESSOR_REL = "successor-version"  # Link: <docs page>; rel="successor-version"
NOTICE = "notice"  # a successful JSON answer's field while the endpoint is deprecated
V1_SUCCESSORS = {  # v1 endpoint -> the docs page of its v2 replacement (what Link points at)
    "/upscale": ("POST /v2/image/upscale/{model}", "https://developer.ideogram.ai/api-reference/images/upscale"),
    "/v1/generations/": ("GET /v2/generations/{generation_id}", "https://developer.ideogram.ai/v2/api-reference/generations/get-generation"),
}  # fmt: skip

# -- Ideogram: GET /v2/account/usage (DOC: path, query, bucket/line-item terms; GUESS: nesting)
ACCOUNT_USAGE = "/v2/account/usage"
USAGE_PRODUCT = "upscale"  # GUESS: the product id of the upscale endpoint

# -- the gateway (aigateway.sh) ----------------------------------------------------------------
USAGE_BY_TAG = "/v1/usage/by-tag"  # DOC: rows {tag, requests, cost_cents}; ?month=YYYY-MM
JOB_CANCEL = "/v1/jobs/{id}/cancel"  # DOC
JOB_CANCELLED = "cancelled"  # DOC
BUDGET_EXCEEDED = "budget_exceeded"  # DOC: 402 type, a sub-account over its cap
SCOPE_EXCEEDED = "scope_exceeded"  # DOC: 403 type, a scoped key past its allow-list or cap
