"""``ferryman sync``: a folder kept uploaded to an S3 prefix, built from ferryman's own parts.

No second uploader: a sync is an :class:`~ferryman.App` with one folder
sensor (:func:`ferryman.sensors.folder`: one run per file version, keyed
``relpath@mtime_ns:size``, committed with the sensor's cursor) and one job
that calls :func:`ferryman.transfer.upload` with the run's context (parts
checkpointed, fenced by the run's lease, the sidecar written once the object
is verified). Every promise of those parts holds here: a file version is
requested once, its upload resumes from its confirmed parts after a kill,
and it succeeds only verified.

Without ``--watch`` (:func:`sync_once`) the process evaluates the sensor,
works until no run is due, and repeats while files are still being written
(or runs of a killed earlier sync wait for their lease to expire); then it
returns what happened. With ``--watch`` the same App runs as the daemon.

The sensor and the job are named after the folder and the target
(``sync_<folder>_<digest>``), so that several syncs share one store without
sharing runs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferryman.app import App
from ferryman.errors import ConfigurationError, Reject, S3Error, S3Unavailable, TransferFailed
from ferryman.model import Backoff, EvaluationOutcome, Run, RunStatus, Transfer
from ferryman.sensors.builtin.folder import FolderSensor, folder
from ferryman.transfer.progress import TransferProgress
from ferryman.transfer.s3 import make_client
from ferryman.worker.context import JobContext

log = logging.getLogger("ferryman.sync")

_TARGET = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.\-_]{1,254})(?:/(?P<prefix>.*))?$")
# Reasons a file version is reported and left alone rather than failed:
# it is gone, or a newer version of it has its own run.
SOURCE_REASONS = frozenset({"source_missing", "source_changed"})
UNFINISHED = (RunStatus.QUEUED, RunStatus.RUNNING)
FAILED = (RunStatus.FAILED, RunStatus.DEAD)
# A kill costs the runs it held an attempt each (taken up again after their
# lease): attempts are many, and what no retry can fix is rejected at once.
MAX_ATTEMPTS = 25


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncTarget:
    """What a sync copies where, and which files it takes."""

    root: Path
    bucket: str
    prefix: str  # "" or ending in "/"
    stable_for: float = 5.0
    done_suffix: str | None = None
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    part_concurrency: int = 4

    @classmethod
    def parse(
        cls,
        root: str | os.PathLike[str],
        url: str,
        **options: Any,
    ) -> SyncTarget:
        """``s3://bucket`` or ``s3://bucket/prefix`` for the folder ``root``."""
        match = _TARGET.match(url)
        if match is None:
            raise ConfigurationError(
                f"bad S3 URL {url!r}: expected s3://bucket or s3://bucket/prefix"
            )
        path = Path(root).absolute()
        if not path.is_dir():
            raise ConfigurationError(f"{path} is not a directory")
        prefix = (match["prefix"] or "").strip("/")
        return cls(
            root=path,
            bucket=match["bucket"],
            prefix=f"{prefix}/" if prefix else "",
            **options,
        )

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def name(self) -> str:
        """The sensor's and the job's name: the folder's, and a digest of folder and target."""
        digest = hashlib.sha256(f"{self.root}\0{self.bucket}\0{self.prefix}".encode()).hexdigest()
        slug = re.sub(r"\W+", "_", self.root.name).strip("_")[:40] or "root"
        return f"sync_{slug}_{digest[:10]}"

    def key_for(self, relpath: str) -> str:
        return f"{self.prefix}{relpath}"

    def sensor(self) -> FolderSensor:
        return folder(
            self.root,
            self.include,
            exclude=self.exclude,
            done_suffix=self.done_suffix,
            recursive=True,
            stable_for=self.stable_for,
            name=self.name,
        )


@dataclass(frozen=True, slots=True)
class FileProblem:
    relpath: str
    reason: str
    detail: str


