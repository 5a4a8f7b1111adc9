"""The Store methods of file transfers: uploads to S3 and downloads from it.

:class:`FileTransfers` is mixed into :class:`~ferryman.store.Store`, as
:class:`~ferryman.store.read_model.ReadModel` is, so ``transfer/`` calls
``store.open_transfer(...)`` or ``store.open_download(...)`` and gets records
back. Each method is one transaction; the SQL is in
:mod:`ferryman.store.transfers` and :mod:`ferryman.store.downloads`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa

from ferryman.model import Download, DownloadPart, Transfer, TransferPart, TransferStatus
from ferryman.store.dialect import Backend
from ferryman.store.downloads import DownloadOutcome, DownloadQueries, NewDownload, OpenedDownload
from ferryman.store.run_rows import Lease
from ferryman.store.transfers import (
    CompletedObject,
    ConfirmedPart,
    NewTransfer,
    OpenedTransfer,
    TransferFence,
    TransferQueries,
)

__all__ = ["FileTransfers"]


class FileTransfers:
    """The Store methods behind ``ferryman.transfer``: resumable uploads and downloads."""

    backend: Backend
    transfers: TransferQueries

    def read(self, doing: str) -> contextlib.AbstractContextManager[sa.Connection]:
        raise NotImplementedError

    def write(self, doing: str) -> contextlib.AbstractContextManager[sa.Connection]:
        raise NotImplementedError

    # -- transfers -----------------------------------------------------------

    def open_transfer(
        self,
        new: NewTransfer,
        *,
        owner: str,
        lease_seconds: float,
        run_lease: Lease | None,
        may_take_over: Callable[[Transfer, float], bool],
    ) -> OpenedTransfer:
        """Resume the active transfer of the object (taking it over) or create one."""
        with self.write("opening a transfer") as conn:
            return self.transfers.open(
                conn,
                new,
                owner=owner,
                lease_seconds=lease_seconds,
                run_lease=run_lease,
                may_take_over=may_take_over,
            )

    def renew_transfer(self, fence: TransferFence, lease_seconds: float) -> None:
        with self.write("renewing a transfer") as conn:
            self.transfers.renew(conn, fence, lease_seconds)

    def release_transfer(self, fence: TransferFence) -> bool:
        with self.write("releasing a transfer") as conn:
            return self.transfers.release(conn, fence)

    def set_transfer_upload(
        self, fence: TransferFence, upload_id: str | None, part_size: int
    ) -> Transfer:
        """Record a new multipart upload (or none), forgetting earlier parts; the new transfer."""
        with self.write("recording a multipart upload") as conn:
            return self.transfers.set_upload(conn, fence, upload_id, part_size)

    def record_transfer_source(self, fence: TransferFence, *, size: int, mtime: float) -> Transfer:
        """Record the source file's size and mtime; the updated transfer."""
        with self.write("recording a transfer's source") as conn:
            return self.transfers.record_source(conn, fence, size=size, mtime=mtime)

    def confirm_part(self, fence: TransferFence, part: ConfirmedPart, lease_seconds: float) -> None:
        """Commit a part S3 acknowledged, fenced; from now on it is never sent again."""
        with self.write("confirming an uploaded part") as conn:
            self.transfers.confirm_part(conn, fence, part, lease_seconds)

    def forget_parts(self, fence: TransferFence, part_numbers: Sequence[int]) -> Transfer:
        """Drop confirmed parts S3 no longer has (they are sent again); the updated transfer."""
        with self.write("forgetting parts S3 does not have") as conn:
            return self.transfers.forget_parts(conn, fence, part_numbers)

    def record_transfer_object(self, fence: TransferFence, completed: CompletedObject) -> Transfer:
        """Record the completed, verified object; the updated transfer (still active)."""
        with self.write("recording a completed object") as conn:
            return self.transfers.record_object(conn, fence, completed)

    def record_whole_object(
        self,
        fence: TransferFence,
        part: ConfirmedPart,
        completed: CompletedObject,
        *,
        source_mtime: float,
        lease_seconds: float,
        finish: bool,
    ) -> Transfer:
        """Record an object sent in one PutObject, in one transaction: its source, its
        single part, the object as verified, and (``finish``) the transfer's success.

        One commit where a multipart upload makes one per step: the object is already
        whole in S3, so there is no partial state worth a commit of its own.
        """
        with self.write("recording an object sent whole") as conn:
            return self.transfers.record_whole(
                conn,
                fence,
                part,
                completed,
                source_mtime=source_mtime,
                lease_seconds=lease_seconds,
                finish=finish,
            )

    def finish_transfer(
        self,
        fence: TransferFence,
        status: TransferStatus,
        *,
        reason: str | None = None,
        error: str | None = None,
    ) -> Transfer:
        """End the transfer ``succeeded`` or ``failed``; the transfer as finished."""
        with self.write("finishing a transfer") as conn:
            return self.transfers.finish(conn, fence, status, reason=reason, error=error)

    def get_transfer(self, transfer_id: int) -> Transfer | None:
        with self.read("reading a transfer") as conn:
            return self.transfers.get(conn, transfer_id)

    def get_transfer_parts(self, transfer_id: int) -> list[TransferPart]:
        with self.read("reading a transfer's parts") as conn:
            return self.transfers.parts(conn, transfer_id)

    def list_transfers(self, **filters: Any) -> list[Transfer]:
        with self.read("listing transfers") as conn:
            return self.transfers.list(conn, **filters)

    def latest_transfer(self, *, source_path: str, bucket: str, key: str) -> Transfer | None:
        with self.read("reading a transfer") as conn:
            return self.transfers.latest_for(conn, source_path=source_path, bucket=bucket, key=key)

    def active_upload_ids(self) -> set[str]:
        with self.read("listing active uploads") as conn:
            return self.transfers.active_upload_ids(conn)

    # -- downloads (ferryman.transfer.download) --------------------------------

    @functools.cached_property
    def downloads(self) -> DownloadQueries:
        return DownloadQueries(self.backend)

    def open_download(self, new: NewDownload) -> OpenedDownload:
        """Resume the destination's download of the same object version, or start afresh."""
        with self.write("opening a download") as conn:
            return self.downloads.open(conn, new)

    def find_download(self, dest_path: str) -> Download | None:
        with self.read("reading a download") as conn:
            return self.downloads.find(conn, dest_path)

    def confirm_download_parts(self, download_id: int, parts: Sequence[DownloadPart]) -> None:
        """Commit parts whose bytes are in the temporary file; from now on never fetched again."""
        with self.write("confirming downloaded parts") as conn:
            self.downloads.confirm_parts(conn, download_id, parts)

    def forget_download_parts(self, download_id: int, part_numbers: Sequence[int]) -> None:
        with self.write("forgetting downloaded parts") as conn:
            self.downloads.forget_parts(conn, download_id, part_numbers)

    def finish_download(self, download_id: int, outcome: DownloadOutcome) -> Download:
        with self.write("finishing a download") as conn:
            return self.downloads.finish(conn, download_id, outcome)

    def list_downloads(self, *, limit: int = 50) -> list[Download]:
        with self.read("listing downloads") as conn:
            return self.downloads.list(conn, limit=limit)
