"""The JSON API, mounted at ``/api``.

Reads are open (the server binds to loopback unless told otherwise);
every request that changes state needs the bearer token. Reads are the
store's read model (:mod:`ferryman.store.read_model`); writes go through
the :class:`~ferryman.App`, the same calls the CLI makes, so the API can do
nothing the CLI could not.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response, status

from ferryman.app import App
from ferryman.errors import PayloadError
from ferryman.model import EvaluationOutcome, RunStatus, TransferStatus, chain_links
from ferryman.run_requests import run_request
from ferryman.store.read_model import MAX_PAGE
from ferryman.web.deps import AppDep, BeforeId, RecordId, RunCountsDep, require_token
from ferryman.web.schemas import (
    CancelOut,
    CursorIn,
    ErrorGroupOut,
    ErrorOut,
    EvaluationOut,
    EvaluationPage,
    JobCountsOut,
    MessageIn,
    MinuteOut,
    RetryIn,
    RetryOut,
    RunDetailOut,
    RunEventOut,
    RunIn,
    RunOut,
    RunPage,
    SensorOut,
    SubmittedOut,
    SummaryOut,
    TransferDetailOut,
    TransferOut,
    TransferPage,
    TransferPartOut,
    WorkerOut,
)

ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorOut, "description": "the request cannot be carried out"},
    404: {"model": ErrorOut, "description": "no such sensor, run or transfer"},
    503: {"model": ErrorOut, "description": "the store cannot be reached"},
}
GUARDED: dict[int | str, dict[str, object]] = {
    **ERRORS,
    401: {"model": ErrorOut, "description": "no bearer token"},
    403: {"model": ErrorOut, "description": "wrong token, or the server is read-only"},
}

router = APIRouter(responses=ERRORS)
Token = Depends(require_token)

Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]
MAX_RUN_KEY = 8192  # characters in a query string; a POST body takes keys of any length
SensorName = Annotated[str, Path(min_length=1, max_length=200)]


def sensitive_fields(app: App) -> dict[str, frozenset[str]]:
    """Payload keys each job hides (see ``App.job(sensitive=...)``)."""
    return {name: job.sensitive for name, job in app.jobs.items()}


def epoch_seconds(moment: datetime | None) -> float | None:
    """Seconds since the epoch; a time without an offset is UTC, as on the pages.

    (``datetime.timestamp()`` would read a naive time as the server's local
    time, so the same query would mean different runs on different hosts.)
    """
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _not_found(what: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"{what} not found")


# -- reads ---------------------------------------------------------------------
# (POST /runs/retry comes before /runs/{run_id}: routes match in order, and
# "retry" would otherwise be taken for a run id.)


@router.get("/summary", response_model=SummaryOut, tags=["summary"])
def summary(app: AppDep, run_counts: RunCountsDep) -> SummaryOut:
    """Runs by job and status, failing sensors first, throughput over the last hour.

    The counts by job and status are recounted in the background at most
    every few seconds (``counts_as_of`` says when); everything else is read now.
    """
    counted = run_counts.current()  # the API's answer carries numbers: it waits for a count
    overview = app.store.overview(alive_within=app.lease_seconds, counted=counted)
    totals: dict[str, int] = {}
    for counts in overview.counts.values():
        for run_status, count in counts.items():
            totals[run_status.value] = totals.get(run_status.value, 0) + count
    return SummaryOut(
        jobs=[
            JobCountsOut(
                job=job,
                counts={s.value: n for s, n in counts.items()},
                oldest_due_age_seconds=overview.oldest_due_age.get(job),
            )
            for job, counts in sorted(overview.counts.items())
        ],
        totals=totals,
        sensors=[SensorOut.of(s) for s in overview.sensors],
        throughput=[MinuteOut.of(m) for m in overview.throughput],
        live_workers=overview.live_workers,
        active_transfers=overview.active_transfers,
        counts_as_of=datetime.fromtimestamp(counted.at, UTC),
    )


@router.get("/sensors", response_model=list[SensorOut], tags=["sensors"])
def list_sensors(app: AppDep) -> list[SensorOut]:
    """Every sensor in the store, failing first."""
    return [SensorOut.of(s) for s in app.store.sensors_failing_first()]


@router.get("/sensors/{name}", response_model=SensorOut, tags=["sensors"])
def get_sensor(app: AppDep, name: SensorName) -> SensorOut:
    state = app.store.get_sensor_state(name)
    if state is None:
        raise _not_found(f"sensor {name!r}")
    return SensorOut.of(state)


@router.get("/sensors/{name}/evaluations", response_model=EvaluationPage, tags=["sensors"])
def list_evaluations(
    app: AppDep,
    name: SensorName,
    before_id: BeforeId = None,
    limit: Limit = 50,
    outcome: EvaluationOutcome | None = None,
) -> EvaluationPage:
    """The sensor's evaluations, newest first."""
    detail = app.store.sensor_detail(name, outcome=outcome, before_id=before_id, limit=limit)
    if detail is None:
        raise _not_found(f"sensor {name!r}")
    page = detail.evaluations
    return EvaluationPage(
        items=[EvaluationOut.of(e) for e in page.items], next_before=page.next_before
    )


