"""The S3 object an upload writes: every call on it, in one place.

Each call goes through :class:`~ferryman.transfer.s3.Retrying`, so transient
failures are retried with a backoff keyed by the operation and the object
(a part's calls by ``transfer:part``, spreading parts apart). The answers S3
gives for "not there" are read here once: a missing object is ``None``, an
upload already gone is no error where that is the outcome wanted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ferryman.errors import S3Error
from ferryman.model import TransferPart
from ferryman.transfer.objects import Checksum, full_object_crc32, part_checksum
from ferryman.transfer.s3 import Retrying

# What servers answer a HeadObject of a key that holds no object.
_NO_OBJECT = frozenset({"404", "NoSuchKey", "NotFound"})


@dataclass(frozen=True, slots=True, kw_only=True)
class S3Object:
    """One key in one bucket, as the target of an upload."""

    s3: Retrying
    bucket: str
    key: str

    def head(self, *, checksums: bool = False) -> Mapping[str, Any]:
        """``HeadObject``, with S3's checksums if asked; an :class:`S3Error` if there is none."""
        extra = {"ChecksumMode": "ENABLED"} if checksums else {}
        head: Mapping[str, Any] = self.s3(
            "head_object", self.key, Bucket=self.bucket, Key=self.key, **extra
        )
        return head

    def head_if_any(self, *, checksums: bool = False) -> Mapping[str, Any] | None:
        """:meth:`head`, or ``None`` if the key holds no object."""
        try:
            return self.head(checksums=checksums)
        except S3Error as exc:
            if exc.code in _NO_OBJECT:
                return None
            raise

    def create_upload(self, algorithm: str) -> str:
        """Start a multipart upload whose parts carry ``algorithm``'s checksums; its id.

        CRC32 parts make a FULL_OBJECT upload: the object's CRC32 is that of all
        its bytes, sent with the complete and checked by the server; SHA-256
        parts (transfers made before 0.11) a COMPOSITE one.
        """
        full = {"ChecksumType": "FULL_OBJECT"} if algorithm == "CRC32" else {}
        created = self.s3(
            "create_multipart_upload",
            self.key,
            Bucket=self.bucket,
            Key=self.key,
            ChecksumAlgorithm=algorithm,
            **full,
        )
        return str(created["UploadId"])

    def upload_part(
        self, upload_id: str, number: int, data: bytearray, checksum: Checksum, *, retry_key: str
    ) -> str:
        """Send one part with its checksum, which the server checks; the ETag S3 gave it.

        A ``bytearray``: botocore sends it as it is (``bytes`` it would copy
        into a ``BytesIO`` and read back in blocks).
        """
        response = self.s3(
            "upload_part",
            retry_key,
            Bucket=self.bucket,
            Key=self.key,
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
            **checksum.header(),
        )
        return str(response["ETag"]).strip('"')

    def complete(self, upload_id: str, parts: Sequence[TransferPart]) -> None:
        """``CompleteMultipartUpload`` from the recorded parts.

        CRC32 parts: with the whole object's CRC32, combined from theirs, which
        the server checks against the bytes it holds.
        """
        whole: dict[str, str] = {}
        if parts and all(p.crc32 is not None for p in parts):
            whole = {"ChecksumCRC32": full_object_crc32(parts), "ChecksumType": "FULL_OBJECT"}
        self._end_upload(
            "complete_multipart_upload",
            upload_id,
            MultipartUpload={
                "Parts": [
                    {"PartNumber": p.part_number, "ETag": p.etag, **part_checksum(p).header()}
                    for p in parts
                ]
            },
            **whole,
        )

    def abort(self, upload_id: str | None) -> None:
        """Abort a multipart upload (none, or one already gone: nothing to do)."""
        if upload_id is not None:
            self._end_upload("abort_multipart_upload", upload_id)

    def _end_upload(self, operation: str, upload_id: str, **arguments: Any) -> None:
        # An upload already gone has ended: completed or aborted by an earlier
        # try whose answer was lost, or by another call before this one.
        try:
            self.s3(
                operation,
                self.key,
                Bucket=self.bucket,
                Key=self.key,
                UploadId=upload_id,
                **arguments,
            )
        except S3Error as exc:
            if exc.code != "NoSuchUpload":
                raise

    def put_whole(self, body: bytearray, checksum: str) -> Mapping[str, Any]:
        """``PutObject`` of the whole object with its SHA-256; S3's answer.

        A ``bytearray``, as for a part: botocore sends it as it is.

        The server checks the body against ``checksum`` and refuses a mismatch
        (``BadDigest``); a repeat after a lost answer writes the same bytes again.
        """
        response: Mapping[str, Any] = self.s3(
            "put_object",
            self.key,
            Bucket=self.bucket,
            Key=self.key,
            Body=body,
            ChecksumSHA256=checksum,
        )
        return response

    def put(self, key: str, body: bytes, checksum: str, *, content_type: str | None = None) -> str:
        """``PutObject`` of ``body`` at ``key`` of this bucket (the object, its sidecar); ETag."""
        extra = {"ContentType": content_type} if content_type is not None else {}
        response = self.s3(
            "put_object",
            key,
            Bucket=self.bucket,
            Key=key,
            Body=body,
            ChecksumSHA256=checksum,
            **extra,
        )
        return str(response.get("ETag", "")).strip('"')
