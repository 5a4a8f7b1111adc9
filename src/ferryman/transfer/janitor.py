"""Housekeeping for transfers: abort orphaned multipart uploads, resume active transfers.

An *orphaned* multipart upload is one under a given prefix, older than a
cut-off, whose upload id no active transfer in the store owns: left by a
crash between CreateMultipartUpload and its record, by a transfer deleted
from the store, or by another tool. Uploads an active transfer owns are
never touched — that transfer may still resume them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ferryman.errors import FerrymanError
from ferryman.model import Transfer, TransferStatus
from ferryman.store import Store
from ferryman.supervise import crashed, supervised
from ferryman.transfer.owners import owner_is_gone
from ferryman.transfer.s3 import Retrying, make_client, parse_s3_url

log = logging.getLogger("ferryman.transfer")


@dataclass(frozen=True, slots=True, kw_only=True)
class OrphanedUpload:
    """A multipart upload that ``gc`` aborted (or, in a dry run, would abort)."""

    bucket: str
    key: str
    upload_id: str
    initiated: datetime
    aborted: bool


def parse_prefix(url: str) -> tuple[str, str]:
    """``s3://bucket`` or ``s3://bucket/prefix`` → ``(bucket, prefix)``."""
    if url.startswith("s3://") and "/" not in url[5:].strip("/"):
        bucket = url[5:].strip("/")
        if bucket:
            return bucket, ""
    bucket, key = parse_s3_url(url if not url.endswith("/") else url + "x")
    return bucket, key[:-1] if url.endswith("/") else key


def gc_uploads(
    store: Store,
    prefixes: Sequence[str],
    *,
    older_than: timedelta,
    client: Any = None,
    dry_run: bool = False,
) -> list[OrphanedUpload]:
    """Abort multipart uploads under ``prefixes`` older than ``older_than`` that no
    active transfer owns; return them."""
    s3 = Retrying(client if client is not None else make_client(2))
    owned = store.active_upload_ids()
    cutoff = datetime.now(UTC) - older_than
    found: list[OrphanedUpload] = []
    for url in prefixes:
        bucket, prefix = parse_prefix(url)
        key_marker, id_marker = "", ""
        while True:
            page = s3(
                "list_multipart_uploads",
                prefix,
                Bucket=bucket,
                Prefix=prefix,
                KeyMarker=key_marker,
                UploadIdMarker=id_marker,
            )
            for upload in page.get("Uploads", []):
                initiated = upload["Initiated"]
                if upload["UploadId"] in owned or initiated > cutoff:
                    continue
                if not dry_run:
                    s3(
                        "abort_multipart_upload",
                        upload["Key"],
                        Bucket=bucket,
                        Key=upload["Key"],
                        UploadId=upload["UploadId"],
                    )
                    log.info(
                        "aborted orphaned upload %s of s3://%s/%s",
                        upload["UploadId"],
                        bucket,
                        upload["Key"],
                    )
                found.append(
                    OrphanedUpload(
                        bucket=bucket,
                        key=upload["Key"],
                        upload_id=upload["UploadId"],
                        initiated=initiated,
                        aborted=not dry_run,
                    )
                )
            if not page.get("IsTruncated"):
                break
            key_marker = page.get("NextKeyMarker", "")
            id_marker = page.get("NextUploadIdMarker", "")
            if not key_marker and not id_marker:
                break
    return found


def resumable(store: Store) -> list[Transfer]:
    """Active transfers outside any job whose owner is gone (dead process, expired lease)."""
    now = store.now()
    return [
        t
        for t in store.list_transfers(status=TransferStatus.ACTIVE, standalone=True)
        if owner_is_gone(t, now)
    ]


class TransferResumer:
    """Resumes, on a background thread, the standalone transfers a crash left active.

    Started by ``App.run()``; each transfer is resumed once, one at a time.
    A transfer that fails again stays recorded with its reason; the thread
    logs and moves on, so one bad file cannot stop the daemon.
    """

    def __init__(self, store: Store, *, upload: Callable[..., Transfer] | None = None) -> None:
        self.store = store
        self._upload = upload
        self._stop = threading.Event()
        # Not restarted after a crash: each transfer is resumed once per start.
        self._thread = supervised("ferryman-transfer-resumer", self._run, start=False)
        self.resumed: list[int] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        from ferryman.transfer import upload

        call = self._upload or upload
        try:
            pending = resumable(self.store)
        except FerrymanError:
            log.exception("listing transfers to resume failed")
            return
        for transfer in reversed(pending):  # oldest first
            if self._stop.is_set():
                return
            log.info("resuming transfer %d of %s", transfer.id, transfer.source_path)
            try:
                call(
                    transfer.source_path,
                    transfer.uri,
                    follow=transfer.follow,
                    store=self.store,
                )
                self.resumed.append(transfer.id)
            except FerrymanError as exc:
                log.error("resuming transfer %d failed: %s", transfer.id, exc)
            except Exception as exc:  # a fault of ferryman's: logged and counted; on to the next
                crashed(f"ferryman-transfer-resumer (transfer {transfer.id})", exc)
