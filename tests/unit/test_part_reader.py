"""The part reader: parts read into reused buffers, the file's SHA-256 hashed on its own thread."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from ferryman.transfer.reader import PartBuffers, PartReader

MiB = 1024 * 1024


class CountingBuffers(PartBuffers):
    """Counts the buffers out at once, to check the bound."""

    def __init__(self, part_size: int, keep: int) -> None:
        super().__init__(part_size, keep)
        self.out = 0
        self.most_out = 0
        self.counting = threading.Lock()  # taken by the reader, given back by the digest too

    def take(self, size: int) -> bytearray:
        buffer = super().take(size)
        with self.counting:
            self.out += 1
            self.most_out = max(self.most_out, self.out)
        return buffer

    def give_back(self, buffer: bytearray) -> None:
        with self.counting:
            self.out -= 1
        super().give_back(buffer)


def read_all(path: Path, *, keep: int) -> tuple[PartReader, CountingBuffers, list[bytes]]:
    """Read ``path`` as a sender would that is done with each part at once."""
    reader = PartReader(
        path,
        part_size=MiB,
        follow=None,
        file_sha256=True,
        on_final_size=lambda _size: None,
        buffers_kept=keep,
    )
    buffers = reader.buffers = CountingBuffers(MiB, keep)
    copies: list[bytes] = []
    with reader, open(path, "rb", buffering=0) as source:
        for part in reader.parts(source.fileno(), between=lambda: None):
            copies.append(bytes(part.data))
            part.release()  # its buffer may be read into again, once the digest is done with it
        digest = reader.sha256
    assert digest == reader.sha256  # asked again after the block: the same
    return reader, buffers, copies


def test_the_file_digest_hashes_each_buffer_before_it_is_read_into_again(tmp_path: Path) -> None:
    # Reading from the page cache is much faster than SHA-256, and each part is
    # released at once: were a buffer read into again before the digest thread
    # hashed it, the file's digest would mix parts.
    data = os.urandom(48 * MiB + 4321)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    reader, buffers, copies = read_all(path, keep=2)
    assert reader.sha256 == hashlib.sha256(data).hexdigest()
    assert b"".join(copies) == data
    assert len(copies) == 49
    # The memory bound holds although the digest lags: never more than ``keep`` buffers out.
    assert buffers.most_out <= 2
    assert buffers.out == 0


def test_an_empty_file_has_the_empty_digest(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    reader, _buffers, copies = read_all(path, keep=2)
    assert copies == [b""]
    assert reader.sha256 == hashlib.sha256(b"").hexdigest()
