"""``ferryman download`` on SeaweedFS: verified, resumable after SIGKILL, pinned to a version."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import ferryman as fm
from ferryman.errors import ConfigurationError, DownloadFailed
from ferryman.store import NewTransfer, Store
from ferryman.store.schema import download_parts, downloads
from ferryman.transfer.download import temp_path_for
from ferryman.transfer.download_ranges import CHUNK
from ferryman.transfer.upload import Uploader
from tests.helpers import wait_until
from tests.proxies import SlowProxy
from tests.s3_servers import SeaweedServer, child_environment, seaweed, seaweed_bucket, seaweed_env
from tests.transfer.support import (
    REPO,
    MiB,
    crc32_b64,
    file_sha256,
    start_ferryman,
    write_random,
)

__all__ = ["seaweed", "seaweed_bucket", "seaweed_env"]  # fixtures used here


def _fetched(log_text: str) -> list[int]:
    """Range numbers in the order the downloads logged fetching them."""
    return [int(n) for n in re.findall(r"fetching range (\d+) ", log_text)]


def _download_row(store_url: str) -> dict[str, Any] | None:
    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.select(downloads)).mappings().one_or_none()
            if row is None:
                return None
            parts = conn.execute(
                sa.select(sa.func.count()).select_from(download_parts)
            ).scalar_one()
            return {**dict(row), "parts": parts}
    finally:
        engine.dispose()


def _confirmed_ranges(store_url: str) -> set[int]:
    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as conn:
            return set(conn.execute(sa.select(download_parts.c.part_number)).scalars())
    finally:
        engine.dispose()


RANGES = 9  # 40 MiB + 3 B in 5 MiB ranges


def _start(store_url: str, log: Path, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return start_ferryman(store_url, log, env, "download", *args)


def test_download_is_verified_by_s3s_full_object_crc32_whatever_the_ranges(
    seaweed_env: SeaweedServer, seaweed_bucket: str, tmp_path: Path
) -> None:
    """The ranges' CRC32s, computed as they arrive, combine into the object's:
    no second pass, also with ranges off the object's part boundaries."""
    store = f"sqlite:///{tmp_path}/store.db"
    source = write_random(tmp_path / "source.bin", 23 * MiB + 17)
    url = f"s3://{seaweed_bucket}/crc32.bin"
    fm.transfer.upload(source, url, store=store, part_size=5 * MiB, sidecar=True)
    download_module = sys.modules["ferryman.transfer.download"]

    def second_pass(fd: int, size: int) -> bytes:
        raise AssertionError("the file was hashed a second time")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(download_module, "file_sha256", second_pass)
        done = fm.transfer.download(url, tmp_path / "out.bin", store=store, part_size=3 * MiB)
    assert (done.verified_by, done.part_size) == ("crc32", 3 * MiB)
    assert done.expected == f"crc32:{crc32_b64(source.read_bytes())}"
    assert (tmp_path / "out.bin").read_bytes() == source.read_bytes()
    engine = sa.create_engine(store)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(download_parts).order_by(download_parts.c.part_number))
            ranges = [(r.crc32, r.sha256, r.start, r.size) for r in rows]
    finally:
        engine.dispose()
    data = source.read_bytes()
    assert [(crc32, sha256) for crc32, sha256, _, _ in ranges] == [
        (crc32_b64(data[start : start + size]), None) for _, _, start, size in ranges
    ]
    assert len(ranges) == 8