@dataclass(slots=True)
class SyncTally:
    """What this process's sync did, counted by the job as it runs (thread-safe)."""

    uploaded: int = 0
    uploaded_bytes: int = 0
    already: int = 0
    problems: list[FileProblem] = field(default_factory=list)
    current: dict[str, tuple[int, int]] = field(default_factory=dict)  # relpath: (done, size)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def started(self, relpath: str, size: int) -> None:
        with self._lock:
            self.current[relpath] = (0, size)

    def progressed(self, relpath: str, update: TransferProgress) -> None:
        with self._lock:
            if relpath in self.current:
                size = update.total if update.total is not None else self.current[relpath][1]
                self.current[relpath] = (update.bytes_confirmed, size)

    def finished(self, relpath: str, transfer: Transfer, *, fresh: bool) -> None:
        with self._lock:
            self.current.pop(relpath, None)
            if fresh:
                self.uploaded += 1
                self.uploaded_bytes += transfer.total_size or 0
            else:
                self.already += 1

    def failed(self, relpath: str, reason: str, detail: str) -> None:
        with self._lock:
            self.current.pop(relpath, None)
            self.problems.append(FileProblem(relpath, reason, detail))

    def snapshot(self) -> tuple[int, int, dict[str, tuple[int, int]]]:
        """Files and bytes done, and the files being uploaded now."""
        with self._lock:
            return self.uploaded + self.already, self.uploaded_bytes, dict(self.current)


@dataclass(frozen=True, slots=True)
class Sync:
    """One sync's App, with its sensor (whose last report says what waits) and its tally."""

    app: App
    sensor: FolderSensor
    target: SyncTarget
    tally: SyncTally


def sync_app(target: SyncTarget, store: str, *, lease_seconds: float, interval: float) -> Sync:
    """The App of one sync: the folder sensor and the upload job, named after the target."""
    app = App(store, lease_seconds=lease_seconds)
    tally = SyncTally()
    name = target.name
    # One client for every file (boto3 clients are thread-safe): making one
    # per upload costs more CPU than uploading a small file.
    client = _SharedClient(target.part_concurrency * 8)

    @app.job(name=name, max_attempts=MAX_ATTEMPTS, backoff=Backoff(base=1.0, factor=2.0, max=30.0))
    def upload_file(ctx: JobContext, found: dict[str, Any]) -> None:
        upload_found(ctx, found, target, tally, client=client.get())

    sensor = target.sensor()
    app.poll_sensor(job=name, interval=interval, name=name)(sensor)
    return Sync(app, sensor, target, tally)


