"""The JSON shapes of the API (they make ``/openapi.json`` a usable schema).

Each reads the store's record it shows directly (pydantic ``from_attributes``)
rather than copying it field by field; the few values shown otherwise than
stored are converted by a validator beside their field: a payload with the
keys its job marks ``sensitive`` replaced by ``***``, and text that cannot
be shown as it is (see :func:`~ferryman.store.records.displayable`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AliasPath,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from ferryman.model import (
    Evaluation,
    Run,
    RunEvent,
    SensorState,
    Transfer,
    TransferPart,
    redact,
)
from ferryman.sensors.engine import present_evaluation, present_state
from ferryman.store.read_model import ErrorGroup, MinuteCount, WorkerView
from ferryman.store.records import displayable
from ferryman.web.deps import MAX_ID

MAX_MESSAGE_ID = 1024 * 1024  # characters; the store takes ids of any length


class RecordOut(BaseModel):
    """A shape read from a record's attributes."""

    model_config = ConfigDict(from_attributes=True)


def _shown(value: Any) -> Any:
    return displayable(value)


class RunOut(RecordOut):
    id: int
    job: str
    run_key: str
    status: str
    attempt: int
    max_attempts: int
    payload: Any
    last_error: str | None
    lease_owner: str | None
    available_at: datetime  # when it is (or was) due: not_before, or a retry's backoff
    priority: int
    concurrency_key: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @field_validator("payload", mode="before")
    @classmethod
    def _redacted(cls, payload: Any, info: ValidationInfo) -> Any:
        sensitive = (info.context or {}).get("sensitive", frozenset())
        return displayable(redact(payload, sensitive))

    @classmethod
    def of(cls, run: Run, sensitive: frozenset[str]) -> RunOut:
        return cls.model_validate(run, context={"sensitive": sensitive})


class RunPage(BaseModel):
    items: list[RunOut]
    next_before: int | None = Field(description="pass as before_id for the next page")


class RunEventOut(RecordOut):
    id: int
    kind: str
    at: datetime
    attempt: int
    worker_id: str | None
    lease_token: int | None
    detail: dict[str, Any]

    shown_detail = field_validator("detail", mode="before")(_shown)

    @classmethod
    def of(cls, event: RunEvent) -> RunEventOut:
        return cls.model_validate(event)


class TransferOut(RecordOut):
    id: int
    uri: str
    source_path: str
    status: str
    follow: bool
    part_size: int
    bytes_confirmed: int
    parts_confirmed: int
    total_size: int | None
    source_size: int | None
    sha256: str | None
    checksum_algorithm: str  # of the parts: CRC32, or SHA256 (transfers before 0.11)
    checksum: str | None  # S3's full-object CRC32, or composite SHA-256
    etag: str | None
    verified_by: str | None
    reason: str | None
    error: str | None
    run_id: int | None
    resumes: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, transfer: Transfer) -> TransferOut:
        return cls.model_validate(transfer)


class TransferPartOut(RecordOut):
    part_number: int
    start: int
    size: int
    etag: str
    sha256: str | None  # parts sent with SHA-256 checksums (transfers before 0.11)
    crc32: str | None  # parts sent with CRC32 checksums
    adopted: bool
    confirmed_at: datetime

    @classmethod
    def of(cls, part: TransferPart) -> TransferPartOut:
        return cls.model_validate(part)


class TransferPage(BaseModel):
    items: list[TransferOut]
    next_before: int | None


class TransferDetailOut(BaseModel):
    transfer: TransferOut
    parts: list[TransferPartOut]


class RunDetailOut(BaseModel):
    run: RunOut
    events: list[RunEventOut]
    transfers: list[TransferOut]
    # ctx.submit: the run whose success requested this one, and the runs this one's requested
    parent_run_id: int | None = None
    child_run_ids: list[int] = []


class SensorOut(RecordOut):
    name: str
    kind: str
    cursor: str | None
    state_version: int
    status: str
    consecutive_failures: int
    next_evaluation_at: datetime | None
    last_evaluation_at: datetime | None

    shown_cursor = field_validator("cursor", mode="before")(_shown)

    @classmethod
    def of(cls, state: SensorState) -> SensorOut:
        return cls.model_validate(present_state(state))