def test_download_is_verified_by_s3s_composite_checksum_or_the_uploads_sidecar(
    seaweed_env: SeaweedServer,
    seaweed_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Objects with SHA-256 parts (uploaded before CRC32 parts, or by others)."""
    store = f"sqlite:///{tmp_path}/store.db"
    source = write_random(tmp_path / "source.bin", 23 * MiB + 17)
    upload_module = sys.modules[Uploader.__module__]
    sha256_parts = functools.partial(NewTransfer, checksum_algorithm="SHA256")
    monkeypatch.setattr(upload_module, "NewTransfer", sha256_parts)
    fm.transfer.upload(source, f"s3://{seaweed_bucket}/with-sidecar.bin", store=store, sidecar=True)
    fm.transfer.upload(source, f"s3://{seaweed_bucket}/bare.bin", store=store, part_size=5 * MiB)

    # Ranges not on the object's part boundaries: the sidecar's whole-file SHA-256 checks them.
    first = fm.transfer.download(
        f"s3://{seaweed_bucket}/with-sidecar.bin",
        tmp_path / "one.bin",
        store=store,
        part_size=5 * MiB,
    )
    assert first.verified_by == "sha256" and first.sha256 == file_sha256(source)
    assert (tmp_path / "one.bin").read_bytes() == source.read_bytes()

    second = fm.transfer.download(f"s3://{seaweed_bucket}/bare.bin", tmp_path, store=store)
    assert Path(second.dest_path) == tmp_path / "bare.bin"
    assert second.verified_by == "composite" and second.part_size == 5 * MiB
    assert file_sha256(tmp_path / "bare.bin") == file_sha256(source)
    assert not temp_path_for(tmp_path / "bare.bin").exists()

    again = fm.transfer.download(f"s3://{seaweed_bucket}/bare.bin", tmp_path, store=store)
    assert again.id == second.id and again.finished_at == second.finished_at  # nothing fetched


def test_a_one_range_download_is_held_to_the_sidecar_by_the_digest_of_its_range(
    seaweed_env: SeaweedServer, seaweed_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An object in one range is hashed once, as it arrives: that digest meets the sidecar's."""
    store = f"sqlite:///{tmp_path}/store.db"
    source = write_random(tmp_path / "source.bin", 3 * MiB + 5)
    url = f"s3://{seaweed_bucket}/small.bin"
    fm.transfer.upload(source, url, store=store, sidecar=True)
    download_module = sys.modules["ferryman.transfer.download"]

    def second_pass(fd: int, size: int) -> bytes:
        raise AssertionError("the file was hashed a second time")

    monkeypatch.setattr(download_module, "file_sha256", second_pass)
    done = fm.transfer.download(url, tmp_path / "small.bin", store=store)
    assert done.verified_by == "sha256" and done.sha256 == file_sha256(source)
    assert (tmp_path / "small.bin").read_bytes() == source.read_bytes()

    # A sidecar of this very object (ETag, size) whose SHA-256 the bytes do not have.
    client = seaweed_env.client()
    sidecar = client.get_object(Bucket=seaweed_bucket, Key="small.bin.meta.json")
    document = json.loads(sidecar["Body"].read())
    document["sha256"] = hashlib.sha256(b"other bytes").hexdigest()
    client.put_object(
        Bucket=seaweed_bucket, Key="small.bin.meta.json", Body=json.dumps(document).encode()
    )
    with pytest.raises(DownloadFailed, match="verify_failed"):
        fm.transfer.download(url, tmp_path / "again.bin", store=store)
    assert not (tmp_path / "again.bin").exists()
    assert not temp_path_for(tmp_path / "again.bin").exists()


def test_a_destination_named_by_the_key_stays_in_the_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="no file name"):
        fm.transfer.download("s3://bucket/up/..", tmp_path, store=f"sqlite:///{tmp_path}/s.db")
    with pytest.raises(ConfigurationError, match="is not a directory"):
        fm.transfer.download(
            "s3://bucket/key", tmp_path / "missing" / "out", store=f"sqlite:///{tmp_path}/s.db"
        )


def test_killed_download_resumes_without_fetching_confirmed_ranges_again(
    seaweed_env: SeaweedServer, seaweed_bucket: str, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path}/store.db"
    Store(store).close()
    source = write_random(tmp_path / "source.bin", 40 * MiB + 3)
    fm.transfer.upload(source, f"s3://{seaweed_bucket}/big.bin", store=store, part_size=5 * MiB)
    dest = tmp_path / "out" / "big.bin"
    dest.parent.mkdir()
    log = tmp_path / "download.log"
    args = (f"s3://{seaweed_bucket}/big.bin", str(dest), "--concurrency", "2")
    with SlowProxy(seaweed_env.endpoint, rate=8 * MiB) as proxy:
        slow = child_environment(seaweed_env, AWS_ENDPOINT_URL=proxy.endpoint)
        first = _start(store, log, slow, *args)
        try:
            wait_until(
                lambda: (row := _download_row(store)) is not None and row["parts"] >= 3,
                timeout=60,
                what="three ranges confirmed",
            )
        finally:
            first.kill()
            first.wait(timeout=30)
    assert not dest.exists()  # nothing at DEST until the whole object is there
    confirmed = _confirmed_ranges(store)
    assert len(confirmed) >= 3 and len(confirmed) < RANGES
    before = _fetched(log.read_text())

    second = _start(store, log, child_environment(seaweed_env), *args)
    assert second.wait(timeout=120) == 0, log.read_text()[-3000:]
    after = _fetched(log.read_text())[len(before) :]
    # Exactly the ranges not confirmed before the kill were fetched: none twice.
    assert sorted(after) == sorted(set(range(1, RANGES + 1)) - confirmed), (before, after)
    assert file_sha256(dest) == file_sha256(source)
    row = _download_row(store)
    assert row is not None and row["status"] == "succeeded" and row["verified_by"] == "crc32"
    assert row["resumes"] == 1
    assert not temp_path_for(dest).exists()


