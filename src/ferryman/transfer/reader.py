"""Reading the source file as numbered parts: a finished file, or a growing one followed.

A finished file is read up to the size it had when the upload began; its
size and mtime must be the same at the end. A followed file is read a whole
part at a time as it grows, and finished once it has not changed for
``stable_for`` seconds (or once ``done_file`` exists): from then on its size
is fixed, so the last, short part really is the last. The whole file's
SHA-256 is computed on the way, from the bytes the parts carry.

A part's bytes are read into a buffer the upload reuses (:class:`PartBuffers`):
no part-sized allocation (and its page faults) per part, and the body handed
to botocore is a ``bytearray``, which it sends as it is; ``bytes`` it would
wrap in a ``BytesIO`` and copy again, 128 KiB at a time, on the way to the
socket (about 0.2 s of CPU per GiB).

Anything that makes the file unfit to upload as it stands — gone, changed
behind the reader, too large for S3's parts — is a :class:`SourceError`
carrying the reason the transfer records.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ferryman.transfer.s3 import MAX_PARTS, format_size

SourceReason = Literal["source_changed", "source_missing", "too_large"]


class SourceError(Exception):
    """The file cannot be uploaded as it stands; ``reason`` is what the transfer records.

    Never leaves the transfer package: the uploader turns it into a failed
    transfer (or, for ``source_changed`` when asked, a fresh upload).
    """

    def __init__(self, reason: SourceReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: SourceReason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True, kw_only=True)
class Follow:
    """How a growing file is followed, and when it counts as finished."""

    stable_for: float
    done_file: Path | None
    poll_interval: float


class PartBuffers:
    """Part-sized buffers, handed back once a part is done with and read into again.

    At most ``keep`` are kept: the part being read and those in flight,
    which bounds the memory as before. A buffer of another size (the short
    last part) is made for its part alone and not kept.
    """

    def __init__(self, part_size: int, keep: int) -> None:
        self.part_size = part_size
        self.keep = keep
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def take(self, size: int) -> bytearray:
        if size == self.part_size:
            with self._lock:
                if self._free:
                    return self._free.pop()
        return bytearray(size)

    def give_back(self, buffer: bytearray) -> None:
        with self._lock:
            if len(buffer) == self.part_size and len(self._free) < self.keep:
                self._free.append(buffer)


@dataclass(frozen=True, slots=True, kw_only=True)
class Part:
    """One part's bytes as read from the file, in a buffer of ``buffers``.

    Whoever is last to need the bytes calls :meth:`release`; after that the
    buffer is read into again and ``data`` no longer holds this part.
    """

    number: int
    start: int
    data: bytearray
    buffers: PartBuffers

    def release(self) -> None:
        self.buffers.give_back(self.data)


class PartReader:
    """The parts of one file, in order; ``follow`` set for a file still being written."""

    def __init__(
        self,
        path: Path,
        *,
        part_size: int,
        follow: Follow | None,
        file_sha256: bool,
        on_final_size: Callable[[int], None],
        buffers_kept: int,
    ) -> None:
        self.path = path
        self.part_size = part_size
        self.buffers = PartBuffers(part_size, buffers_kept)
        self.follow = follow
        self.on_final_size = on_final_size
        self.start = os.stat(path)
        # Decided once: the size the upload ends at (a finished file's, from the start).
        self.final_size: int | None = None if follow else self.start.st_size
        self.size_read = 0
        self._whole = hashlib.sha256() if file_sha256 else None
        self._seen = (self.start.st_size, self.start.st_mtime_ns)
        self._last_change = time.monotonic()

    @property
    def sha256(self) -> str | None:
        """The hex SHA-256 of every byte read, if asked for."""
        return None if self._whole is None else self._whole.hexdigest()

    def shrunk_below(self, confirmed_end: int) -> str | None:
        """Why the file cannot hold the confirmed parts any more, if it cannot."""
        if self.start.st_size < confirmed_end:
            return f"{self.path} shrank below the confirmed {confirmed_end} B"
        return None

    def parts(self, source: int, *, between: Callable[[], None]) -> Iterator[Part]:
        """Read the parts from the open file descriptor ``source``.

        ``between`` runs before each part and while waiting for the file to
        grow (it raises to stop the reading). A part is yielded without a
        reference kept here; its consumer releases it (:meth:`Part.release`).
        """
        number = 1
        while True:
            size = self._size_to_read(between)
            offset = self.size_read
            if offset >= size and not (offset == 0 and size == 0):
                return
            length = min(self.part_size, size - offset)
            if number > MAX_PARTS:
                raise SourceError(
                    "too_large",
                    f"{self.path} needs more than {MAX_PARTS:,} parts of "
                    f"{format_size(self.part_size)}; give a larger part size",
                )
            yield self._read(source, number, offset, length)
            self.size_read = offset + length
            number += 1
            if size == 0:
                return

    def end(self) -> os.stat_result:
        """The file's state at the end; a finished file must be as it was at the start."""
        end = os.stat(self.path)
        if self.follow is None and (end.st_size, end.st_mtime_ns) != (
            self.start.st_size,
            self.start.st_mtime_ns,
        ):
            raise SourceError("source_changed", f"{self.path} changed while it was being uploaded")
        return end

    def _size_to_read(self, between: Callable[[], None]) -> int:
        """The size to read up to; for a followed file, once it has a whole part to give."""
        while True:
            between()
            if self.follow is None:
                return self.start.st_size
            if self.final_size is not None:
                return self.final_size
            size = self._grown_size(self.follow)
            if size is not None:
                return size
            time.sleep(self.follow.poll_interval)  # waiting for the file to grow

    def _grown_size(self, follow: Follow) -> int | None:
        """The followed file's size, fixed once finished; None while no whole part is new."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            raise SourceError("source_missing", f"{self.path} disappeared") from None
        if (stat.st_size, stat.st_mtime_ns) != self._seen:
            self._seen, self._last_change = (stat.st_size, stat.st_mtime_ns), time.monotonic()
        finished = (
            follow.done_file.exists()
            if follow.done_file is not None
            else time.monotonic() - self._last_change >= follow.stable_for
        )
        if finished:
            # Decided once: the last (short) part must really be the last.
            self.final_size = os.stat(self.path).st_size
            self.on_final_size(self.final_size)
            return self.final_size
        if self.size_read + self.part_size > stat.st_size:
            return None
        return stat.st_size

    def _read(self, source: int, number: int, offset: int, length: int) -> Part:
        data = self.buffers.take(length)
        view = memoryview(data)
        filled = 0
        while filled < length:
            count = os.preadv(source, [view[filled:]], offset + filled)
            if count == 0:
                self.buffers.give_back(data)
                raise SourceError("source_changed", f"{self.path} was truncated while being read")
            filled += count
        view.release()  # no view outlives the read: the part's consumer owns the buffer
        if self._whole is not None:
            self._whole.update(data)
        return Part(number=number, start=offset, data=data, buffers=self.buffers)


def hash_file(path: Path, size: int) -> str:
    """The hex SHA-256 of the whole file, read in chunks of 8 MiB (or ``size``, if smaller)."""
    whole = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(min(8 * 1024 * 1024, size)):
            whole.update(chunk)
    return whole.hexdigest()


def read_whole(path: Path, limit: int) -> tuple[bytes, os.stat_result] | None:
    """The whole file and its stat when it holds at most ``limit`` bytes, else ``None``.

    One read, for a file small enough to go up in one PutObject. A
    :class:`SourceError` if the file is gone, or changed while it was read.
    """
    try:
        with open(path, "rb", buffering=0) as source:
            start = os.fstat(source.fileno())
            if start.st_size > limit:
                return None
            chunks: list[bytes] = []
            remaining = start.st_size + 1  # one byte more: a file that grew is seen
            while remaining > 0 and (chunk := source.read(remaining)):
                chunks.append(chunk)
                remaining -= len(chunk)
            end = os.fstat(source.fileno())
    except FileNotFoundError:
        raise SourceError("source_missing", f"{path} no longer exists") from None
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if len(data) != start.st_size or (end.st_size, end.st_mtime_ns) != (
        start.st_size,
        start.st_mtime_ns,
    ):
        raise SourceError("source_changed", f"{path} changed while it was being uploaded")
    return data, end
