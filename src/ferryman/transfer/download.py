"""Resumable, verified downloads of S3 objects to local files: ``fm.transfer.download``.

The commit rule, mirrored from uploads: a range counts only once its bytes
are in the temporary file *and* its row committed in the store. A crash
loses at most the ranges in flight (``concurrency``); on resume every
confirmed range is re-read from the temporary file and its SHA-256 checked
(a range the disk lost is fetched again), the others are fetched.

The object is pinned: the first ``HeadObject`` gives its ETag (and version
id), recorded with the download, and every ranged GET carries
``If-Match: <etag>`` (and the ``VersionId``). An object replaced while the
download runs, or between a crash and the resume, answers 412 — the
download is recorded ``failed`` (``object_changed``), its temporary file
removed, and nothing of the new version is mixed with the old.

Verified before the rename: against S3's FULL_OBJECT CRC32 where the server
lists one (``upload``'s objects since 0.11), which the ranges' CRC32s,
computed as they arrive, give by combining, whatever the ranges; else S3's
COMPOSITE SHA-256 of the parts
where the server lists one (the ranges are cut on the object's own part
boundaries, so the ranges' SHA-256s, computed as they arrive, check it with
no second pass over the bytes); else against the whole file's SHA-256 from
``upload``'s sidecar (``<key>.meta.json``, when it describes this very
object) or from ``x-amz-meta-sha256``; else S3's full-object SHA-256; else
the size alone (``verified_by`` says which). Those whole-file digests take
one more pass over the file, except for an object of one range, whose
SHA-256, computed as it arrived, is the file's.
Only then is the temporary file, which lives beside DEST, fsynced and
renamed to DEST (its ranges were synced as they were recorded, so the
disk has been writing while the rest was fetched and this last sync is
short): DEST is either its old self or the complete object, also
after a power cut (``fsync=False`` skips that one sync: a kill still never
leaves a partial DEST, a power cut right after the rename may).

Threads: ``ferryman-download-<id>`` workers fetch ranges (``concurrency`` of
them); a crash of one stops the download with its error, the ranges already
confirmed are kept. ``ferryman-download-<id>-write`` writes what they fetch
into the temporary file (one writer: see
:class:`~ferryman.transfer.download_ranges.RangeWriter`); a write error
stops the download the same way. ``ferryman-download-<id>-confirm`` records
written ranges (:class:`~ferryman.transfer.download_ranges.Confirmations`).
One process writes a destination at a time: it holds an exclusive
``flock`` on the temporary file, which the kernel releases when the process
dies, so a SIGKILLed download is resumed at once.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from ferryman.errors import (
    ConfigurationError,
    DownloadFailed,
    S3Error,
    TransferConflict,
)
from ferryman.model import Download, DownloadPart, TransferStatus
from ferryman.store import DownloadOutcome, NewDownload, Store
from ferryman.transfer.crc32 import RunningCrc32, combined_b64, crc32_b64
from ferryman.transfer.download_ranges import (
    CHUNK,
    Confirmations,
    RangeWriter,
    b64_sha256,
    body_reader,
    file_sha256,
    fsync_directory,
    is_cut,
    release_connection,
)
from ferryman.transfer.progress import Progress, ProgressCounter
from ferryman.transfer.s3 import DEFAULT_PART_SIZE, MiB, Retrying, format_size, log

TEMP_SUFFIX = ".ferryman-download"
# Ranges cut on the object's own part boundaries (to check S3's composite
# checksum) only while parts are at most this big: memory stays bounded by
# the stream either way, but a range is also what a crash may lose.
MAX_ALIGNED_PART = 256 * MiB
_NO_OBJECT = frozenset({"404", "NoSuchKey", "NotFound"})
_CHANGED = frozenset({"PreconditionFailed", "412"})


@dataclass(frozen=True, slots=True, kw_only=True)
class _Object:
    """What HeadObject said: the version pinned and the checksums it offers."""

    size: int
    etag: str
    version_id: str | None
    checksum: str | None  # S3's ChecksumSHA256: full-object, or composite "b64-N"
    crc32: str | None  # S3's full-object ChecksumCRC32
    metadata_sha256: str | None  # x-amz-meta-sha256 (hex)
    parts_count: int | None
    first_part_size: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class _Plan:
    part_size: int
    expected: str | None  # "crc32:<b64>", "sha256:<hex>", "checksum:<b64>", "composite:<b64-N>"


def temp_path_for(dest: Path) -> Path:
    """The temporary file of a download to ``dest``: beside it, hidden."""
    return dest.with_name(f".{dest.name}{TEMP_SUFFIX}")


def resolve_dest(dest: str | os.PathLike[str], key: str) -> Path:
    """The file a download to ``dest`` writes: ``dest``, or the key's name inside a directory."""
    path = Path(dest).absolute()
    if path.is_dir():
        name = key.rsplit("/", 1)[-1]
        if name in ("", ".", ".."):
            raise ConfigurationError(f"object key {key!r} has no file name to write into {path}")
        path = path / name
    if not path.parent.is_dir():
        raise ConfigurationError(f"cannot download to {path}: {path.parent} is not a directory")
    return path


