"""The store step: stream the paid result into S3 in the output format, with provenance
metadata; never over the output of a newer version of the source (checked right before the
upload), and never over what another writer stored since the run looked (conditional write)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from worker import metrics, output
from worker.contract import META_JOB_ID, prompt_hash, s3_key_quote
from worker.images import ImageInfo
from worker.job import destination
from worker.job.buy import Bought
from worker.job.destination import Found, Look
from worker.job.run import Job, log, ms_since
from worker.job.source import check_still_newest
from worker.keys import upstream_of
from worker.ledger import PaidOutput, PaidResult
from worker.outcomes import JobFailed, Superseded
from worker.results import DownloadFailed, ResultRejected, fresh_link, stream_b64, stream_url
from worker.storage import AccessDenied, DestinationChanged, SourceMissing, StorageRejected
from worker.upstream import errors as ue

# A truncated or failed result download is retried (no new call); an expired or unreachable
# link of an async upstream job is signed anew by re-reading the job, once per run, before the
# result is declared unavailable.
DOWNLOAD_TRIES = 3


@dataclass(frozen=True)
class Stored:
    """The output, stored by this run."""

    output: output.Output  # where (the asked key, or its stored format's extension) and what
    seed: int | None
    bought: Bought
    store_ms: int


async def store(job: Job, bought: Bought, look: Look) -> Stored | Found:
    """Store the paid result; `Found` when another run of this job stored it meanwhile."""
    paid = bought.paid
    if not paid.outputs:
        await job.rt.ledger.discard_paid(job.id, job.token)
        raise ue.ResultUnavailable("paid result had no output")
    out = paid.outputs[0]
    if not out.safe:
        raise JobFailed(
            "UnsafeContent", "the upstream's safety check withheld the image (call was billed)"
        )
    await check_still_newest(job)
    seen = await look.seen()
    t0 = time.monotonic()
    refreshed = False  # the link was signed anew this run (its upstream job re-read)
    attempt = 0
    while True:
        attempt += 1
        try:
            result = await _upload(job, bought, out, seen)
            break
        except DestinationChanged:
            # Another writer stored there since this run looked (conditional write, 412):
            # a run of this job that overtook this one, or a newer version's job.
            found = (await destination.find(job)).found
            if found is not None:
                return found
            raise Superseded(
                f"superseded: {job.spec.dest.uri} was written by another job while this one "
                "ran (a newer version of the source?); this paid result is not written over it"
            ) from None
        except DownloadFailed as e:
            log.warning("result download failed; retrying the download", error=str(e), try_=attempt)
            if attempt >= DOWNLOAD_TRIES:
                if refreshed or not out.upstream_job:
                    raise
                out, refreshed = await _refreshed(job, out), True  # an unreachable link
        except ResultRejected as e:
            raise JobFailed(
                "ResultRejected",
                f"{e}; the paid result is kept: fix the setting, then `upscale retry` "
                "stores it without a new call (while its URL is valid)",
            ) from None
        except ue.ResultUnavailable:
            if out.upstream_job and not refreshed:  # an expired link: the upstream signs anew
                out, refreshed = await _refreshed(job, out), True
                continue
            # Only now is a new call justified: the ledger will show both billed calls.
            await job.rt.ledger.discard_paid(job.id, job.token)
            raise
        except (AccessDenied, SourceMissing, StorageRejected) as e:
            kind = {
                AccessDenied: "DestinationAccessDenied",
                SourceMissing: "DestinationMissing",
                StorageRejected: "DestinationRejected",
            }[type(e)]
            raise JobFailed(
                kind,
                f"cannot write {job.spec.dest.uri}: {e}; the paid result is kept: fix it, "
                "then `upscale retry` stores it without a new call",
            ) from None
    if result.dest != job.spec.dest:  # its extension named another format than it holds
        log.info(
            "stored under its format's extension", dest=result.dest.uri, asked=job.spec.dest.uri
        )
    metrics.RESULT_BYTES.inc(result.stored.size)
    return Stored(result, out.seed, bought, ms_since(t0))


async def _refreshed(job: Job, out: PaidOutput) -> PaidOutput:
    """`out` with a freshly signed link, from its upstream job re-read on the key that made
    the call. The result gone upstream: the paid result is dropped (a new call may be made)
    and ResultUnavailable raised; the upstream not answering now: DownloadFailed (wait)."""
    journal = await job.rt.ledger.journal(job.id)
    upstream = job.rt.upstream(upstream_of(journal.token) if journal else "")
    try:
        url = await fresh_link(upstream, str(out.upstream_job))
    except ue.ResultUnavailable:  # the upstream says it is gone: only now a new call
        await job.rt.ledger.discard_paid(job.id, job.token)
        raise
    log.info("result link signed anew by its upstream job", upstream_job=out.upstream_job)
    metrics.RESULT_LINKS_REFRESHED.inc()
    return out.model_copy(update={"url": url})


async def _upload(
    job: Job, bought: Bought, out: PaidOutput, seen: Mapping[str, str | None] | None
) -> output.Output:
    jobs, src = job.settings.jobs, bought.source
    return await output.store(
        job.rt.storage,
        dest=job.spec.dest,
        source=job.spec.source,
        source_format=src.info.format if src is not None else None,
        chunks=_chunks(job, out),
        output_format=jobs.output_format,
        quality=jobs.output_quality,
        max_source_bytes=jobs.max_source_bytes,
        describe=_describer(job, bought.paid, out),
        seen=seen,
    )


def _chunks(job: Job, out: PaidOutput) -> AsyncIterator[bytes]:
    if out.url:
        return stream_url(
            job.rt.downloads,
            out.url,
            allowed_hosts=job.rt.result_hosts,
            max_bytes=job.settings.jobs.max_result_bytes,
        )
    return stream_b64(out.b64 or "")


def _describer(job: Job, paid: PaidResult, out: PaidOutput) -> output.Describe:
    def describe(img: ImageInfo) -> tuple[str, dict[str, str]]:
        """Content type and provenance metadata of what is stored (`worker.output`)."""
        src = job.spec.source
        meta = {
            META_JOB_ID: job.id,
            "upscale-source": s3_key_quote(src.uri),
            "upscale-source-etag": src.etag or "",
            "upscale-source-version": src.version_id or "",
            "upscale-model": job.spec.model,
            "upscale-cost-usd": f"{paid.cost_micros / 1e6:.4f}",
            "upscale-seed": "" if out.seed is None else str(out.seed),
            "upscale-prompt-hash": prompt_hash(job.spec.params.prompt),
            "upscale-resolution": img.resolution,
            "upscale-request-id": paid.request_id or "",
        }
        return img.content_type, {k: v for k, v in meta.items() if v}

    return describe
