"""The buy step: the paid call, made the way its route makes calls (`Route`).

Money rules, for every route: the call is journaled before it leaves (`call_begin`); its
answer is saved with its spend before anything else (`call_answered`, which waits out a Redis
outage); an error answer returns the reservation (`call_refused`); no answer counts as
possibly billed (`call_unknown`). A run that lost its lease saves the money and stops.

How a call is made is its route's (`ROUTES`, by `UPSCALE_ROUTE` of the slot's pool member):
the gateway sends the call and, when the upstream answers with an async job (202), journals
its id and polls it (`SendThenPoll`); an unknown outcome is asked again under its idempotency
key. The Ideogram direct route takes no idempotency key (`SubmitThenRead`): it submits
asynchronously, journals the generation id before the wait and reads the generation (never a
new call while it may still complete); a submit whose answer was lost has no id to read
(`worker.job.lost_submit`).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from worker import metrics
from worker.job.admit import Slot, release
from worker.job.lost_submit import after_lost
from worker.job.run import OUTAGE_WAIT_S, Job, Run, log, ms_since
from worker.job.source import Source, drop_staged, explain_fetch_failure
from worker.keys import upstream_of
from worker.ledger import Fenced, KeyPaused, PaidOutput, PaidResult
from worker.outcomes import JobWaits, outcome_for
from worker.settings import Route as RouteName
from worker.upstream import errors as ue
from worker.upstream.base import CallResult, ImageInput, UpscaleRequest, Upstream

BUILD_INLINE_MAX_BYTES = 256 * 1024  # larger inline images are encoded off the event loop
# An upstream 400 that says it could not get the reference image (URL mode).
_FETCH_FAILED = re.compile(r"fetch|download|retriev|unreachable|could not (get|load|read)", re.I)


@dataclass(frozen=True)
class Bought:
    """A paid result to store, and what the run learnt on the way to it."""

    paid: PaidResult
    source: Source | None = None  # None: an earlier run read the source (and paid)
    # read, call (this step: journal, send, wait), admit_wait: for the job's last log line
    timings_ms: Mapping[str, int] = field(default_factory=dict)


class Route(Protocol):
    """How one upstream's calls are made, from an admitted slot to a paid result."""

    async def buy(self, job: Job, slot: Slot, source: Source) -> PaidResult:
        """Make the call (journaled, its answer saved) and wait for its result."""
        ...

    async def resume(self, job: Job, run: Run) -> PaidResult | None:
        """Finish what an earlier run of the job paid for or left in flight, without a new
        call; None when a call is to be made."""
        ...


async def buy(job: Job, slot: Slot, source: Source) -> Bought:
    """Pay for the result: the slot's route makes the call."""
    t0 = time.monotonic()
    try:
        paid = await route_for(job, slot.upstream).buy(job, slot, source)
    finally:
        await drop_staged(job, source)  # used up once the call ended
    timings = {"read": source.read_ms, "call": ms_since(t0)}
    if slot.wait_ms is not None:
        timings["admit_wait"] = slot.wait_ms
    return Bought(paid, source, timings)


async def resume(job: Job, run: Run) -> Bought | None:
    """What an earlier run left (a paid result, an upstream job in flight), finished without
    a new call by the route of its call; None when a call is to be made."""
    slot = run.journal.token if run.journal is not None else ""
    paid = await route_for(job, upstream_of(slot)).resume(job, run)
    return None if paid is None else Bought(paid)


def route_for(job: Job, upstream: str) -> Route:
    """How pool upstream `upstream` makes its calls: by its route (`UPSCALE_ROUTE`)."""
    return ROUTES[job.rt.flow.pool_upstream(upstream).upstream.route]


class SendThenPoll:
    """Send the call; an answer that is an async job (202) is journaled, then polled."""

    async def buy(self, job: Job, slot: Slot, source: Source) -> PaidResult:
        paid = await _send(job, slot, source.image)
        return await _poll(job, slot.token, paid) if paid.pending_id else paid

    async def resume(self, job: Job, run: Run) -> PaidResult | None:
        if run.paid is None:  # none, or unknown: asked again under its idempotency key
            return None
        if run.paid.pending_id:
            log.info("resuming a pending upstream job", pending_id=run.paid.pending_id)
            return await _poll(job, run.pending_slot, run.paid)
        log.info("resuming from a paid result: no new upstream call")
        return run.paid


