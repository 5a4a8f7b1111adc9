"""Sending parts to S3 on a bounded pool, and confirming each in the store.

A part counts only once S3 returned its ETag *and* its row committed,
fenced by the transfer's token (and, in a job, the run's lease). At most
``concurrency`` parts are in flight, so memory stays near
``part_size * (concurrency + 1)`` with the part being read.

Threads: ``ferryman-part_<n>``, ``2 * concurrency`` of them, each sending
one part and committing its row. A failure of one (S3 after its retries,
a refused row, a lost hold) is kept in its future and raised by
:meth:`PartSender.raise_if_failed` on the reading thread, which then stops
sending; parts in flight finish or fail on their own before the pool closes.
"""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait

from ferryman.store import ConfirmedPart
from ferryman.transfer.objects import Checksum
from ferryman.transfer.owners import Hold
from ferryman.transfer.progress import ProgressCounter
from ferryman.transfer.reader import Part
from ferryman.transfer.s3_object import S3Object


class PartSender:
    """The parts of one multipart upload in flight, for the length of a ``with`` block.

    Parts are confirmed under ``hold``: in its store, fenced by its fence.
    """

    def __init__(
        self,
        *,
        target: S3Object,
        upload_id: str,
        algorithm: str,
        hold: Hold,
        concurrency: int,
        counter: ProgressCounter,
    ) -> None:
        self.target = target
        self.upload_id = upload_id
        self.algorithm = algorithm  # of the part checksums: CRC32, or SHA256
        self.hold = hold
        self.counter = counter
        self._slots = threading.BoundedSemaphore(concurrency)
        self._futures: list[Future[None]] = []
        # Twice the slots: a part thread still committing its row has given
        # its slot back, and the next part must not wait for that thread.
        self._pool = ThreadPoolExecutor(2 * concurrency, thread_name_prefix="ferryman-part")

    def __enter__(self) -> PartSender:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._pool.shutdown(wait=True)  # parts in flight end, sent or failed

    def send(self, part: Part) -> None:
        """Send ``part`` once a slot is free; raises a failure of an earlier part."""
        self._slots.acquire()
        self.raise_if_failed()
        # Handed over in a box the part thread empties, so that no reference
        # held by the pool keeps the bytes alive after S3 has them.
        self._futures.append(self._pool.submit(self._send_part, [part]))
        self._futures = [f for f in self._futures if not f.done() or f.exception() is not None]

    def adopt(self, part: ConfirmedPart) -> None:
        """Commit a part S3 had but the store lacked (its bytes checked against the file)."""
        self._commit(part)
        self.hold.log.info("adopted part %d found on S3 after a crash", part.part_number)
        self.counter.count(part.size)

    def wait(self) -> None:
        """Wait for every part sent; raises the first failure."""
        wait(self._futures, return_when=FIRST_EXCEPTION)
        self.raise_if_failed()

    def raise_if_failed(self) -> None:
        """Raise the hold's loss, or the failure of a part sent so far."""
        if self.hold.lost is not None:
            raise self.hold.lost
        for future in self._futures:
            error = future.exception() if future.done() else None
            if error is not None:
                raise error

    def _send_part(self, box: list[Part]) -> None:
        part = box.pop()
        number, start, size = part.number, part.start, len(part.data)
        give_back = part.release  # the buffer goes back to be read into again
        released = False
        try:
            if self.hold.lost is not None:
                raise self.hold.lost
            checksum = Checksum.of(self.algorithm, part.data)
            self.hold.log.debug("sending part %d (%d B)", number, size)
            etag = self.target.upload_part(
                self.upload_id,
                number,
                part.data,
                checksum,
                retry_key=f"{self.hold.fence.transfer_id}:{number}",
            )
            # S3 has the bytes: let the next part start sending while this one's
            # row commits (an fsync). Memory stays bounded, since the buffer is
            # given back here, before the slot; the part still counts only once
            # its row is committed.
            give_back()
            del part
            self._slots.release()
            released = True
            confirmed = ConfirmedPart(
                part_number=number,
                start=start,
                size=size,
                etag=etag,
                sha256=checksum.sha256,
                crc32=checksum.crc32,
            )
            self._commit(confirmed)
            self.counter.count(size)
        finally:
            if not released:
                give_back()
                self._slots.release()

    def _commit(self, part: ConfirmedPart) -> None:
        # The commit point: from now on the part counts and is never sent again.
        self.hold.store.confirm_part(self.hold.fence, part, self.hold.lease_seconds)