@router.get("/runs", response_model=RunPage, tags=["runs"])
def list_runs(
    app: AppDep,
    job: Annotated[str | None, Query(max_length=200)] = None,
    status: RunStatus | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before_id: BeforeId = None,
    limit: Limit = 50,
    run_key: Annotated[str | None, Query(min_length=1, max_length=MAX_RUN_KEY)] = None,
) -> RunPage:
    """Runs newest first, filtered by job, status and creation time.

    ``since`` (inclusive) and ``until`` (exclusive) bound the creation time;
    a time without an offset is UTC. Without them the runs are in id order;
    with either, in creation order (then id). ``next_before`` pages on in
    the same order either way.

    With ``run_key``: the run with that key of ``job`` (or of every job, one
    run per job at most), filtered by ``status``; nothing to page.
    """
    hidden = sensitive_fields(app)
    if run_key is not None:
        keyed = app.store.find_runs_by_key(run_key, None if job is None else [job])
        return RunPage(
            items=[
                RunOut.of(r, hidden.get(r.job, frozenset()))
                for r in keyed
                if status is None or r.status is status
            ],
            next_before=None,
        )
    page = app.store.run_page(
        job=job,
        status=status,
        since=epoch_seconds(since),
        until=epoch_seconds(until),
        before_id=before_id,
        limit=limit,
    )
    return RunPage(
        items=[RunOut.of(r, hidden.get(r.job, frozenset())) for r in page.items],
        next_before=page.next_before,
    )


@router.post(
    "/runs",
    response_model=SubmittedOut,
    status_code=status.HTTP_201_CREATED,
    dependencies=[Token],
    responses={
        **GUARDED,
        200: {"model": SubmittedOut, "description": "the run_key had a run: returned as it is"},
        404: {"model": ErrorOut, "description": "no such job"},
        422: {"description": "the body is not a run request this store can take"},
    },
    tags=["runs"],
)
def submit(app: AppDep, body: RunIn, response: Response) -> SubmittedOut:
    """Enqueue a run of ``job``, idempotent by ``run_key``.

    201: created now. 200: the job had a run with this ``run_key`` already;
    it is returned as it is (its payload is not replaced). Besides
    ``payload``, a body may set any other field of a run request by name;
    an unknown field, or a payload or key that cannot be stored, is a 422.
    """
    record = {"run_key": body.run_key, "payload": body.payload, **(body.model_extra or {})}
    try:
        result = app.submit(body.job, run_request(record, where="body"))
    except PayloadError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    run = app.get_run(result.run_ids[0])
    assert run is not None  # runs are never deleted
    if not result.created:
        response.status_code = status.HTTP_200_OK
    return SubmittedOut(
        created=bool(result.created),
        run=RunOut.of(run, sensitive_fields(app).get(run.job, frozenset())),
    )


@router.post(
    "/runs/retry", response_model=RetryOut, dependencies=[Token], responses=GUARDED, tags=["runs"]
)
def retry(app: AppDep, body: RetryIn) -> RetryOut:
    """Queue failed or dead runs again: by id, or every one of a job and/or status."""
    if body.run_ids is None and body.job is None and body.status is None:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "give run_ids, a job or a status")
    return RetryOut(retried=app.retry(body.run_ids, job=body.job, status=body.status, by="api"))


@router.get("/runs/{run_id:int}", response_model=RunDetailOut, tags=["runs"])
def get_run(app: AppDep, run_id: RecordId) -> RunDetailOut:
    """A run with its processing log (oldest first) and its last error in full."""
    detail = app.store.run_detail(run_id)
    if detail is None:
        raise _not_found(f"run {run_id}")
    hidden = sensitive_fields(app).get(detail.run.job, frozenset())
    parent, children = chain_links(detail.events)
    return RunDetailOut(
        run=RunOut.of(detail.run, hidden),
        events=[RunEventOut.of(e) for e in detail.events],
        transfers=[TransferOut.of(t) for t in detail.transfers],
        parent_run_id=parent,
        child_run_ids=children,
    )


