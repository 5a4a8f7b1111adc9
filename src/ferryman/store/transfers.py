"""SQL for transfers (resumable S3 uploads) and their confirmed parts.

Every write a transfer makes is *fenced* twice over:

* by the transfer's ``owner_token``: whoever opens (takes over) a transfer
  increments it, so an upload that lost the transfer to another matches no
  row and its write is refused with :class:`~ferryman.TransferConflict`;
* inside a job, also by the run's ``lease_token``: the run row is touched
  with the same condition a checkpoint uses, in the same transaction, so a
  worker whose lease was taken over writes nothing and gets
  :class:`~ferryman.LeaseLost`.

A part row is the commit point of the upload's progress: it is written only
after S3 returned the part's ETag.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import sqlalchemy as sa

from ferryman.errors import ConfigurationError, LeaseLost, TransferConflict
from ferryman.model import RunStatus, Transfer, TransferPart, TransferStatus
from ferryman.store import records
from ferryman.store.dialect import Backend
from ferryman.store.run_rows import Lease
from ferryman.store.schema import runs, transfer_parts, transfers

ACTIVE = TransferStatus.ACTIVE.value

# Built once: a statement built per call pays SQLAlchemy's construction and
# cache-key costs each time, several times a small file's own SQL.
_FENCED = transfers.update().where(
    transfers.c.id == sa.bindparam("fence_id"),
    transfers.c.owner_token == sa.bindparam("fence_token"),
    transfers.c.status == ACTIVE,
)
_FENCED_RETURNING = _FENCED.returning(*transfers.c)
_ACTIVE_OF = (
    sa.select(transfers)
    .where(
        transfers.c.bucket == sa.bindparam("of_bucket"),
        transfers.c.key == sa.bindparam("of_key"),
        transfers.c.status == ACTIVE,
    )
    .with_for_update()
)
_BY_ID = sa.select(transfers).where(transfers.c.id == sa.bindparam("transfer_id"))
_LATEST_FOR = (
    sa.select(transfers)
    .where(
        transfers.c.source_path == sa.bindparam("of_path"),
        transfers.c.bucket == sa.bindparam("of_bucket"),
        transfers.c.key == sa.bindparam("of_key"),
    )
    .order_by(transfers.c.id.desc())
    .limit(1)
)
_PARTS_OF = (
    sa.select(transfer_parts)
    .where(transfer_parts.c.transfer_id == sa.bindparam("of_transfer"))
    .order_by(transfer_parts.c.part_number)
)
_DELETE_PARTS = transfer_parts.delete().where(
    transfer_parts.c.transfer_id == sa.bindparam("of_transfer")
)
_DELETE_PART = _DELETE_PARTS.where(transfer_parts.c.part_number == sa.bindparam("of_number"))
_INSERT_PART = transfer_parts.insert()
# Once per confirmed part: the transfer's totals, counted from its part rows.
_PART_TOTALS = sa.select(
    sa.func.coalesce(sa.func.sum(transfer_parts.c.size), 0),
    sa.func.count(),
).where(transfer_parts.c.transfer_id == sa.bindparam("of_transfer"))
_SET_TOTALS = (
    transfers.update()
    .where(transfers.c.id == sa.bindparam("of_transfer"))
    .values(
        bytes_confirmed=sa.bindparam("new_bytes_confirmed"),
        parts_confirmed=sa.bindparam("new_parts_confirmed"),
    )
)
_TOUCH_RUN = runs.update().where(
    runs.c.id == sa.bindparam("of_run"),
    runs.c.lease_token == sa.bindparam("of_token"),
    runs.c.status == RunStatus.RUNNING.value,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class NewTransfer:
    """What a caller asks to upload; matched against an active transfer to resume it."""

    source_path: str
    bucket: str
    key: str
    part_size: int
    follow: bool
    source_size: int
    source_mtime: float
    user_metadata_json: str | None
    sidecar_key: str | None
    run_id: int | None
    checksum_algorithm: str = "CRC32"  # of the parts: "CRC32", or "SHA256" as before 0011


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferFence:
    """The right to write a transfer: its id, the token it was opened with, the run's lease."""

    transfer_id: int
    token: int
    run_lease: Lease | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenedTransfer:
    transfer: Transfer
    parts: list[TransferPart]
    fence: TransferFence
    created: bool  # False: an earlier transfer was taken over to be resumed


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfirmedPart:
    part_number: int
    start: int
    size: int
    etag: str
    sha256: str | None  # base64, as sent in ChecksumSHA256; or
    crc32: str | None = None  # base64, as sent in ChecksumCRC32
    adopted: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class CompletedObject:
    """A completed object as verified: its size, the file's SHA-256, S3's digests, how checked."""

    total_size: int
    sha256: str | None  # hex, of the whole file; None when not computed
    checksum: str  # S3's full-object CRC32, or composite SHA-256 of the parts ``base64-N``
    etag: str
    verified_by: str  # "checksum", "etag" or "size"