class SubmitThenRead:
    """Ideogram direct: submit asynchronously; the generation id is journaled (`pending`)
    before the wait, then the generation is read until it completes (billed, at the cost it
    reports) or fails (free: the next attempt submits again). An unknown outcome is resolved
    by reading the generation; a submit whose answer was lost has none to read
    (`lost_submit.after_lost`)."""

    async def buy(self, job: Job, slot: Slot, source: Source) -> PaidResult:
        try:
            paid = await _send(job, slot, source.image, hold_while_pending=True)
        except ue.OutcomeUnknown:
            journal = await job.rt.ledger.journal(job.id)
            if journal is not None and journal.token == slot.token:
                await after_lost(job, journal)  # raises: nothing to read, nothing to send
            raise
        if not paid.pending_id:  # a synchronous answer: billed, its result saved
            return paid
        # the generation counts against the organisation's in-flight cap until it ends: its
        # slot stays held (renewed while read; freed by its outcome, or by its lease)
        async with job.rt.flow.hold(slot.token):
            return await _poll(job, slot.token, paid, _read_interval(job, slot.upstream))

    async def resume(self, job: Job, run: Run) -> PaidResult | None:
        if run.paid is not None and run.paid.pending_id:
            log.info("reading a journaled generation", generation_id=run.paid.pending_id)
            slot = run.pending_slot
            return await _poll(job, slot, run.paid, _read_interval(job, upstream_of(slot)))
        if run.paid is not None:
            log.info("resuming from a paid result: no new upstream call")
            return run.paid
        j = run.journal
        if j is not None and j.state in ("sent", "unknown"):
            # sent, and no answer saved: its run died on the wire (counted now if not yet)
            await job.rt.ledger.call_unknown(job.id, j.token)
            await after_lost(job, j)
        return None


def _read_interval(job: Job, upstream: str) -> float:
    return job.rt.flow.pool_upstream(upstream).upstream.ideogram_poll_interval_s


SEND_THEN_POLL = SendThenPoll()
SUBMIT_THEN_READ = SubmitThenRead()
# Each route's way of making calls (by `UPSCALE_ROUTE`).
ROUTES: Mapping[RouteName, Route] = {"gateway": SEND_THEN_POLL, "ideogram": SUBMIT_THEN_READ}


async def _send(
    job: Job, slot: Slot, image: ImageInput, *, hold_while_pending: bool = False
) -> PaidResult:
    """One call: journaled before it leaves, its outcome recorded whatever it is.
    `hold_while_pending`: an accepted async job keeps the slot (see `SubmitThenRead`)."""
    ledger, flow = job.rt.ledger, job.rt.flow
    upstream = job.rt.upstream(slot.upstream)
    try:
        # Encoded before it is journaled: between the journal's check of the key's pause
        # and the request leaving there is only the send (a 402 meanwhile stops it).
        request = await _build(job, upstream, image)
        journal = await ledger.call_begin(
            job.id, job.token, slot.token, flow.pool_upstream(slot.upstream).price_micros
        )
    except BaseException:
        await release(job, slot)
        raise
    if (reason := flow.paused_here(slot.upstream)) is not None:
        # a 402/401/403 reached this process while the call was journaled: not sent
        await ledger.call_refused(job.id, slot.token, None)
        raise KeyPaused(reason)
    t0 = time.monotonic()
    async with flow.hold(slot.token):
        try:
            result = await upstream.send(request, journal.idem)
        except ue.OutcomeUnknown as err:
            metrics.UPSTREAM_CALLS.labels("unknown").inc()
            await _tell_flow(job, slot, err)
            await ledger.call_unknown(job.id, slot.token)
            raise
        except ue.UpstreamError as err:
            metrics.UPSTREAM_CALLS.labels(str(err.status or "error")).inc()
            await _tell_flow(job, slot, err)
            await ledger.call_refused(job.id, slot.token, err.request_id)
            log.warning(
                "upstream call failed",
                status=err.status,
                error=type(err).__name__,
                request_id=err.request_id,
                latency_ms=ms_since(t0),
                detail=err.message,
                kind=slot.admitted.kind,
            )
            if (
                isinstance(err, ue.InvalidRequest)
                and image.url
                and _FETCH_FAILED.search(err.message)
            ):
                await explain_fetch_failure(job, image.url, err)
            raise
        except BaseException:  # cancelled mid-call, or a bug: it may have been billed
            await asyncio.shield(ledger.call_unknown(job.id, slot.token))
            raise
    status = 202 if result.pending_id else 200
    metrics.UPSTREAM_CALLS.labels(str(status)).inc()
    metrics.UPSTREAM_LATENCY.observe(time.monotonic() - t0)
    paid = await _save(job, slot.token, result, t0, keep_slot=hold_while_pending)
    # off the job's path: the money is saved, and flow state is advisory
    job.rt.in_background(
        flow.observe(slot.upstream, result.rate, status, slot=slot.token),
        "could not report call outcome",
    )
    return paid