@router.get("/dead-letters", response_model=list[ErrorGroupOut], tags=["runs"])
def dead_letters(
    app: AppDep, job: Annotated[str | None, Query(max_length=200)] = None
) -> list[ErrorGroupOut]:
    """Failed and dead runs grouped by job, status and error, largest group first."""
    return [ErrorGroupOut.of(g) for g in app.store.dead_letters(job=job)]


@router.get("/transfers", response_model=TransferPage, tags=["transfers"])
def list_transfers(
    app: AppDep,
    status: TransferStatus | None = None,
    before_id: BeforeId = None,
    limit: Limit = 50,
) -> TransferPage:
    page = app.store.transfer_page(status=status, before_id=before_id, limit=limit)
    return TransferPage(items=[TransferOut.of(t) for t in page.items], next_before=page.next_before)


@router.get("/transfers/{transfer_id:int}", response_model=TransferDetailOut, tags=["transfers"])
def get_transfer(app: AppDep, transfer_id: RecordId) -> TransferDetailOut:
    found = app.store.transfer_detail(transfer_id)
    if found is None:
        raise _not_found(f"transfer {transfer_id}")
    return TransferDetailOut(
        transfer=TransferOut.of(found.transfer), parts=[TransferPartOut.of(p) for p in found.parts]
    )


@router.get("/workers", response_model=list[WorkerOut], tags=["workers"])
def list_workers(app: AppDep) -> list[WorkerOut]:
    """Workers newest first, live or not, with the runs each holds."""
    return [WorkerOut.of(w) for w in app.store.worker_views(alive_within=app.lease_seconds)]


# -- mutations -----------------------------------------------------------------


@router.post(
    "/sensors/{name}/pause",
    response_model=SensorOut,
    dependencies=[Token],
    responses=GUARDED,
    tags=["sensors"],
)
def pause_sensor(app: AppDep, name: SensorName) -> SensorOut:
    """Stop evaluating the sensor, everywhere, until it is resumed."""
    return SensorOut.of(app.pause_sensor(name))


@router.post(
    "/sensors/{name}/resume",
    response_model=SensorOut,
    dependencies=[Token],
    responses=GUARDED,
    tags=["sensors"],
)
def resume_sensor(app: AppDep, name: SensorName) -> SensorOut:
    return SensorOut.of(app.resume_sensor(name))


@router.put(
    "/sensors/{name}/cursor",
    response_model=EvaluationOut,
    dependencies=[Token],
    responses=GUARDED,
    tags=["sensors"],
)
def set_cursor(app: AppDep, name: SensorName, body: CursorIn) -> EvaluationOut:
    """Move the cursor; recorded as a ``manual`` evaluation naming ``by``."""
    return EvaluationOut.of(app.set_cursor(name, body.cursor, by=body.by or "api"))


@router.post(
    "/sensors/{name}/messages",
    response_model=EvaluationOut,
    status_code=status.HTTP_201_CREATED,
    dependencies=[Token],
    responses={
        **GUARDED,
        200: {"model": EvaluationOut, "description": "delivered before: the first evaluation"},
        422: {"description": "the sensor failed on the message; deliver it again later"},
    },
    tags=["sensors"],
)
def ingest(app: AppDep, name: SensorName, body: MessageIn, response: Response) -> EvaluationOut:
    """Deliver a message to a push sensor, exactly once per ``message_id``.

    201: recorded now. 200: delivered before, the first evaluation is
    returned and nothing new is written. An evaluation with outcome
    ``failed`` (the sensor raised, or it is paused) kept no key: the
    message was not processed and must be delivered again.
    """
    evaluation, first = app.deliver(name, body.message_id, body.payload)
    if not first:
        response.status_code = status.HTTP_200_OK
    elif evaluation.outcome is not EvaluationOutcome.OK:
        response.status_code = 422
    return EvaluationOut.of(evaluation)


@router.post(
    "/runs/{run_id:int}/cancel",
    response_model=CancelOut,
    dependencies=[Token],
    responses={
        **GUARDED,
        409: {"model": ErrorOut, "description": "the run is neither queued nor running"},
    },
    tags=["runs"],
)
def cancel(app: AppDep, run_id: RecordId) -> CancelOut:
    """Cancel a queued or running run (a running run's lease is revoked: nothing it writes
    afterwards commits)."""
    cancelled = app.cancel(run_id, by="api")
    if cancelled is None:
        run = app.get_run(run_id)
        if run is None:
            raise _not_found(f"run {run_id}")
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"run {run_id} is {run.status}, not queued or running"
        )
    hidden = sensitive_fields(app).get(cancelled.job, frozenset())
    return CancelOut(cancelled=True, run=RunOut.of(cancelled, hidden))
