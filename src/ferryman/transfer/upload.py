"""Resumable multipart uploads of local files to S3.

The commit rule: a part counts only after S3 returned its ETag *and* its row
committed in the store (fenced by the transfer's token and, inside a job, by
the run's lease). A crash therefore loses at most the parts in flight — at
most ``concurrency`` of them — and on resume S3 is the truth: ``ListParts``
is reconciled with the stored parts, a part S3 has but the store lacks is
adopted when its bytes match the file, stored parts S3 lost are sent again,
and confirmed parts are re-read (to check the file did not change behind
them) but never re-sent.

Memory is bounded by ``part_size * (concurrency + 1)``: the reader holds one
part and at most ``concurrency`` are in flight.

One upload call runs here: open, reconcile (:mod:`~ferryman.transfer.resume`),
send, complete, verify, finish.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar

from ferryman.errors import ConfigurationError, TransferFailed
from ferryman.model import Transfer, TransferPart, TransferStatus
from ferryman.store import CompletedObject, ConfirmedPart, Lease, NewTransfer, Store, TransferFence
from ferryman.store.records import to_json
from ferryman.transfer.objects import sha256_b64, sidecar_document, verify_head
from ferryman.transfer.owners import Hold, owner_is_gone, upload_call
from ferryman.transfer.progress import Progress, ProgressCounter
from ferryman.transfer.resume import (
    CompletedBeforeCrash,
    ListedPart,
    Resumable,
    UploadGone,
    adoptable,
    reconcile,
    stray_upload_ids,
)
from ferryman.transfer.s3 import MAX_PARTS, Retrying, choose_part_size, format_size, log
from ferryman.transfer.s3_object import S3Object

OnChange = Literal["fail", "restart"]
LEASE_SECONDS = 30.0
T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    part_size: int | None
    concurrency: int
    follow: bool
    stable_for: float
    done_file: Path | None
    poll_interval: float
    on_change: OnChange
    lease_seconds: float
    file_sha256: bool = True  # the whole file's digest, one more pass over its bytes


class _Restart(Exception):
    """The source changed and the caller asked for a fresh upload."""


class Uploader:
    """One call of :func:`ferryman.transfer.upload`: open, reconcile, send, complete, verify."""

    def __init__(
        self,
        *,
        store: Store,
        s3: Retrying,
        path: Path,
        bucket: str,
        key: str,
        options: Options,
        metadata: Mapping[str, Any] | None,
        sidecar_key: str | None,
        run_lease: Lease | None,
        run_id: int | None,
        progress: Progress | None,
    ) -> None:
        self.store = store
        self.target = S3Object(s3, bucket, key)
        self.path = path
        self.options = options
        self.metadata = metadata
        self.sidecar_key = sidecar_key
        self.run_lease = run_lease
        self.run_id = run_id
        self.log = logging.LoggerAdapter(
            log, {"source": str(path), "object": f"s3://{bucket}/{key}", "run_id": run_id}
        )
        self.counter = ProgressCounter(progress)

    # -- the whole transfer --------------------------------------------------

    def run(self) -> Transfer:
        stat = self._stat_or_none()
        done = self.store.latest_transfer(
            source_path=str(self.path), bucket=self.target.bucket, key=self.target.key
        )
        if (
            stat is not None
            and done is not None
            and done.status is TransferStatus.SUCCEEDED
            and done.total_size == stat.st_size
            and done.source_mtime == stat.st_mtime
            and self._object_etag() == done.etag
        ):
            self.counter.report_transfer(done)
            return done  # this very file is already there, verified
        if stat is None and (done is None or done.status is not TransferStatus.ACTIVE):
            raise ConfigurationError(f"source file {self.path} does not exist")
        with upload_call() as owner:
            transfer, stored = self._open(owner, stat)
            with Hold(self.store, self.fence, self.options.lease_seconds, self.log) as self.hold:
                for _ in range(3):  # a restart after a source change, at most twice
                    try:
                        return self._upload(transfer, stored)
                    except _Restart:
                        transfer, stored = self._fresh_upload(transfer), []
                self._fail(transfer, "source_changed", f"{self.path} kept changing during upload")

    def _open(self, owner: str, stat: os.stat_result | None) -> tuple[Transfer, list[TransferPart]]:
        """Create the transfer, or take over the object's active one to resume it."""
        size = stat.st_size if stat is not None else 0
        opened = self.store.open_transfer(
            NewTransfer(
                source_path=str(self.path),
                bucket=self.target.bucket,
                key=self.target.key,
                part_size=choose_part_size(size, self.options.part_size),
                follow=self.options.follow,
                source_size=size,
                source_mtime=stat.st_mtime if stat is not None else 0.0,
                user_metadata_json=None
                if self.metadata is None
                else to_json(dict(self.metadata), "transfer metadata"),
                sidecar_key=self.sidecar_key,
                run_id=self.run_id,
            ),
            owner=owner,
            lease_seconds=self.options.lease_seconds,
            run_lease=self.run_lease,
            may_take_over=owner_is_gone,
        )
        self.fence: TransferFence = opened.fence
        transfer = opened.transfer
        self.log = logging.LoggerAdapter(
            log, {**(self.log.extra or {}), "transfer_id": transfer.id}
        )
        self.counter.resumed_bytes = transfer.bytes_confirmed
        if not opened.created:
            self.log.info(
                "resuming transfer %d: %s in %d parts already confirmed",
                transfer.id,
                format_size(transfer.bytes_confirmed),
                transfer.parts_confirmed,
            )
        return transfer, opened.parts

    def _object_etag(self) -> str | None:
        head = self.target.head_if_any()
        return None if head is None else str(head.get("ETag", "")).strip('"')

    def _upload(self, transfer: Transfer, stored: list[TransferPart]) -> Transfer:
        """Go on from where ``transfer`` (with its ``stored`` parts) stands."""
        if transfer.etag is not None:  # completed and verified before a crash
            return self._finish(transfer)
        stat = self._stat_or_none()
        if stat is None:
            self._fail(transfer, "source_missing", f"{self.path} no longer exists")
        if transfer.upload_id is None:
            if transfer.resumes:
                self._abort_strays()
            if stat.st_size == 0 and not self.options.follow:
                return self._put_empty(transfer)
            return self._send(self._new_upload(transfer))
        match reconcile(
            self.target,
            self.store,
            self.fence,
            transfer,
            upload_id=transfer.upload_id,
            stored=stored,
            log=self.log,
        ):
            case Resumable() as resumable:
                return self._send(resumable)
            case CompletedBeforeCrash() as completed:
                return self._finish_completed(completed)
            case UploadGone(transfer=gone):
                self.log.warning(
                    "multipart upload of transfer %d is gone from S3 (aborted elsewhere?); "
                    "starting a new one",
                    gone.id,
                )
                return self._send(self._new_upload(gone))

    # -- starting over -------------------------------------------------------

    def _abort_strays(self) -> None:
        """Abort uploads of this key no active transfer owns.

        A crash between CreateMultipartUpload and recording its id leaves one;
        this transfer is the key's only writer (one active transfer per
        object), so such an upload can only be that leftover.
        """
        owned = self.store.active_upload_ids()
        for upload_id in stray_upload_ids(self.target, owned):
            self.log.info("aborting upload %s left by a crash", upload_id)
            self.target.abort(upload_id)

    def _new_upload(self, transfer: Transfer) -> Resumable:
        """Start a multipart upload for ``transfer``: nothing confirmed yet."""
        upload_id = self.target.create_upload()
        # A crash right here leaves an upload no transfer owns: `transfers gc` aborts it.
        started = self.store.set_transfer_upload(self.fence, upload_id, transfer.part_size)
        return Resumable(transfer=started, upload_id=upload_id, confirmed={}, unconfirmed={})

    def _fresh_upload(self, transfer: Transfer) -> Transfer:
        """Throw away the upload so far (the source changed and a restart was asked for)."""
        self.target.abort(transfer.upload_id)
        stat = self._stat_or_none()
        if stat is None:
            self._fail(transfer, "source_missing", f"{self.path} no longer exists")
        self.store.record_transfer_source(self.fence, size=stat.st_size, mtime=stat.st_mtime)
        part_size = choose_part_size(stat.st_size, self.options.part_size)
        fresh = self.store.set_transfer_upload(self.fence, None, part_size)
        self.log.warning("transfer %d: source changed; uploading it again", transfer.id)
        self.counter.resumed_bytes = 0
        return fresh

    # -- sending -------------------------------------------------------------

    def _send(self, plan: Resumable) -> Transfer:
        transfer = plan.transfer
        upload_id = plan.upload_id
        opts = self.options
        part_size = transfer.part_size
        confirmed = plan.confirmed
        self.counter.start(
            transfer_id=transfer.id,
            confirmed_bytes=sum(p.size for p in confirmed.values()),
            confirmed_parts=len(confirmed),
        )
        start_stat = os.stat(self.path)
        confirmed_end = plan.confirmed_end
        if start_stat.st_size < confirmed_end:
            self._changed(transfer, f"{self.path} shrank below the confirmed {confirmed_end} B")
        if not opts.follow:
            self.counter.total = start_stat.st_size
            transfer = self.store.record_transfer_source(
                self.fence, size=start_stat.st_size, mtime=start_stat.st_mtime
            )
        whole = hashlib.sha256() if opts.file_sha256 else None
        slots = threading.BoundedSemaphore(opts.concurrency)
        futures: list[Future[None]] = []
        number, offset = 1, 0
        last_change = time.monotonic()
        seen = (start_stat.st_size, start_stat.st_mtime_ns)
        final_size: int | None = None if opts.follow else start_stat.st_size
        observed = start_stat.st_size
        with (
            open(self.path, "rb", buffering=0) as source,
            # Twice the slots: a part thread still committing its row has given
            # its slot back, and the next part must not wait for that thread.
            ThreadPoolExecutor(2 * opts.concurrency, thread_name_prefix="ferryman-part") as pool,
        ):
            while True:
                self._raise_if_lost(futures)
                if final_size is None:
                    stat = self._stat_or_none()
                    if stat is None:
                        self._fail(transfer, "source_missing", f"{self.path} disappeared")
                    if (stat.st_size, stat.st_mtime_ns) != seen:
                        seen, last_change = (stat.st_size, stat.st_mtime_ns), time.monotonic()
                    finished = (
                        opts.done_file.exists()
                        if opts.done_file is not None
                        else time.monotonic() - last_change >= opts.stable_for
                    )
                    if finished:
                        # Decided once: the last (short) part must really be the last.
                        final_size = os.stat(self.path).st_size
                        self.counter.total = final_size
                    elif offset + part_size > stat.st_size:
                        time.sleep(opts.poll_interval)  # waiting for the file to grow
                        continue
                    observed = stat.st_size
                size = observed if final_size is None else final_size
                if offset >= size and not (offset == 0 and size == 0):
                    break
                length = min(part_size, size - offset)
                if number > MAX_PARTS:
                    self._fail(
                        transfer,
                        "too_large",
                        f"{self.path} needs more than {MAX_PARTS:,} parts of "
                        f"{format_size(part_size)}; give a larger part size",
                    )
                data = os.pread(source.fileno(), length, offset)
                if len(data) != length:
                    self._changed(transfer, f"{self.path} was truncated while being read")
                if whole is not None:
                    whole.update(data)
                if number in confirmed:
                    self._check_confirmed(transfer, confirmed[number], data)
                elif not self._adopt(number, offset, data, plan.unconfirmed.get(number)):
                    slots.acquire()
                    self._raise_if_lost(futures)
                    # Handed over in a box the part thread empties, so that no
                    # reference held by the pool keeps the bytes alive after
                    # S3 has them.
                    futures.append(
                        pool.submit(self._send_part, slots, upload_id, number, offset, [data])
                    )
                    futures = [f for f in futures if not f.done() or f.exception() is not None]
                del data
                offset += length
                number += 1
                if size == 0:
                    break
            wait(futures, return_when=FIRST_EXCEPTION)
            self._raise_if_lost(futures)
        end = os.stat(self.path)
        if opts.follow:
            self.store.record_transfer_source(self.fence, size=offset, mtime=end.st_mtime)
        elif (end.st_size, end.st_mtime_ns) != (start_stat.st_size, start_stat.st_mtime_ns):
            self._changed(transfer, f"{self.path} changed while it was being uploaded")
        parts = self.store.get_transfer_parts(transfer.id)
        numbers = [p.part_number for p in parts]
        if numbers != list(range(1, len(parts) + 1)) or sum(p.size for p in parts) != offset:
            raise AssertionError(f"transfer {transfer.id}: parts {numbers} do not cover {offset} B")
        self.target.complete(upload_id, parts)
        return self._finish(
            self._verify_and_record(
                transfer, parts, offset, None if whole is None else whole.hexdigest()
            )
        )

    def _send_part(
        self,
        slots: threading.BoundedSemaphore,
        upload_id: str,
        number: int,
        start: int,
        box: list[bytes],
    ) -> None:
        data = box.pop()
        released = False
        try:
            if self.hold.lost is not None:
                raise self.hold.lost
            checksum = sha256_b64(data)
            size = len(data)
            self.log.debug("sending part %d (%d B)", number, size)
            etag = self.target.upload_part(
                upload_id, number, data, checksum, retry_key=f"{self.fence.transfer_id}:{number}"
            )
            # S3 has the bytes: let the next part start sending while this one's
            # row commits (an fsync). Memory stays bounded, since the bytes are
            # dropped here; the part still counts only once its row is committed.
            del data
            slots.release()
            released = True
            part = ConfirmedPart(
                part_number=number,
                start=start,
                size=size,
                etag=etag,
                sha256=checksum,
            )
            self.store.confirm_part(self.fence, part, self.options.lease_seconds)
            self.counter.count(part.size)
        finally:
            if not released:
                slots.release()

    def _adopt(self, number: int, start: int, data: bytes, on_s3: ListedPart | None) -> bool:
        """Record a part S3 has but the store lacks, if its bytes are this file's."""
        part = adoptable(number, start, data, on_s3)
        if part is None:
            return False
        self.store.confirm_part(self.fence, part, self.options.lease_seconds)
        self.log.info("adopted part %d found on S3 after a crash", number)
        self.counter.count(len(data))
        return True

    def _check_confirmed(self, transfer: Transfer, part: TransferPart, data: bytes) -> None:
        if len(data) != part.size or sha256_b64(data) != part.sha256:
            self._changed(
                transfer,
                f"bytes {part.start}-{part.start + part.size} of {self.path} changed after "
                f"part {part.part_number} was uploaded",
            )

    def _raise_if_lost(self, futures: list[Future[None]]) -> None:
        if self.hold.lost is not None:
            raise self.hold.lost
        for future in futures:
            error = future.exception() if future.done() else None
            if error is not None:
                raise error

    # -- completion ----------------------------------------------------------

    def _finish_completed(self, completed: CompletedBeforeCrash) -> Transfer:
        """Record an object completed before a crash, as if just completed."""
        transfer, total = completed.transfer, completed.total
        self.log.info("transfer %d: object was completed before a crash", transfer.id)
        sha = self._hash_file(total) if self.options.file_sha256 else None
        return self._finish(self._verify_and_record(transfer, completed.parts, total, sha))

    def _verify_and_record(
        self, transfer: Transfer, parts: list[TransferPart], total: int, sha256: str | None
    ) -> Transfer:
        """HeadObject: size, then S3's composite SHA-256 (or the multipart ETag)."""
        verification = verify_head(self.target.head(checksums=True), parts, total)
        if verification.mismatch is not None:
            self._fail(transfer, "verify_failed", verification.mismatch, abort=False)
        recorded = self.store.record_transfer_object(
            self.fence,
            CompletedObject(
                total_size=total,
                sha256=sha256,
                checksum=verification.checksum,
                etag=verification.etag,
                verified_by=verification.verified_by,
            ),
        )
        self.log.info(
            "transfer %d: object complete, %s, verified by %s",
            transfer.id,
            format_size(total),
            verification.verified_by,
        )
        return recorded

    def _put_empty(self, transfer: Transfer) -> Transfer:
        empty = sha256_b64(b"")
        etag = self.target.put(self.target.key, b"", empty)
        recorded = self.store.record_transfer_object(
            self.fence,
            CompletedObject(
                total_size=0,
                sha256=hashlib.sha256(b"").hexdigest(),
                checksum=empty,
                etag=etag,
                verified_by="checksum",
            ),
        )
        return self._finish(recorded)

    def _finish(self, transfer: Transfer) -> Transfer:
        """Write the sidecar (only now: the object is verified), then mark success."""
        if transfer.sidecar_key is not None:
            body = sidecar_document(transfer, self.store.get_transfer_parts(transfer.id))
            self.target.put(
                transfer.sidecar_key, body, sha256_b64(body), content_type="application/json"
            )
        final = self.store.finish_transfer(self.fence, TransferStatus.SUCCEEDED)
        self.counter.report_transfer(final)
        return final

    # -- failures ------------------------------------------------------------

    def _changed(self, transfer: Transfer, detail: str) -> NoReturn:
        if self.options.on_change == "restart":
            raise _Restart(detail)
        self._fail(transfer, "source_changed", detail)

    def _fail(
        self, transfer: Transfer, reason: str, detail: str, *, abort: bool = True
    ) -> NoReturn:
        """Record the failure, abort the multipart upload, raise :class:`TransferFailed`.

        ``transfer`` is the record as this call last wrote it, so its upload id is current.
        """
        self.hold.stop()
        if abort:
            self.target.abort(transfer.upload_id)
        self.store.finish_transfer(
            self.fence, TransferStatus.FAILED, reason=reason, error=f"{reason}: {detail}"
        )
        self.log.error("transfer %d failed: %s: %s", transfer.id, reason, detail)
        raise TransferFailed(transfer.id, reason, detail)

    # -- helpers -------------------------------------------------------------

    def _stat_or_none(self) -> os.stat_result | None:
        try:
            return os.stat(self.path)
        except FileNotFoundError:
            return None

    def _hash_file(self, size: int) -> str:
        whole = hashlib.sha256()
        with open(self.path, "rb") as source:
            while chunk := source.read(min(8 * 1024 * 1024, size)):
                whole.update(chunk)
        return whole.hexdigest()