class _SharedClient:
    def __init__(self, connections: int) -> None:
        self.connections = connections
        self._lock = threading.Lock()
        self._client: Any = None

    def get(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = make_client(self.connections)
            return self._client


def upload_found(
    ctx: JobContext,
    found: dict[str, Any],
    target: SyncTarget,
    tally: SyncTally,
    *,
    client: Any = None,
) -> None:
    """Upload the file version the sensor found; a vanished or changed file is reported."""
    from ferryman.transfer import upload  # the package imports this module's users

    relpath = str(found["relpath"])
    try:
        relpath.encode()
    except UnicodeEncodeError:
        tally.failed(relpath, "bad_name", "the file name is not UTF-8; S3 keys are")
        raise Reject(f"bad_name: {relpath!r} is not UTF-8 and cannot be an S3 key") from None
    started = time.time()
    tally.started(relpath, int(found.get("size", 0)))
    try:
        transfer = upload(
            found["path"],
            f"s3://{target.bucket}/{target.key_for(relpath)}",
            ctx=ctx,
            concurrency=target.part_concurrency,
            client=client,
            sidecar=True,
            metadata={
                "source_path": found["path"],
                "relpath": relpath,
                "size": found.get("size"),
                "mtime_ns": found.get("mtime_ns"),
            },
            progress=lambda update: tally.progressed(relpath, update),
        )
    except TransferFailed as exc:
        if exc.reason not in SOURCE_REASONS:
            tally.failed(relpath, exc.reason, exc.detail)
            raise
        tally.failed(relpath, exc.reason, exc.detail)
        raise Reject(f"{exc.reason}: {exc.detail}") from None
    except ConfigurationError as exc:
        if os.path.exists(found["path"]):
            raise
        tally.failed(relpath, "source_missing", str(exc))
        raise Reject(f"source_missing: {exc}") from None
    except S3Unavailable:
        raise  # retried after the job's backoff
    except S3Error as exc:  # refused (access denied, no such bucket): no retry helps
        tally.failed(relpath, exc.code or "s3_refused", str(exc))
        raise Reject(f"s3_refused: {exc}") from None
    fresh = transfer.finished_at is None or transfer.finished_at.timestamp() >= started
    tally.finished(relpath, transfer, fresh=fresh)


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncResult:
    """What a one-shot sync did: counted by this process, and what the store says is left."""

    uploaded: int
    uploaded_bytes: int
    already: int
    waiting: int  # files not ready when it stopped (no done marker yet)
    problems: list[FileProblem]

    @property
    def failures(self) -> list[FileProblem]:
        """Problems that make the sync fail: not a file gone or replaced by a newer version."""
        return [p for p in self.problems if p.reason not in SOURCE_REASONS]


def sync_once(
    sync: Sync,
    *,
    concurrency: int,
    poll_interval: float = 0.5,
    stop: threading.Event | None = None,
) -> SyncResult:
    """Upload every file there is, waiting for files still being written, then return.

    Files that wait for a done marker are left (counted in ``waiting``): a
    one-shot sync does not wait for a writer that may never finish. ``stop``
    (set by a signal handler) ends it after the runs in hand are released.
    """
    app, sensor, target, tally = sync.app, sync.sensor, sync.target, sync.tally
    name = target.name
    stop = stop or threading.Event()
    again = [run.id for run in not_uploaded(app, name)]
    if again:
        log.info("trying again %d files an earlier sync could not upload", len(again))
        app.retry(again, by="sync")
    while not stop.is_set():
        for evaluation in app.tick([name], force=True):
            if evaluation.outcome is EvaluationOutcome.FAILED:
                # The folder cannot be listed (gone, unreadable): no point going on.
                error = (evaluation.error or "").strip().rpartition("\n")[2]
                raise ConfigurationError(f"listing {target.root} failed: {error}")
        report = sensor.last_report
        # Without handlers of its own the worker stops on KeyboardInterrupt,
        # which the command's SIGINT and SIGTERM handlers raise.
        # No prefetch: a kill leaves only the runs in work waiting for their lease.
        app.work(
            until_idle=True,
            concurrency=concurrency,
            prefetch=0,
            jobs=[name],
            handle_signals=False,
        )
        unfinished = _unfinished(app, name)
        waiting = report.waiting if report is not None else 0
        if unfinished == 0 and (waiting == 0 or target.done_suffix is not None):
            if report is None or report.new == 0:
                break
            continue  # what the last evaluation found is done: look once more
        stop.wait(poll_interval)
    problems = list(tally.problems)
    seen = {p.relpath for p in problems}
    for run in not_uploaded(app, name):
        relpath = str(run.payload["relpath"])
        if relpath not in seen:  # failed in an earlier sync, or its attempts ran out
            detail = (run.last_error or "").strip().rpartition("\n")[2]
            problems.append(FileProblem(relpath, run.status.value, detail))
    return SyncResult(
        uploaded=tally.uploaded,
        uploaded_bytes=tally.uploaded_bytes,
        already=tally.already,
        waiting=sensor.last_report.waiting if sensor.last_report is not None else 0,
        problems=problems,
    )


def not_uploaded(app: App, job: str) -> list[Run]:
    """Failed or dead runs whose file version is still the file's, other than source problems.

    A file that has changed since has a newer run; one that is gone needs
    nothing. What is left is a file in the folder that S3 lacks.
    """
    found = []
    for status in FAILED:
        for run in app.get_runs(job=job, status=status):
            payload = run.payload if isinstance(run.payload, dict) else {}
            error = run.last_error or ""
            if any(f"{reason}:" in error for reason in SOURCE_REASONS):
                continue
            try:
                st = os.stat(payload["path"])
            except (KeyError, OSError):
                continue
            if (st.st_size, st.st_mtime_ns) == (payload.get("size"), payload.get("mtime_ns")):
                found.append(run)
    return found


def _unfinished(app: App, job: str) -> int:
    for summary in app.status():
        if summary.job == job:
            return sum(summary.counts.get(status, 0) for status in UNFINISHED)
    return 0


def planned(sync: Sync) -> tuple[list[dict[str, Any]], int]:
    """What the sensor would request now (``--dry-run``), and how many files wait; no write."""
    from datetime import UTC, datetime

    from ferryman.sensors.context import SensorContext

    target = sync.target
    state = sync.app.store.get_sensor_state(target.name)
    sensor = target.sensor()
    result = sensor(
        SensorContext(sensor=target.name, evaluation_started_at=datetime.now(UTC)),
        None if state is None else state.cursor,
    )
    found = [dict(request.payload) for request in result.run_requests]
    for item in found:
        item["key"] = target.key_for(str(item["relpath"]))
    waiting = sensor.last_report.waiting if sensor.last_report is not None else 0
    return found, waiting


__all__: Sequence[str] = (
    "FileProblem",
    "Sync",
    "SyncResult",
    "SyncTally",
    "SyncTarget",
    "planned",
    "sync_app",
    "sync_once",
)
