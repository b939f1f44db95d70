"""Recursion guard: an event for an object we wrote never becomes a job.

An object is ours by what we put in or on it, never by its name alone (`logo@2x.png` is how
retina assets are named):
0. our own files: staged inputs, and completion reports (`.upscale-reports/` in any bucket, or
   `UPSCALE_REPORT_URI`);
1. our provenance metadata (`upscale-job-id`), when the event carries user metadata (SeaweedFS
   filer and MinIO events do; AWS events never);
2. the destination location: the template's bucket when it is not the source's own (a fixed
   bucket, or one named like `{bucket}-upscaled`) under its fixed key prefix, a fixed prefix in
   the source's bucket (`s3://{bucket}/upscaled/...`), and `UPSCALE_GUARD_PREFIXES`.
3. Where outputs share the source's bucket with no fixed prefix (`s3://{bucket}/{key_stem}@2x.{ext}`)
   the location IS the name pattern: a key of the destination's shape is `ambiguous` and the
   caller HEADs it (one request, for those keys only): ours only if it carries our metadata.
The worker adds a last check: it skips any source whose metadata carries our job id, before any
call, so an object the guard lets through costs nothing if it was ours after all.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from worker.api import META_JOB_ID, STAGING_PREFIX, JobsSettings, S3Object

AMBIGUOUS = "ambiguous"  # `locate` answer: the name alone cannot tell; HEAD for the metadata
_META_PREFIX = "x-amz-meta-"  # MinIO spells user metadata keys with it


def is_ours_by_metadata(metadata: Mapping[str, str] | None) -> bool:
    """Whether S3 user metadata (any case, with or without `x-amz-meta-`) holds our job id."""
    return bool(metadata) and META_JOB_ID in {
        k.lower().removeprefix(_META_PREFIX) for k in metadata or {}
    }


@dataclass(frozen=True)
class RecursionGuard:
    template: str
    extra_prefixes: tuple[str, ...] = ()  # more s3://bucket/prefix locations that are outputs
    report_uri: str | None = None  # `UPSCALE_REPORT_URI`: where completion reports go

    def reason(self, obj: S3Object, user_metadata: Mapping[str, str] | None = None) -> str | None:
        """Why `obj` must not be processed, or None. An ambiguous key (see the module) is
        None here unless `user_metadata` shows it is ours: use `locate` to know when to ask."""
        why = self.locate(obj, user_metadata)
        return None if why == AMBIGUOUS else why

    def locate(self, obj: S3Object, user_metadata: Mapping[str, str] | None = None) -> str | None:
        """A reason when `obj` is ours, None when it is a genuine input, or `AMBIGUOUS` when
        only its metadata can tell (and `user_metadata` did not: pass None when the event
        carried none)."""
        if obj.key.startswith(STAGING_PREFIX):
            return "object is a staged input of upscale-queue"
        if obj.key.startswith(JobsSettings.REPORT_PREFIX) or (
            self.report_uri and obj.uri.startswith(self.report_uri.rstrip("/") + "/")
        ):
            return "object is a completion report of upscale-queue"
        if is_ours_by_metadata(user_metadata):
            return "object carries upscale-queue provenance metadata (our output)"
        for loc in self.extra_prefixes:
            b, _, p = loc[len("s3://") :].partition("/")
            if obj.bucket == b and obj.key.startswith(p):
                return f"object is under the output prefix {loc} (UPSCALE_GUARD_PREFIXES)"
        bucket_part, key_part = self._parts()
        static = key_part.split("{", 1)[0]
        if bucket_part != "{bucket}" or static:
            # outputs have a place of their own: a bucket, or a fixed prefix
            if self._bucket_matches(bucket_part, obj.bucket) and obj.key.startswith(static):
                return f"object is in the destination location ({self.template})"
            return None
        # outputs live among the sources: only a key of the destination's shape may be ours
        if not self._key_shape(key_part).fullmatch(obj.key):
            return None
        if user_metadata is not None:  # the event carried the metadata: ours would show
            return None
        return AMBIGUOUS

    def _parts(self) -> tuple[str, str]:
        bucket_part, _, key_part = self.template[len("s3://") :].partition("/")
        if not key_part or key_part.endswith("/"):
            key_part += "{key}"  # a prefix template appends the source key
        return bucket_part, key_part

    @staticmethod
    def _bucket_matches(bucket_part: str, bucket: str) -> bool:
        if "{" not in bucket_part:
            return bucket == bucket_part
        pattern = re.escape(bucket_part).replace(re.escape("{bucket}"), ".+")
        # `{bucket}-upscaled` and the like name output buckets
        return re.fullmatch(pattern, bucket) is not None

    @staticmethod
    def _key_shape(key_part: str) -> re.Pattern[str]:
        """The keys the template can render (`{dirname}/` may be empty at the root)."""
        pieces = {
            "{dirname}/": r"(?:.+/)?",
            "{key}": r".+",
            "{key_stem}": r".+",
            "{basename}": r"[^/]+",
            "{dirname}": r".*",
            "{ext}": r"[^/.]+",
            "{bucket}": r"[^/]+",
        }
        token = re.compile("|".join(re.escape(p) for p in pieces))
        out, pos = [], 0
        for m in token.finditer(key_part):
            out += [re.escape(key_part[pos : m.start()]), pieces[m.group(0)]]
            pos = m.end()
        out.append(re.escape(key_part[pos:]))
        return re.compile("".join(out), re.DOTALL)