class Downloader:
    """One call of :func:`ferryman.transfer.download`."""

    def __init__(
        self,
        *,
        store: Store,
        s3: Retrying,
        bucket: str,
        key: str,
        dest: Path,
        concurrency: int,
        part_size: int | None,
        version_id: str | None,
        progress: Progress | None,
        fsync: bool = True,
    ) -> None:
        self.fsync = fsync
        self.store = store
        self.s3 = s3
        self.bucket = bucket
        self.key = key
        self.dest = dest
        self.temp = temp_path_for(dest)
        self.concurrency = concurrency
        self.part_size = part_size
        self.version_id = version_id
        self.counter = ProgressCounter(progress)
        self.log = logging.LoggerAdapter(
            log, {"object": f"s3://{bucket}/{key}", "destination": str(dest)}
        )

    # -- the whole download --------------------------------------------------

    def run(self) -> Download:
        with self._locked_temp() as fd:
            head = self._head()
            done = self.store.find_download(str(self.dest))
            if done is not None and self._already_there(done, head):
                self.counter.report(done.id, done.size, done.parts_done, done.size)
                return done
            if (
                done is not None
                and done.status is TransferStatus.ACTIVE
                and (done.bucket, done.key) == (self.bucket, self.key)
                and (done.etag, done.version_id) != (head.etag, head.version_id)
            ):
                self._object_changed(done, fd, f"its ETag is now {head.etag}")
            plan = self._plan(head)
            opened = self.store.open_download(
                NewDownload(
                    dest_path=str(self.dest),
                    temp_path=str(self.temp),
                    bucket=self.bucket,
                    key=self.key,
                    version_id=head.version_id,
                    etag=head.etag,
                    size=head.size,
                    part_size=plan.part_size,
                    expected=plan.expected,
                )
            )
            download = opened.download
            if opened.created:
                os.ftruncate(fd, 0)
            kept = self._check_confirmed(download, opened.parts, fd)
            if kept and not opened.created:
                self.log.info(
                    "resuming download %d: %s in %d ranges already here",
                    download.id,
                    format_size(sum(p.size for p in kept.values())),
                    len(kept),
                )
            os.ftruncate(fd, download.size)  # holes for the ranges still to come
            self.counter.resumed_bytes = sum(p.size for p in kept.values())
            self.counter.total = download.size
            self.counter.start(
                transfer_id=download.id,
                confirmed_bytes=self.counter.resumed_bytes,
                confirmed_parts=len(kept),
            )
            hashes = self._fetch_missing(download, kept, fd)
            if self.fsync:  # DEST is whole on disk once renamed, power cut or not
                os.fsync(fd)
            return self._verify_and_rename(download, hashes, fd)

    @contextlib.contextmanager
    def _locked_temp(self) -> Iterator[int]:
        fd = os.open(self.temp, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise TransferConflict(
                    f"another download is writing {self.dest} (it holds {self.temp}); "
                    "run again once it stops"
                ) from None
            yield fd
        finally:
            os.close(fd)

    def _already_there(self, done: Download, head: _Object) -> bool:
        """The same object version was downloaded to DEST and DEST still has its size."""
        if done.status is not TransferStatus.SUCCEEDED:
            return False
        if (done.bucket, done.key, done.etag, done.version_id) != (
            self.bucket,
            self.key,
            head.etag,
            head.version_id,
        ):
            return False
        try:
            return self.dest.stat().st_size == done.size
        except FileNotFoundError:
            return False

    # -- what the object is --------------------------------------------------

    def _head(self) -> _Object:
        version = {"VersionId": self.version_id} if self.version_id else {}
        try:
            head = self.s3(
                "head_object",
                self.key,
                Bucket=self.bucket,
                Key=self.key,
                ChecksumMode="ENABLED",
                **version,
            )
        except S3Error as exc:
            if exc.code in _NO_OBJECT:
                raise S3Error(f"no object s3://{self.bucket}/{self.key}", "NoSuchKey") from exc
            raise
        etag = str(head.get("ETag", "")).strip('"')
        parts_count = first_part = None
        if "-" in etag and int(head["ContentLength"]) > 0:
            first = self.s3(
                "head_object",
                self.key,
                Bucket=self.bucket,
                Key=self.key,
                PartNumber=1,
                IfMatch=f'"{etag}"',
                **version,
            )
            parts_count = int(first.get("PartsCount") or 0) or None
            first_part = int(first["ContentLength"])
        metadata = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
        # A CRC32 of a multipart object is the whole object's only if FULL_OBJECT.
        crc32 = head.get("ChecksumCRC32") if parts_count is None else None
        if head.get("ChecksumType") == "FULL_OBJECT":
            crc32 = head.get("ChecksumCRC32")
        return _Object(
            size=int(head["ContentLength"]),
            etag=etag,
            version_id=head.get("VersionId") or self.version_id,
            checksum=head.get("ChecksumSHA256"),
            crc32=crc32 or None,
            metadata_sha256=metadata.get("sha256"),
            parts_count=parts_count,
            first_part_size=first_part,
        )

    def _plan(self, head: _Object) -> _Plan:
        """The range size, and the checksum the bytes will be held to."""
        sidecar_sha = self._sidecar_sha256(head)
        whole = sidecar_sha or head.metadata_sha256
        aligned = self._aligned_part_size(head)
        if self.part_size is not None:
            part_size = self.part_size
        elif aligned is not None:
            part_size = aligned
        else:
            part_size = DEFAULT_PART_SIZE
        # S3's full-object CRC32 first, then its composite SHA-256: the ranges' own
        # checksums check it, so the bytes are read once; a whole-file digest
        # needs a second pass.
        if head.crc32:
            return _Plan(part_size=part_size, expected=f"crc32:{head.crc32}")
        if head.checksum and "-" in head.checksum and part_size == aligned:
            return _Plan(part_size=part_size, expected=f"composite:{head.checksum}")
        if whole:
            return _Plan(part_size=part_size, expected=f"sha256:{whole.lower()}")
        if head.checksum and "-" not in head.checksum and head.parts_count is None:
            # A single PUT's checksum is the whole object's; a multipart object's
            # checksum without "-N" is not (some servers list a part's there).
            return _Plan(part_size=part_size, expected=f"checksum:{head.checksum}")
        return _Plan(part_size=part_size, expected=None)

    def _aligned_part_size(self, head: _Object) -> int | None:
        """The object's part size, if its parts are all that size but the last."""
        size, first, count = head.size, head.first_part_size, head.parts_count
        if first is None or count is None or first <= 0 or first > MAX_ALIGNED_PART:
            return None
        last = size - (count - 1) * first
        return first if 0 < last <= first else None

    def _sidecar_sha256(self, head: _Object) -> str | None:
        """The file's SHA-256 from ``upload``'s sidecar, if it describes this object."""
        try:
            response = self.s3(
                "get_object",
                f"{self.key}.meta.json",
                Bucket=self.bucket,
                Key=f"{self.key}.meta.json",
            )
            document = json.loads(response["Body"].read())
        except S3Error as exc:
            if exc.code in _NO_OBJECT:
                return None
            raise
        except ValueError:
            self.log.warning("s3://%s/%s.meta.json is not JSON; ignored", self.bucket, self.key)
            return None
        if not isinstance(document, Mapping):
            return None
        if (
            str(document.get("etag", "")).strip('"') != head.etag
            or document.get("size") != head.size
        ):
            return None  # a sidecar of another version of the object
        sha = document.get("sha256")
        return sha if isinstance(sha, str) and len(sha) == 64 else None

    # -- resuming ------------------------------------------------------------

    def _ranges(self, download: Download) -> list[tuple[int, int, int]]:
        """``(part_number, start, size)`` of every range of the object."""
        size, step = download.size, download.part_size
        return [
            (number, start, min(step, size - start))
            for number, start in enumerate(range(0, size, step), start=1)
        ]

    def _check_confirmed(
        self, download: Download, parts: list[DownloadPart], fd: int
    ) -> dict[int, DownloadPart]:
        """Confirmed ranges whose bytes the temporary file still holds; forget the others."""
        kept: dict[int, DownloadPart] = {}
        lost: list[int] = []
        for part in parts:
            data = os.pread(fd, part.size, part.start)
            held = crc32_b64(data) if part.crc32 is not None else b64_sha256(data)
            if len(data) == part.size and held == (part.crc32 or part.sha256):
                kept[part.part_number] = part
            else:
                lost.append(part.part_number)
        if lost:
            self.log.warning(
                "download %d: %d confirmed ranges are not in %s any more; fetching them again",
                download.id,
                len(lost),
                self.temp,
            )
            self.store.forget_download_parts(download.id, lost)
        return kept

    # -- fetching ------------------------------------------------------------

    def _fetch_missing(
        self, download: Download, kept: dict[int, DownloadPart], fd: int
    ) -> dict[int, str]:
        """Fetch every range not in ``kept``; the base64 checksum of every range."""
        hashes = {number: part.crc32 or part.sha256 or "" for number, part in kept.items()}
        todo = [r for r in self._ranges(download) if r[0] not in kept]
        if not todo:
            return hashes
        stop = threading.Event()
        with (
            Confirmations(
                self.store, download.id, self.counter, sync_fd=fd if self.fsync else None
            ) as confirmations,
            # Inside: every range written is passed on before the last commit.
            RangeWriter(fd, download.id, confirmations.add) as writer,
            ThreadPoolExecutor(
                max_workers=min(self.concurrency, len(todo)),
                thread_name_prefix=f"ferryman-download-{download.id}",
            ) as pool,
        ):
            futures: list[Future[DownloadPart]] = [
                pool.submit(self._fetch, download, number, start, size, writer, stop)
                for number, start, size in todo
            ]
            finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in finished if f.exception() is not None), None)
            if failed is not None:
                stop.set()
                for future in futures:
                    future.cancel()
                error = failed.exception()
                assert error is not None
                if isinstance(error, S3Error) and error.code in _CHANGED:
                    pool.shutdown(wait=True)
                    self._object_changed(download, fd, "S3 refused its ETag (412)")
                raise error
        if writer.error is not None:  # a write (or a record) of the last ranges failed
            raise writer.error
        for future in futures:
            part = future.result()
            hashes[part.part_number] = part.crc32 or part.sha256 or ""
        return hashes

    def _fetch(
        self,
        download: Download,
        number: int,
        start: int,
        size: int,
        writer: RangeWriter,
        stop: threading.Event,
    ) -> DownloadPart:
        """One ranged GET, pinned to the version, streamed into the temporary file."""
        if stop.is_set():
            raise _Stopped()
        version = {"VersionId": download.version_id} if download.version_id else {}
        crc32 = (download.expected or "").startswith("crc32:")  # else SHA-256
        self.log.debug("fetching range %d (bytes %d-%d)", number, start, start + size - 1)
        for attempt in range(1, self.s3.attempts + 1):
            response = self.s3(
                "get_object",
                f"{download.id}:{number}",
                Bucket=download.bucket,
                Key=download.key,
                Range=f"bytes={start}-{start + size - 1}",
                IfMatch=f'"{download.etag}"',
                **version,
            )
            try:
                digest = self._stream(response["Body"], writer, start, size, crc32=crc32)
                break
            except _BodyCut as cut:
                if attempt == self.s3.attempts:
                    raise S3Error(
                        f"s3://{download.bucket}/{download.key}: range {start}-{start + size - 1} "
                        f"was cut short {attempt} times: {cut}",
                        "IncompleteBody",
                    ) from cut
                self.s3.sleep(self.s3.backoff.delay(attempt, f"get:{download.id}:{number}"))
        part = DownloadPart(
            part_number=number,
            start=start,
            size=size,
            sha256=None if crc32 else digest,
            crc32=digest if crc32 else None,
            confirmed_at=datetime.now(UTC),
        )
        # Recorded once its bytes are in the file (the writer passes it on after
        # them) and on disk (with ``fsync``; without it they are in the page
        # cache, which a killed process does not lose). The resume re-reads and
        # checks every confirmed range all the same, so a range a disk lost is
        # fetched again. This thread goes on to its next range meanwhile.
        writer.confirm(part)
        return part

    def _stream(self, body: Any, writer: RangeWriter, start: int, size: int, *, crc32: bool) -> str:
        hasher = hashlib.sha256() if not crc32 else RunningCrc32()
        offset, end = start, start + size
        read_into = body_reader(body)
        try:
            while offset < end:
                buffer = writer.buffer()
                count = read_into(memoryview(buffer)[: min(CHUNK, end - offset)])
                if not count:
                    raise _BodyCut(f"{end - offset} B missing at offset {offset}")
                hasher.update(memoryview(buffer)[:count])
                writer.write(offset, buffer, count)
                offset += count
            release_connection(body)
        except _BodyCut:
            raise
        except Exception as exc:  # urllib3/botocore errors of a connection cut mid-body
            if not is_cut(exc):
                raise
            raise _BodyCut(f"{type(exc).__name__}: {exc}") from exc
        finally:
            body.close()
        return base64.b64encode(hasher.digest()).decode()

    # -- finishing -----------------------------------------------------------

    def _verify_and_rename(self, download: Download, hashes: dict[int, str], fd: int) -> Download:
        expected = download.expected
        sha256: str | None = None
        verified_by = "size"
        mismatch: str | None = None
        if os.fstat(fd).st_size != download.size:
            mismatch = f"{self.temp} has {os.fstat(fd).st_size} B, the object {download.size} B"
        elif expected is not None:
            kind, _, value = expected.partition(":")
            if kind == "crc32":
                ranges = self._ranges(download)
                got = combined_b64((hashes[number], size) for number, _, size in ranges)
                verified_by = "crc32"
                if got != value:
                    mismatch = f"S3 full-object CRC32 {value}, the bytes give {got}"
            elif kind == "composite":
                digests = b"".join(base64.b64decode(hashes[n]) for n in sorted(hashes))
                composite = hashlib.sha256(digests).digest()
                got = f"{base64.b64encode(composite).decode()}-{len(hashes)}"
                verified_by = "composite"
                if got != value:
                    mismatch = f"S3 composite checksum {value}, the bytes give {got}"
            else:
                digest = self._whole_sha256(download, hashes, fd)
                sha256 = digest.hex()
                got = sha256 if kind == "sha256" else base64.b64encode(digest).decode()
                verified_by = kind
                if got != value:
                    mismatch = f"expected {kind} {value}, the bytes give {got}"
        if mismatch is not None:
            self._fail(download, "verify_failed", mismatch)
        os.replace(self.temp, self.dest)
        if self.fsync:
            fsync_directory(self.dest.parent)
        finished = self.store.finish_download(
            download.id,
            DownloadOutcome(
                status=TransferStatus.SUCCEEDED, sha256=sha256, verified_by=verified_by
            ),
        )
        self.log.info(
            "download %d: %s written to %s, verified by %s",
            download.id,
            format_size(download.size),
            self.dest,
            verified_by,
        )
        return finished

    def _whole_sha256(self, download: Download, hashes: dict[int, str], fd: int) -> bytes:
        """The temporary file's SHA-256: its one range's, or one more pass over its bytes."""
        if len(hashes) == 1 and 0 < download.size <= download.part_size:
            return base64.b64decode(hashes[1])  # the range is the whole file, hashed on arrival
        return file_sha256(fd, download.size)

    def _object_changed(self, download: Download, fd: int, detail: str) -> NoReturn:
        self._fail(
            download,
            "object_changed",
            f"s3://{download.bucket}/{download.key} changed since this download began "
            f"(it was ETag {download.etag}; {detail}); the {format_size(download.bytes_done)} "
            "fetched were discarded and nothing was written to "
            f"{self.dest}: run again to download the new version",
        )

    def _fail(self, download: Download, reason: str, detail: str) -> NoReturn:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temp)
        self.store.finish_download(
            download.id,
            DownloadOutcome(
                status=TransferStatus.FAILED, reason=reason, error=f"{reason}: {detail}"
            ),
        )
        self.log.error("download %d failed: %s: %s", download.id, reason, detail)
        raise DownloadFailed(download.id, reason, detail)


class _Stopped(Exception):
    """Another range failed: this one is not started."""


class _BodyCut(Exception):
    """The connection broke while a range's body was read: fetch the range again."""
