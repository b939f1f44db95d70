"""Recursion guard: an event for an object we wrote never becomes a job.

Three checks on the event itself (the worker adds a fourth: it skips any source whose S3
metadata carries our job id, before any call):
0. our own files: staged inputs, and completion reports (`.upscale-reports/` in any bucket, or
   `UPSCALE_REPORT_URI`);
1. provenance metadata in the event (SeaweedFS filer events carry user metadata);
2. the object lies where the destination template writes (a fixed bucket/prefix, or a bucket
   named like `{bucket}-upscaled`);
3. the key carries the template's output suffix (e.g. `@2x` before the extension).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from worker.api import META_JOB_ID, STAGING_PREFIX, JobsSettings, S3Object


@dataclass(frozen=True)
class RecursionGuard:
    template: str
    extra_prefixes: tuple[str, ...] = ()  # more s3://bucket/prefix locations that are outputs
    report_uri: str | None = None  # `UPSCALE_REPORT_URI`: where completion reports go

    def reason(self, obj: S3Object, user_metadata: dict[str, str] | None = None) -> str | None:
        """Why `obj` must not be processed, or None if it is a genuine input."""
        if obj.key.startswith(STAGING_PREFIX):
            return "object is a staged input of upscale-queue"
        if obj.key.startswith(JobsSettings.REPORT_PREFIX) or (
            self.report_uri and obj.uri.startswith(self.report_uri.rstrip("/") + "/")
        ):
            return "object is a completion report of upscale-queue"
        if user_metadata and META_JOB_ID in {k.lower() for k in user_metadata}:
            return "object carries upscale-queue provenance metadata (our output)"
        bucket_part, _, key_part = self.template[len("s3://") :].partition("/")
        static = key_part.split("{", 1)[0]
        # Same bucket as the source with no fixed prefix: location alone cannot tell.
        same_bucket_anywhere = bucket_part == "{bucket}" and not static
        in_dest_bucket = self._bucket_matches(bucket_part, obj.bucket) and not same_bucket_anywhere
        if in_dest_bucket and obj.key.startswith(static):
            return f"object is in the destination location ({self.template})"
        suffix = self._stem_suffix(key_part)
        if suffix and posixpath.splitext(obj.key)[0].endswith(suffix):
            return f"key ends with the output suffix {suffix!r}"
        for loc in self.extra_prefixes:
            b, _, p = loc[len("s3://") :].partition("/")
            if obj.bucket == b and obj.key.startswith(p):
                return f"object is under the output prefix {loc}"
        return None

    @staticmethod
    def _bucket_matches(bucket_part: str, bucket: str) -> bool:
        if "{" not in bucket_part:
            return bucket == bucket_part
        pattern = re.escape(bucket_part).replace(re.escape("{bucket}"), ".+")
        # `{bucket}-upscaled` and the like name output buckets; `{bucket}` is any bucket
        return re.fullmatch(pattern, bucket) is not None

    @staticmethod
    def _stem_suffix(key_part: str) -> str:
        m = re.search(r"\{key_stem\}([^{}/]+)\.\{ext\}$", key_part)
        return m.group(1) if m else ""
