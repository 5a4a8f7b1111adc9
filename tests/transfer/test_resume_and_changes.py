"""Resume, reconciliation with ListParts, and source changes (moto server on loopback).

An upload is interrupted in-process by a progress callback that raises once
some parts are confirmed: the transfer stays ``active`` with those parts
recorded, as after a crash right after a part committed.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

import ferryman as fm
from ferryman.store import NewTransfer, Store
from ferryman.transfer.upload import Uploader
from tests.s3_fixtures import s3_bucket, s3_client, s3_endpoint, s3_server
from tests.transfer.support import MiB, file_sha256, object_sha256, write_random

__all__ = ["s3_bucket", "s3_client", "s3_endpoint", "s3_server"]  # fixtures used here


class Interrupted(Exception):
    pass


def interrupt_after(parts: int) -> Any:
    def progress(update: fm.transfer.TransferProgress) -> None:
        if update.parts_confirmed >= parts and not update.done:
            raise Interrupted(f"stopped after {update.parts_confirmed} parts")

    return progress


def partial(source: Path, url: str, store_url: str, parts: int = 1) -> fm.Transfer:
    """Upload until ``parts`` are confirmed, then stop as a crash would."""
    with pytest.raises(Interrupted):
        fm.transfer.upload(
            source,
            url,
            part_size=5 * MiB,
            concurrency=1,
            store=store_url,
            progress=interrupt_after(parts),
        )
    store = Store(store_url)
    try:
        (transfer,) = store.list_transfers(status=fm.TransferStatus.ACTIVE)
        return transfer
    finally:
        store.close()


def uploads(client: Any, bucket: str) -> list[Any]:
    return list(client.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def test_resume_sends_only_what_is_missing_and_adopts_parts_s3_has(
    tmp_path: Path, store_url: str, s3_client: Any, s3_bucket: str
) -> None:
    source = write_random(tmp_path / "f.bin", 22 * MiB)
    url = f"s3://{s3_bucket}/f.bin"
    before = partial(source, url, store_url, parts=1)
    # The next parts may already have been sent and committed while the first
    # one's row was committing (two threads per slot): a stop lands after one
    # part and at most three.
    confirmed = before.parts_confirmed
    assert confirmed in (1, 2, 3) and before.upload_id is not None
    data = source.read_bytes()
    # A crash after S3 took the next part but before its row committed; the one
    # after it arrived damaged.
    taken, damaged = confirmed + 1, confirmed + 2
    good_body = data[(taken - 1) * 5 * MiB : taken * 5 * MiB]
    for number, body in ((taken, good_body), (damaged, b"x" * (5 * MiB))):
        s3_client.upload_part(
            Bucket=s3_bucket,
            Key="f.bin",
            UploadId=before.upload_id,
            PartNumber=number,
            Body=body,
            ChecksumCRC32=base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode(),
        )
    seen: list[fm.transfer.TransferProgress] = []
    done = fm.transfer.upload(source, url, store=store_url, progress=seen.append)
    assert done.id == before.id and done.status is fm.TransferStatus.SUCCEEDED
    assert done.resumes == 1 and done.part_size == 5 * MiB
    assert seen[0].resumed_bytes == confirmed * 5 * MiB
    store = Store(store_url)
    parts = store.get_transfer_parts(done.id)
    store.close()
    assert [p.adopted for p in parts] == [p.part_number == taken for p in parts]
    assert len(parts) == 5
    assert object_sha256(s3_client, s3_bucket, "f.bin") == file_sha256(source)
    assert uploads(s3_client, s3_bucket) == []


def test_an_object_completed_before_its_record_is_finished_sending_nothing(
    tmp_path: Path, sqlite_url: str, s3_client: Any, s3_bucket: str
) -> None:
    source = write_random(tmp_path / "f.bin", 12 * MiB)
    url = f"s3://{s3_bucket}/f.bin"

    def stop_once_all_are_confirmed(update: fm.transfer.TransferProgress) -> None:
        if update.parts_confirmed == 3:
            raise Interrupted("every part confirmed, the upload not completed")

    with pytest.raises(Interrupted):
        fm.transfer.upload(
            source, url, part_size=5 * MiB, store=sqlite_url, progress=stop_once_all_are_confirmed
        )
    store = Store(sqlite_url)
    try:
        (before,) = store.list_transfers(status=fm.TransferStatus.ACTIVE)
        parts = store.get_transfer_parts(before.id)
    finally:
        store.close()
    assert [p.part_number for p in parts] == [1, 2, 3] and before.upload_id is not None
    # The crash came after CompleteMultipartUpload, before its record.
    s3_client.complete_multipart_upload(
        Bucket=s3_bucket,
        Key="f.bin",
        UploadId=before.upload_id,
        MultipartUpload={
            "Parts": [
                {"PartNumber": p.part_number, "ETag": p.etag, "ChecksumCRC32": p.crc32}
                for p in parts
            ]
        },
        ChecksumCRC32=base64.b64encode(zlib.crc32(source.read_bytes()).to_bytes(4, "big")).decode(),
        ChecksumType="FULL_OBJECT",
    )
    seen: list[fm.transfer.TransferProgress] = []
    done = fm.transfer.upload(source, url, store=sqlite_url, progress=seen.append)
    assert done.id == before.id and done.status is fm.TransferStatus.SUCCEEDED
    assert done.upload_id == before.upload_id  # no new multipart upload was started
    assert done.verified_by in ("checksum", "etag")
    store = Store(sqlite_url)
    try:
        assert store.get_transfer_parts(done.id) == parts  # nothing sent again
    finally:
        store.close()
    assert object_sha256(s3_client, s3_bucket, "f.bin") == file_sha256(source)
    assert uploads(s3_client, s3_bucket) == []


@pytest.mark.parametrize("change", ["modified", "truncated", "missing"])
def test_a_source_changed_between_runs_fails_and_aborts(
    tmp_path: Path, store_url: str, s3_client: Any, s3_bucket: str, change: str
) -> None:
    source = write_random(tmp_path / "f.bin", 12 * MiB)
    url = f"s3://{s3_bucket}/f.bin"
    before = partial(source, url, store_url, parts=1)
    if change == "modified":
        with source.open("r+b") as f:
            f.seek(1000)
            f.write(b"changed")
    elif change == "truncated":
        with source.open("r+b") as f:
            f.truncate(3 * MiB)
    else:
        source.unlink()
    reason = "source_missing" if change == "missing" else "source_changed"
    with pytest.raises(fm.TransferFailed, match=reason) as caught:
        fm.transfer.upload(source, url, store=store_url)
    assert caught.value.reason == reason
    store = Store(store_url)
    failed = store.get_transfer(before.id)
    store.close()
    assert failed is not None and failed.status is fm.TransferStatus.FAILED
    assert failed.reason == reason and failed.error and failed.error.startswith(reason)
    assert uploads(s3_client, s3_bucket) == []  # the multipart upload was aborted
    assert "Contents" not in s3_client.list_objects_v2(Bucket=s3_bucket)  # no object at all


def test_restart_on_change_uploads_the_new_file(
    tmp_path: Path, sqlite_url: str, s3_client: Any, s3_bucket: str
) -> None:
    source = write_random(tmp_path / "f.bin", 12 * MiB)
    url = f"s3://{s3_bucket}/f.bin"
    partial(source, url, sqlite_url, parts=1)
    write_random(source, 11 * MiB)
    done = fm.transfer.upload(source, url, store=sqlite_url, on_change="restart")
    assert done.status is fm.TransferStatus.SUCCEEDED and done.total_size == 11 * MiB
    assert object_sha256(s3_client, s3_bucket, "f.bin") == file_sha256(source)
    assert uploads(s3_client, s3_bucket) == []


def test_a_source_changed_during_the_upload_fails(
    tmp_path: Path, sqlite_url: str, s3_client: Any, s3_bucket: str
) -> None:
    source = write_random(tmp_path / "f.bin", 16 * MiB)

    def append_once(update: fm.transfer.TransferProgress) -> None:
        if update.parts_confirmed == 1:
            with source.open("ab") as f:
                f.write(b"late bytes")

    with pytest.raises(fm.TransferFailed, match="source_changed"):
        fm.transfer.upload(
            source,
            f"s3://{s3_bucket}/f.bin",
            part_size=5 * MiB,
            concurrency=1,
            store=sqlite_url,
            progress=append_once,
        )
    assert uploads(s3_client, s3_bucket) == []


def test_a_live_owner_is_not_taken_over(
    tmp_path: Path, sqlite_url: str, s3_bucket: str, s3_endpoint: str
) -> None:
    source = write_random(tmp_path / "f.bin", 12 * MiB)
    url = f"s3://{s3_bucket}/f.bin"
    before = partial(source, url, sqlite_url)
    store = Store(sqlite_url)
    try:
        # Pretend a live process on another host holds it with a fresh lease.
        with store.write("test: hand the transfer to another host") as conn:
            conn.exec_driver_sql(
                "UPDATE ferryman_transfers SET owner = 'elsewhere:1', "
                "lease_expires_at = updated_at + 3600 WHERE id = ?",
                (before.id,),
            )
        with pytest.raises(fm.TransferConflict, match="being uploaded by elsewhere:1"):
            fm.transfer.upload(source, url, store=store)
        other = write_random(tmp_path / "g.bin", 100)
        with pytest.raises(fm.ConfigurationError, match="one object has one writer"):
            fm.transfer.upload(other, url, store=store)
    finally:
        store.close()


def test_the_daemon_resumes_standalone_transfers_left_active(
    tmp_path: Path, sqlite_url: str, s3_client: Any, s3_bucket: str
) -> None:
    from ferryman.transfer.janitor import TransferResumer, resumable
    from tests.helpers import wait_until

    source = write_random(tmp_path / "f.bin", 12 * MiB)
    before = partial(source, f"s3://{s3_bucket}/f.bin", sqlite_url)
    store = Store(sqlite_url)
    try:
        assert [t.id for t in resumable(store)] == [before.id]
        resumer = TransferResumer(store)
        resumer.start()
        wait_until(lambda: resumer.resumed == [before.id], timeout=60, what="the resume")
        resumer.stop(timeout=10)
        done = store.get_transfer(before.id)
        assert done is not None and done.status is fm.TransferStatus.SUCCEEDED
        assert resumable(store) == []
    finally:
        store.close()
    assert object_sha256(s3_client, s3_bucket, "f.bin") == file_sha256(source)


def test_a_transfer_made_with_sha256_parts_is_resumed_with_sha256_parts(
    tmp_path: Path,
    store_url: str,
    s3_client: Any,
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A transfer begun before CRC32 parts (migration 0011 marks it SHA256) keeps
    its multipart upload: its parts, old and new, carry SHA-256s, and the
    object is checked by S3's composite SHA-256."""
    source = write_random(tmp_path / "f.bin", 17 * MiB)
    url = f"s3://{s3_bucket}/f.bin"
    with monkeypatch.context() as before_0011:
        old = functools.partial(NewTransfer, checksum_algorithm="SHA256")
        before_0011.setattr(sys.modules[Uploader.__module__], "NewTransfer", old)
        before = partial(source, url, store_url, parts=1)
    assert before.checksum_algorithm == "SHA256"
    done = fm.transfer.upload(source, url, store=store_url)
    assert done.id == before.id and done.resumes == 1 and done.upload_id == before.upload_id
    assert done.checksum_algorithm == "SHA256" and done.checksum is not None
    assert done.checksum.endswith("-4")  # composite, of 4 parts
    store = Store(store_url)
    try:
        parts = store.get_transfer_parts(done.id)
    finally:
        store.close()
    data = source.read_bytes()
    assert [(p.sha256, p.crc32) for p in parts] == [
        (base64.b64encode(hashlib.sha256(data[p.start : p.start + p.size]).digest()).decode(), None)
        for p in parts
    ]
    assert object_sha256(s3_client, s3_bucket, "f.bin") == file_sha256(source) == done.sha256
