"""What a finished upload is checked against, and what is written about it.

S3 describes a multipart object by its FULL_OBJECT CRC32 (that of all its
bytes, which ferryman combines from the parts' CRC32s) or, for SHA-256 parts
(transfers made before 0.11), the COMPOSITE SHA-256 (a hash of the part
hashes), where the server keeps checksums, and by the multipart ETag (an MD5
of the part MD5s) everywhere. :func:`verify_head`
compares a ``HeadObject`` response with the parts ferryman recorded;
:func:`sidecar_document` is the JSON written next to a verified object.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ferryman.model import Transfer, TransferPart
from ferryman.transfer.crc32 import combined_b64, crc32_b64


@dataclass(frozen=True, slots=True)
class Checksum:
    """A part's checksum as S3 takes it: ``CRC32`` or ``SHA256``, base64."""

    algorithm: str
    value: str

    @classmethod
    def of(cls, algorithm: str, data: bytes | bytearray | memoryview) -> Checksum:
        if algorithm == "CRC32":
            return cls("CRC32", crc32_b64(data))
        return cls("SHA256", sha256_b64(data))

    def header(self) -> dict[str, str]:
        """The request's field: ``ChecksumCRC32`` or ``ChecksumSHA256``."""
        return {f"Checksum{self.algorithm}": self.value}

    @property
    def sha256(self) -> str | None:
        return self.value if self.algorithm == "SHA256" else None

    @property
    def crc32(self) -> str | None:
        return self.value if self.algorithm == "CRC32" else None


def part_checksum(part: TransferPart) -> Checksum:
    """The checksum a part was sent with: its CRC32, else (made before 0.11) its SHA-256."""
    if part.crc32 is not None:
        return Checksum("CRC32", part.crc32)
    assert part.sha256 is not None, "a part row holds a CRC32 or a SHA-256"
    return Checksum("SHA256", part.sha256)


def full_object_crc32(parts: Sequence[TransferPart]) -> str:
    """S3's FULL_OBJECT CRC32 of an object made of CRC32 ``parts`` (base64), combined."""
    return combined_b64((part_checksum(p).value, p.size) for p in parts)


def sha256_b64(data: bytes | bytearray | memoryview) -> str:
    """The SHA-256 of ``data`` as S3's ``ChecksumSHA256`` header wants it."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def composite_checksum(parts: Sequence[TransferPart]) -> str:
    """S3's COMPOSITE SHA-256 of a multipart object: hash of the part hashes, ``-N``."""
    hashes = b"".join(base64.b64decode(part_checksum(p).value) for p in parts)
    return f"{base64.b64encode(hashlib.sha256(hashes).digest()).decode()}-{len(parts)}"


def composite_etag(parts: Sequence[TransferPart]) -> str:
    """The ETag S3 gives a multipart object (MD5 of the part MD5s, ``-N``)."""
    try:
        md5s = b"".join(bytes.fromhex(p.etag.strip('"')) for p in parts)
    except ValueError:  # a server whose part ETags are not MD5s
        return ""
    return f"{hashlib.md5(md5s, usedforsecurity=False).hexdigest()}-{len(parts)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Verification:
    """The outcome of :func:`verify_head`: how the object was checked, or why it failed."""

    verified_by: str  # "checksum", "etag" or "size"
    etag: str
    checksum: str
    mismatch: str | None = None


def verify_head(head: Mapping[str, Any], parts: Sequence[TransferPart], total: int) -> Verification:
    """Check a ``HeadObject`` response (asked with ``ChecksumMode=ENABLED``).

    The size must be the file's; then S3's full-object CRC32 (CRC32 parts)
    or composite SHA-256 (SHA-256 parts) must equal the one computed from
    the recorded parts, or, where the server lists no checksum, the
    multipart ETag must equal the one from the part ETags.
    """
    crc32 = bool(parts) and all(p.crc32 is not None for p in parts)
    checksum = full_object_crc32(parts) if crc32 else composite_checksum(parts)
    etag = str(head.get("ETag", "")).strip('"')
    if int(head["ContentLength"]) != total:
        return Verification(
            verified_by="size",
            etag=etag,
            checksum=checksum,
            mismatch=f"object has {head['ContentLength']} B, the file {total} B",
        )
    listed = head.get("ChecksumCRC32") if crc32 else head.get("ChecksumSHA256")
    if listed and (crc32 or "-" in listed):
        mismatch = None if listed == checksum else f"S3 checksum {listed} != expected {checksum}"
        return Verification(verified_by="checksum", etag=etag, checksum=checksum, mismatch=mismatch)
    if etag.endswith(f"-{len(parts)}"):
        mismatch = None if etag == composite_etag(parts) else f"ETag {etag} != expected"
        return Verification(verified_by="etag", etag=etag, checksum=checksum, mismatch=mismatch)
    return Verification(verified_by="size", etag=etag, checksum=checksum)


def verify_whole(answer: Mapping[str, Any], data: bytes | bytearray, checksum: str) -> Verification:
    """Check the object of one PutObject of ``data`` (SHA-256 ``checksum``).

    ``answer`` is the PutObject response or a ``HeadObject`` one (asked with
    ``ChecksumMode=ENABLED``). A full-object SHA-256 listed must be ours: the
    server computed it from the bytes it stored. Else a HeadObject's size must
    be the file's, and a plain MD5 ETag the body's MD5.
    """
    etag = str(answer.get("ETag", "")).strip('"')
    listed = answer.get("ChecksumSHA256")
    size = answer.get("ContentLength")
    mismatch: str | None = None
    if size is not None and int(size) != len(data):
        mismatch = f"object has {size} B, the file {len(data)} B"
        return Verification(verified_by="size", etag=etag, checksum=checksum, mismatch=mismatch)
    if listed:
        mismatch = None if listed == checksum else f"S3 checksum {listed} != expected {checksum}"
        return Verification(verified_by="checksum", etag=etag, checksum=checksum, mismatch=mismatch)
    if len(etag) == 32 and all(c in "0123456789abcdef" for c in etag):
        md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
        mismatch = None if etag == md5 else f"ETag {etag} != the body's MD5 {md5}"
        return Verification(verified_by="etag", etag=etag, checksum=checksum, mismatch=mismatch)
    return Verification(verified_by="size", etag=etag, checksum=checksum)


def sidecar_document(transfer: Transfer, parts: Sequence[TransferPart]) -> bytes:
    """The JSON sidecar of a verified object: size, digests, parts, source, times, metadata."""
    crc32 = bool(parts) and all(p.crc32 is not None for p in parts)
    document = {
        "object": transfer.uri,
        "size": transfer.total_size,
        "sha256": transfer.sha256,
        # S3's full-object CRC32 (CRC32 parts), or composite SHA-256 (SHA-256 parts)
        "checksum_crc32": transfer.checksum if crc32 else None,
        "checksum_sha256": None if crc32 else transfer.checksum,
        "etag": transfer.etag,
        "verified_by": transfer.verified_by,
        "part_size": transfer.part_size,
        "parts": [
            {"part_number": p.part_number, "size": p.size, "sha256": p.sha256, "crc32": p.crc32}
            for p in parts
        ],
        "source_path": transfer.source_path,
        "source_mtime": transfer.source_mtime,
        "started_at": transfer.created_at.isoformat(),
        "completed_at": transfer.updated_at.isoformat(),
        "transfer_id": transfer.id,
        "run_id": transfer.run_id,
        "metadata": transfer.user_metadata,
    }
    return json.dumps(document, indent=2, sort_keys=True).encode()
