"""The whole object's CRC32 from its parts' CRC32s, as S3's full-object checksum."""

from __future__ import annotations

import zlib

from hypothesis import given
from hypothesis import strategies as st

from ferryman.transfer.crc32 import combined_b64, crc32_b64, crc32_combine


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_combining_two_crcs_gives_the_crc_of_the_concatenation(first: bytes, second: bytes) -> None:
    combined = crc32_combine(zlib.crc32(first), zlib.crc32(second), len(second))
    assert combined == zlib.crc32(first + second)


@given(st.lists(st.binary(max_size=200), max_size=8), st.integers(0, 3))
def test_the_parts_crcs_combine_into_the_whole_ones(pieces: list[bytes], zeros: int) -> None:
    pieces = [*pieces, b"\0" * zeros]  # runs of zero bytes are what the combine adds
    parts = [(crc32_b64(piece), len(piece)) for piece in pieces]
    assert combined_b64(parts) == crc32_b64(b"".join(pieces))


def test_part_sized_pieces_combine() -> None:
    """Lengths as an upload's parts have (MiB), where the operator is squared many times."""
    first, second = bytes(range(256)) * 4096 * 8, b"tail" * 1000  # 8 MiB, then 4000 B
    combined = crc32_combine(zlib.crc32(first), zlib.crc32(second), len(second))
    assert combined == zlib.crc32(first + second)
    assert crc32_combine(zlib.crc32(second), zlib.crc32(first), len(first)) == zlib.crc32(
        second + first
    )
