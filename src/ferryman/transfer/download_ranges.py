"""The parts of a download under the range loop: written ranges recorded in groups, and bytes.

:class:`Confirmations` commits the ranges whose bytes are in the temporary
file, a group at a time; the functions below hash bytes, sync a directory and
tell a cut connection from S3's refusal.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ferryman.model import DownloadPart
from ferryman.store import Store
from ferryman.supervise import supervised
from ferryman.transfer.progress import ProgressCounter
from ferryman.transfer.s3 import MiB, log

CONFIRM_INTERVAL = 0.2  # seconds between the transactions that record written ranges
WRITE_QUEUE = 64  # chunks fetched but not yet written (256 KiB each: 16 MiB)
# Bytes read from a response body at a time. Small reads cost less than big
# ones: each read of several MiB allocates fresh memory (page faults) and
# joins socket reads; 256 KiB measured a third of 4 MiB's CPU per GiB.
CHUNK = 256 * 1024


class Confirmations:
    """Written ranges, committed to the store in groups on ``ferryman-download-<id>-confirm``.

    One transaction every :data:`CONFIRM_INTERVAL` seconds for the ranges
    written meanwhile, rather than one per range on the fetching threads: a
    kill loses the ranges of the last interval (fetched again), nothing else.
    A store error stops the download at its next range; leaving the block
    commits what is left (also when the download stops short), or raises.

    With ``sync_fd`` the temporary file is ``fdatasync``-ed before each such
    transaction, so a range is recorded only once its bytes are on disk, and
    the disk writes the file while the rest of it is still being fetched:
    the sync before the rename is then left with one interval's bytes rather
    than the whole file's.
    """

    def __init__(
        self, store: Store, download_id: int, counter: ProgressCounter, *, sync_fd: int | None
    ) -> None:
        self.store = store
        self.download_id = download_id
        self.counter = counter
        self.sync_fd = sync_fd
        self.error: BaseException | None = None
        self._pending: list[DownloadPart] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = supervised(
            f"ferryman-download-{download_id}-confirm", self._run, start=False
        )

    def __enter__(self) -> Confirmations:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.error is not None and exc[1] is None:
            raise self.error

    def add(self, part: DownloadPart) -> None:
        if self.error is not None:
            raise self.error
        with self._lock:
            self._pending.append(part)

    def _run(self) -> None:
        while not self._stop.wait(CONFIRM_INTERVAL):
            self._commit()
        self._commit()

    def _commit(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        if not batch or self.error is not None:
            return
        try:
            if self.sync_fd is not None:
                os.fdatasync(self.sync_fd)  # the batch's bytes are durable before their rows
            self.store.confirm_download_parts(self.download_id, batch)
        except BaseException as exc:  # kept and raised by the fetching threads
            log.error("download %d: recording ranges failed: %s", self.download_id, exc)
            self.error = exc
            return
        for part in batch:
            self.counter.count(part.size)


class RangeWriter:
    """Writes the fetched bytes into the temporary file on ``ferryman-download-<id>-write``.

    One thread writes for all the fetching ones, as boto3's download does: a
    buffered write holds the file's inode lock, so fetching threads writing
    themselves wait on each other (a profile of 8 of them spent a quarter of
    their time in ``pwrite``) instead of reading their sockets. The queue is
    bounded (:data:`WRITE_QUEUE` chunks), so memory stays bounded too; the
    chunks' buffers come back once written (:meth:`buffer`), so the fetching
    threads read into memory already mapped instead of allocating per chunk.
    A fetching thread hands over a range it has read whole with :meth:`confirm`
    and goes on to its next GET at once: the range comes out of the queue
    after its chunks, so it is passed to ``on_written`` (to be recorded) only
    once they are all in the file. A write error (a full disk), or an error of
    ``on_written``, is kept: every later :meth:`write` raises it, no range is
    passed on any more, and the thread goes on draining the queue so that no
    fetching thread waits forever.
    """

    def __init__(
        self, fd: int, download_id: int, on_written: Callable[[DownloadPart], None]
    ) -> None:
        self.fd = fd
        self.on_written = on_written
        self.error: Exception | None = None
        self._queue: queue.Queue[tuple[int, bytearray, int] | DownloadPart | None] = queue.Queue(
            WRITE_QUEUE
        )
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._thread = supervised(f"ferryman-download-{download_id}-write", self._run, start=False)

    def __enter__(self) -> RangeWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._queue.put(None)
        self._thread.join()

    def buffer(self) -> bytearray:
        """A buffer of :data:`CHUNK` bytes to read a chunk into; handed back by :meth:`write`."""
        try:
            return self._free.get_nowait()
        except queue.Empty:
            return bytearray(CHUNK)

    def write(self, offset: int, buffer: bytearray, count: int) -> None:
        """Write ``buffer[:count]`` at ``offset``; the buffer is this writer's again."""
        if self.error is not None:
            raise self.error
        self._queue.put((offset, buffer, count))

    def confirm(self, part: DownloadPart) -> None:
        """Pass ``part`` to ``on_written`` once the chunks queued before it are written."""
        self._queue.put(part)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if isinstance(item, DownloadPart):
                if self.error is None:
                    try:
                        self.on_written(item)
                    except Exception as exc:  # a store error: kept, as a write error is
                        self.error = exc
            else:
                offset, buffer, count = item
                if self.error is None:
                    try:
                        _pwrite_all(self.fd, memoryview(buffer)[:count], offset)
                    except Exception as exc:  # kept, and raised by the fetching threads
                        self.error = exc
                self._free.put(buffer)


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        written = os.pwrite(fd, view, offset)
        offset += written
        view = view[written:]


def is_cut(exc: BaseException) -> bool:
    from botocore import exceptions as bx  # type: ignore[import-untyped]
    from urllib3 import exceptions as ux

    return isinstance(
        exc,
        bx.ResponseStreamingError
        | bx.IncompleteReadError
        | bx.ReadTimeoutError
        | ux.ProtocolError
        | ux.ReadTimeoutError
        | http.client.IncompleteRead
        | ConnectionError
        | TimeoutError,
    )


def body_reader(body: Any) -> Callable[[memoryview], int]:
    """``readinto`` for an S3 response body: straight from the HTTP response when it can.

    botocore's body reads through urllib3, which allocates and copies every
    chunk on its way (measured here: 0.6-0.8 s of CPU per GiB against 0.3 s
    for ``readinto`` on the HTTP response beneath it). That response checks
    the length as urllib3 does: a body cut short raises ``IncompleteRead``.
    A body of another shape (a test's, a wrapped one) is read by ``read``.
    """
    response = getattr(getattr(body, "_raw_stream", None), "_fp", None)
    if isinstance(response, http.client.HTTPResponse) and response.length is not None:
        return response.readinto

    def read_into(view: memoryview) -> int:
        chunk = body.read(len(view))
        view[: len(chunk)] = chunk
        return len(chunk)

    return read_into


def release_connection(body: Any) -> None:
    """Give a fully read body's connection back to its pool, for the next range's GET.

    Read beneath urllib3, the body is not seen to end there; closing it then
    would close the connection instead.
    """
    raw: Any = getattr(body, "_raw_stream", None)
    response = getattr(raw, "_fp", None)
    if isinstance(response, http.client.HTTPResponse) and response.isclosed():
        raw.release_conn()


def b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def file_sha256(fd: int, size: int) -> bytes:
    hasher = hashlib.sha256()
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(8 * MiB, size - offset), offset)
        if not chunk:
            break
        hasher.update(chunk)
        offset += len(chunk)
    return hasher.digest()


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
