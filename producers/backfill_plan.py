"""What a backfill is asked to do and what it counts: the plan (source, filters, budget,
destination), its statistics, and the job for each object (`SpecMaker`)."""

from __future__ import annotations

import fnmatch
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from producers.api import build_spec
from producers.listing import ObjectEntry
from worker.api import (
    JobIdentity,
    JobSpec,
    Keys,
    NewJob,
    S3Object,
    Settings,
    check_object,
    destination_of,
    ledger_fields,
)


@dataclass
class Filters:
    include: list[str] = field(default_factory=list)  # globs on the key or its basename
    exclude: list[str] = field(default_factory=list)
    min_size: int = 1
    max_size: int | None = None
    since: datetime | None = None
    until: datetime | None = None

    def match(self, key: str, size: int | None, modified: datetime | None) -> str | None:
        """None when the object qualifies, else the reason it is skipped. An unknown size or
        date (a plain CSV manifest) passes those filters: the worker checks the object."""
        base = key.rsplit("/", 1)[-1]
        if self.include and not _globbed(self._include, key, base):
            return "filtered"
        if self.exclude and _globbed(self._exclude, key, base):
            return "filtered"
        if size is not None and (
            size < self.min_size or (self.max_size is not None and size > self.max_size)
        ):
            return "size"
        if modified is not None and (
            (self.since and modified < self.since) or (self.until and modified >= self.until)
        ):
            return "modified"
        return None

    @cached_property
    def _include(self) -> re.Pattern[str]:
        return _compiled(self.include)

    @cached_property
    def _exclude(self) -> re.Pattern[str]:
        return _compiled(self.exclude)


def _compiled(globs: list[str]) -> re.Pattern[str]:
    """The globs as one regex, compiled once (this runs for every key of a backfill)."""
    return re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs) or "(?!)")


def _globbed(pattern: re.Pattern[str], key: str, base: str) -> bool:
    """A glob matches the whole key or its basename (`*.png` and `photos/*/x.png` alike)."""
    return pattern.match(key) is not None or pattern.match(base) is not None


@dataclass
class BackfillStats:
    listed: int = 0
    matched: int = 0
    enqueued: int = 0
    duplicates: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    last_key: str = ""  # the resume point: the last key handled (a manifest: `file:row`)
    resumed_from: str = ""
    budget_stop: bool = False
    cancelled: bool = False  # `upscale cancel --batch` stopped it
    existing: int = 0  # outputs found by listing the destination (also in `skipped`)
    dest_listed: int = 0  # jobs enqueued with `dest_listed` (the worker skips its HEAD)
    requests: int = 0  # LIST requests (source and destination)
    started: float = field(default_factory=time.monotonic)

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + n

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


@dataclass
class BackfillPlan:
    source: str  # s3://bucket/prefix, or the manifest's s3:// URI when `manifest` is set
    batch: str
    dest: str | None = None
    filters: Filters = field(default_factory=Filters)
    params: dict[str, Any] = field(default_factory=dict)
    budget_usd: float | None = None
    dry_run: bool = False
    max_queue: int | None = None  # back-pressure threshold (jobs queued in the bulk lane)
    # jobs per enqueue (pipelined scripts of 250): fewer, larger writes (with `appendfsync
    # always`, one fsync each) run the manifest intake near 20k keys/s; at most half the queue
    chunk: int = 2000
    restart: bool = False  # ignore the checkpoint
    manifest: bool = False  # `source` is a manifest.json or a CSV list, not a prefix to list
    versions: bool = False  # a manifest's non-latest versions too (never delete markers)
    parallel: int = 4  # common prefixes listed at once
    skip_existing: bool = True  # list the destination; skip objects whose output is there


def checkpoint_key(batch: str) -> str:
    return Keys.backfill(batch)


def split_source(source: str) -> tuple[str, str]:
    """`s3://bucket`, `s3://bucket/` and `s3://bucket/prefix/` -> (bucket, prefix)."""
    if not source.startswith("s3://") or not source[5:].split("/", 1)[0]:
        raise ValueError(f"source {source!r}: expected s3://bucket[/prefix]")
    bucket, _, prefix = source[5:].partition("/")
    return bucket, prefix


Dest = tuple[str, str]  # (bucket, key) of a job's output


class SpecMaker:
    """The job `build_spec` would make for each object of one backfill, made on plain strings:
    what is the same for every object (parameters, model, batch, destination template) is
    validated and encoded once, and no model is built per object (a manifest is millions of
    rows). The job (its id and record) is exactly what `build_spec` makes (a test holds it to
    that); a single-object `--dest` is left to `build_spec` (its overwrite check)."""

    def __init__(self, settings: Settings, plan: BackfillPlan) -> None:
        self.settings, self.plan = settings, plan
        probe = self._build(S3Object(bucket="probe-bucket", key="probe.png"))
        self.fixed_dest = plan.dest is not None and not plan.dest.endswith("/")
        self.template = plan.dest or settings.jobs.dest_template
        self.output_format = settings.jobs.output_format  # read once: `dest` runs per key
        self.identity = JobIdentity(probe.params, probe.model)
        per_object = {"source", "source_etag", "source_version", "dest", "dest_listed"}
        self.shared = {k: v for k, v in ledger_fields(probe).items() if k not in per_object}
        self.lane, self.batch = probe.lane, probe.batch or ""

    def _build(self, src: S3Object) -> JobSpec:
        return build_spec(
            src,
            dest=self.plan.dest,
            batch=self.plan.batch,
            lane="bulk",
            settings=self.settings,
            **self.plan.params,
        )

    def dest(self, e: ObjectEntry) -> Dest:
        """Where `e`'s output goes (ValueError: an invalid object or destination)."""
        if self.fixed_dest:
            d = self._build(_source(e)).dest
            return d.bucket, d.key
        check_object(e.bucket, e.key)
        return destination_of(self.template, e.bucket, e.key, self.output_format)

    def job(self, e: ObjectEntry, dest: Dest, dest_listed: bool = False) -> NewJob:
        """The job for `e` (`dest`: from `dest`)."""
        if self.fixed_dest:
            spec = self._build(_source(e)).model_copy(update={"dest_listed": dest_listed})
            return NewJob(spec.job_id, spec.lane, spec.batch or "", ledger_fields(spec))
        etag = e.etag.strip('"') if e.etag else e.etag  # as S3Object keeps it
        fields = {
            "source": f"s3://{e.bucket}/{e.key}",
            "source_etag": etag or "",
            "source_version": e.version_id or "",
            "dest": f"s3://{dest[0]}/{dest[1]}",
            "dest_listed": "1" if dest_listed else "",
            **self.shared,
        }
        job_id = self.identity.job_id(e.bucket, e.key, e.version_id, etag, *dest)
        return NewJob(job_id, self.lane, self.batch, {k: v for k, v in fields.items() if v})


def _source(e: ObjectEntry) -> S3Object:
    return S3Object(bucket=e.bucket, key=e.key, version_id=e.version_id, etag=e.etag)