class EvaluationOut(RecordOut):
    id: int
    sensor: str
    outcome: str
    cursor_before: str | None
    cursor_after: str | None
    state_version_before: int
    state_version_after: int | None
    runs_requested: int
    runs_deduplicated: int
    items_skipped: int
    run_ids: list[int]
    error: str | None
    evaluator: str | None
    started_at: datetime
    finished_at: datetime

    shown_cursors = field_validator("cursor_before", "cursor_after", mode="before")(_shown)

    @classmethod
    def of(cls, evaluation: Evaluation) -> EvaluationOut:
        return cls.model_validate(present_evaluation(evaluation))


class EvaluationPage(BaseModel):
    items: list[EvaluationOut]
    next_before: int | None


class JobCountsOut(BaseModel):
    job: str
    counts: dict[str, int]
    oldest_due_age_seconds: float | None


class MinuteOut(BaseModel):
    minute: datetime
    succeeded: int
    failed: int

    @classmethod
    def of(cls, count: MinuteCount) -> MinuteOut:
        from ferryman.store.records import to_datetime

        minute = to_datetime(count.minute)
        assert minute is not None
        return cls(minute=minute, succeeded=count.succeeded, failed=count.failed)


class SummaryOut(BaseModel):
    jobs: list[JobCountsOut]
    totals: dict[str, int]
    sensors: list[SensorOut]
    throughput: list[MinuteOut] = Field(description="runs finished per minute, last hour")
    live_workers: int
    active_transfers: int
    counts_as_of: datetime = Field(description="when jobs and totals were counted")


class ErrorGroupOut(RecordOut):
    job: str
    status: str
    error: str
    count: int
    newest_run_id: int
    run_ids: list[int]
    first_seen: datetime | None
    last_seen: datetime | None

    @classmethod
    def of(cls, group: ErrorGroup) -> ErrorGroupOut:
        return cls.model_validate(group)


def _worker(field: str) -> Any:
    return Field(validation_alias=AliasPath("worker", field))


class WorkerOut(RecordOut):
    """A worker (:class:`~ferryman.model.WorkerInfo`) and the runs it holds now."""

    id: str = _worker("id")
    host: str = _worker("host")
    pid: int = _worker("pid")
    alive: bool = _worker("alive")
    started_at: datetime = _worker("started_at")
    last_seen_at: datetime = _worker("last_seen_at")
    stopped_at: datetime | None = _worker("stopped_at")
    running: list[int] = Field(description="ids of the runs it holds now (the oldest 20)")
    holding: int = Field(description="how many runs it holds now (at least, if not exact)")
    holding_exact: bool = Field(
        description="False: more runs were running than the page reads, and "
        "`holding` counts this worker's among the oldest of them"
    )
    crashes: int = Field(
        validation_alias=AliasPath("worker", "crashes"),
        description="crashes of the process's background threads",
    )
    last_crash: str | None = Field(
        validation_alias=AliasPath("worker", "last_crash"),
        description="which thread crashed last, and why",
    )

    @field_validator("running", mode="before")
    @classmethod
    def _run_ids(cls, running: list[Run]) -> list[int]:
        return [run.id for run in running]

    @classmethod
    def of(cls, view: WorkerView) -> WorkerOut:
        return cls.model_validate(view)


# -- request bodies ------------------------------------------------------------


class CursorIn(BaseModel):
    cursor: str | None = Field(max_length=10_000)
    by: str | None = Field(default=None, max_length=200)


class RetryIn(BaseModel):
    run_ids: list[Annotated[int, Field(ge=1, le=MAX_ID)]] | None = Field(
        default=None, max_length=10_000
    )
    job: str | None = Field(default=None, max_length=200)
    status: str | None = Field(default=None, pattern="^(failed|dead)$")


class RunIn(BaseModel):
    """A run to enqueue: its job, run_key and payload, and any other field of
    :class:`~ferryman.RunRequest` by name (see :mod:`ferryman.run_requests`)."""

    model_config = ConfigDict(extra="allow")

    job: str = Field(min_length=1, max_length=200)
    # Any length submit() takes (keys are unique by digest), within the body limit.
    run_key: str = Field(min_length=1, max_length=MAX_MESSAGE_ID)
    payload: Any = None


class SubmittedOut(BaseModel):
    created: bool = Field(description="false: the run_key had a run already, returned as it is")
    run: RunOut


class RetryOut(BaseModel):
    retried: list[int]


class CancelOut(BaseModel):
    cancelled: bool
    run: RunOut


class MessageIn(BaseModel):
    # Any length ingest() takes (keys are unique by digest), within the body limit.
    message_id: str = Field(min_length=1, max_length=MAX_MESSAGE_ID)
    payload: Any = None


class ErrorOut(BaseModel):
    detail: str