def test_an_object_replaced_during_the_download_is_refused_not_mixed(
    seaweed_env: SeaweedServer, seaweed_bucket: str, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path}/store.db"
    client = seaweed_env.client()
    old = write_random(tmp_path / "old.bin", 12 * MiB, seed=1)
    new = write_random(tmp_path / "new.bin", 12 * MiB, seed=2)
    url = f"s3://{seaweed_bucket}/report.bin"
    fm.transfer.upload(old, url, store=store, part_size=5 * MiB)
    dest = tmp_path / "report.bin"
    dest.write_bytes(b"the previous report")
    replaced = []

    def replace_after_the_first_range(progress: fm.transfer.TransferProgress) -> None:
        if not replaced:
            client.put_object(Bucket=seaweed_bucket, Key="report.bin", Body=new.read_bytes())
            replaced.append(True)

    # Through a slow link, so that ranges are still to come when the first is recorded.
    with (
        SlowProxy(seaweed_env.endpoint, rate=4 * MiB) as proxy,
        pytest.raises(DownloadFailed, match=r"object_changed.*changed since this download began"),
    ):
        fm.transfer.download(
            url,
            dest,
            store=store,
            concurrency=1,
            part_size=5 * MiB,
            progress=replace_after_the_first_range,
            client=seaweed_env.client(AWS_ENDPOINT_URL=proxy.endpoint),
        )
    assert dest.read_bytes() == b"the previous report"  # untouched
    assert not temp_path_for(dest).exists()
    row = _download_row(store)
    assert row is not None and (row["status"], row["reason"]) == ("failed", "object_changed")

    # Run again: the new version, whole.
    done = fm.transfer.download(url, dest, store=store)
    assert done.status is fm.TransferStatus.SUCCEEDED
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == file_sha256(new)


def test_a_resume_after_the_object_changed_is_refused_with_a_clear_error(
    seaweed_env: SeaweedServer, seaweed_bucket: str, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path}/store.db"
    Store(store).close()
    old = write_random(tmp_path / "old.bin", 30 * MiB, seed=3)
    fm.transfer.upload(old, f"s3://{seaweed_bucket}/data.bin", store=store, part_size=5 * MiB)
    dest = tmp_path / "data.bin"
    log = tmp_path / "download.log"
    args = (f"s3://{seaweed_bucket}/data.bin", str(dest), "--concurrency", "1")
    with SlowProxy(seaweed_env.endpoint, rate=8 * MiB) as proxy:
        first = _start(
            store, log, child_environment(seaweed_env, AWS_ENDPOINT_URL=proxy.endpoint), *args
        )
        try:
            wait_until(
                lambda: (row := _download_row(store)) is not None and row["parts"] >= 1,
                timeout=60,
                what="a range confirmed",
            )
        finally:
            first.kill()
            first.wait(timeout=30)
    seaweed_env.client().put_object(Bucket=seaweed_bucket, Key="data.bin", Body=b"v2")
    second = subprocess.run(
        [sys.executable, "-m", "ferryman", "--store", store, "download", *args],
        cwd=REPO,
        env=child_environment(seaweed_env),
        capture_output=True,
        text=True,
        check=False,
    )
    assert second.returncode == 8, second.stderr
    assert "changed since this download began" in second.stderr
    assert "run again to download the new version" in second.stderr
    assert not dest.exists() and not temp_path_for(dest).exists()
    third = subprocess.run(
        [sys.executable, "-m", "ferryman", "--store", store, "download", *args],
        cwd=REPO,
        env=child_environment(seaweed_env),
        capture_output=True,
        text=True,
        check=False,
    )
    assert third.returncode == 0, third.stderr
    assert dest.read_bytes() == b"v2"


@pytest.mark.parametrize("fsync", [True, False])
def test_ranges_are_recorded_only_after_their_bytes_are_synced_to_disk(
    seaweed_env: SeaweedServer,
    seaweed_bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fsync: bool,
) -> None:
    """With fsync, each group of ranges is fdatasync-ed before its rows commit (none without)."""
    store = f"sqlite:///{tmp_path}/store.db"
    source = write_random(tmp_path / "source.bin", 23 * MiB + 17)
    fm.transfer.upload(source, f"s3://{seaweed_bucket}/synced.bin", store=store, part_size=5 * MiB)
    dest = tmp_path / "synced.bin"
    temp = temp_path_for(dest)
    events: list[str] = []
    real_sync, real_confirm = os.fdatasync, Store.confirm_download_parts

    def fdatasync(fd: int) -> None:
        real_sync(fd)
        if Path(os.readlink(f"/proc/self/fd/{fd}")) == temp:
            events.append("sync")

    def confirm(self: Store, download_id: int, parts: Any) -> Any:
        events.append("confirm")
        return real_confirm(self, download_id, parts)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(Store, "confirm_download_parts", confirm)
    done = fm.transfer.download(f"s3://{seaweed_bucket}/synced.bin", dest, store=store, fsync=fsync)
    assert done.verified_by == "crc32" and file_sha256(dest) == file_sha256(source)
    assert "confirm" in events
    if fsync:
        assert all(
            events[i - 1] == "sync" for i, event in enumerate(events) if event == "confirm"
        ), events
    else:
        assert "sync" not in events


