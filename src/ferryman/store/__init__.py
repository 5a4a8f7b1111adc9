"""The durable state of a ferryman app, and the only package that speaks SQL.

:class:`Store` opens the database named by a URL, checks (and on SQLite
applies) its schema revision, and offers the operations the rest of ferryman
needs in terms of domain objects. Each method is one transaction unless it
takes a caller's connection.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from ferryman.errors import StoreError, StoreUnavailable
from ferryman.model import (
    Backoff,
    Evaluation,
    JobSummary,
    Run,
    RunEvent,
    RunStatus,
    SensorState,
    SensorStatus,
    SubmitResult,
    WorkerInfo,
)

# The store of an App (and of ``ferryman upload``) given none: a SQLite file
# in the working directory, created and migrated on first use.
from ferryman.settings import DEFAULT_STORE
from ferryman.store import faults, migrate, prune, read_queries
from ferryman.store.blocks import BlockGuard
from ferryman.store.dialect import (
    Backend,
    Listener,
    again_when_contended,
    create_backend,
    translated_errors,
)
from ferryman.store.downloads import (
    DownloadOutcome,
    NewDownload,
    OpenedDownload,
)
from ferryman.store.file_transfers import FileTransfers
from ferryman.store.leases import Leases
from ferryman.store.limits import JobLimits
from ferryman.store.push_batches import PushBatches
from ferryman.store.push_postgres import PostgresPushBatches
from ferryman.store.push_sqlite import SQLitePushBatches
from ferryman.store.queue import RunQueue
from ferryman.store.read_model import ReadModel
from ferryman.store.run_rows import ClaimedRun, Lease, NewRun, Outcome, OutcomeKind
from ferryman.store.sensors import (
    PollCommit,
    PollFailure,
    PushCommit,
    PushFailure,
    ScheduleEntry,
    SensorQueries,
)
from ferryman.store.transfers import (
    CompletedObject,
    ConfirmedPart,
    NewTransfer,
    OpenedTransfer,
    TransferFence,
    TransferQueries,
)
from ferryman.store.workers import Crashes, WorkerQueries

__all__ = [
    "DEFAULT_STORE",
    "ClaimedRun",
    "CompletedObject",
    "ConfirmedPart",
    "DownloadOutcome",
    "JobLimits",
    "Lease",
    "NewDownload",
    "NewRun",
    "NewTransfer",
    "OpenedDownload",
    "OpenedTransfer",
    "Outcome",
    "OutcomeKind",
    "PollCommit",
    "PollFailure",
    "PushCommit",
    "PushFailure",
    "ScheduleEntry",
    "Store",
    "TransferFence",
    "open_store",
]


class Store(ReadModel, FileTransfers):
    """A ferryman store database.

    ``create``: apply migrations when the schema is missing or older than the
    code. ``None`` (the default) means yes for SQLite — the embedded default
    needs no setup — and no for PostgreSQL and MariaDB, where schema changes
    are an operator's decision (``ferryman db upgrade``).

    The reads behind the API, the dashboard and ``/metrics`` are methods too,
    from :class:`~ferryman.store.read_model.ReadModel`, and so are uploads'
    and downloads' records, from
    :class:`~ferryman.store.file_transfers.FileTransfers`.
    """

    def __init__(self, url: str | sa.URL, *, create: bool | None = None, pool_size: int = 10):
        self.backend: Backend = create_backend(url, pool_size=pool_size)
        # Errors of the store's own connections are marked when the database
        # failed, so a job's attempt lost to an outage is not counted.
        faults.watch(self.backend.engine, self.backend.read_engine)
        self.runs = RunQueue(self.backend)
        self.leases = Leases(self.backend)
        self.workers = WorkerQueries(self.backend)
        self.transfers = TransferQueries(self.backend, self.runs.now)
        self._blocks = BlockGuard(self.backend.engine)
        auto_upgrade = self.backend.creates_schema if create is None else create
        try:
            # A read settles the common case without queueing behind writers.
            with self.read("checking the schema revision") as conn:
                up_to_date = migrate.up_to_date(conn)
            if not up_to_date:
                with self.backend.schema_transaction("checking the schema revision") as conn:
                    migrate.check(conn, self.backend.safe_url, auto_upgrade=auto_upgrade)
        except BaseException:
            self.backend.dispose()
            raise

    @property
    def engine(self) -> sa.Engine:
        """The SQLAlchemy engine for writes on the store database."""
        return self.backend.engine

    @property
    def ids_in_commit_order(self) -> bool:
        """Whether ids are allocated in commit order; if not, recent ones may still fill in."""
        return self.backend.ids_in_commit_order

    def listener(self, on_job: Callable[[str], None], *, name: str) -> Listener | None:
        """A thread that calls ``on_job(job)`` when runs of ``job`` become due; None: poll."""
        return self.backend.listener(on_job, name=name)

    def close(self) -> None:
        self.backend.dispose()

    def after_fork(self) -> None:
        """In a forked child: forget the parent's connections without closing them."""
        self.backend.after_fork()

    @contextlib.contextmanager
    def write(self, doing: str) -> Iterator[sa.Connection]:
        """A write transaction; driver errors become :class:`StoreError`."""
        with translated_errors(self.backend, doing), self.transaction() as conn:
            yield conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        """A write transaction on the store database, errors untranslated.

        Returns once what the block wrote is committed. On SQLite the
        transaction may be shared with this process's other writers of the
        moment (see :mod:`ferryman.store.group_commit`): one commit, one wait
        for the disk, for all of them; each block still keeps all or nothing.
        The block may not commit or roll back the connection itself, and
        results it leaves open are closed when it ends
        (:mod:`ferryman.store.blocks`).
        """
        with (
            self.backend.transaction() as conn,
            self._blocks.block(conn, shared=self.backend.shares_transactions),
        ):
            yield conn

    def ping(self, timeout: float) -> bool:
        """True if the database answers a trivial query within about ``timeout`` seconds."""
        return self.backend.ping(timeout)

    @contextlib.contextmanager
    def read(self, doing: str) -> Iterator[sa.Connection]:
        with translated_errors(self.backend, doing), self.backend.read_engine.begin() as conn:
            yield conn

    # -- a connection handed to a job, the URL --------------------------------

    @contextlib.contextmanager
    def read_for_job(self, run_id: int) -> Iterator[sa.Connection]:
        """A read transaction handed to a job (``ctx.read()``); ferryman's own reads are methods."""
        with self.read(f"reading for run {run_id}") as conn:
            yield conn

    @property
    def url(self) -> sa.URL:
        """The store database's URL, password included: never log it."""
        return self.backend.url

    # -- runs ----------------------------------------------------------------

    def enqueue(
        self, new_runs: Sequence[NewRun], conn: sa.Connection | None = None
    ) -> SubmitResult:
        if conn is not None:
            with translated_errors(self.backend, "enqueueing runs"):
                return self.runs.enqueue(conn, new_runs)
        return again_when_contended(self.backend, lambda: self._enqueue_alone(new_runs))

    def _enqueue_alone(self, new_runs: Sequence[NewRun]) -> SubmitResult:  # in their own commit
        with translated_errors(self.backend, "enqueueing runs"):
            committed = self.runs.enqueue_committed(new_runs)
        if committed is not None:
            return committed
        with self.write("enqueueing runs") as own:
            submitted = self.runs.enqueue(own, new_runs)
        self.runs.committed(new_runs)
        return submitted

    def claim(
        self,
        *,
        worker_id: str,
        jobs: Sequence[str] | Mapping[str, Any],
        limit: int,
        lease_seconds: float,
        limits: Mapping[str, JobLimits] | None = None,
    ) -> list[ClaimedRun]:
        asked: dict[str, Any] = {
            "worker_id": worker_id,
            "jobs": jobs,
            "limit": limit,
            "lease_seconds": lease_seconds,
            "limits": limits,
        }
        with translated_errors(self.backend, "claiming runs"):
            claimed = self.leases.claim_committed(**asked)
        if claimed is not None:
            return claimed
        with self.write("claiming runs") as conn:
            return self.leases.claim(conn, **asked)

    def renew(self, leases: Sequence[Lease], lease_seconds: float) -> set[int]:
        with self.write("renewing leases") as conn:
            return self.leases.renew(conn, leases, lease_seconds)

    def checkpoint(self, lease: Lease, *, attempt: int, worker_id: str, data_json: str) -> None:
        with self.write("writing a checkpoint") as conn:
            self.leases.checkpoint(
                conn, lease, attempt=attempt, worker_id=worker_id, checkpoint_json=data_json
            )

    def succeed_within(
        self,
        conn: sa.Connection,
        lease: Lease,
        *,
        attempt: int,
        worker_id: str,
        children: Sequence[NewRun] = (),
    ) -> None:
        """Write the run's success in ``conn``'s open transaction (from :meth:`transaction`).

        ``children``: the runs the job asked for, enqueued with the success.

        Raises ``LeaseLost`` if the lease was lost; driver errors untranslated,
        as in the transaction around it.
        """
        # A block refused for ending its transaction: SQLAlchemy holds that
        # transaction for ended, so the success is not even tried.
        self._blocks.check(conn)
        self.leases.succeed_within(conn, lease, attempt=attempt, worker_id=worker_id)
        if children:
            self.runs.enqueue_children(conn, lease.run_id, attempt, children, worker_id)

    def finish(self, outcomes: Sequence[Outcome], *, worker_id: str) -> list[bool]:
        """Write how attempts ended, fenced; with each accepted success, the runs it asked for."""
        with translated_errors(self.backend, "recording run outcomes"):
            accepted = self.leases.finish_committed(outcomes, worker_id=worker_id)
        if accepted is not None:
            return accepted
        with self.write("recording run outcomes") as conn:
            accepted = self.leases.finish(conn, outcomes, worker_id=worker_id)
            for outcome, ok in zip(outcomes, accepted, strict=True):
                if ok and outcome.children:
                    run_id, attempt = outcome.lease.run_id, outcome.attempt
                    self.runs.enqueue_children(conn, run_id, attempt, outcome.children, worker_id)
            return accepted

    def release(self, leases: Sequence[Lease], *, worker_id: str, reason: str) -> list[int]:
        with self.write("releasing runs") as conn:
            return self.leases.release(conn, leases, worker_id=worker_id, reason=reason)

    def release_unheld(self, *, worker_id: str, held: Collection[int], reason: str) -> list[int]:
        """Release the runs leased to ``worker_id`` that are not in ``held``.

        A claim whose commit landed while its answer was lost (the connection
        dropped) leaves runs leased to a worker that does not know it has them.
        """
        with self.write("releasing runs leased to this worker without its knowing") as conn:
            leases = [le for le in self.leases.leased_to(conn, worker_id) if le.run_id not in held]
            return self.leases.release(conn, leases, worker_id=worker_id, reason=reason)

    def requeue(
        self,
        *,
        run_ids: Sequence[int] | None = None,
        job: str | None = None,
        statuses: Sequence[RunStatus] = (RunStatus.FAILED, RunStatus.DEAD),
        by: str | None = None,
        since: float | None = None,
    ) -> list[int]:
        with self.write("requeueing runs") as conn:
            return self.runs.requeue(
                conn, run_ids=run_ids, job=job, statuses=statuses, by=by, since=since
            )

    def cancel(self, run_id: int, *, by: str | None = None) -> Run | None:
        """Cancel a queued or running run (its lease token bumped); the run as cancelled."""
        with self.write("cancelling a run") as conn:
            return self.runs.cancel(conn, run_id, by=by)

    def cancel_where(self, *, job: str | None, status: RunStatus, by: str | None) -> list[int]:
        """Cancel every run of ``job`` (None: of all jobs) in ``status``; their ids."""
        with self.write("cancelling runs") as conn:
            return self.runs.cancel_where(conn, job=job, status=status, by=by)

    def time_out(self, outcome: Outcome, *, timeout: float, worker_id: str) -> bool:
        """End an attempt that outlived its job's timeout, fenced; False if the lease was lost."""
        with self.write("ending an attempt past its timeout") as conn:
            return self.leases.time_out(conn, outcome, timeout=timeout, worker_id=worker_id)

    def get_runs(self, **filters: Any) -> list[Run]:
        with self.read("reading runs") as conn:
            return self.runs.get_runs(conn, **filters)

    def get_run(self, run_id: int) -> Run | None:
        with self.read("reading a run") as conn:
            return self.runs.get_run(conn, run_id)

    def get_run_by_key(self, job: str, run_key: str) -> Run | None:
        """The run of ``job`` keyed ``run_key``, or None."""
        with self.read("reading a run by its key") as conn:
            found = self.runs.get_by_key(conn, run_key, [job])
        return found[0] if found else None

    def find_runs_by_key(self, run_key: str, jobs: Sequence[str] | None = None) -> list[Run]:
        """The runs keyed ``run_key`` of ``jobs`` (default: every job with runs), by job."""
        with self.read("finding runs by their key") as conn:
            names = read_queries.job_names(conn) if jobs is None else jobs
            return self.runs.get_by_key(conn, run_key, names)

    def get_events(self, run_id: int) -> list[RunEvent]:
        with self.read("reading a run's processing log") as conn:
            return self.runs.get_events(conn, run_id)

    def summary(self, registered_jobs: Sequence[str]) -> list[JobSummary]:
        with self.read("summarising runs") as conn:
            counts = self.runs.counts(conn)
            oldest = read_queries.oldest_due_age(conn, self.runs.now(conn))
        names = sorted(set(counts) | set(registered_jobs))
        return [
            JobSummary(
                job=name,
                counts=counts.get(name, {}),
                oldest_due_age=oldest.get(name),
                registered=name in registered_jobs,
            )
            for name in names
        ]

    # -- workers -------------------------------------------------------------

    def register_worker(self, *, worker_id: str, host: str, pid: int, jobs: Sequence[str]) -> None:
        with self.write("registering a worker") as conn:
            self.workers.register(conn, worker_id=worker_id, host=host, pid=pid, jobs=jobs)

    def worker_seen(self, worker_id: str, *, crashes: Crashes | None = None) -> None:
        """Record that the worker is alive; with ``crashes``, its background threads' crashes."""
        with self.write("recording a worker heartbeat") as conn:
            self.workers.seen(conn, worker_id, crashes)

    def worker_stopped(self, worker_id: str, *, crashes: Crashes | None = None) -> None:
        with self.write("recording a worker stop") as conn:
            self.workers.stopped(conn, worker_id, crashes)

    def list_workers(
        self, *, alive_within: float, include_stopped: bool = False
    ) -> list[WorkerInfo]:
        with self.read("listing workers") as conn:
            return self.workers.list(
                conn, alive_within=alive_within, include_stopped=include_stopped
            )

    # -- sensors -------------------------------------------------------------

    @functools.cached_property
    def sensors(self) -> SensorQueries:
        return SensorQueries(self.backend, self.runs)

    @functools.cached_property
    def push_batches(self) -> PushBatches:
        if self.backend.name == "postgres":  # fixed statements, rows bound as arrays
            return PostgresPushBatches(self.backend, self.runs)
        if self.backend.name == "sqlite":  # compiled once, run on the driver
            return SQLitePushBatches(self.backend, self.runs)
        return PushBatches(self.backend, self.runs)

    def ensure_sensors(self, declared: Sequence[tuple[str, str]]) -> None:
        """Create the rows of the given ``(name, kind)`` sensors that have none yet."""
        with self.write("registering sensors") as conn:
            self.sensors.ensure(conn, declared)

    def get_sensor_state(self, name: str) -> SensorState | None:
        with self.read("reading a sensor") as conn:
            return self.sensors.state(conn, name)

    def read_sensor(self, name: str) -> tuple[SensorState | None, float]:
        """The sensor's state and the database clock, read together."""
        with self.read("reading a sensor") as conn:
            return self.sensors.state(conn, name), self.sensors.now(conn)

    def list_sensor_states(self) -> list[SensorState]:
        with self.read("listing sensors") as conn:
            return self.sensors.states(conn)

    def sensor_schedule(self, names: Sequence[str]) -> tuple[float, list[ScheduleEntry]]:
        with self.read("reading the sensor schedule") as conn:
            return self.sensors.schedule(conn, names)

    def set_sensor_status(self, name: str, status: SensorStatus) -> SensorState | None:
        with self.write("changing a sensor's status") as conn:
            return self.sensors.set_status(conn, name, status)

    def commit_poll_evaluation(self, commit: PollCommit) -> Evaluation:
        """Runs, evaluation and cursor in one transaction, or a ``conflict`` row alone."""
        with self.write("committing a sensor evaluation") as conn:
            return self.sensors.commit_poll(conn, commit)

    def record_poll_failure(self, failure: PollFailure) -> Evaluation:
        with self.write("recording a sensor failure") as conn:
            return self.sensors.fail_poll(conn, failure)

    def set_sensor_cursor(self, name: str, cursor: str | None, *, by: str) -> Evaluation | None:
        with self.write("setting a sensor cursor") as conn:
            return self.sensors.set_cursor(conn, name, cursor, by=by)

    def find_push_delivery(
        self, name: str, message_id: str
    ) -> tuple[SensorState | None, Evaluation | None, float]:
        """The message's earlier evaluation if any; else the sensor's state and the clock."""
        with self.read("looking up a delivery") as conn:
            earlier = self.sensors.find(conn, name, message_id)
            if earlier is not None:  # a redelivery: one query
                return None, earlier, 0.0
            return self.sensors.state(conn, name), None, self.sensors.now(conn)

    def commit_push_evaluation(self, commit: PushCommit) -> tuple[Evaluation, bool]:
        with self.write("committing a push evaluation") as conn:
            return self.sensors.commit_push(conn, commit)

    def find_push_deliveries(
        self, name: str, message_ids: Sequence[str]
    ) -> tuple[SensorState | None, dict[str, Evaluation], float]:
        """The sensor's state, the earlier evaluations of those messages already
        delivered (by message id), and the database clock, read together."""
        with translated_errors(self.backend, "looking up deliveries"):
            return self.push_batches.find_with_state(self.sensors, name, message_ids)

    def commit_push_batch(
        self, commits: Sequence[PushCommit], failures: Sequence[PushFailure]
    ) -> tuple[list[tuple[Evaluation, bool]], list[Evaluation]]:
        """Many push evaluations of one sensor, ok and failed, in ONE transaction.

        Returns the ok ones (each with whether this call recorded it) and the
        failed ones, each in the order given. Nothing is recorded if it raises.
        """
        with self.write("committing a batch of push evaluations") as conn:
            committed = self.push_batches.commit_many(conn, commits)
            failed = [
                self.sensors.fail_push(
                    conn,
                    sensor=failure.sensor,
                    message_id=failure.message_id,
                    error=failure.error,
                    started_at=failure.started_at,
                    evaluator=failure.evaluator,
                )
                for failure in failures
            ]
            return committed, failed

    def record_push_failure(
        self, *, sensor: str, message_id: str, error: str, started_at: float, evaluator: str
    ) -> Evaluation:
        with self.write("recording a push failure") as conn:
            return self.sensors.fail_push(
                conn,
                sensor=sensor,
                message_id=message_id,
                error=error,
                started_at=started_at,
                evaluator=evaluator,
            )

    def get_evaluations(self, name: str, limit: int | None = None) -> list[Evaluation]:
        with self.read("reading sensor evaluations") as conn:
            return self.sensors.evaluations(conn, name, limit)

    def prune_evaluations(self, keep_last: int) -> int:
        with self.write("pruning sensor evaluations") as conn:
            return self.sensors.prune(conn, keep_last)

    def prune_runs(
        self,
        older_than: float,
        *,
        batch: int = prune.DEFAULT_BATCH,
        dry_run: bool = False,
        after: prune.Position | None = None,
    ) -> prune.PruneResult:
        """Prune the runs finished ``older_than`` seconds ago or earlier (:mod:`.prune`).

        Their payloads, checkpoints and processing logs go, ``batch`` runs per
        short transaction; their rows stay, so their run keys still dedupe.
        """
        with self.read("reading the clock") as conn:
            cutoff = self.runs.now(conn) - older_than
        return prune.prune_runs(
            self.read, self.write, cutoff, batch=batch, dry_run=dry_run, after=after
        )

    def prune_deliveries(self, older_than: float) -> int:
        """Forget push deliveries recorded ``older_than`` seconds ago or earlier."""
        with self.write("pruning push deliveries") as conn:
            return self.sensors.prune_deliveries(conn, older_than)


