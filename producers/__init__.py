"""Producers: everything that creates jobs (Python API, CLI, S3 events, backfill)."""

from producers.api import Producer, build_spec

__all__ = ["Producer", "build_spec"]
