"""Resumable, verified uploads of local files to S3: ``fm.transfer.upload``.

Guarantees (see docs/guarantees.md):

* **Nothing confirmed is sent twice.** A part counts once S3 returned its
  ETag and its row committed in the store; a crash loses at most the parts in
  flight (``concurrency``), and those S3 did receive are adopted on resume
  when their bytes match the file.
* **S3 is the truth on resume.** Stored parts are reconciled with
  ``ListParts``; the file is re-read and every confirmed part's SHA-256 is
  checked against it, so a file that changed behind a confirmed part fails
  the transfer (``source_changed``) instead of producing a mixed object.
* **Verified before success.** Each part carries ``ChecksumSHA256`` (servers
  that check reject damaged parts); after completion ``HeadObject`` must
  show the file's size and S3's composite SHA-256 of the parts (or, where a
  server lists none, the multipart ETag). The file's own SHA-256 is recorded
  and written to the optional JSON sidecar — only after verification.
* **Fenced.** One upload call holds a transfer at a time (inside a job, one
  attempt of its run): every write is fenced by the transfer's owner token
  and, inside a job, by the run's lease. Another call of the same object is
  refused until the holder is gone (returned, dead, or its lease expired),
  then takes the transfer over and resumes it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ferryman.errors import ConfigurationError
from ferryman.model import Backoff, Download, Transfer
from ferryman.store import DEFAULT_STORE, Store
from ferryman.transfer.download import Downloader, resolve_dest
from ferryman.transfer.progress import Progress, TransferProgress
from ferryman.transfer.s3 import (
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    Retrying,
    choose_part_size,
    make_client,
    parse_s3_url,
    parse_size,
)
from ferryman.transfer.upload import LEASE_SECONDS, OnChange, Options, Uploader

if TYPE_CHECKING:
    from ferryman.app import App
    from ferryman.worker.context import JobContext


__all__ = [
    "MAX_PARTS",
    "MAX_PART_SIZE",
    "MIN_PART_SIZE",
    "TransferProgress",
    "choose_part_size",
    "download",
    "parse_s3_url",
    "parse_size",
    "upload",
]


# Long by its documentation (every option, every error): the body is forty lines.
def upload(
    path: str | os.PathLike[str],
    url: str,
    *,
    part_size: int | None = None,
    concurrency: int = 4,
    follow: bool = False,
    stable_for: float = 10.0,
    done_file: str | os.PathLike[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    sidecar: bool | str = False,
    file_sha256: bool = True,
    on_change: OnChange = "fail",
    ctx: JobContext | None = None,
    store: str | sa.URL | Store | App | None = None,
    client: Any = None,
    retries: int = 10,
    backoff: Backoff | None = None,
    progress: Progress | None = None,
    poll_interval: float = 0.25,
    lease_seconds: float = LEASE_SECONDS,
) -> Transfer:
    """Upload the file at ``path`` to ``url`` (``s3://bucket/key``), resuming if it can.

    Call it again with the same ``path`` and ``url`` after a crash and it
    continues from the last confirmed part; call it for a file already
    uploaded (same size and mtime, object unchanged) and it returns at once.
    Returns the :class:`~ferryman.Transfer` as recorded, ``succeeded``.

    ``part_size`` defaults to 8 MiB, grown to fit S3's 10,000 parts
    (:func:`choose_part_size`); a resumed transfer keeps its part size.
    ``concurrency`` parts are in flight at once; memory stays near
    ``part_size * (concurrency + 1)``.

    ``follow=True`` uploads a growing file: full parts go as they appear, and
    the object is completed once the file has not changed for ``stable_for``
    seconds — or, with ``done_file``, once that file exists.

    ``metadata`` (JSON) and ``sidecar``: a JSON sidecar object (size,
    SHA-256, parts, source, times, the metadata) is written next to the
    object, at ``<key>.meta.json`` or the key given, after verification.

    ``file_sha256``: the SHA-256 of the whole file is computed as it is read
    and recorded (``Transfer.sha256``, the sidecar), so it can be compared
    with ``sha256sum``. It is one more pass over every byte (about 0.8 s of
    CPU per GiB here); ``False`` skips it where CPU is scarce. The object is
    verified either way, by its parts' CRC32s, checked by the server, and
    S3's full-object CRC32, which ferryman combines from them.
    A file of at most one part (not followed) goes up in one PutObject whose
    checksum is the file's SHA-256: that digest is then recorded either way.

    ``on_change="restart"`` uploads the file afresh when it changed behind a
    confirmed part; the default fails the transfer (``source_changed``).

    Inside a job pass ``ctx``: the transfer belongs to the run, its writes
    are fenced by the run's lease (:class:`~ferryman.LeaseLost` once lost)
    and a retried run resumes it. Alone, the state goes to ``store`` (a URL,
    :class:`~ferryman.App` or Store), else ``FERRYMAN_STORE``, else
    ``sqlite:///ferryman.db``. While another upload (another run, another
    process) holds the object, the call raises
    :class:`~ferryman.TransferConflict` and changes nothing; in a job that
    is an ordinary failure of the attempt, retried after the job's backoff.
    S3 settings come from the standard AWS environment
    (``AWS_ENDPOINT_URL``, profiles ...) unless ``client`` is given;
    transient S3 errors are retried ``retries`` times with a deterministic
    ``backoff``.

    Raises :class:`~ferryman.TransferFailed` (recorded ``failed``, upload
    aborted), :class:`~ferryman.S3Error` / :class:`~ferryman.S3Unavailable`
    (nothing lost: run again to resume), :class:`~ferryman.TransferConflict`
    (another upload holds the object: run again once it stops),
    :class:`~ferryman.ConfigurationError` for bad arguments or a missing file.
    """
    bucket, key = parse_s3_url(url)
    if concurrency < 1:
        raise ConfigurationError(f"concurrency must be at least 1, got {concurrency}")
    sidecar_key = f"{key}.meta.json" if sidecar is True else (sidecar or None)
    options = Options(
        part_size=part_size,
        concurrency=concurrency,
        follow=follow,
        stable_for=stable_for,
        done_file=None if done_file is None else Path(done_file),
        poll_interval=poll_interval,
        on_change=on_change,
        lease_seconds=lease_seconds,
        file_sha256=file_sha256,
    )
    s3 = _retrying(client, concurrency, retries, backoff)
    with _store(ctx, store) as opened:
        return Uploader(
            store=opened,
            s3=s3,
            path=Path(path).absolute(),
            bucket=bucket,
            key=key,
            options=options,
            metadata=metadata,
            sidecar_key=sidecar_key,
            run_lease=None if ctx is None else ctx.lease,
            run_id=None if ctx is None else ctx.run_id,
            progress=progress,
        ).run()


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    concurrency: int = 4,
    part_size: int | None = None,
    version_id: str | None = None,
    fsync: bool = True,
    store: str | sa.URL | Store | App | None = None,
    client: Any = None,
    retries: int = 10,
    backoff: Backoff | None = None,
    progress: Progress | None = None,
) -> Download:
    """Download ``url`` (``s3://bucket/key``) to ``dest``, resuming if it can.

    Ranged GETs, ``concurrency`` at once, each range checkpointed in the
    store once its bytes are in a temporary file beside ``dest``; call it
    again after a crash and only the missing ranges are fetched. The object
    is pinned by its ETag (``If-Match``) and version: an object that changed
    since the download began is refused (:class:`~ferryman.errors.DownloadFailed`,
    ``object_changed``), never mixed. The bytes are verified against the
    object's checksum when it has one (S3's full-object CRC32, combined from
    the ranges' CRC32s; S3's composite SHA-256; the SHA-256 ``upload``
    recorded in its sidecar or ``x-amz-meta-sha256``; S3's full-object
    SHA-256), and the temporary file is renamed to ``dest`` only then.
    ``dest`` may be a directory: the file is then named after the key.
    With ``fsync`` (the default) the ranges are synced to disk as they are
    recorded, and the file once more before the rename; ``fsync=False`` skips
    those syncs: a killed download never leaves a partial ``dest`` either
    way, but a power cut just after the rename may.

    ``part_size`` defaults to the object's own part size (so that S3's
    composite checksum can be checked range by range), else 8 MiB. The
    store is ``store``, else ``FERRYMAN_STORE``, else ``sqlite:///ferryman.db``;
    S3 settings come from the standard AWS environment unless ``client`` is
    given. Returns the :class:`~ferryman.Download`, ``succeeded``; a call
    for an object version already downloaded to ``dest`` returns at once.
    """
    bucket, key = parse_s3_url(url)
    if concurrency < 1:
        raise ConfigurationError(f"concurrency must be at least 1, got {concurrency}")
    if part_size is not None and part_size < 1:
        raise ConfigurationError(f"part size must be positive, got {part_size}")
    path = resolve_dest(dest, key)
    s3 = _retrying(client, concurrency, retries, backoff)
    with _store(None, store) as opened:
        return Downloader(
            store=opened,
            s3=s3,
            bucket=bucket,
            key=key,
            dest=path,
            concurrency=concurrency,
            part_size=part_size,
            version_id=version_id,
            progress=progress,
            fsync=fsync,
        ).run()


def _retrying(client: Any, concurrency: int, retries: int, backoff: Backoff | None) -> Retrying:
    """The S3 client (the given one, else one from the AWS environment), its calls retried."""
    if retries < 1:
        raise ConfigurationError(f"retries must be at least 1, got {retries}")
    return Retrying(
        client if client is not None else make_client(concurrency),
        attempts=retries,
        backoff=backoff or Backoff(base=0.2, factor=2.0, max=5.0),
    )


@contextmanager
def _store(ctx: JobContext | None, store: str | sa.URL | Store | App | None) -> Iterator[Store]:
    if ctx is not None:
        yield ctx.store  # the run's own store: fenced by its lease
        return
    if isinstance(store, Store):
        yield store
        return
    # Imported only here: the App imports this package's users, and importing
    # it (the worker, sensors, sources) costs a first call ~0.1 s of CPU.
    from ferryman.app import App

    if isinstance(store, App):
        yield store.store
    else:
        owned = Store(store or os.environ.get("FERRYMAN_STORE") or DEFAULT_STORE)
        try:
            yield owned
        finally:
            owned.close()