def test_a_range_whose_bytes_could_not_be_written_is_not_recorded(
    seaweed_env: SeaweedServer, seaweed_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write error (a full disk) stops the download with it; the range it hit is not
    recorded, DEST does not appear, and the next call fetches that range and finishes."""
    store = f"sqlite:///{tmp_path}/store.db"
    source = write_random(tmp_path / "source.bin", 23 * MiB + 17)
    url = f"s3://{seaweed_bucket}/full-disk.bin"
    fm.transfer.upload(source, url, store=store, part_size=5 * MiB)
    ranges_module = sys.modules["ferryman.transfer.download_ranges"]
    real_write = ranges_module._pwrite_all

    def pwrite_all(fd: int, view: memoryview, offset: int) -> None:
        # The last chunk of range 3: its thread has handed the range over by then.
        if 15 * MiB - CHUNK <= offset < 15 * MiB:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(fd, view, offset)

    monkeypatch.setattr(ranges_module, "_pwrite_all", pwrite_all)
    dest = tmp_path / "full-disk.bin"
    with pytest.raises(OSError, match="No space left on device"):
        fm.transfer.download(url, dest, store=store, concurrency=2)
    assert 3 not in _confirmed_ranges(store)
    assert not dest.exists()

    monkeypatch.setattr(ranges_module, "_pwrite_all", real_write)
    done = fm.transfer.download(url, dest, store=store, concurrency=2)
    assert done.verified_by == "crc32" and file_sha256(dest) == file_sha256(source)


class _CutProxy(SlowProxy):
    """Relays S3, but cuts each of the first ``cuts`` connections after ``after`` bytes
    of answers: a connection lost in the middle of a range's body."""

    def __init__(self, upstream: str, *, after: int, cuts: int) -> None:
        super().__init__(upstream, rate=0)
        self.after = after
        self._cuts_left = cuts
        self._lock = threading.Lock()
        self.cut = 0  # connections cut in the middle of an answer

    def _relay(self, client: socket.socket) -> None:
        with self._lock:
            cut, self._cuts_left = self._cuts_left > 0, self._cuts_left - 1
        server = self._connect(client)
        if server is None:
            return
        up = threading.Thread(target=_pipe, args=(client, server, None), daemon=True)
        up.start()
        if _pipe(server, client, self.after if cut else None):
            with self._lock:
                self.cut += 1
        up.join(timeout=30)
        client.close()
        server.close()


def _pipe(source: socket.socket, sink: socket.socket, limit: int | None) -> bool:
    """Relay until either side closes, or until ``limit`` bytes; True if cut at the limit."""
    relayed, cut = 0, False
    try:
        while data := source.recv(64 * 1024):
            if limit is not None and relayed + len(data) > limit:
                sink.sendall(data[: limit - relayed])
                cut = True
                break
            sink.sendall(data)
            relayed += len(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
    return cut


def test_a_range_cut_mid_body_is_fetched_again_and_the_file_is_whole(
    tmp_path: Path, seaweed_env: SeaweedServer, seaweed_bucket: str
) -> None:
    source = tmp_path / "cut.bin"
    write_random(source, 12 * MiB + 7)
    store = f"sqlite:///{tmp_path}/store.db"
    fm.transfer.upload(source, f"s3://{seaweed_bucket}/cut.bin", store=store, part_size=5 * MiB)
    dest = tmp_path / "cut-out.bin"
    log = tmp_path / "download.log"
    with _CutProxy(seaweed_env.endpoint, after=3 * MiB, cuts=3) as proxy:
        env = child_environment(seaweed_env, AWS_ENDPOINT_URL=proxy.endpoint)
        done = _start(store, log, env, f"s3://{seaweed_bucket}/cut.bin", str(dest))
        assert done.wait(timeout=120) == 0, log.read_text()[-3000:]
    # Answers of a few hundred bytes come before the ranges of 5 MiB: every cut
    # at 3 MiB fell inside a range's body, and those ranges were fetched again.
    assert proxy.cut == 3
    assert file_sha256(dest) == file_sha256(source)
