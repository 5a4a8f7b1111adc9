"""The store's record of downloads, on every store: resume, restart, confirm, finish."""

from __future__ import annotations

from datetime import UTC, datetime

from ferryman.model import DownloadPart, TransferStatus
from ferryman.store import DownloadOutcome, NewDownload, Store


def _new(dest: str, *, etag: str = "e1", size: int = 30) -> NewDownload:
    return NewDownload(
        dest_path=dest,
        temp_path=f"{dest}.ferryman-part",
        bucket="b",
        key="k",
        version_id=None,
        etag=etag,
        size=size,
        part_size=10,
        expected=None,
    )


def _part(number: int) -> DownloadPart:
    return DownloadPart(
        part_number=number,
        start=(number - 1) * 10,
        size=10,
        sha256=f"h{number}",
        confirmed_at=datetime.now(UTC),
    )


def test_a_download_resumes_its_confirmed_parts_and_restarts_for_another_version(
    store_url: str,
) -> None:
    store = Store(store_url, create=True)
    try:
        opened = store.open_download(_new("/data/é/out.bin"))
        assert opened.created and opened.parts == []
        store.confirm_download_parts(opened.download.id, [_part(1), _part(3)])

        again = store.open_download(_new("/data/é/out.bin"))
        assert not again.created and again.download.id == opened.download.id
        assert [p.part_number for p in again.parts] == [1, 3]
        assert (again.download.bytes_done, again.download.parts_done) == (20, 2)
        assert again.download.resumes == 1

        store.forget_download_parts(opened.download.id, [3])
        found = store.find_download("/data/é/out.bin")
        assert found is not None and found.bytes_done == 10

        changed = store.open_download(_new("/data/é/out.bin", etag="e2"))
        assert changed.created and changed.parts == []
        assert changed.download.id == opened.download.id  # one row per destination
        assert (changed.download.etag, changed.download.bytes_done) == ("e2", 0)

        other = store.open_download(_new("/data/other.bin"))
        assert other.download.id != opened.download.id

        done = store.finish_download(
            changed.download.id,
            DownloadOutcome(status=TransferStatus.SUCCEEDED, sha256="ab", verified_by="sha256"),
        )
        assert done.status is TransferStatus.SUCCEEDED and done.finished_at is not None
        # A finished download is not resumed: the next one to that path starts afresh.
        fresh = store.open_download(_new("/data/é/out.bin", etag="e2"))
        assert fresh.created and fresh.download.status is TransferStatus.ACTIVE
        assert [d.dest_path for d in store.list_downloads()] == [
            "/data/other.bin",
            "/data/é/out.bin",
        ]
    finally:
        store.close()
