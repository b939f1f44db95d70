"""Every S3 notification shape, with tricky keys (sample payloads modelled on the providers' docs)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from producers.events import (
    MalformedEvent,
    batch_operations_response,
    latest_per_key,
    newer_sequencer,
    parse_batch_operations,
    parse_notification,
)

# decoded key -> how AWS form-encodes it in notifications
TRICKY = {
    "photos/summer 2024/beach day.png": "photos/summer+2024/beach+day.png",
    "a+b=c.png": "a%2Bb%3Dc.png",
    "café/日本 photo+1.jpg": "caf%C3%A9/%E6%97%A5%E6%9C%AC+photo%2B1.jpg",
    "100%.png": "100%25.png",
    "dir/sub/x.webp": "dir%2Fsub%2Fx.webp",
}


def s3_record(key: str, name: str = "ObjectCreated:Put", **obj: Any) -> dict[str, Any]:
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": "2026-11-24T10:00:00.000Z",
        "eventName": name,
        "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "upscale",
            "bucket": {"name": "photos", "arn": "arn:aws:s3:::photos"},
            "object": {"key": key, "size": 1024, "eTag": "d41d8cd98f00b204e9800998ecf8427e",
                       "sequencer": "0055AED6DCD90281E5", **obj},
        },
    }  # fmt: skip


@pytest.mark.parametrize(("decoded", "encoded"), TRICKY.items())
def test_s3_direct_keys_are_decoded(decoded: str, encoded: str) -> None:
    parsed = parse_notification(json.dumps({"Records": [s3_record(encoded)]}))
    (ev,) = parsed.created
    assert ev.key == decoded and ev.bucket == "photos"
    assert ev.etag == "d41d8cd98f00b204e9800998ecf8427e" and ev.size == 1024
    assert ev.sequencer == "0055AED6DCD90281E5" and ev.source_format == "s3"
    assert ev.to_s3_object().uri == f"s3://photos/{decoded}"


def test_several_records_versions_and_non_create_events() -> None:
    body = {
        "Records": [
            s3_record("a.png", versionId="3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY"),
            s3_record("b.png", name="ObjectRemoved:Delete"),
            s3_record("c.png", name="ObjectCreated:CompleteMultipartUpload"),
            s3_record("d.png", name="ObjectTagging:Put"),
        ]
    }
    parsed = parse_notification(json.dumps(body).encode())
    assert [e.key for e in parsed.created] == ["a.png", "c.png"]
    assert parsed.created[0].version_id == "3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY"
    assert len(parsed.ignored) == 2 and "ObjectRemoved:Delete" in parsed.ignored[0]


def test_test_event_and_sns_envelopes() -> None:
    test_event = {
        "Service": "Amazon S3",
        "Event": "s3:TestEvent",
        "Time": "2026-11-24T10:00:00.000Z",
        "Bucket": "photos",
        "RequestId": "5582815E1AEA5ADF",
        "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE",
    }
    assert parse_notification(test_event).created == []
    assert "s3:TestEvent" in parse_notification(test_event).ignored[0]

    def sns(inner: dict[str, Any]) -> str:
        return json.dumps(
            {
                "Type": "Notification",
                "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
                "TopicArn": "arn:aws:sns:us-east-1:123456789012:uploads",
                "Subject": "Amazon S3 Notification",
                "Message": json.dumps(inner),
                "Timestamp": "2026-11-24T10:00:00.000Z",
                "SignatureVersion": "1",
            }
        )

    wrapped = parse_notification(sns({"Records": [s3_record("x+y.png")]}))
    assert [e.key for e in wrapped.created] == ["x y.png"]
    assert parse_notification(sns(test_event)).created == []


def test_eventbridge_keys_are_raw_unless_configured() -> None:
    def eb(kind: str, key: str) -> dict[str, Any]:
        return {
            "version": "0",
            "id": "17793124-05d4-b198-2fde-7ededc63b103",
            "detail-type": kind,
            "source": "aws.s3",
            "account": "123456789012",
            "time": "2026-11-24T10:00:00Z",
            "region": "us-east-1",
            "resources": ["arn:aws:s3:::photos"],
            "detail": {
                "version": "0",
                "bucket": {"name": "photos"},
                "object": {"key": key, "size": 5, "etag": "b1946ac92492d2347c6235b4d2611184",
                           "version-id": "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e", "sequencer": "00617F08299329D189"},
                "request-id": "N4N7GDK58NMKJ12R",
                "requester": "123456789012",
                "reason": "PutObject",
            },
        }  # fmt: skip

    (ev,) = parse_notification(eb("Object Created", "a+b c.png")).created
    assert ev.key == "a+b c.png" and ev.version_id == "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e"
    assert ev.etag == "b1946ac92492d2347c6235b4d2611184" and ev.source_format == "eventbridge"
    encoded = parse_notification(eb("Object Created", "a%2Bb+c.png"), eventbridge_keys_encoded=True)
    assert encoded.created[0].key == "a+b c.png"
    deleted = parse_notification(eb("Object Deleted", "a.png"))
    assert deleted.created == [] and "Object Deleted" in deleted.ignored[0]


def test_minio_webhook_and_redis_formats() -> None:
    record = s3_record("my+photo%2B1.png")
    record["eventSource"] = "minio:s3"
    record["s3"]["object"]["userMetadata"] = {"content-type": "image/png"}
    webhook = {"EventName": "s3:ObjectCreated:Put", "Key": "photos/my photo+1.png",
               "Records": [record]}  # fmt: skip
    (ev,) = parse_notification(webhook).created
    assert ev.key == "my photo+1.png" and ev.source_format == "minio"
    namespace = {"photos/my photo+1.png": json.dumps({"Records": [record]})}
    assert parse_notification(namespace).created[0].key == "my photo+1.png"
    access = [{"Event": [record], "EventTime": "2026-11-24T10:00:00Z"}]
    assert parse_notification(access).created[0].key == "my photo+1.png"
    ours = s3_record("out.png")
    ours["s3"]["object"]["userMetadata"] = {"X-Amz-Meta-Upscale-Job-Id": "uq-1"}
    assert "upscale-job-id" in parse_notification({"Records": [ours]}).created[0].user_metadata


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def filer(path: str, kind: str = "create", **entry: Any) -> dict[str, Any]:
    new_entry = {"name": path.rsplit("/", 1)[-1], "is_directory": False,
                 "attributes": {"file_size": 2048, "mtime": 1795550000}, **entry}  # fmt: skip
    return {
        "key": path,
        "event_type": kind,
        "message": {
            "old_entry": None,
            "new_entry": None if kind == "delete" else new_entry,
            "delete_chunks": kind == "delete",
            "new_parent_path": path.rsplit("/", 1)[0],
            "is_from_other_cluster": False,
        },
    }


def test_seaweedfs_filer_events() -> None:
    ext = {"Seaweed-X-Amz-ETag": _b64('"0a1b2c"'), "X-Amz-Meta-Upscale-Job-Id": _b64("uq-9")}
    (ev,) = parse_notification(filer("/buckets/photos/dir/a b+c.png", extended=ext)).created
    assert (ev.bucket, ev.key, ev.size, ev.etag) == ("photos", "dir/a b+c.png", 2048, "0a1b2c")
    assert ev.user_metadata == {"upscale-job-id": "uq-9"}
    assert ev.to_s3_object().etag == "0a1b2c"
    for ignored in (
        filer("/buckets/photos/a.png", kind="rename"),
        filer("/buckets/photos/.uploads/abc/0001.part"),
        filer("/buckets/photos/dir", is_directory=True),
        filer("/buckets/photos"),
        filer("/buckets/.system/log"),
        filer("/buckets/photos/a.png", kind="delete"),
        filer("/etc/other"),
    ):
        parsed = parse_notification(ignored)
        assert parsed.created == [] and parsed.ignored, ignored


def test_seaweedfs_update_with_new_content_is_a_new_object() -> None:
    """An overwrite reaches the filer as an `update` of the key's entry (old and new entry):
    new content (another ETag; without ETags, another MD5 or size) makes a job, a change of
    metadata alone (a copy onto itself) does not."""

    def update(old: dict[str, Any] | None, **new: Any) -> dict[str, Any]:
        doc = filer("/buckets/photos/a.png", kind="update", **new)
        doc["message"]["old_entry"] = old
        return doc

    def etag(e: str, **more: str) -> dict[str, str]:
        return {"Seaweed-X-Amz-ETag": _b64(f'"{e}"'), **{k: _b64(v) for k, v in more.items()}}

    old = {"name": "a.png", "attributes": {"file_size": 2048, "md5": "m1"}, "extended": etag("e1")}
    (ev,) = parse_notification(update(old, extended=etag("e2"))).created
    assert (ev.key, ev.etag, ev.event_name) == ("a.png", "e2", "ObjectCreated:Put")
    same = parse_notification(update(old, extended=etag("e1", **{"X-Amz-Meta-X": "y"})))
    assert same.created == [] and "without new content" in same.ignored[0]
    bare = {"name": "a.png", "attributes": {"file_size": 2048, "md5": "m1"}}
    changed = update(bare, attributes={"file_size": 2048, "md5": "m2"})
    assert len(parse_notification(changed).created) == 1
    assert parse_notification(update(bare, attributes=bare["attributes"])).created == []
    assert len(parse_notification(update(None)).created) == 1  # nothing to compare: a job


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty"),
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "UTF-8"),
        (b"[1, 2]", "not an object"),
        (b"[]", "empty JSON array"),
        (b'"text"', "JSON str"),
        (b'{"hello": 1}', "unrecognised"),
        (b'{"Records": [{"eventName": "ObjectCreated:Put"}]}', "no s3 section"),
        (b'{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {}}}]}', "missing"),
        (b'{"Type": "Notification", "Message": 5}', "not a string"),
    ],
)
def test_malformed_bodies_raise_a_clear_error(body: bytes, message: str) -> None:
    with pytest.raises(MalformedEvent, match=message):
        parse_notification(body)


def test_invalid_bucket_in_an_event_is_malformed() -> None:
    rec = s3_record("a.png")
    rec["s3"]["bucket"]["name"] = "Not_A_Bucket"
    (ev,) = parse_notification({"Records": [rec]}).created
    with pytest.raises(MalformedEvent, match="invalid object"):
        ev.to_s3_object()


def test_sequencer_ordering() -> None:
    assert newer_sequencer("0055AED6DCD90281E6", "0055AED6DCD90281E5")
    assert newer_sequencer("0055AED6DCD90281E5", "0055AED6DCD902")  # padded with 0
    assert not newer_sequencer("0055AED6DCD902", "0055AED6DCD90281E5")
    assert newer_sequencer("01", None) and not newer_sequencer(None, "01")
    old = parse_notification({"Records": [s3_record("k.png", sequencer="0A")]}).created[0]
    new = parse_notification({"Records": [s3_record("k.png", sequencer="0B")]}).created[0]
    assert latest_per_key([new, old]) == [new]


def test_a_later_version_in_the_same_notification_supersedes_the_older() -> None:
    """AWS orders a key's events by sequencer, not by arrival: of v1 and v2 in one message only
    v2 makes a job (v1 is listed as ignored); events without a sequencer are all kept."""
    body = {
        "Records": [
            s3_record("k.png", versionId="v2", eTag="e2", sequencer="0B"),
            s3_record("k.png", versionId="v1", eTag="e1", sequencer="0A"),
            s3_record("other.png", sequencer="0A"),
        ]
    }
    parsed = parse_notification(body)
    assert [(e.key, e.version_id) for e in parsed.created] == [("k.png", "v2"), ("other.png", None)]
    assert len(parsed.ignored) == 1 and "s3://photos/k.png (sequencer 0A)" in parsed.ignored[0]
    unordered = {"Records": [s3_record("k.png", eTag=e, sequencer=None) for e in ("e1", "e2")]}
    assert [e.etag for e in parse_notification(unordered).created] == ["e1", "e2"]


def test_batch_operations_v1_and_v2() -> None:
    v1 = {
        "invocationSchemaVersion": "1.0",
        "invocationId": "YXNkbGZqYWRmaiBhc2RmdW9hZHNmZGpmaGFzbGtkaGZza2RmaAo",
        "job": {"id": "f3cc4f60-61f6-4a2b-8a21-d07600c373ce"},
        "tasks": [{"taskId": "dGFza2lkZ29lc2hlcmUK", "s3Key": "photo%201.png",
                   "s3VersionId": "1", "s3BucketArn": "arn:aws:s3:::photos"}],
    }  # fmt: skip
    (task,) = parse_batch_operations(v1)
    assert task.task_id == "dGFza2lkZ29lc2hlcmUK"
    assert (task.obj.bucket, task.obj.key, task.obj.version_id) == ("photos", "photo 1.png", "1")
    v2 = {
        "invocationSchemaVersion": "2.0",
        "invocationId": "inv",
        "job": {"id": "j", "userArguments": {}},
        "tasks": [{"taskId": "t", "s3Bucket": "photos", "s3Key": "a%2Bb.png", "s3VersionId": None}],
    }
    assert parse_batch_operations(v2)[0].obj.key == "a+b.png"
    out = batch_operations_response(v2, {"t": ("Succeeded", "created uq-1")})
    assert out["invocationSchemaVersion"] == "2.0" and out["invocationId"] == "inv"
    assert out["results"] == [
        {"taskId": "t", "resultCode": "Succeeded", "resultString": "created uq-1"}
    ]
    with pytest.raises(MalformedEvent):
        parse_batch_operations({"invocationSchemaVersion": "9", "tasks": []})
