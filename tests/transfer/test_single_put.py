"""Files of at most one part go up in one PutObject (moto server on loopback).

A crash between the put and its record is played by a botocore hook that
raises once S3 has answered the put: the transfer stays ``active``, as after
a SIGKILL at that point, and the next call must record the object without
sending it again.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

import ferryman as fm
from ferryman.store import Store
from tests.s3_fixtures import s3_bucket, s3_client, s3_endpoint, s3_server
from tests.s3_servers import SeaweedServer, seaweed, seaweed_bucket, seaweed_env
from tests.transfer.support import MiB, write_random

__all__ = [
    "s3_bucket",
    "s3_client",
    "s3_endpoint",
    "s3_server",
    "seaweed",
    "seaweed_bucket",
    "seaweed_env",
]  # fixtures used here


class CrashAfterPut(Exception):
    pass


def count_calls(client: Any) -> dict[str, int]:
    """Count the S3 operations ``client`` makes, by name."""
    calls: dict[str, int] = {}

    def seen(model: Any, **_: Any) -> None:
        calls[model.name] = calls.get(model.name, 0) + 1

    client.meta.events.register("before-call.s3", seen)
    return calls


def test_a_one_part_file_is_one_put_with_its_sha256(
    tmp_path: Path, store_url: str, s3_client: Any, s3_bucket: str
) -> None:
    source = write_random(tmp_path / "small.bin", 3 * MiB + 17)
    calls = count_calls(s3_client)
    transfer = fm.transfer.upload(
        source, f"s3://{s3_bucket}/small.bin", store=store_url, client=s3_client
    )
    digest = hashlib.sha256(source.read_bytes()).digest()
    assert transfer.status is fm.TransferStatus.SUCCEEDED
    assert transfer.sha256 == digest.hex()
    assert transfer.checksum == base64.b64encode(digest).decode()
    assert (transfer.parts_confirmed, transfer.bytes_confirmed) == (1, source.stat().st_size)
    assert transfer.upload_id is None
    # moto neither checks nor echoes ChecksumSHA256 (SeaweedFS and AWS do): the
    # object is then looked at once, and its MD5 ETag checked.
    assert transfer.verified_by == "etag"
    assert calls == {"PutObject": 1, "HeadObject": 1}  # no multipart upload
    body = s3_client.get_object(Bucket=s3_bucket, Key="small.bin")["Body"].read()
    assert body == source.read_bytes()


def test_a_crash_between_the_put_and_its_record_is_resumed_without_a_second_put(
    tmp_path: Path, store_url: str, s3_client: Any, s3_bucket: str
) -> None:
    source = write_random(tmp_path / "small.bin", 700 * 1024)
    url = f"s3://{s3_bucket}/small.bin"

    def crash(**_: Any) -> None:
        raise CrashAfterPut("S3 has the object; its record was never written")

    s3_client.meta.events.register("after-call.s3.PutObject", crash)
    with pytest.raises(CrashAfterPut):
        fm.transfer.upload(source, url, store=store_url, client=s3_client, sidecar=True)
    s3_client.meta.events.unregister("after-call.s3.PutObject", crash)
    store = Store(store_url)
    try:
        (active,) = store.list_transfers(status=fm.TransferStatus.ACTIVE)
        assert active.etag is None and active.parts_confirmed == 0
    finally:
        store.close()

    calls = count_calls(s3_client)
    done = fm.transfer.upload(source, url, store=store_url, client=s3_client, sidecar=True)
    assert done.id == active.id and done.status is fm.TransferStatus.SUCCEEDED
    assert done.resumes == 1 and done.parts_confirmed == 1
    assert done.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert "PutObject" in calls and calls["PutObject"] == 1  # the sidecar alone
    assert "CreateMultipartUpload" not in calls
    sidecar = json.loads(
        s3_client.get_object(Bucket=s3_bucket, Key="small.bin.meta.json")["Body"].read()
    )
    assert sidecar["sha256"] == done.sha256
    assert [p["size"] for p in sidecar["parts"]] == [700 * 1024]


def test_a_crash_before_the_put_sends_the_file_on_resume(
    tmp_path: Path, sqlite_url: str, s3_client: Any, s3_bucket: str
) -> None:
    source = write_random(tmp_path / "small.bin", 4096)
    url = f"s3://{s3_bucket}/small.bin"
    # An older object at the key: the crashed put never replaced it.
    s3_client.put_object(Bucket=s3_bucket, Key="small.bin", Body=b"older version")

    def crash(**_: Any) -> None:
        raise CrashAfterPut("killed before the request left")

    s3_client.meta.events.register("before-call.s3.PutObject", crash)
    with pytest.raises(CrashAfterPut):
        fm.transfer.upload(source, url, store=sqlite_url, client=s3_client)
    s3_client.meta.events.unregister("before-call.s3.PutObject", crash)

    done = fm.transfer.upload(source, url, store=sqlite_url, client=s3_client)
    assert done.resumes == 1 and done.status is fm.TransferStatus.SUCCEEDED
    body = s3_client.get_object(Bucket=s3_bucket, Key="small.bin")["Body"].read()
    assert body == source.read_bytes()


def test_a_file_changed_while_read_is_sent_again_when_asked(
    tmp_path: Path, sqlite_url: str, s3_client: Any, s3_bucket: str
) -> None:
    source = write_random(tmp_path / "small.bin", 64 * 1024, seed=1)
    url = f"s3://{s3_bucket}/small.bin"
    first = fm.transfer.upload(source, url, store=sqlite_url, client=s3_client)
    write_random(source, 80 * 1024, seed=2)  # a new version of the file
    second = fm.transfer.upload(source, url, store=sqlite_url, client=s3_client)
    assert second.id != first.id and second.total_size == 80 * 1024
    body = s3_client.get_object(Bucket=s3_bucket, Key="small.bin")["Body"].read()
    assert body == source.read_bytes()


def test_against_seaweedfs_the_server_checks_the_sha256_and_echoes_it(
    tmp_path: Path, sqlite_url: str, seaweed_env: SeaweedServer, seaweed_bucket: str
) -> None:
    client = seaweed_env.client()
    from botocore.exceptions import ClientError  # type: ignore[import-untyped]

    with pytest.raises(ClientError, match=r"BadDigest|InvalidDigest|XAmzContentChecksumMismatch"):
        client.put_object(
            Bucket=seaweed_bucket,
            Key="bad",
            Body=b"the bytes",
            ChecksumSHA256=base64.b64encode(hashlib.sha256(b"other").digest()).decode(),
        )
    source = write_random(tmp_path / "small.bin", 512 * 1024)
    url = f"s3://{seaweed_bucket}/small.bin"

    def crash(**_: Any) -> None:
        raise CrashAfterPut("S3 has the object; its record was never written")

    client.meta.events.register("after-call.s3.PutObject", crash)
    with pytest.raises(CrashAfterPut):
        fm.transfer.upload(source, url, store=sqlite_url, client=client)
    client.meta.events.unregister("after-call.s3.PutObject", crash)
    calls = count_calls(client)
    done = fm.transfer.upload(source, url, store=sqlite_url, client=client)
    assert done.resumes == 1 and done.verified_by == "checksum"
    assert calls == {"ListMultipartUploads": 1, "HeadObject": 1}  # found, not sent again
    assert done.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()

    other = write_random(tmp_path / "other.bin", 3 * MiB)
    calls.clear()
    fresh = fm.transfer.upload(
        other, f"s3://{seaweed_bucket}/other.bin", store=sqlite_url, client=client
    )
    assert fresh.verified_by == "checksum" and calls == {"PutObject": 1}
    assert fresh.checksum == base64.b64encode(hashlib.sha256(other.read_bytes()).digest()).decode()
