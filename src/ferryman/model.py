"""Domain records and enums.

Records read from the store are frozen and keyword-only; they are built from
database rows in one place (:mod:`ferryman.store.records`).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ferryman.errors import ConfigurationError, PayloadError
from ferryman.settings import seconds


class RunStatus(enum.StrEnum):
    """Where a run is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the job rejected its input; never retried automatically
    DEAD = "dead"  # attempts exhausted
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in _FINAL_STATUSES


_FINAL_STATUSES = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.DEAD, RunStatus.CANCELLED}
)


class RunEventKind(enum.StrEnum):
    """One transition in a run's processing log."""

    REQUESTED = "requested"
    CLAIMED = "claimed"
    CHECKPOINTED = "checkpointed"
    SUCCEEDED = "succeeded"
    RETRY_SCHEDULED = "retry_scheduled"
    FAILED = "failed"
    DEAD = "dead"
    LEASE_EXPIRED = "lease_expired"
    RELEASED = "released"
    REQUEUED = "requeued"
    CANCELLED = "cancelled"
    SUBMITTED = "submitted"  # the run's success enqueued runs it asked for (ctx.submit)


class EvaluationOutcome(enum.StrEnum):
    """How a sensor evaluation ended."""

    OK = "ok"
    FAILED = "failed"
    CONFLICT = "conflict"  # another evaluator advanced the cursor first; nothing was written
    MANUAL = "manual"  # an operator set the cursor


class SensorKind(enum.StrEnum):
    """How a sensor gets its work: by polling on an interval, or pushed a message at a time."""

    POLL = "poll"
    PUSH = "push"


class SensorStatus(enum.StrEnum):
    """Whether a sensor is evaluated (``running``) or left alone (``paused``) until resumed."""

    RUNNING = "running"
    PAUSED = "paused"


@dataclass(frozen=True, slots=True)
class Backoff:
    """Deterministic exponential backoff.

    The delay before attempt ``n + 1`` is ``min(max, base * factor ** (n - 1))``
    spread by ``jitter`` (a fraction, ``0.1`` = ±10 %). The spread comes from a
    hash of a caller-supplied key and ``n``, not from a random draw, so the same
    run and attempt always wait the same time and many runs failing together do
    not retry in lockstep. Each field is a finite number (``base``, ``max`` >= 0,
    ``factor`` >= 1, ``0 <= jitter < 1``); anything else is a
    :class:`~ferryman.ConfigurationError` naming the field.
    """

    base: float = 1.0
    factor: float = 2.0
    max: float = 300.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        seconds("Backoff.base", self.base)
        seconds("Backoff.max", self.max)
        seconds("Backoff.factor", self.factor, minimum=1.0)
        seconds("Backoff.jitter", self.jitter)
        if self.jitter >= 1:
            raise ConfigurationError(f"Backoff.jitter must be below 1, got {self.jitter!r}")

    def delay(self, attempt: int, key: str) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        exponent = max(attempt - 1, 0)
        try:
            raw = min(self.max, self.base * self.factor**exponent)
        except OverflowError:  # factor ** exponent beyond a float: far past max
            raw = self.max
        if self.base == 0:
            raw = 0.0
        digest = hashlib.sha256(f"{key}\x00{attempt}".encode()).digest()
        spread = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
        return min(self.max, raw * (1.0 + self.jitter * (2.0 * spread - 1.0)))


DEFAULT_JOB_BACKOFF = Backoff(base=1.0, factor=2.0, max=300.0)
DEFAULT_SENSOR_BACKOFF = Backoff(base=30.0, factor=2.0, max=600.0)


@dataclass(frozen=True, slots=True)
class Rate:
    """At most ``count`` claims of a job per ``per`` seconds, across every worker and host.

    A token bucket kept in the store and refilled by the database's clock; a
    claim takes tokens in its own transaction. ``burst`` is the most the bucket
    holds (by default half a second's worth, at least one), so over any window
    of ``per`` seconds at most ``count + burst`` runs are claimed.
    """

    count: float
    per: float = 1.0
    burst: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.count, int | float) and self.count > 0):
            raise ConfigurationError(f"Rate.count must be a positive number, got {self.count!r}")
        seconds("Rate.per", self.per)
        if self.per <= 0:
            raise ConfigurationError(f"Rate.per must be a positive number, got {self.per!r}")
        if self.burst is not None and not (isinstance(self.burst, int) and self.burst >= 1):
            raise ConfigurationError(f"Rate.burst must be an int >= 1, got {self.burst!r}")

    @property
    def per_second(self) -> float:
        return self.count / self.per

    @property
    def capacity(self) -> float:
        """The most tokens the bucket holds: ``burst``, or half a second's worth."""
        if self.burst is not None:
            return float(self.burst)
        return float(max(1, min(self.count, round(self.per_second * 0.5))))


