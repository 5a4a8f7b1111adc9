"""fm.transfer.upload against a moto S3 server on loopback: the fast suite."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import zlib
from pathlib import Path
from typing import Any

import pytest

import ferryman as fm
from tests.s3_fixtures import s3_bucket, s3_client, s3_endpoint, s3_server
from tests.transfer.support import MiB, object_sha256, write_random

__all__ = ["s3_bucket", "s3_client", "s3_endpoint", "s3_server"]  # fixtures used here


def test_upload_is_verified_and_recorded(
    tmp_path: Path, store_url: str, s3_client: Any, s3_bucket: str
) -> None:
    source = write_random(tmp_path / "data.bin", 12 * MiB + 123)
    seen: list[fm.transfer.TransferProgress] = []
    transfer = fm.transfer.upload(
        source,
        f"s3://{s3_bucket}/in/data.bin",
        part_size=5 * MiB,
        store=store_url,
        progress=seen.append,
        metadata={"origin": "test"},
        sidecar=True,
    )
    assert transfer.status is fm.TransferStatus.SUCCEEDED
    assert transfer.total_size == source.stat().st_size
    assert transfer.parts_confirmed == 3
    assert transfer.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert object_sha256(s3_client, s3_bucket, "in/data.bin") == transfer.sha256
    assert transfer.verified_by in ("checksum", "etag")
    assert seen[-1].bytes_confirmed == transfer.total_size and seen[-1].resumed_bytes == 0
    sidecar = json.loads(
        s3_client.get_object(Bucket=s3_bucket, Key="in/data.bin.meta.json")["Body"].read()
    )
    assert sidecar["sha256"] == transfer.sha256
    assert sidecar["size"] == transfer.total_size
    assert sidecar["metadata"] == {"origin": "test"}
    assert [p["size"] for p in sidecar["parts"]] == [5 * MiB, 5 * MiB, 2 * MiB + 123]
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []

    again = fm.transfer.upload(source, f"s3://{s3_bucket}/in/data.bin", store=store_url)
    assert again.id == transfer.id  # already there: nothing sent


def test_without_the_file_digest_the_object_is_still_verified_by_its_parts(
    tmp_path: Path, sqlite_url: str, s3_client: Any, s3_bucket: str
) -> None:
    source = write_random(tmp_path / "data.bin", 11 * MiB)
    transfer = fm.transfer.upload(
        source,
        f"s3://{s3_bucket}/in/nodigest.bin",
        part_size=5 * MiB,
        store=sqlite_url,
        sidecar=True,
        file_sha256=False,
    )
    assert transfer.status is fm.TransferStatus.SUCCEEDED
    assert transfer.sha256 is None
    assert transfer.verified_by in ("checksum", "etag")
    assert (
        object_sha256(s3_client, s3_bucket, "in/nodigest.bin")
        == hashlib.sha256(source.read_bytes()).hexdigest()
    )
    sidecar = json.loads(
        s3_client.get_object(Bucket=s3_bucket, Key="in/nodigest.bin.meta.json")["Body"].read()
    )
    assert sidecar["sha256"] is None
    assert [p["size"] for p in sidecar["parts"]] == [5 * MiB, 5 * MiB, 1 * MiB]


@pytest.mark.parametrize("concurrency", [1, 3])
def test_more_parts_than_buffers_each_part_holds_its_own_bytes(
    tmp_path: Path, sqlite_url: str, s3_client: Any, s3_bucket: str, concurrency: int
) -> None:
    # Parts are read into buffers reused once S3 has their bytes: concurrency + 1
    # of them for 8 parts here, so each buffer carries several parts in turn.
    data = os.urandom(7 * 5 * MiB + 321)
    source = tmp_path / "data.bin"
    source.write_bytes(data)
    transfer = fm.transfer.upload(
        source,
        f"s3://{s3_bucket}/in/reused.bin",
        part_size=5 * MiB,
        concurrency=concurrency,
        store=sqlite_url,
        sidecar=True,
    )
    assert transfer.parts_confirmed == 8
    assert transfer.sha256 == hashlib.sha256(data).hexdigest()
    assert object_sha256(s3_client, s3_bucket, "in/reused.bin") == transfer.sha256
    sidecar = json.loads(
        s3_client.get_object(Bucket=s3_bucket, Key="in/reused.bin.meta.json")["Body"].read()
    )
    start = 0
    for part in sidecar["parts"]:
        own = data[start : start + part["size"]]
        assert part["crc32"] == base64.b64encode(zlib.crc32(own).to_bytes(4, "big")).decode()
        assert part["sha256"] is None
        start += part["size"]
    assert start == len(data)
    # The object's full-object CRC32, combined from the parts', is that of every byte.
    whole = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    assert transfer.checksum == sidecar["checksum_crc32"] == whole
    head = s3_client.head_object(Bucket=s3_bucket, Key="in/reused.bin", ChecksumMode="ENABLED")
    assert head["ChecksumCRC32"] == whole


def test_empty_and_single_part_files(
    tmp_path: Path, sqlite_url: str, s3_client: Any, s3_bucket: str
) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    small = write_random(tmp_path / "small", 1000)
    for path in (empty, small):
        transfer = fm.transfer.upload(path, f"s3://{s3_bucket}/{path.name}", store=sqlite_url)
        assert transfer.status is fm.TransferStatus.SUCCEEDED
        body = s3_client.get_object(Bucket=s3_bucket, Key=path.name)["Body"].read()
        assert body == path.read_bytes()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3:/bucket/key", "bad S3 URL"),
        ("http://bucket/key", "bad S3 URL"),
        ("s3://bucket/", "bad S3 URL"),
        ("s3://bucket", "bad S3 URL"),
    ],
)
def test_bad_urls_are_configuration_errors(tmp_path: Path, url: str, message: str) -> None:
    with pytest.raises(fm.ConfigurationError, match=message):
        fm.transfer.upload(tmp_path / "x", url, store=f"sqlite:///{tmp_path}/s.db")


def test_missing_file_and_missing_bucket(tmp_path: Path, sqlite_url: str, s3_endpoint: str) -> None:
    with pytest.raises(fm.ConfigurationError, match="does not exist"):
        fm.transfer.upload(tmp_path / "nope", "s3://bucket-x/k", store=sqlite_url)
    source = write_random(tmp_path / "f", 100)
    with pytest.raises(fm.S3Error, match="bucket 'no-such-bucket' does not exist") as caught:
        fm.transfer.upload(source, "s3://no-such-bucket/k", store=sqlite_url)
    assert caught.value.code == "NoSuchBucket"
