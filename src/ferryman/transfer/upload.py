"""Resumable multipart uploads of local files to S3.

The commit rule: a part counts only after S3 returned its ETag *and* its row
committed in the store (fenced by the transfer's token and, inside a job, by
the run's lease). A crash therefore loses at most the parts in flight — at
most ``concurrency`` of them — and on resume S3 is the truth: ``ListParts``
is reconciled with the stored parts, a part S3 has but the store lacks is
adopted when its bytes match the file, stored parts S3 lost are sent again,
and confirmed parts are re-read (to check the file did not change behind
them) but never re-sent.

A file of at most one part (and not followed) goes up in one PutObject
instead, with its SHA-256, which the server checks: the transfer row opened
before it is the recorded intent, and one commit records the object, its
single part and (without a sidecar) the transfer's end. A crash between the
put and that commit is resumed by a HeadObject: the object S3 holds, if its
SHA-256 is the file's, is recorded without being sent again.

Memory is bounded by ``part_size * (concurrency + 1)``: the reader holds one
part and at most ``concurrency`` are in flight.

One upload call runs here — open, reconcile, send, complete, verify,
finish — through its parts: :mod:`~ferryman.transfer.reader` reads the file
(following a growing one), :mod:`~ferryman.transfer.sender` sends parts and
confirms each, :mod:`~ferryman.transfer.resume` reconciles a resumed upload
with S3, :mod:`~ferryman.transfer.s3_object` makes the calls on the object.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar

from ferryman.errors import ConfigurationError, TransferError, TransferFailed
from ferryman.model import Transfer, TransferPart, TransferStatus
from ferryman.store import (
    CompletedObject,
    ConfirmedPart,
    Lease,
    NewTransfer,
    Store,
    TransferFence,
)
from ferryman.store.records import to_json
from ferryman.transfer.objects import (
    Checksum,
    Verification,
    part_checksum,
    sha256_b64,
    sidecar_document,
    verify_head,
    verify_whole,
)
from ferryman.transfer.owners import Hold, owner_is_gone, upload_call
from ferryman.transfer.progress import Progress, ProgressCounter
from ferryman.transfer.reader import Follow, PartReader, SourceError, hash_file, read_whole
from ferryman.transfer.resume import (
    CompletedBeforeCrash,
    Resumable,
    UploadGone,
    adoptable,
    reconcile,
    stray_upload_ids,
)
from ferryman.transfer.s3 import Retrying, choose_part_size, format_size, log
from ferryman.transfer.s3_object import S3Object
from ferryman.transfer.sender import PartSender

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
        self.target = S3Object(s3=s3, bucket=bucket, key=key)
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
            if not self.options.follow:
                whole = self._checked(transfer, lambda: read_whole(self.path, transfer.part_size))
                if whole is not None:
                    return self._put_whole(transfer, *whole)
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
        upload_id = self.target.create_upload(transfer.checksum_algorithm)
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
        """Read the file, send what S3 lacks, then complete and verify the object."""
        transfer = plan.transfer
        self.counter.start(
            transfer_id=transfer.id,
            confirmed_bytes=sum(p.size for p in plan.confirmed.values()),
            confirmed_parts=len(plan.confirmed),
        )
        reader = PartReader(
            self.path,
            part_size=transfer.part_size,
            follow=self._follow(),
            file_sha256=self.options.file_sha256,
            on_final_size=self._total_known,
            # The part being read and the parts in flight: the memory bound stays.
            buffers_kept=self.options.concurrency + 1,
        )
        shrunk = reader.shrunk_below(plan.confirmed_end)
        if shrunk is not None:
            self._changed(transfer, shrunk)
        if not self.options.follow:
            self.counter.total = reader.start.st_size
            transfer = self.store.record_transfer_source(
                self.fence, size=reader.start.st_size, mtime=reader.start.st_mtime
            )
        with (
            reader,  # the file's digest ends with it, also after a failure
            open(self.path, "rb", buffering=0) as source,
            self._sender(plan.upload_id, transfer.checksum_algorithm) as sender,
        ):
            # A source problem is handled inside the pool: the upload is aborted
            # before the parts still in flight are waited for.
            self._checked(
                transfer, lambda: self._send_parts(transfer, plan, reader, source.fileno(), sender)
            )
            sender.wait()
        end = self._checked(transfer, reader.end)
        size = reader.size_read
        if self.options.follow:
            self.store.record_transfer_source(self.fence, size=size, mtime=end.st_mtime)
        parts = self.store.get_transfer_parts(transfer.id)
        _check_coverage(transfer, parts, size)
        self.target.complete(plan.upload_id, parts)
        return self._finish(self._verify_and_record(transfer, parts, size, reader.sha256))

    def _send_parts(
        self,
        transfer: Transfer,
        plan: Resumable,
        reader: PartReader,
        source: int,
        sender: PartSender,
    ) -> None:
        """Each part: check it if confirmed, adopt it if S3 has it, else send it."""
        for part in reader.parts(source, between=sender.raise_if_failed):
            confirmed = plan.confirmed.get(part.number)
            if confirmed is not None:
                self._check_confirmed(transfer, confirmed, part.data)
                part.release()
            elif (
                adopted := adoptable(
                    part, plan.unconfirmed.get(part.number), transfer.checksum_algorithm
                )
            ) is not None:
                part.release()
                sender.adopt(adopted)
            else:
                sender.send(part)  # the sender releases it once S3 has the bytes
            del part

    def _sender(self, upload_id: str, algorithm: str) -> PartSender:
        return PartSender(
            target=self.target,
            upload_id=upload_id,
            algorithm=algorithm,
            hold=self.hold,
            concurrency=self.options.concurrency,
            counter=self.counter,
        )

    def _follow(self) -> Follow | None:
        if not self.options.follow:
            return None
        return Follow(
            stable_for=self.options.stable_for,
            done_file=self.options.done_file,
            poll_interval=self.options.poll_interval,
        )

    def _total_known(self, size: int) -> None:
        self.counter.total = size

    def _check_confirmed(self, transfer: Transfer, part: TransferPart, data: bytearray) -> None:
        # By the checksum the part was sent with: a CRC32 catches a changed
        # file less surely than a SHA-256, but the file's SHA-256 at the end
        # (Transfer.sha256) covers every byte again.
        sent = part_checksum(part)
        if len(data) != part.size or Checksum.of(sent.algorithm, data) != sent:
            self._changed(
                transfer,
                f"bytes {part.start}-{part.start + part.size} of {self.path} changed after "
                f"part {part.part_number} was uploaded",
            )

    # -- completion ----------------------------------------------------------

    def _finish_completed(self, completed: CompletedBeforeCrash) -> Transfer:
        """Record an object completed before a crash, as if just completed."""
        transfer, total = completed.transfer, completed.total
        self.log.info("transfer %d: object was completed before a crash", transfer.id)
        sha = hash_file(self.path, total) if self.options.file_sha256 else None
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

    def _put_whole(self, transfer: Transfer, data: bytearray, stat: os.stat_result) -> Transfer:
        """A file of at most one part: one PutObject, then one commit.

        The transfer row, open since :meth:`_open`, is the recorded intent. A
        crash after the put and before the commit leaves it active; the resume
        finds the object by HeadObject, with this very SHA-256, and records it
        without sending the bytes again. The file's own SHA-256 is the
        object's checksum: no second pass.
        """
        digest = hashlib.sha256(data).digest()
        checksum = base64.b64encode(digest).decode()
        self.counter.start(transfer_id=transfer.id, confirmed_bytes=0, confirmed_parts=0)
        self.counter.total = len(data)
        verification = self._already_put(data, checksum) if transfer.resumes else None
        if verification is None:
            answer = self.target.put_whole(data, checksum)
            if not answer.get("ChecksumSHA256"):  # a server that does not echo it: look
                answer = self.target.head(checksums=True)
            verification = verify_whole(answer, data, checksum)
        if verification.mismatch is not None:
            self._fail(transfer, "verify_failed", verification.mismatch, abort=False)
        part = ConfirmedPart(
            part_number=1, start=0, size=len(data), etag=verification.etag, sha256=checksum
        )  # with its SHA-256, the file's digest: a CRC32 would be one pass more
        completed = CompletedObject(
            total_size=len(data),
            sha256=digest.hex(),
            checksum=checksum,
            etag=verification.etag,
            verified_by=verification.verified_by,
        )
        recorded = self.store.record_whole_object(
            self.fence,
            part,
            completed,
            source_mtime=stat.st_mtime,
            lease_seconds=self.options.lease_seconds,
            finish=transfer.sidecar_key is None,  # else the sidecar goes first
        )
        self.log.info(
            "transfer %d: object put whole, %s, verified by %s",
            transfer.id,
            format_size(len(data)),
            verification.verified_by,
        )
        if transfer.sidecar_key is not None:
            self.counter.count(len(data))
            return self._finish(recorded)
        self.counter.report_transfer(recorded)
        return recorded

    def _already_put(self, data: bytearray, checksum: str) -> Verification | None:
        """After a crash: the object a put before it left, if it holds these very bytes."""
        head = self.target.head_if_any(checksums=True)
        if head is None:
            return None
        found = verify_whole(head, data, checksum)  # its SHA-256, else its MD5 ETag
        if found.mismatch is None and found.verified_by != "size":
            self.log.info("the object was put before a crash; not sent again")
            return found
        return None

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

    def _checked(self, transfer: Transfer, step: Callable[[], T]) -> T:
        """``step()``; a :class:`SourceError` fails the transfer (or restarts it)."""
        try:
            return step()
        except SourceError as exc:
            problem = exc
        # Out of the except block, so that the error raised carries no chained
        # SourceError (a run records the whole traceback as its error).
        if problem.reason == "source_changed":
            self._changed(transfer, problem.detail)
        self._fail(transfer, problem.reason, problem.detail)

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


def _check_coverage(transfer: Transfer, parts: Sequence[TransferPart], size: int) -> None:
    """The confirmed parts must be numbered 1..n and hold the ``size`` bytes read."""
    numbers = [p.part_number for p in parts]
    if numbers != list(range(1, len(parts) + 1)) or sum(p.size for p in parts) != size:
        raise TransferError(
            f"transfer {transfer.id}: the confirmed parts {numbers} do not cover the {size} B "
            "read; the object is not completed"
        )