def upgrade(url: str | sa.URL) -> tuple[tuple[str, ...], str]:
    """Bring the store's schema to this code's revision; return (before, after)."""
    backend = create_backend(url, pool_size=1)
    try:
        with backend.schema_transaction("upgrading the schema") as conn:
            before = migrate.revisions(conn).current
            after = migrate.check(conn, backend.safe_url, auto_upgrade=True)
        return before, after.head
    except StoreError:
        raise
    finally:
        backend.dispose()


log = logging.getLogger("ferryman.store")

# Between tries to open a store that cannot be reached yet: quick at first (a
# database restarting), then every few seconds (a host still booting).
CONNECT_BACKOFF = Backoff(base=0.2, factor=2.0, max=5.0)


def open_store(
    url: str | sa.URL,
    *,
    create: bool | None = None,
    timeout: float | None = 0.0,
    log_level: int = logging.WARNING,
) -> Store:
    """Open the store, trying again while it cannot be reached.

    ``timeout``: how long to keep trying, in seconds (``None``: until it
    answers; ``0``: once). Each failed try is logged in one line at
    ``log_level``. Only :class:`~ferryman.StoreUnavailable` is retried: a
    wrong URL, a missing database or role, a refused password or a schema
    that does not match raise at once, since waiting cures none of them.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    tries = 0
    while True:
        try:
            return Store(url, create=create)
        except StoreUnavailable as exc:
            tries += 1
            delay = CONNECT_BACKOFF.delay(tries, str(url))
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    if timeout == 0:
                        raise
                    raise StoreUnavailable(
                        f"{exc} (gave up after {timeout:g}s and {tries} tries)"
                    ) from exc
                delay = min(delay, left)
            log.log(log_level, "store not reachable (try %d), next in %.1fs: %s", tries, delay, exc)
            time.sleep(delay)