class TransferQueries:
    """Transfers and their parts on one store database."""

    def __init__(self, backend: Backend, now: Callable[[sa.Connection], float]) -> None:
        self.backend = backend
        self.now = now  # the database's clock: one reading of it for all the store

    # -- fencing -------------------------------------------------------------

    def _fenced(
        self, conn: sa.Connection, fence: TransferFence, now: float, **values: Any
    ) -> Transfer:
        """Update the transfer row under ``fence`` or raise; the row as written.

        Nothing is written on refusal. The run's lease is checked first, so
        :class:`~ferryman.LeaseLost` means just that; a run whose lease is intact
        but whose transfer was taken over (or finished) by another upload gets
        :class:`~ferryman.TransferConflict`. Where the database has UPDATE ...
        RETURNING, the row comes back with the update instead of a read after it.
        """
        row = self._update_fenced(conn, fence, now, values, returning=True)
        return self._current(conn, fence.transfer_id) if row is None else _transfer(row)

    def _update_fenced(
        self,
        conn: sa.Connection,
        fence: TransferFence,
        now: float,
        values: dict[str, Any],
        *,
        returning: bool,
    ) -> sa.RowMapping | None:
        """:meth:`_fenced`'s update; the row, where asked for and the database returns it."""
        if fence.run_lease is not None:
            self._check_run(conn, fence.run_lease, now)
        params = {"fence_id": fence.transfer_id, "fence_token": fence.token, "updated_at": now}
        params.update(values)
        if returning and conn.dialect.update_returning:
            row = conn.execute(_FENCED_RETURNING, params).mappings().one_or_none()
            matched = row is not None
        else:
            row, matched = None, conn.execute(_FENCED, params).rowcount == 1
        if not matched:
            raise TransferConflict(
                f"transfer {fence.transfer_id} was taken over by another upload "
                f"(or finished) while this one held token {fence.token}"
            )
        return row

    # -- open / resume -------------------------------------------------------

    def open(
        self,
        conn: sa.Connection,
        new: NewTransfer,
        *,
        owner: str,
        lease_seconds: float,
        run_lease: Lease | None,
        may_take_over: Callable[[Transfer, float], bool],
    ) -> OpenedTransfer:
        """Resume the active transfer of ``new``'s object, or create one.

        An active transfer of the same object from another source path is a
        conflict (one object, one writer). One from the same path is taken
        over (``owner_token`` + 1) when it belongs to the same run — whose
        lease the caller holds, so any earlier attempt is over — or when
        ``may_take_over(transfer, now)`` says its owner is gone; otherwise
        :class:`~ferryman.TransferConflict`.
        """
        now = self.now(conn)
        if run_lease is not None:
            self._check_run(conn, run_lease, now)
        # Two openers may both find no active transfer (PostgreSQL). The
        # partial unique index lets one insert; the other's insert does nothing,
        # and its next SELECT (READ COMMITTED: a fresh snapshot per statement)
        # finds the winner's row and judges it like any other.
        for _ in range(3):
            found = self._active(conn, new.bucket, new.key)
            if found is not None:
                transfer_id, token = self._take_over(
                    conn,
                    found,
                    new,
                    owner=owner,
                    lease_seconds=lease_seconds,
                    now=now,
                    may_take_over=may_take_over,
                )
                transfer, parts = self._current(conn, transfer_id), self.parts(conn, transfer_id)
                created = False
                break
            inserted = self._insert(conn, new, owner, lease_seconds, now)
            if inserted is not None:
                # The row is what was just inserted, and a new transfer has no parts.
                transfer, parts, token, created = inserted, [], inserted.owner_token, True
                break
        else:
            raise TransferConflict(
                f"s3://{new.bucket}/{new.key} is being uploaded by another process "
                "that started at the same moment; run again once it stops"
            )
        return OpenedTransfer(
            transfer=transfer,
            parts=parts,
            fence=TransferFence(transfer_id=transfer.id, token=token, run_lease=run_lease),
            created=created,
        )

    def _active(self, conn: sa.Connection, bucket: str, key: str) -> Transfer | None:
        """The object's active transfer, locked for this transaction."""
        row = (
            conn.execute(_ACTIVE_OF, {"of_bucket": bucket, "of_key": key}).mappings().one_or_none()
        )
        return None if row is None else _transfer(row)

    def _insert(
        self, conn: sa.Connection, new: NewTransfer, owner: str, lease_seconds: float, now: float
    ) -> Transfer | None:
        """The new active transfer; None if another opener's row holds the object."""
        row: dict[str, Any] = {
            "source_path": new.source_path,
            "bucket": new.bucket,
            "key": new.key,
            "status": ACTIVE,
            "follow": new.follow,
            "part_size": new.part_size,
            "source_size": new.source_size,
            "source_mtime": new.source_mtime,
            "user_metadata": new.user_metadata_json,
            "sidecar_key": new.sidecar_key,
            "run_id": new.run_id,
            "checksum_algorithm": new.checksum_algorithm,
            "owner": owner,
            "owner_token": 1,
            # Spelled out although they are the columns' defaults: the row
            # returned is built from these values, not read back.
            "bytes_confirmed": 0,
            "parts_confirmed": 0,
            "resumes": 0,
            "lease_expires_at": now + lease_seconds,
            "created_at": now,
            "updated_at": now,
        }
        # A concurrent opener's row makes this wait for its transaction, then
        # skip the row. The predicate is spelled as in the index, so that it is inferred.
        inserted = self.backend.insert_absent(
            conn,
            transfers,
            [row],
            unique=[transfers.c.bucket, transfers.c.key],
            where=sa.text("status = 'active'"),
            returning=transfers.c.id,
        )
        if not inserted:
            return None
        written = {**dict.fromkeys(transfers.c.keys()), **row, "id": int(inserted[0])}
        return _transfer(cast(sa.RowMapping, written))  # a row is read by column name only

    def _take_over(
        self,
        conn: sa.Connection,
        existing: Transfer,
        new: NewTransfer,
        *,
        owner: str,
        lease_seconds: float,
        now: float,
        may_take_over: Callable[[Transfer, float], bool],
    ) -> tuple[int, int]:
        """Take ``existing`` over for ``owner`` (its id and new token), or raise."""
        if existing.source_path != new.source_path:
            raise ConfigurationError(
                f"{existing.uri} is already being uploaded by transfer {existing.id} "
                f"from {existing.source_path}; one object has one writer"
            )
        same_run = new.run_id is not None and existing.run_id == new.run_id
        if not same_run and not may_take_over(existing, now):
            holder = "" if existing.run_id is None else f" for run {existing.run_id}"
            raise TransferConflict(
                f"transfer {existing.id} of {existing.source_path} to {existing.uri} is "
                f"being uploaded by {existing.owner}{holder}; run again once it stops"
            )
        token = existing.owner_token + 1
        conn.execute(
            transfers.update()
            .where(transfers.c.id == existing.id)
            .values(
                owner=owner,
                owner_token=token,
                run_id=new.run_id if new.run_id is not None else existing.run_id,
                lease_expires_at=now + lease_seconds,
                resumes=transfers.c.resumes + 1,
                updated_at=now,
            )
        )
        return existing.id, token

    def _check_run(self, conn: sa.Connection, lease: Lease, now: float) -> None:
        """Touch the run under its lease, as a checkpoint does, or raise LeaseLost."""
        params = {"of_run": lease.run_id, "of_token": lease.token, "updated_at": now}
        touched = conn.execute(_TOUCH_RUN, params).rowcount
        if touched != 1:
            raise LeaseLost(lease.run_id, lease.token)

    # -- fenced writes -------------------------------------------------------

    def renew(self, conn: sa.Connection, fence: TransferFence, lease_seconds: float) -> None:
        now = self.now(conn)
        self._fenced(conn, fence, now, lease_expires_at=now + lease_seconds)

    def release(self, conn: sa.Connection, fence: TransferFence) -> bool:
        """End the lease of an upload call that stopped short: the next one may take over now.

        No lease (NULL) means no holder. Fenced by the transfer's token alone:
        giving up a lease takes no right the caller might have lost. False if
        the transfer had already moved on.
        """
        return bool(
            conn.execute(
                transfers.update()
                .where(
                    transfers.c.id == fence.transfer_id,
                    transfers.c.owner_token == fence.token,
                    transfers.c.status == ACTIVE,
                )
                .values(lease_expires_at=None, updated_at=self.backend.now)
            ).rowcount
        )

    def set_upload(
        self, conn: sa.Connection, fence: TransferFence, upload_id: str | None, part_size: int
    ) -> Transfer:
        """Record a new multipart upload; any parts of an earlier one are forgotten."""
        now = self.now(conn)
        started = self._fenced(
            conn,
            fence,
            now,
            upload_id=upload_id,
            part_size=part_size,
            bytes_confirmed=0,
            parts_confirmed=0,
        )
        conn.execute(_DELETE_PARTS, {"of_transfer": fence.transfer_id})
        return started

    def record_source(
        self, conn: sa.Connection, fence: TransferFence, *, size: int, mtime: float
    ) -> Transfer:
        return self._fenced(conn, fence, self.now(conn), source_size=size, source_mtime=mtime)

    def confirm_part(
        self, conn: sa.Connection, fence: TransferFence, part: ConfirmedPart, lease_seconds: float
    ) -> None:
        """Record a part S3 acknowledged; replaces an earlier row of the same number."""
        now = self.now(conn)
        # Once per part: the fence checked and the lease renewed, no row read back.
        self._update_fenced(
            conn, fence, now, {"lease_expires_at": now + lease_seconds}, returning=False
        )
        conn.execute(
            _DELETE_PART, {"of_transfer": fence.transfer_id, "of_number": part.part_number}
        )
        self._insert_part(conn, fence, part, now)
        self._recount(conn, fence.transfer_id)

    def forget_parts(
        self, conn: sa.Connection, fence: TransferFence, part_numbers: Sequence[int]
    ) -> Transfer:
        """Drop part rows S3 no longer has: they will be sent again."""
        self._fenced(conn, fence, self.now(conn))
        conn.execute(
            transfer_parts.delete().where(
                transfer_parts.c.transfer_id == fence.transfer_id,
                transfer_parts.c.part_number.in_(list(part_numbers)),
            )
        )
        self._recount(conn, fence.transfer_id)
        return self._current(conn, fence.transfer_id)

    def _recount(self, conn: sa.Connection, transfer_id: int) -> None:
        confirmed, count = conn.execute(_PART_TOTALS, {"of_transfer": transfer_id}).one()
        conn.execute(
            _SET_TOTALS,
            {
                "of_transfer": transfer_id,
                "new_bytes_confirmed": int(confirmed),
                "new_parts_confirmed": int(count),
            },
        )

    def record_object(
        self, conn: sa.Connection, fence: TransferFence, completed: CompletedObject
    ) -> Transfer:
        """The object is complete and verified; the transfer stays active until its sidecar."""
        return self._fenced(
            conn,
            fence,
            self.now(conn),
            total_size=completed.total_size,
            sha256=completed.sha256,
            checksum=completed.checksum,
            etag=completed.etag,
            verified_by=completed.verified_by,
        )

    def record_whole(
        self,
        conn: sa.Connection,
        fence: TransferFence,
        part: ConfirmedPart,
        completed: CompletedObject,
        *,
        source_mtime: float,
        lease_seconds: float,
        finish: bool,
    ) -> Transfer:
        """An object sent in one PutObject: its source, its one part, the object, and
        (``finish``) the transfer's success, in one fenced update and one part row."""
        now = self.now(conn)
        ending: dict[str, Any] = (
            {"status": TransferStatus.SUCCEEDED.value, "finished_at": now, "lease_expires_at": None}
            if finish
            else {"lease_expires_at": now + lease_seconds}
        )
        recorded = self._fenced(
            conn,
            fence,
            now,
            source_size=completed.total_size,
            source_mtime=source_mtime,
            total_size=completed.total_size,
            sha256=completed.sha256,
            checksum=completed.checksum,
            etag=completed.etag,
            verified_by=completed.verified_by,
            bytes_confirmed=part.size,
            parts_confirmed=1 if part.size else 0,
            **ending,
        )
        conn.execute(_DELETE_PARTS, {"of_transfer": fence.transfer_id})
        if part.size:
            self._insert_part(conn, fence, part, now)
        return recorded

    @staticmethod
    def _insert_part(
        conn: sa.Connection, fence: TransferFence, part: ConfirmedPart, now: float
    ) -> None:
        """The row of a part the server confirmed, owned by the fence's token."""
        conn.execute(
            _INSERT_PART,
            {
                "transfer_id": fence.transfer_id,
                "part_number": part.part_number,
                "start": part.start,
                "size": part.size,
                "etag": part.etag,
                "sha256": part.sha256,
                "crc32": part.crc32,
                "adopted": part.adopted,
                "owner_token": fence.token,
                "confirmed_at": now,
            },
        )

    def finish(
        self,
        conn: sa.Connection,
        fence: TransferFence,
        status: TransferStatus,
        *,
        reason: str | None = None,
        error: str | None = None,
    ) -> Transfer:
        now = self.now(conn)
        return self._fenced(
            conn,
            fence,
            now,
            status=status.value,
            reason=reason,
            error=error,
            finished_at=now,
            lease_expires_at=None,
        )

    # -- reads ---------------------------------------------------------------

    def _current(self, conn: sa.Connection, transfer_id: int) -> Transfer:
        """The row as this transaction left it: what a write hands back to its caller."""
        return _transfer(conn.execute(_BY_ID, {"transfer_id": transfer_id}).mappings().one())

    def get(self, conn: sa.Connection, transfer_id: int) -> Transfer | None:
        row = conn.execute(_BY_ID, {"transfer_id": transfer_id}).mappings().one_or_none()
        return None if row is None else _transfer(row)

    def parts(self, conn: sa.Connection, transfer_id: int) -> list[TransferPart]:
        rows = conn.execute(_PARTS_OF, {"of_transfer": transfer_id}).mappings()
        return [records.transfer_part_from_row(row) for row in rows]

    def list(
        self,
        conn: sa.Connection,
        *,
        status: TransferStatus | None = None,
        run_id: int | None = None,
        standalone: bool = False,
        limit: int | None = None,
    ) -> list[Transfer]:
        """Newest first."""
        query = sa.select(transfers).order_by(transfers.c.id.desc())
        if status is not None:
            query = query.where(transfers.c.status == status.value)
        if run_id is not None:
            query = query.where(transfers.c.run_id == run_id)
        if standalone:
            query = query.where(transfers.c.run_id.is_(None))
        if limit is not None:
            query = query.limit(limit)
        return [records.transfer_from_row(row) for row in conn.execute(query).mappings()]

    def latest_for(
        self, conn: sa.Connection, *, source_path: str, bucket: str, key: str
    ) -> Transfer | None:
        """The newest transfer of this file to this object, whatever its status."""
        params = {"of_path": source_path, "of_bucket": bucket, "of_key": key}
        row = conn.execute(_LATEST_FOR, params).mappings().one_or_none()
        return None if row is None else _transfer(row)

    def active_upload_ids(self, conn: sa.Connection) -> set[str]:
        """Upload ids an active transfer owns (and may still resume)."""
        query = sa.select(transfers.c.upload_id).where(
            transfers.c.status == ACTIVE, transfers.c.upload_id.is_not(None)
        )
        return {str(upload_id) for upload_id in conn.execute(query).scalars()}


def _transfer(row: sa.RowMapping) -> Transfer:
    return records.transfer_from_row(row)
