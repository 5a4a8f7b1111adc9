"""Reading the source file as numbered parts: a finished file, or a growing one followed.

A finished file is read up to the size it had when the upload began; its
size and mtime must be the same at the end. A followed file is read a whole
part at a time as it grows, and finished once it has not changed for
``stable_for`` seconds (or once ``done_file`` exists): from then on its size
is fixed, so the last, short part really is the last. The whole file's
SHA-256 is computed on the way, from the very buffers the parts are sent
from, on a thread of its own (:class:`FileDigest`): no second read, no copy,
and the reading thread goes straight on to the next part.

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
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ferryman.supervise import supervised
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

    At most ``keep`` buffers are out at once (the part being read and those
    in flight): :meth:`take` waits for one to come back, which bounds the
    memory even when the file's digest lags behind the network. A buffer of
    another size (the short last part) is made for its part alone and not
    kept, but counts while out.
    """

    def __init__(self, part_size: int, keep: int) -> None:
        self.part_size = part_size
        self.keep = keep
        self._free: list[bytearray] = []
        self._out = 0
        self._returned = threading.Condition()

    def take(self, size: int) -> bytearray:
        with self._returned:
            while self._out >= self.keep:
                self._returned.wait()
            self._out += 1
            if size == self.part_size and self._free:
                return self._free.pop()
        return bytearray(size)

    def give_back(self, buffer: bytearray) -> None:
        with self._returned:
            self._out -= 1
            if len(buffer) == self.part_size and len(self._free) < self.keep:
                self._free.append(buffer)
            self._returned.notify()


@dataclass(slots=True, kw_only=True, eq=False)
class Part:
    """One part's bytes as read from the file, in a buffer of ``buffers``.

    Each holder of the bytes (the part's consumer; the file's digest, when
    computed) calls :meth:`release` once done with them; after the last, the
    buffer is read into again and ``data`` no longer holds this part.
    """

    number: int
    start: int
    data: bytearray
    buffers: PartBuffers
    holders: int = 1
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def hold(self) -> None:
        with self._lock:
            self.holders += 1

    def release(self) -> None:
        with self._lock:
            self.holders -= 1
            last = self.holders == 0
        if last:
            self.buffers.give_back(self.data)


class FileDigest:
    """The whole file's SHA-256 on a thread of its own, from the parts' own buffers.

    The reader hands each part over as soon as it is read; the thread hashes
    the parts in file order while they are being sent (hashlib lets go of
    the GIL) and releases each once hashed. No part waits for it to be sent:
    its buffer merely comes back later, and the reader waits only when every
    buffer is out (:class:`PartBuffers`). :meth:`close` hashes what is left.
    """

    def __init__(self) -> None:
        self._whole = hashlib.sha256()
        self._waiting: deque[Part] = deque()
        self._changed = threading.Condition()
        self._closed = False
        self._crash: BaseException | None = None
        self._thread = supervised("ferryman-file-sha256", self._run, on_crash=self._crashed)

    def add(self, part: Part) -> None:
        with self._changed:
            if self._crash is not None:
                return  # no digest to come: the part is not held for it
            part.hold()
            self._waiting.append(part)
            self._changed.notify()

    def close(self) -> None:
        """Hash the parts still waiting, then end the thread (also after a failure)."""
        with self._changed:
            self._closed = True
            self._changed.notify()
        self._thread.join()

    def hexdigest(self) -> str:
        self.close()
        if self._crash is not None:
            raise RuntimeError("the file's SHA-256 was not computed") from self._crash
        return self._whole.hexdigest()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._waiting and not self._closed:
                    self._changed.wait()
                if not self._waiting:
                    return
                part = self._waiting.popleft()
            try:
                self._whole.update(part.data)
            finally:
                part.release()

    def _crashed(self, exc: BaseException) -> None:
        """Let go of the parts still waiting, so that the reader never waits for them."""
        with self._changed:
            self._crash = exc
            waiting, self._waiting = list(self._waiting), deque()
        for part in waiting:
            part.release()


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
        self.file_sha256 = file_sha256
        self._digest: FileDigest | None = None  # started by ``with``: its thread ends with it
        self._seen = (self.start.st_size, self.start.st_mtime_ns)
        self._last_change = time.monotonic()

    def __enter__(self) -> PartReader:
        if self.file_sha256:
            self._digest = FileDigest()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._digest is not None:
            self._digest.close()  # its thread ends, and lets go of every buffer

    @property
    def sha256(self) -> str | None:
        """The hex SHA-256 of every byte read, if asked for (once every part was read)."""
        if not self.file_sha256:
            return None
        assert self._digest is not None, "the parts were read outside a `with` block"
        return self._digest.hexdigest()

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
        part = Part(number=number, start=offset, data=data, buffers=self.buffers)
        if self._digest is not None:
            self._digest.add(part)  # hashed on its own thread, while the part is sent
        return part


def hash_file(path: Path, size: int) -> str:
    """The hex SHA-256 of the whole file, read in chunks of 8 MiB (or ``size``, if smaller)."""
    whole = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(min(8 * 1024 * 1024, size)):
            whole.update(chunk)
    return whole.hexdigest()


def read_whole(path: Path, limit: int) -> tuple[bytearray, os.stat_result] | None:
    """The whole file and its stat when it holds at most ``limit`` bytes, else ``None``.

    One read, into a ``bytearray`` (which botocore sends as it is, where it
    would copy ``bytes`` again on the way to the socket), for a file small
    enough to go up in one PutObject. A :class:`SourceError` if the file is
    gone, or changed while it was read.
    """
    try:
        with open(path, "rb", buffering=0) as source:
            start = os.fstat(source.fileno())
            if start.st_size > limit:
                return None
            data = bytearray(start.st_size + 1)  # one byte more: a file that grew is seen
            filled = 0
            with memoryview(data) as view:
                while filled < len(data) and (count := source.readinto(view[filled:])):
                    filled += count
            end = os.fstat(source.fileno())
    except FileNotFoundError:
        raise SourceError("source_missing", f"{path} no longer exists") from None
    if filled != start.st_size or (end.st_size, end.st_mtime_ns) != (
        start.st_size,
        start.st_mtime_ns,
    ):
        raise SourceError("source_changed", f"{path} changed while it was being uploaded")
    del data[filled:]  # the byte more, never read into
    return data, end
