"""CRC32 checksums of parts, and the whole object's CRC32 combined from them.

S3's full-object CRC32 (``ChecksumType=FULL_OBJECT``) is the CRC32 of every
byte of the object, which the client sends with ``CompleteMultipartUpload``
and the server checks. ferryman never reads the file twice for it: each
part's CRC32 is computed as the part is sent, and :func:`crc32_combine` joins
two CRCs knowing only the length of the second piece (zlib's method:
appending ``n`` zero bytes to a CRC is a linear map over GF(2), applied by
squaring a 32x32 bit matrix). ``zlib.crc32`` (standard library) runs at about
twice SHA-256's speed, which is the CPU an upload saves per part.
"""

from __future__ import annotations

import base64
import functools
import zlib
from collections.abc import Iterable, Sequence

_POLYNOMIAL = 0xEDB88320  # CRC-32 (ISO-HDLC), reflected, as zlib computes it


def _times(matrix: Sequence[int], vector: int) -> int:
    """``matrix`` (32 columns, each an int) times the bit vector ``vector``, over GF(2)."""
    total = 0
    column = 0
    while vector:
        if vector & 1:
            total ^= matrix[column]
        vector >>= 1
        column += 1
    return total


def _after(first: Sequence[int], then: Sequence[int]) -> tuple[int, ...]:
    """The operator applying ``first``, then ``then`` (each a 32x32 bit matrix)."""
    return tuple(_times(then, column) for column in first)


# The operator appending one zero byte to a CRC: one zero bit is a shift and,
# when the bit shifted out is set, the polynomial; eight of them make a byte.
_ONE_BIT = (_POLYNOMIAL, *(1 << n for n in range(31)))
_TWO_BITS = _after(_ONE_BIT, _ONE_BIT)
_FOUR_BITS = _after(_TWO_BITS, _TWO_BITS)
_ONE_BYTE = _after(_FOUR_BITS, _FOUR_BITS)


@functools.lru_cache(maxsize=64)  # an upload's parts have one or two sizes
def _zeros(length: int) -> tuple[int, ...]:
    """The operator appending ``length`` zero bytes to a CRC, by squaring."""
    operator = tuple(1 << n for n in range(32))  # identity
    power = _ONE_BYTE  # 2**k zero bytes
    while length:
        if length & 1:
            operator = _after(operator, power)
        length >>= 1
        if length:
            power = _after(power, power)
    return operator


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """The CRC32 of ``A + B`` from ``crc1`` of A, ``crc2`` of B and B's length (zlib's)."""
    if length2 <= 0:
        return crc1
    # crc(A + B) = crc(A + zeros) ^ crc(B): the pre- and post-conditioning cancel.
    return _times(_zeros(length2), crc1) ^ crc2


def crc32_of(data: bytes | bytearray | memoryview) -> int:
    return zlib.crc32(data)


def to_b64(crc: int) -> str:
    """A CRC32 as S3's ``ChecksumCRC32`` header wants it: 4 bytes big-endian, base64."""
    return base64.b64encode(crc.to_bytes(4, "big")).decode()


def from_b64(text: str) -> int:
    return int.from_bytes(base64.b64decode(text), "big")


def crc32_b64(data: bytes | bytearray | memoryview) -> str:
    """The CRC32 of ``data`` as S3's ``ChecksumCRC32`` header wants it."""
    return to_b64(zlib.crc32(data))


class RunningCrc32:
    """A CRC32 fed piece by piece, shaped as hashlib's objects for the stream it checks."""

    def __init__(self) -> None:
        self.crc = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self.crc = zlib.crc32(data, self.crc)

    def digest(self) -> bytes:
        return self.crc.to_bytes(4, "big")


def combined_b64(parts: Iterable[tuple[str, int]]) -> str:
    """The CRC32 of the concatenation of parts given as (base64 CRC32, size), in order."""
    whole = 0
    for checksum, size in parts:
        whole = crc32_combine(whole, from_b64(checksum), size)
    return to_b64(whole)
