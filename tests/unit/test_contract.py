"""The job contract: ids, destinations, validation — pure functions, no services."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from producers.api import build_spec
from worker.contract import S3Object, render_destination
from worker.settings import Settings

S = Settings()


def test_job_id_is_deterministic_and_covers_identity() -> None:
    a = build_spec("s3://bkt/a.png", settings=S)
    assert a.job_id == build_spec("s3://bkt/a.png", settings=S).job_id
    assert a.job_id.startswith("uq-") and len(a.job_id) == 35
    variants = [
        build_spec("s3://bkt/a.png", etag="abc", settings=S),
        build_spec("s3://bkt/a.png", version_id="v2", settings=S),
        build_spec("s3://bkt/a.png", prompt="x", settings=S),
        build_spec("s3://bkt/a.png", seed=1, settings=S),
        build_spec("s3://bkt/a.png", dest="s3://other/a.png", settings=S),
    ]
    assert len({a.job_id, *(v.job_id for v in variants)}) == 6
    # batch, lane and tags describe the request, not the work: same job
    assert build_spec("s3://bkt/a.png", batch="b", lane="bulk", settings=S).job_id == a.job_id
    # quoted and bare ETags are the same identity
    assert build_spec("s3://bkt/a.png", etag='"abc"', settings=S).job_id == variants[0].job_id


@pytest.mark.parametrize(
    ("template", "key", "expected"),
    [
        (
            "s3://{bucket}-upscaled/{key_stem}@2x.{ext}",
            "dir/a b+c.JPG",
            "s3://src-upscaled/dir/a b+c@2x.JPG",
        ),
        ("s3://{bucket}-upscaled/{key_stem}@2x.{ext}", "noext", "s3://src-upscaled/noext@2x.png"),
        ("s3://out/", "x/y.png", "s3://out/x/y.png"),
        ("s3://out/{dirname}/big-{basename}", "x/y.png", "s3://out/x/big-y.png"),
        ("s3://out/{key}", "d.ir/file", "s3://out/d.ir/file"),
    ],
)
def test_destination_templates(template: str, key: str, expected: str) -> None:
    assert render_destination(template, S3Object(bucket="src", key=key)).uri == expected


def test_bad_requests_get_clear_errors() -> None:
    with pytest.raises(ValueError, match="not an S3 URI"):
        build_spec("/tmp/a.png", settings=S)
    with pytest.raises(ValueError, match="no object key"):
        build_spec("s3://bucket-only", settings=S)
    with pytest.raises(ValueError, match="overwrite the source"):
        build_spec("s3://b1b/a.png", dest="s3://b1b/a.png", settings=S)
    with pytest.raises(ValueError, match="unknown variable"):
        build_spec("s3://b1b/a.png", dest_template="s3://x/{nope}", settings=S)
    with pytest.raises(ValidationError, match="resemblance"):
        build_spec("s3://b1b/a.png", resemblance=0, settings=S)
    with pytest.raises(ValidationError, match="invalid S3 bucket"):
        build_spec("s3://UPPER/a.png", settings=S)


def test_keys_are_opaque() -> None:
    key = " lead/..//trail /%2B+é "
    assert S3Object.parse(f"s3://bkt/{key}").key == key


def test_job_id_formula_is_stable() -> None:
    """Ids are stored in outputs' metadata and in queued jobs: the formula never changes.
    The reference is the original one-dict encoding."""
    import hashlib
    import json

    spec = build_spec("s3://bkt/dir/ünï a.png", etag="e", prompt="p", seed=2, batch="b", settings=S)
    identity = {
        "src": [spec.source.bucket, spec.source.key, spec.source.version_id, spec.source.etag],
        "dst": [spec.dest.bucket, spec.dest.key],
        "params": spec.params.model_dump(mode="json"),
        "model": spec.model,
    }
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert spec.job_id == f"uq-{hashlib.sha256(blob.encode()).hexdigest()[:32]}"
