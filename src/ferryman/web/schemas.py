"""The JSON shapes of the API (they make ``/openapi.json`` a usable schema).

Built from the store's records in one place each; a payload is shown with the
keys its job marks ``sensitive`` replaced by ``***``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field

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


class RunOut(BaseModel):
    id: int
    job: str
    run_key: str
    status: str
    attempt: int
    max_attempts: int
    payload: Any
    last_error: str | None
    lease_owner: str | None
    available_at: datetime
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, run: Run, sensitive: frozenset[str]) -> RunOut:
        return cls(
            id=run.id,
            job=run.job,
            run_key=run.run_key,
            status=run.status.value,
            attempt=run.attempt,
            max_attempts=run.max_attempts,
            payload=displayable(redact(run.payload, sensitive)),
            last_error=run.last_error,
            lease_owner=run.lease_owner,
            available_at=run.available_at,
            created_at=run.created_at,
            updated_at=run.updated_at,
            started_at=run.started_at,
            finished_at=run.finished_at,
        )


class RunPage(BaseModel):
    items: list[RunOut]
    next_before: int | None = Field(description="pass as before_id for the next page")


class RunEventOut(BaseModel):
    id: int
    kind: str
    at: datetime
    attempt: int
    worker_id: str | None
    lease_token: int | None
    detail: dict[str, Any]

    @classmethod
    def of(cls, event: RunEvent) -> RunEventOut:
        return cls(
            id=event.id,
            kind=event.kind.value,
            at=event.at,
            attempt=event.attempt,
            worker_id=event.worker_id,
            lease_token=event.lease_token,
            detail=displayable(event.detail),
        )


class TransferOut(BaseModel):
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
        return cls(
            id=transfer.id,
            uri=transfer.uri,
            source_path=transfer.source_path,
            status=transfer.status.value,
            follow=transfer.follow,
            part_size=transfer.part_size,
            bytes_confirmed=transfer.bytes_confirmed,
            parts_confirmed=transfer.parts_confirmed,
            total_size=transfer.total_size,
            source_size=transfer.source_size,
            sha256=transfer.sha256,
            etag=transfer.etag,
            verified_by=transfer.verified_by,
            reason=transfer.reason,
            error=transfer.error,
            run_id=transfer.run_id,
            resumes=transfer.resumes,
            created_at=transfer.created_at,
            updated_at=transfer.updated_at,
        )


class TransferPartOut(BaseModel):
    part_number: int
    start: int
    size: int
    etag: str
    sha256: str
    adopted: bool
    confirmed_at: datetime

    @classmethod
    def of(cls, part: TransferPart) -> TransferPartOut:
        return cls(
            part_number=part.part_number,
            start=part.start,
            size=part.size,
            etag=part.etag,
            sha256=part.sha256,
            adopted=part.adopted,
            confirmed_at=part.confirmed_at,
        )


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


class SensorOut(BaseModel):
    name: str
    kind: str
    cursor: str | None
    state_version: int
    status: str
    consecutive_failures: int
    next_evaluation_at: datetime | None
    last_evaluation_at: datetime | None

    @classmethod
    def of(cls, state: SensorState) -> SensorOut:
        state = present_state(state)
        return cls(
            name=state.name,
            kind=state.kind,
            cursor=displayable(state.cursor),
            state_version=state.state_version,
            status=state.status,
            consecutive_failures=state.consecutive_failures,
            next_evaluation_at=state.next_evaluation_at,
            last_evaluation_at=state.last_evaluation_at,
        )


class EvaluationOut(BaseModel):
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

    @classmethod
    def of(cls, evaluation: Evaluation) -> EvaluationOut:
        evaluation = present_evaluation(evaluation)
        return cls(
            id=evaluation.id,
            sensor=evaluation.sensor,
            outcome=evaluation.outcome.value,
            cursor_before=displayable(evaluation.cursor_before),
            cursor_after=displayable(evaluation.cursor_after),
            state_version_before=evaluation.state_version_before,
            state_version_after=evaluation.state_version_after,
            runs_requested=evaluation.runs_requested,
            runs_deduplicated=evaluation.runs_deduplicated,
            items_skipped=evaluation.items_skipped,
            run_ids=list(evaluation.run_ids),
            error=evaluation.error,
            evaluator=evaluation.evaluator,
            started_at=evaluation.started_at,
            finished_at=evaluation.finished_at,
        )


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


class ErrorGroupOut(BaseModel):
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
        return cls(
            job=group.job,
            status=group.status.value,
            error=group.error,
            count=group.count,
            newest_run_id=group.newest_run_id,
            run_ids=group.run_ids,
            first_seen=group.first_seen,
            last_seen=group.last_seen,
        )


class WorkerOut(BaseModel):
    id: str
    host: str
    pid: int
    alive: bool
    started_at: datetime
    last_seen_at: datetime
    stopped_at: datetime | None
    running: list[int] = Field(description="ids of the runs it holds now (the oldest 20)")
    holding: int = Field(description="how many runs it holds now")

    @classmethod
    def of(cls, view: WorkerView) -> WorkerOut:
        worker = view.worker
        return cls(
            id=worker.id,
            host=worker.host,
            pid=worker.pid,
            alive=worker.alive,
            started_at=worker.started_at,
            last_seen_at=worker.last_seen_at,
            stopped_at=worker.stopped_at,
            running=[run.id for run in view.running],
            holding=view.holding,
        )


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
