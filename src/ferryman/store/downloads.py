"""SQL for downloads (resumable ranged downloads from S3) and their confirmed parts.

A download is one row per destination path, keyed by the SHA-256 of the path
(``dest_digest``): opening a download to a path either resumes the row's
active download of the same object version or starts the row afresh
(its parts deleted). A part row is the commit point of the download's
progress: it is written only after the part's bytes are in the temporary
file. Only one process writes a destination at a time; the caller holds a
lock on the temporary file for that (:mod:`ferryman.transfer.download`),
so these writes need no fencing token.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ferryman.model import Download, DownloadPart, TransferStatus
from ferryman.store import records
from ferryman.store.dialect import Backend
from ferryman.store.schema import download_parts, downloads

ACTIVE = TransferStatus.ACTIVE.value


def dest_digest(dest_path: str) -> bytes:
    """The unique key of a destination path: its SHA-256."""
    return hashlib.sha256(dest_path.encode("utf-8", "surrogateescape")).digest()


@dataclass(frozen=True, slots=True, kw_only=True)
class NewDownload:
    """What a caller asks to download: the object version pinned, and where to."""

    dest_path: str
    temp_path: str
    bucket: str
    key: str
    version_id: str | None
    etag: str
    size: int
    part_size: int
    expected: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenedDownload:
    download: Download
    parts: list[DownloadPart]
    created: bool  # False: an active download of the same object version resumed


@dataclass(frozen=True, slots=True, kw_only=True)
class DownloadOutcome:
    """How a download ended: the file's SHA-256 if computed, how it was checked, or why not."""

    status: TransferStatus
    sha256: str | None = None
    verified_by: str | None = None
    reason: str | None = None
    error: str | None = None


class DownloadQueries:
    """Downloads and their parts on one store database."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def now(self, conn: sa.Connection) -> float:
        return self.backend.clock(conn)

    def find(self, conn: sa.Connection, dest_path: str) -> Download | None:
        row = (
            conn.execute(
                sa.select(downloads).where(downloads.c.dest_digest == dest_digest(dest_path))
            )
            .mappings()
            .one_or_none()
        )
        return None if row is None else records.download_from_row(row)

    def get(self, conn: sa.Connection, download_id: int) -> Download:
        row = conn.execute(sa.select(downloads).where(downloads.c.id == download_id)).mappings()
        return records.download_from_row(row.one())

    def parts(self, conn: sa.Connection, download_id: int) -> list[DownloadPart]:
        rows = conn.execute(
            sa.select(download_parts)
            .where(download_parts.c.download_id == download_id)
            .order_by(download_parts.c.part_number)
        ).mappings()
        return [records.download_part_from_row(row) for row in rows]

    def list(self, conn: sa.Connection, *, limit: int) -> list[Download]:
        rows = conn.execute(
            sa.select(downloads).order_by(downloads.c.id.desc()).limit(limit)
        ).mappings()
        return [records.download_from_row(row) for row in rows]

    def open(self, conn: sa.Connection, new: NewDownload) -> OpenedDownload:
        """Resume the destination's active download of the same version, or start afresh.

        "The same version" is the same bucket, key, ETag, version id, size and
        part size; anything else restarts the row (its parts are deleted, the
        temporary file is the caller's to truncate).
        """
        now = self.now(conn)
        digest = dest_digest(new.dest_path)
        row = (
            conn.execute(
                sa.select(downloads).where(downloads.c.dest_digest == digest).with_for_update()
            )
            .mappings()
            .one_or_none()
        )
        values = _fresh_values(new, now)
        if row is None:
            download_id = conn.execute(
                downloads.insert().values(dest_digest=digest, **values).returning(downloads.c.id)
            ).scalar_one()
            return OpenedDownload(download=self.get(conn, download_id), parts=[], created=True)
        existing = records.download_from_row(row)
        if _same_version(existing, new):
            conn.execute(
                downloads.update()
                .where(downloads.c.id == existing.id)
                .values(resumes=downloads.c.resumes + 1, updated_at=now)
            )
            return OpenedDownload(
                download=self.get(conn, existing.id),
                parts=self.parts(conn, existing.id),
                created=False,
            )
        conn.execute(download_parts.delete().where(download_parts.c.download_id == existing.id))
        conn.execute(downloads.update().where(downloads.c.id == existing.id).values(**values))
        return OpenedDownload(download=self.get(conn, existing.id), parts=[], created=True)

    def confirm_parts(
        self, conn: sa.Connection, download_id: int, parts: Sequence[DownloadPart]
    ) -> None:
        """Record parts whose bytes are in the temporary file (all or none)."""
        if not parts:
            return
        now = self.now(conn)
        conn.execute(
            download_parts.insert(),
            [
                {
                    "download_id": download_id,
                    "part_number": p.part_number,
                    "start": p.start,
                    "size": p.size,
                    "sha256": p.sha256,
                    "crc32": p.crc32,
                    "confirmed_at": now,
                }
                for p in parts
            ],
        )
        conn.execute(
            downloads.update()
            .where(downloads.c.id == download_id)
            .values(
                bytes_done=downloads.c.bytes_done + sum(p.size for p in parts),
                parts_done=downloads.c.parts_done + len(parts),
                updated_at=now,
            )
        )

    def forget_parts(self, conn: sa.Connection, download_id: int, numbers: Sequence[int]) -> None:
        """Drop parts whose bytes the temporary file no longer holds (fetched again)."""
        if not numbers:
            return
        conn.execute(
            download_parts.delete().where(
                download_parts.c.download_id == download_id,
                download_parts.c.part_number.in_(list(numbers)),
            )
        )
        kept = conn.execute(
            sa.select(
                sa.func.count(), sa.func.coalesce(sa.func.sum(download_parts.c.size), 0)
            ).where(download_parts.c.download_id == download_id)
        ).one()
        conn.execute(
            downloads.update()
            .where(downloads.c.id == download_id)
            .values(parts_done=kept[0], bytes_done=kept[1], updated_at=self.now(conn))
        )

    def finish(self, conn: sa.Connection, download_id: int, outcome: DownloadOutcome) -> Download:
        now = self.now(conn)
        conn.execute(
            downloads.update()
            .where(downloads.c.id == download_id)
            .values(
                status=outcome.status.value,
                sha256=outcome.sha256,
                verified_by=outcome.verified_by,
                reason=outcome.reason,
                error=outcome.error,
                updated_at=now,
                finished_at=now,
            )
        )
        return self.get(conn, download_id)


def _fresh_values(new: NewDownload, now: float) -> dict[str, Any]:
    """A download row's columns for a download starting afresh."""
    return {
        "dest_path": new.dest_path,
        "temp_path": new.temp_path,
        "bucket": new.bucket,
        "key": new.key,
        "version_id": new.version_id,
        "etag": new.etag,
        "size": new.size,
        "part_size": new.part_size,
        "expected": new.expected,
        "status": ACTIVE,
        "bytes_done": 0,
        "parts_done": 0,
        "sha256": None,
        "verified_by": None,
        "reason": None,
        "error": None,
        "resumes": 0,
        "created_at": now,
        "updated_at": now,
        "finished_at": None,
    }


def _same_version(existing: Download, new: NewDownload) -> bool:
    """Whether an active download row is of the object version ``new`` asks for."""
    return (
        existing.status is TransferStatus.ACTIVE
        and (existing.bucket, existing.key, existing.etag, existing.version_id)
        == (new.bucket, new.key, new.etag, new.version_id)
        and (existing.size, existing.part_size, existing.temp_path)
        == (new.size, new.part_size, new.temp_path)
    )