async def _build(job: Job, upstream: Upstream, image: ImageInput) -> httpx.Request:
    spec = job.spec
    req = UpscaleRequest(image=image, params=spec.params, model=spec.model, tag=spec.batch)
    if image.data is not None and len(image.data) > BUILD_INLINE_MAX_BYTES:
        return await asyncio.to_thread(upstream.build, req)  # base64 + JSON of megabytes
    return upstream.build(req)


async def _tell_flow(job: Job, slot: Slot, exc: ue.UpstreamError) -> None:
    """Feed a call's failure into the fleet's flow control while its slot is still held, so
    no other call slips in before the pause / cooldown is in force."""
    pause_poll_s = job.settings.flow.pause_poll_s
    o = outcome_for(exc, pause_poll_s=pause_poll_s, outage_wait_s=OUTAGE_WAIT_S)
    flow, upstream = job.rt.flow, slot.upstream
    try:
        if o.effect == "pause" and isinstance(exc, ue.PauseError):  # first: calls stop now
            flow.pause_seen(upstream, exc.pause_reason)  # this process, before any await
            await flow.report_paused(
                upstream, exc.pause_reason, exc.describe(), retry_after_s=exc.retry_after_s
            )
        if exc.rate.known and not isinstance(exc, ue.RateLimited):
            await flow.observe(upstream, exc.rate, exc.status or 0)
        if o.effect == "cooldown" and isinstance(exc, ue.RateLimited):
            if exc.max_inflight is not None:  # Ideogram's organisation cap, named in its 429
                await flow.learn_inflight_cap(upstream, exc.max_inflight)
            learned = await flow.observe(upstream, exc.rate, 429, slot=slot.token)
            await flow.report_rate_limited(upstream, exc.retry_after, ease=not learned)
        elif o.effect == "server_error":
            await flow.report_server_error(upstream)
    except Exception as e:  # flow state is advisory; the job's own outcome must be written
        log.warning("could not report to flow control", error=type(e).__name__)


async def _save(
    job: Job, slot: str, result: CallResult, t0: float, *, keep_slot: bool = False
) -> PaidResult:
    """Persist what a successful submit or poll returned, with its spend, first."""
    billed = result.pending_id is None
    price = job.rt.flow.pool_upstream(upstream_of(slot)).price_micros
    cost = price * len(result.outputs) if billed else 0
    if billed and result.cost_micros is not None:  # the upstream's word where it gives one
        cost = result.cost_micros
    paid = PaidResult(
        request_id=result.request_id,
        pending_id=result.pending_id,
        outputs=[PaidOutput(**o.__dict__) for o in result.outputs],
        cost_micros=cost,
        at=time.time(),
    )
    saved = await job.rt.ledger.call_answered(
        job.id, slot, paid, replayed=result.replayed, token=job.token, keep_slot=keep_slot
    )
    metrics.SPEND_USD.inc(cost / 1e6)
    log.info(
        "upstream call ok",
        status=202 if result.pending_id else 200,
        request_id=result.request_id,
        latency_ms=ms_since(t0),
        cost_usd=cost / 1e6,
        replayed=result.replayed,
        saved=saved,
        rate_remaining=result.rate.remaining,
    )
    if saved in ("stale", "fenced"):
        # the money is on the books; a run that lost its lease writes nothing more (the
        # newer run, or the next, stores the saved result)
        raise Fenced(job.id)
    return paid


async def _poll(job: Job, slot: str, paid: PaidResult, interval: float | None = None) -> PaidResult:
    """Poll the upstream job `paid` names until it ends (at most every `interval`, by default
    `async_poll_interval_s`). A failed poll is not a failed job: polling goes on while the
    upstream keeps the job; the run hands it back before its time is up."""
    pending, ledger = str(paid.pending_id), job.rt.ledger
    interval = interval or job.settings.upstream.async_poll_interval_s
    deadline = job.started + job.settings.jobs.job_timeout_s * 0.8
    upstream = job.rt.upstream(upstream_of(slot))
    errors = 0
    while True:
        await asyncio.sleep(interval * min(2**errors, 8))
        try:
            result = await upstream.poll(pending)
            errors = 0
        except ue.UpstreamJobLost:
            await ledger.call_unknown(job.id, slot, drop_pending=True)
            raise
        except ue.UpstreamJobFailed as err:
            await ledger.call_refused(job.id, slot, err.request_id, drop_pending=True)
            raise
        except ue.UpstreamError as err:
            errors += 1
            log.info("poll failed; polling on", error=type(err).__name__, detail=err.message)
            result = CallResult(request_id=None, pending_id=pending)
        if result.pending_id is None:
            return await _save(job, slot, result, time.monotonic())
        if time.monotonic() + interval > deadline:
            raise JobWaits("upstream_pending", 0, f"upstream job {pending} still running")
