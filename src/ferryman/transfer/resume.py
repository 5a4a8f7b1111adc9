"""Resuming an upload: what S3 has, measured against what the store confirmed.

S3 is the truth. A confirmed part S3 no longer lists (or lists with another
ETag) is sent again; a part S3 lists that the store never confirmed (the
crash came between S3's answer and the row's commit) is adopted when its
size and checksum match the file's bytes, else sent again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from ferryman.model import TransferPart
from ferryman.transfer.objects import sha256_b64
from ferryman.transfer.s3 import Retrying

# Parts per ListParts page (S3's maximum). A setting, so that paging can be
# exercised with a few parts.
LIST_PARTS_PAGE = 1000

S3Parts = dict[int, dict[str, Any]]


def list_parts(s3: Retrying, bucket: str, key: str, upload_id: str) -> S3Parts:
    """Every part S3 holds for ``upload_id``, by part number.

    Some servers page wrongly when part numbers have gaps (treating the
    marker as an index). Listing stops when the marker does not move on; a
    part such a server hides is then simply sent again, never lost.
    """
    parts: S3Parts = {}
    marker = 0
    while True:
        page = s3(
            "list_parts",
            key,
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MaxParts=LIST_PARTS_PAGE,
            PartNumberMarker=marker,
        )
        for part in page.get("Parts", []):
            parts[int(part["PartNumber"])] = part
        following = int(page.get("NextPartNumberMarker") or 0)
        if not page.get("IsTruncated") or following <= marker:
            return parts
        marker = following


def parts_s3_lost(stored: Sequence[TransferPart], on_s3: S3Parts) -> list[int]:
    """Numbers of confirmed parts S3 does not hold as confirmed (missing, other ETag)."""
    return [
        p.part_number
        for p in stored
        if p.part_number not in on_s3
        or str(on_s3[p.part_number]["ETag"]).strip('"') != p.etag.strip('"')
    ]


def adoptable_checksum(on_s3: Mapping[str, Any] | None, data: bytes) -> str | None:
    """The SHA-256 (S3's base64 form) of ``data`` if S3's part holds exactly these bytes.

    Compared by S3's listed checksum where the server lists one, else by the
    part's ETag, which for a plain part is the MD5 of its bytes.
    """
    if on_s3 is None or int(on_s3.get("Size", -1)) != len(data):
        return None
    checksum = sha256_b64(data)
    if on_s3.get("ChecksumSHA256"):
        matches = on_s3["ChecksumSHA256"] == checksum
    else:
        etag = str(on_s3["ETag"]).strip('"')
        matches = etag == hashlib.md5(data, usedforsecurity=False).hexdigest()
    return checksum if matches else None


def stray_upload_ids(s3: Retrying, bucket: str, key: str, owned: set[str]) -> list[str]:
    """Multipart uploads of exactly ``key`` whose ids are not in ``owned``."""
    page = s3("list_multipart_uploads", key, Bucket=bucket, Prefix=key)
    return [
        upload["UploadId"]
        for upload in page.get("Uploads", [])
        if upload["Key"] == key and upload["UploadId"] not in owned
    ]