@dataclass(frozen=True, slots=True)
class RunRequest:
    """A request that ``job`` run once for ``run_key``.

    ``(job, run_key)`` is unique in the store: requesting the same key again
    returns the existing run instead of creating a second one, untouched (its
    priority and due time stay as first requested). ``payload`` must be
    JSON-serialisable.

    * ``priority``: higher is claimed first; ``None`` takes the job's
      (``@app.job(priority=)``, 0 by default).
    * ``not_before``: never claimed earlier. An aware ``datetime``, or a
      ``timedelta`` from now as the database's clock tells it.
    * ``concurrency_key``: runs of a job sharing a key run at most
      ``key_concurrency`` at a time (``@app.job``, 1 by default).
    """

    run_key: str
    payload: Any = None
    job: str | None = None  # set by sensors that route items to several jobs
    priority: int | None = field(default=None, kw_only=True)
    not_before: datetime | timedelta | None = field(default=None, kw_only=True)
    concurrency_key: str | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        if not isinstance(self.run_key, str) or not self.run_key:
            raise PayloadError(f"run_key must be a non-empty string, got {self.run_key!r}")
        if self.priority is not None and (
            isinstance(self.priority, bool) or not isinstance(self.priority, int)
        ):
            raise PayloadError(f"priority must be an int, got {self.priority!r}")
        if self.priority is not None and not -PRIORITY_BOUND <= self.priority <= PRIORITY_BOUND:
            raise PayloadError(
                f"priority must be between {-PRIORITY_BOUND} and {PRIORITY_BOUND}, "
                f"got {self.priority!r}"
            )
        when = self.not_before
        if isinstance(when, datetime) and (when.tzinfo is None or when.utcoffset() is None):
            raise PayloadError(
                f"not_before {when.isoformat()} of run_key {self.run_key!r} has no time zone: "
                "give an aware datetime (datetime.now(timezone.utc) + ...) or a timedelta"
            )
        if when is not None and not isinstance(when, datetime | timedelta):
            raise PayloadError(f"not_before must be an aware datetime or a timedelta, got {when!r}")
        key = self.concurrency_key
        if key is not None and (not isinstance(key, str) or not key):
            raise PayloadError(f"concurrency_key must be a non-empty string, got {key!r}")


# Priorities fit a 32-bit integer column on every store.
PRIORITY_BOUND = 1_000_000


@dataclass(frozen=True, slots=True)
class SensorResult:
    """What a poll sensor returns: the runs it wants and the cursor that stands for them.

    The runs and the cursor commit in one transaction; if the cursor is ``None``
    the stored cursor is kept.
    """

    run_requests: Sequence[RunRequest] = ()
    cursor: str | None = None
    skipped: int = 0  # items seen but routed to no job; recorded on the evaluation


@dataclass(frozen=True, slots=True)
class Message:
    """A message delivered to a push sensor."""

    message_id: str
    payload: Any = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SubmitResult:
    """Outcome of :meth:`ferryman.App.submit`.

    ``run_ids`` is in request order; a request whose ``(job, run_key)`` already
    existed maps to the existing run and counts as deduplicated.
    """

    run_ids: tuple[int, ...]
    created: int
    deduplicated: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    """One accepted run request and where it stands."""

    id: int
    job: str
    run_key: str
    status: RunStatus
    attempt: int
    max_attempts: int
    payload: Any
    last_error: str | None
    checkpoint: Any
    lease_owner: str | None
    lease_token: int
    lease_expires_at: datetime | None
    available_at: datetime  # when it is due: not_before, or after a retry's backoff
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    priority: int = 0
    concurrency_key: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunEvent:
    """One row of the processing log."""

    id: int
    run_id: int
    kind: RunEventKind
    at: datetime
    attempt: int
    worker_id: str | None
    lease_token: int | None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerInfo:
    """A worker process as it registered itself."""

    id: str
    host: str
    pid: int
    started_at: datetime
    last_seen_at: datetime
    stopped_at: datetime | None
    alive: bool
    crashes: int = 0  # crashes of the process's background threads since it started
    last_crash: str | None = None  # "thread: error" of the latest of them


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSummary:
    """Counts for one job, as shown by ``ferryman status``."""

    job: str
    counts: dict[RunStatus, int]
    oldest_due_age: float | None  # seconds the oldest due, queued run has waited
    registered: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class SensorState:
    """The durable state of one sensor."""

    name: str
    kind: SensorKind
    cursor: str | None
    state_version: int
    status: SensorStatus
    consecutive_failures: int
    next_evaluation_at: datetime | None
    last_evaluation_at: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Evaluation:
    """One evaluation of a sensor, as kept in its history."""

    id: int
    sensor: str
    idempotency_key: str | None
    outcome: EvaluationOutcome
    cursor_before: str | None
    cursor_after: str | None
    state_version_before: int
    state_version_after: int | None
    runs_requested: int
    runs_deduplicated: int
    items_skipped: int
    error: str | None
    started_at: datetime
    finished_at: datetime
    run_ids: tuple[int, ...] = ()
    evaluator: str | None = None  # who evaluated: a daemon's host:pid, or who set the cursor
    message_id: str | None = None  # the message a push evaluation was for


