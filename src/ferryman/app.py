"""The App: a registry of jobs and sensors bound to one store."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, overload

import sqlalchemy as sa

from ferryman.errors import ConfigurationError, UnknownJob
from ferryman.model import (
    DEFAULT_JOB_BACKOFF,
    Backoff,
    JobSummary,
    Run,
    RunEvent,
    RunRequest,
    RunStatus,
    SubmitResult,
    WorkerInfo,
)
from ferryman.store import NewRun, Store
from ferryman.store.records import to_json
from ferryman.worker.context import JobContext
from ferryman.worker.processes import run_processes
from ferryman.worker.worker import JobDefinition, Worker, WorkReport

log = logging.getLogger("ferryman")

DEFAULT_STORE = "sqlite:///ferryman.db"
JobFunction = Callable[[JobContext, Any], Any]
F = TypeVar("F", bound=JobFunction)


class App:
    """Jobs and sensors bound to one store.

    ``store`` is a URL: ``sqlite:///path.db`` (the embedded default: created
    and migrated on first use) or ``postgresql://user@host/db`` (migrated by
    ``ferryman db upgrade``, or by ``create=True``). The store is opened on
    first use, so defining an App at import time touches no database.

    ``lease_seconds`` is how long a worker's claim on a run lasts without a
    heartbeat; workers renew it every third of that.
    """

    def __init__(
        self,
        store: str | sa.URL = DEFAULT_STORE,
        *,
        lease_seconds: float = 30.0,
        create: bool | None = None,
    ) -> None:
        if lease_seconds <= 0:
            raise ConfigurationError(f"lease_seconds must be positive, got {lease_seconds}")
        self.store_url = store
        self.lease_seconds = lease_seconds
        self._create = create
        self._store: Store | None = None
        self._store_lock = threading.Lock()
        self._jobs: dict[str, JobDefinition] = {}

    # -- store ---------------------------------------------------------------

    @property
    def store(self) -> Store:
        """The opened store (opened, checked and, where allowed, migrated on first use)."""
        with self._store_lock:
            if self._store is None:
                self._store = Store(self.store_url, create=self._create)
            return self._store

    @property
    def engine(self) -> sa.Engine:
        """SQLAlchemy engine on the store database, for writing data and runs together."""
        return self.store.engine

    def use_store(self, store: str | sa.URL) -> None:
        """Point the App at another store (before it is first used), e.g. from ``--store``."""
        with self._store_lock:
            if self._store is not None:
                raise ConfigurationError("use_store() must be called before the store is opened")
            self.store_url = store

    def close(self) -> None:
        """Close the store's connections. The App reopens them if used again."""
        with self._store_lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    # -- registration --------------------------------------------------------

    @overload
    def job(self, fn: F, /) -> F: ...

    @overload
    def job(
        self,
        /,
        *,
        name: str | None = None,
        max_attempts: int = 5,
        backoff: Backoff = DEFAULT_JOB_BACKOFF,
    ) -> Callable[[F], F]: ...

    def job(
        self,
        fn: JobFunction | None = None,
        /,
        *,
        name: str | None = None,
        max_attempts: int = 5,
        backoff: Backoff = DEFAULT_JOB_BACKOFF,
    ) -> Any:
        """Register ``fn(ctx, payload)`` as a job.

        A run is attempted at most ``max_attempts`` times; between attempts it
        waits ``backoff.delay(attempt)``. Raising :class:`ferryman.Reject` fails
        the run at once without retries.
        """
        if max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be at least 1, got {max_attempts}")

        def register(function: JobFunction) -> JobFunction:
            job_name = name or function.__name__
            if job_name in self._jobs:
                raise ConfigurationError(f"job {job_name!r} is registered twice")
            self._jobs[job_name] = JobDefinition(job_name, function, max_attempts, backoff)
            return function

        return register(fn) if fn is not None else register

    @property
    def jobs(self) -> dict[str, JobDefinition]:
        return dict(self._jobs)

    def _job(self, name: str) -> JobDefinition:
        try:
            return self._jobs[name]
        except KeyError:
            raise UnknownJob(name, list(self._jobs)) from None

    # -- runs ----------------------------------------------------------------

    def submit(
        self, job: str, *run_requests: RunRequest, conn: sa.Connection | None = None
    ) -> SubmitResult:
        """Enqueue runs of ``job``; a ``run_key`` that already has a run is deduplicated.

        All requests are written in one transaction (one round trip per
        thousand). With ``conn``, they are written in the caller's own
        transaction on the store database and commit or roll back with it.
        A request with a payload that is not JSON-serialisable refuses the
        whole batch before anything is written.
        """
        new_runs = self._new_runs([(job, request) for request in run_requests])
        return self.store.enqueue(new_runs, conn=conn)

    def _new_runs(self, requests: Sequence[tuple[str, RunRequest]]) -> list[NewRun]:
        new_runs = []
        for job, request in requests:
            definition = self._job(request.job or job)
            payload_json = to_json(
                request.payload, f"payload of job {definition.name!r} run_key {request.run_key!r}"
            )
            new_runs.append(
                NewRun(definition.name, request.run_key, payload_json, definition.max_attempts)
            )
        return new_runs

    def work(
        self,
        *,
        until_idle: bool = False,
        concurrency: int = 4,
        processes: int | None = None,
        jobs: Sequence[str] | None = None,
        prefetch: int | None = None,
        claim_batch: int = 100,
        poll_interval: float = 0.5,
        grace_seconds: float = 30.0,
        handle_signals: bool = True,
    ) -> WorkReport:
        """Claim and execute due runs; with ``until_idle``, return when none is due.

        ``concurrency`` job threads per process; ``processes`` forks that many
        worker processes (for CPU-bound jobs), each with ``concurrency``
        threads. A worker holds up to ``concurrency + prefetch`` runs
        (``prefetch`` defaults to ``concurrency``) so claims come in batches;
        with long jobs and several workers, a smaller prefetch spreads runs
        more evenly. ``jobs`` limits the worker to some of the app's jobs. On
        SIGTERM or SIGINT the worker stops claiming, gives running jobs
        ``grace_seconds`` and releases the rest without using up an attempt.
        """
        selected = {name: self._job(name) for name in (jobs or self._jobs)}
        store = self.store

        def make_worker() -> Worker:
            return Worker(
                store,
                selected,
                lease_seconds=self.lease_seconds,
                concurrency=concurrency,
                prefetch=concurrency if prefetch is None else prefetch,
                claim_batch=claim_batch,
                poll_interval=poll_interval,
                grace_seconds=grace_seconds,
            )

        if processes is None:
            return make_worker().run(until_idle=until_idle, handle_signals=handle_signals)

        def after_fork() -> None:
            # Connections inherited from the parent belong to the parent.
            store.backend.engine.dispose(close=False)
            store.backend.read_engine.dispose(close=False)

        return run_processes(
            make_worker, processes=processes, until_idle=until_idle, after_fork=after_fork
        )

    def get_runs(
        self,
        job: str | None = None,
        status: RunStatus | str | None = None,
        *,
        limit: int | None = None,
        before_id: int | None = None,
    ) -> list[Run]:
        """Runs, oldest first; with ``limit``, the newest ``limit`` (before ``before_id``)."""
        return self.store.get_runs(
            job=job,
            status=None if status is None else RunStatus(status),
            limit=limit,
            before_id=before_id,
        )

    def get_run(self, run_id: int) -> Run | None:
        return self.store.get_run(run_id)

    def get_run_events(self, run_id: int) -> list[RunEvent]:
        """The run's processing log, oldest first."""
        return self.store.get_events(run_id)

    def retry(
        self,
        run_ids: Sequence[int] | None = None,
        *,
        job: str | None = None,
        status: RunStatus | str | None = None,
        by: str | None = None,
    ) -> list[int]:
        """Put failed or dead runs back in the queue under their run_key, with fresh attempts."""
        if run_ids is None and job is None and status is None:
            raise ConfigurationError("retry needs run ids, a job, or a status")
        statuses = (RunStatus.FAILED, RunStatus.DEAD) if status is None else (RunStatus(status),)
        for candidate in statuses:
            if candidate not in (RunStatus.FAILED, RunStatus.DEAD):
                raise ConfigurationError(
                    f"only failed or dead runs can be retried, not {candidate}"
                )
        return self.store.requeue(run_ids=run_ids, job=job, statuses=statuses, by=by)

    def cancel(self, run_id: int, *, by: str | None = None) -> bool:
        """Cancel a queued run; False if it is not queued."""
        return self.store.cancel(run_id, by=by)

    def status(self) -> list[JobSummary]:
        """Run counts per job and status, and how long the oldest due run has waited."""
        return self.store.summary(list(self._jobs))

    def workers(self, *, include_stopped: bool = False) -> list[WorkerInfo]:
        """Workers that sent a heartbeat within one lease period (and stopped ones if asked)."""
        return self.store.list_workers(
            alive_within=self.lease_seconds, include_stopped=include_stopped
        )
