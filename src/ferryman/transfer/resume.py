"""Resuming an upload: what S3 has, measured against what the store confirmed.

S3 is the truth. A confirmed part S3 no longer lists (or lists with another
ETag) is sent again; a part S3 lists that the store never confirmed (the
crash came between S3's answer and the row's commit) is adopted when its
size and checksum (S3's listed one, else the MD5 ETag) match the file's
bytes, else sent again. An upload S3 no
longer knows was either completed before its record (the object is there,
made of the confirmed parts) or aborted elsewhere (a new one is started).

:func:`reconcile` says which, as one of three records: :class:`Resumable`,
:class:`CompletedBeforeCrash` or :class:`UploadGone`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from ferryman.errors import S3Error
from ferryman.model import Transfer, TransferPart
from ferryman.store import ConfirmedPart, Store, TransferFence
from ferryman.transfer.objects import Checksum, verify_head
from ferryman.transfer.reader import Part
from ferryman.transfer.s3_object import S3Object

# Parts per ListParts page (S3's maximum). A setting, so that paging can be
# exercised with a few parts.
LIST_PARTS_PAGE = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class ListedPart:
    """A part of a multipart upload as ``ListParts`` shows it."""

    size: int  # -1 where the server lists none
    etag: str  # without quotes
    sha256: str | None  # ``ChecksumSHA256`` (base64), where the server lists one
    crc32: str | None = None  # ``ChecksumCRC32`` (base64), likewise


S3Parts = dict[int, ListedPart]


@dataclass(frozen=True, slots=True, kw_only=True)
class Resumable:
    """The upload goes on from here.

    ``confirmed``: the stored parts S3 still holds, by number (never sent
    again, but re-read and checked); ``unconfirmed``: parts S3 holds that the
    store never confirmed, by number (adopted if the file's bytes match).
    ``transfer`` is the record as it now stands.
    """

    transfer: Transfer
    upload_id: str
    confirmed: dict[int, TransferPart]
    unconfirmed: S3Parts

    @property
    def confirmed_end(self) -> int:
        """The file offset the confirmed parts reach."""
        return max((p.start + p.size for p in self.confirmed.values()), default=0)


@dataclass(frozen=True, slots=True, kw_only=True)
class CompletedBeforeCrash:
    """The object was completed from these parts before a crash could record it."""

    transfer: Transfer
    parts: list[TransferPart]

    @property
    def total(self) -> int:
        return sum(p.size for p in self.parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class UploadGone:
    """S3 no longer has the multipart upload, nor an object made of its parts."""

    transfer: Transfer


Reconciled = Resumable | CompletedBeforeCrash | UploadGone


def reconcile(
    target: S3Object,
    store: Store,
    fence: TransferFence,
    transfer: Transfer,
    *,
    upload_id: str,
    stored: Sequence[TransferPart],
    log: logging.LoggerAdapter[logging.Logger],
) -> Reconciled:
    """Measure the transfer's ``stored`` parts of ``upload_id`` against S3's.

    Stored parts S3 lost are forgotten in the store (fenced), to be sent again.
    """
    try:
        on_s3 = list_parts(target, upload_id)
    except S3Error as exc:
        if exc.code != "NoSuchUpload":
            raise
        if completed_from(target, stored):
            return CompletedBeforeCrash(transfer=transfer, parts=list(stored))
        return UploadGone(transfer=transfer)
    lost = parts_s3_lost(stored, on_s3)
    if lost:
        log.warning("S3 lacks %d confirmed parts; they will be sent again", len(lost))
        transfer = store.forget_parts(fence, lost)
    confirmed = {p.part_number: p for p in stored if p.part_number not in lost}
    return Resumable(
        transfer=transfer,
        upload_id=upload_id,
        confirmed=confirmed,
        unconfirmed={n: p for n, p in on_s3.items() if n not in confirmed},
    )


def list_parts(target: S3Object, upload_id: str) -> S3Parts:
    """Every part S3 holds for ``upload_id``, by part number.

    Some servers page wrongly when part numbers have gaps (treating the
    marker as an index). Listing stops when the marker does not move on; a
    part such a server hides is then simply sent again, never lost.
    """
    parts: S3Parts = {}
    marker = 0
    while True:
        page = target.s3(
            "list_parts",
            target.key,
            Bucket=target.bucket,
            Key=target.key,
            UploadId=upload_id,
            MaxParts=LIST_PARTS_PAGE,
            PartNumberMarker=marker,
        )
        for part in page.get("Parts", []):
            parts[int(part["PartNumber"])] = ListedPart(
                size=int(part.get("Size", -1)),
                etag=str(part.get("ETag", "")).strip('"'),
                sha256=part.get("ChecksumSHA256") or None,
                crc32=part.get("ChecksumCRC32") or None,
            )
        following = int(page.get("NextPartNumberMarker") or 0)
        if not page.get("IsTruncated") or following <= marker:
            return parts
        marker = following


def parts_s3_lost(stored: Sequence[TransferPart], on_s3: S3Parts) -> list[int]:
    """Numbers of confirmed parts S3 does not hold as confirmed (missing, other ETag)."""
    return [
        p.part_number
        for p in stored
        if p.part_number not in on_s3 or on_s3[p.part_number].etag != p.etag.strip('"')
    ]


def completed_from(target: S3Object, stored: Sequence[TransferPart]) -> bool:
    """After a crash between CompleteMultipartUpload and its record: is the object ours?

    It is when its size is the stored parts' and its full-object CRC32 (or
    composite SHA-256, or multipart ETag) is theirs.
    """
    if not stored:
        return False
    head = target.head_if_any(checksums=True)
    if head is None:
        return False
    found = verify_head(head, stored, sum(p.size for p in stored))
    return found.mismatch is None and found.verified_by != "size"


def adoptable(part: Part, on_s3: ListedPart | None, algorithm: str) -> ConfirmedPart | None:
    """The part to record if S3's unconfirmed part ``on_s3`` holds exactly ``part``'s bytes.

    Compared by S3's listed checksum (of ``algorithm``, the transfer's) where
    the server lists one, else by the part's ETag, which for a plain part is
    the MD5 of its bytes.
    """
    if on_s3 is None or on_s3.size != len(part.data):
        return None
    checksum = Checksum.of(algorithm, part.data)
    listed = on_s3.crc32 if checksum.algorithm == "CRC32" else on_s3.sha256
    if listed:
        matches = listed == checksum.value
    else:
        matches = on_s3.etag == hashlib.md5(part.data, usedforsecurity=False).hexdigest()
    if not matches:
        return None
    return ConfirmedPart(
        part_number=part.number,
        start=part.start,
        size=len(part.data),
        etag=on_s3.etag,
        sha256=checksum.sha256,
        crc32=checksum.crc32,
        adopted=True,
    )


def stray_upload_ids(target: S3Object, owned: set[str]) -> list[str]:
    """Multipart uploads of exactly the target's key whose ids are not in ``owned``."""
    page = target.s3("list_multipart_uploads", target.key, Bucket=target.bucket, Prefix=target.key)
    return [
        upload["UploadId"]
        for upload in page.get("Uploads", [])
        if upload["Key"] == target.key and upload["UploadId"] not in owned
    ]