class TransferStatus(enum.StrEnum):
    """Where a transfer (a resumable upload to S3) is in its life."""

    ACTIVE = "active"  # parts are being sent, or it waits to be resumed
    SUCCEEDED = "succeeded"  # object completed and verified (and its sidecar written)
    FAILED = "failed"  # see ``reason``; its multipart upload was aborted


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferPart:
    """One confirmed part: S3 returned its ETag and this row committed.

    ``crc32`` is the base64 CRC32 of the part's bytes, as sent in
    ``ChecksumCRC32`` (a transfer with ``checksum_algorithm`` ``CRC32``);
    ``sha256`` the base64 SHA-256, as sent in ``ChecksumSHA256`` (a transfer
    made before, or a file put whole); ``adopted`` marks a part found on S3 after a crash
    (sent, but its row never committed) whose bytes matched the file.
    """

    part_number: int
    start: int
    size: int
    etag: str
    sha256: str | None
    adopted: bool
    confirmed_at: datetime
    crc32: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Transfer:
    """A resumable upload of a local file to an S3 object, as the store records it.

    ``bytes_confirmed`` counts only parts S3 acknowledged *and* whose rows
    committed. Its parts carry ``checksum_algorithm``'s checksums (``CRC32``,
    or ``SHA256`` for transfers made before 0.11). ``sha256`` (hex, of the
    whole object), ``checksum`` (S3's full-object CRC32, or its composite
    SHA-256 of the parts, ``base64-N``) and ``etag`` are set once
    the object is completed and verified; ``verified_by`` says how
    (``checksum``, ``etag`` or ``size``). A failed transfer has a ``reason``:
    ``source_missing``, ``source_changed``, ``too_large``, ``verify_failed``
    or ``aborted``.
    """

    id: int
    source_path: str
    bucket: str
    key: str
    status: TransferStatus
    follow: bool
    part_size: int
    upload_id: str | None
    source_size: int | None
    source_mtime: float | None
    bytes_confirmed: int
    parts_confirmed: int
    total_size: int | None
    sha256: str | None
    checksum: str | None
    etag: str | None
    verified_by: str | None
    reason: str | None
    error: str | None
    user_metadata: Any
    sidecar_key: str | None
    run_id: int | None
    owner: str | None
    owner_token: int
    lease_expires_at: datetime | None
    resumes: int
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    checksum_algorithm: str = "SHA256"

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def chain_links(events: Sequence[RunEvent]) -> tuple[int | None, list[int]]:
    """From a run's processing log: the run whose success requested it (``ctx.submit``),
    and the runs its own success requested."""
    parent = None
    children: list[int] = []
    for event in events:
        if event.kind is RunEventKind.REQUESTED and "parent_run_id" in event.detail:
            parent = int(event.detail["parent_run_id"])
        elif event.kind is RunEventKind.SUBMITTED:
            children.extend(int(run_id) for run_id in event.detail.get("run_ids", ()))
    return parent, children


REDACTED = "***"


def redact(value: Any, sensitive: frozenset[str] | set[str]) -> Any:
    """``value`` with every mapping key in ``sensitive`` (at any depth) shown as ``***``."""
    if not sensitive:
        return value
    if isinstance(value, dict):
        return {
            key: REDACTED if key in sensitive else redact(item, sensitive)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(item, sensitive) for item in value]
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class DownloadPart:
    """One range of a download whose bytes are in the temporary file, its row committed.

    ``crc32`` (a download checked by the object's full-object CRC32) or
    ``sha256`` (any other) is the base64 checksum of the range's bytes,
    checked against the temporary file when the download resumes.
    """

    part_number: int
    start: int
    size: int
    sha256: str | None
    confirmed_at: datetime
    crc32: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Download:
    """A resumable download of an S3 object to a local path, as the store records it.

    The object is pinned by ``etag`` (and ``version_id`` where the bucket
    keeps versions): every ranged GET asks for exactly that version, so a
    changed object fails the download (``reason`` ``object_changed``) rather
    than mixing two versions. ``expected`` is the checksum the bytes were
    checked against, ``verified_by`` says which (``sha256``, ``checksum``,
    ``composite`` or ``size``). ``status`` is ``active``, ``succeeded`` (the
    file is at ``dest_path``) or ``failed`` (``reason``: ``object_changed``,
    ``verify_failed``).
    """

    id: int
    dest_path: str
    temp_path: str
    bucket: str
    key: str
    version_id: str | None
    etag: str
    size: int
    part_size: int
    status: TransferStatus
    bytes_done: int
    parts_done: int
    expected: str | None
    sha256: str | None
    verified_by: str | None
    reason: str | None
    error: str | None
    resumes: int
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"
