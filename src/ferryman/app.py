"""The App: a registry of jobs and sensors bound to one store."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar, overload

import sqlalchemy as sa

from ferryman import logs, settings
from ferryman.app_runs import RunOperations
from ferryman.app_sensors import SensorOperations
from ferryman.daemon import broker_consumers, run_daemon_parts
from ferryman.errors import ConfigurationError
from ferryman.housekeeping import DailyPrune
from ferryman.jobs import JobRegistry
from ferryman.model import (
    DEFAULT_JOB_BACKOFF,
    DEFAULT_SENSOR_BACKOFF,
    Backoff,
    Rate,
    RunRequest,
    SubmitResult,
)
from ferryman.sensors.daemon import SensorDaemon
from ferryman.sensors.engine import SensorEngine
from ferryman.sensors.registry import (
    DEFAULT_POLL_TIMEOUT,
    DEFAULT_PUSH_TIMEOUT,
    SensorDefinition,
    SensorFunction,
    SensorKind,
    define_sensor,
)
from ferryman.sensors.schedule import (
    DEFAULT_GRACE,
    DEFAULT_MAX_CATCH_UP,
    DEFAULT_SCHEDULE_INTERVAL,
    define_schedule,
)
from ferryman.sources.base import Source
from ferryman.sources.consumer import SourceConsumers
from ferryman.store import DEFAULT_STORE as DEFAULT_STORE  # the CLI reads it here
from ferryman.store import Store, open_store
from ferryman.worker.async_context import AsyncJobContext
from ferryman.worker.context import JobContext
from ferryman.worker.pacing import MAX_CLAIM
from ferryman.worker.processes import run_processes
from ferryman.worker.worker import JobDefinition, Worker, WorkReport

log = logging.getLogger("ferryman")

DEFAULT_DELIVERY_RETENTION = timedelta(days=7)
JobFunction = Callable[[JobContext, Any], Any] | Callable[[AsyncJobContext, Any], Awaitable[Any]]
F = TypeVar("F", bound=JobFunction)
S = TypeVar("S", bound=SensorFunction)


# Evaluating and operating the registered sensors is in app_sensors.py (the
# SensorOperations mixin); starting and stopping what ``run`` runs, in daemon.py.
class App(SensorOperations, RunOperations):
    """Jobs and sensors bound to one store.

    ``store`` is a URL: ``sqlite:///path.db`` (the embedded default: created
    and migrated on first use) or ``postgresql://user@host/db`` (migrated by
    ``ferryman db upgrade``, or by ``create=True``). The store is opened on
    first use, so defining an App at import time touches no database.

    ``lease_seconds`` is how long a worker's claim on a run lasts without a
    heartbeat; workers renew it every third of that.

    ``evaluation_retention`` is how many evaluations of each sensor are kept
    (the newest); ``ferryman run`` prunes older ones now and then, and
    :meth:`prune_evaluations` does it on demand. ``None`` keeps everything.
    Pruning never touches a sensor's state.

    ``delivery_retention`` is how long a delivered push message is
    remembered (a :class:`~datetime.timedelta` or seconds; seven days by
    default, ``None`` for ever): a redelivery within it writes nothing and
    returns the first evaluation, which is kept as long as the delivery. Past
    it the message is evaluated again, though its runs are still deduplicated
    by run_key. ``ferryman run`` forgets older deliveries now and then, and
    :meth:`prune_deliveries` (or :meth:`prune_evaluations`) does it on demand.

    ``prune_finished_after`` (a :class:`~datetime.timedelta` or seconds;
    ``None``, the default, keeps everything): ``ferryman run`` prunes, at
    start and then daily, the runs finished longer ago than that: their
    payloads, checkpoints and processing logs go in small transactions, their
    rows stay so that their run keys still deduplicate (``ferryman prune``
    does it on demand; see docs/operations.md).
    """

    def __init__(
        self,
        store: str | sa.URL = DEFAULT_STORE,
        *,
        lease_seconds: float = 30.0,
        create: bool | None = None,
        evaluation_retention: int | None = 10_000,
        delivery_retention: timedelta | float | None = DEFAULT_DELIVERY_RETENTION,
        prune_finished_after: timedelta | float | None = None,
    ) -> None:
        lease_seconds = settings.seconds("lease_seconds", lease_seconds, inclusive=False)
        if evaluation_retention is not None:
            settings.count("evaluation_retention", evaluation_retention, minimum=1)
        self.store_url = store
        self.lease_seconds = lease_seconds
        self._create = create
        self._opened: Store | None = None
        self._store_lock = threading.Lock()
        self._jobs = JobRegistry()
        self.evaluation_retention = evaluation_retention
        self.delivery_retention = settings.retention(delivery_retention)
        self.prune_finished_after = settings.retention(
            prune_finished_after, name="prune_finished_after"
        )
        self._sensors: dict[str, SensorDefinition] = {}
        self._sources: dict[str, Source] = {}  # push sensor -> where its messages come from
        self._consumers: SourceConsumers | None = None
        self._sensor_engine = SensorEngine(
            lambda: self.store,
            self._sensors,
            self._jobs,
            delivery_retention=(
                None if self.delivery_retention is None else self.delivery_retention.total_seconds()
            ),
        )

    # -- store ---------------------------------------------------------------

    @property
    def store(self) -> Store:
        """The opened store (opened, checked and, where allowed, migrated on first use)."""
        with self._store_lock:
            if self._opened is None:
                self._opened = Store(self.store_url, create=self._create)
            return self._opened

    def connect(self, timeout: float | None = None, *, log_level: int = logging.WARNING) -> Store:
        """Open the store now, waiting while it cannot be reached (a database still starting).

        Each failed try is logged in one line at ``log_level``, and the next
        comes after a growing delay (0.2 s, doubling, at most 5 s). After
        ``timeout`` seconds (``None``: never) :class:`~ferryman.StoreUnavailable`
        is raised. A missing database or role, a refused password and a schema
        that does not match are raised at once: waiting cures none of them.
        ``ferryman run``, ``work`` and ``serve`` wait like this at start.
        """
        with self._store_lock:
            if self._opened is None:
                self._opened = open_store(
                    self.store_url, create=self._create, timeout=timeout, log_level=log_level
                )
            return self._opened

    @property
    def engine(self) -> sa.Engine:
        """SQLAlchemy engine on the store database, for writing data and runs together."""
        return self.store.engine

    def use_store(self, store: str | sa.URL) -> None:
        """Point the App at another store (before it is first used), e.g. from ``--store``."""
        with self._store_lock:
            if self._opened is not None:
                raise ConfigurationError("use_store() must be called before the store is opened")
            self.store_url = store

    def close(self) -> None:
        """Close the store's connections. The App reopens them if used again."""
        with self._store_lock:
            if self._opened is not None:
                self._opened.close()
                self._opened = None

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
        sensitive: Sequence[str] = (),
        priority: int = 0,
        concurrency: int | None = None,
        key_concurrency: int = 1,
        rate: Rate | None = None,
        timeout: float | None = None,
    ) -> Callable[[F], F]: ...

    def job(
        self,
        fn: JobFunction | None = None,
        /,
        *,
        name: str | None = None,
        max_attempts: int = 5,
        backoff: Backoff = DEFAULT_JOB_BACKOFF,
        sensitive: Sequence[str] = (),
        priority: int = 0,
        concurrency: int | None = None,
        key_concurrency: int = 1,
        rate: Rate | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Register ``fn(ctx, payload)`` as a job.

        A run is attempted at most ``max_attempts`` times; between attempts it
        waits ``backoff.delay(attempt)``. Raising :class:`ferryman.Reject` fails
        the run at once without retries. Payload keys named in ``sensitive``
        (at any depth) are shown as ``***`` by the API, the dashboard and
        ``ferryman runs show``; the store keeps them, since the job needs them.

        Queue controls, enforced by the store at claim time across hosts:
        ``priority``, the default of its runs (higher first); ``concurrency``
        runs at once at most, ``key_concurrency`` per ``RunRequest.concurrency_key``;
        ``rate`` (:class:`ferryman.Rate`) bounds how fast runs are claimed.
        An attempt still running ``timeout`` seconds after it started ends as a
        failure, "timed out after Ns", retried per ``backoff``; the job sees
        ``ctx.deadline`` and ``ctx.cancelled`` (see docs/how-to/queues.md).
        """
        if fn is not None and not callable(fn):
            raise ConfigurationError(
                f"@app.job takes the job's name as a keyword: @app.job(name={fn!r}), "
                f"not @app.job({fn!r})"
            )
        settings.count("max_attempts", max_attempts, minimum=1)
        if timeout is not None:
            settings.seconds("timeout", timeout, inclusive=False)
        if not isinstance(backoff, Backoff):
            raise ConfigurationError(f"backoff must be a ferryman.Backoff, got {backoff!r}")
        controls = settings.queue_controls(priority, concurrency, key_concurrency, rate)

        def register(function: JobFunction) -> JobFunction:
            self._jobs.add(
                JobDefinition(
                    name=name or function.__name__,
                    fn=function,
                    max_attempts=max_attempts,
                    backoff=backoff,
                    sensitive=frozenset(sensitive),
                    **controls,
                    timeout=timeout,
                )
            )
            return function

        return register(fn) if fn is not None else register

    @property
    def jobs(self) -> dict[str, JobDefinition]:
        return dict(self._jobs)

    def poll_sensor(
        self,
        job: str | None = None,
        *,
        interval: float = 30.0,
        backoff: Backoff = DEFAULT_SENSOR_BACKOFF,
        name: str | None = None,
        jobs: Sequence[str] | None = None,
        timeout: float | None = DEFAULT_POLL_TIMEOUT,
    ) -> Callable[[S], S]:
        """Register ``fn(ctx, cursor) -> SensorResult``, evaluated every ``interval`` seconds.

        The function runs outside any transaction; the runs it requests, its
        evaluation and its new cursor then commit in one transaction, and only
        if no other evaluator advanced the sensor meanwhile. A failure (an
        exception, a bad result, more than ``timeout`` seconds) keeps the
        cursor and delays the next evaluation by ``backoff``. A run request
        goes to ``job`` unless its ``RunRequest.job`` names one of ``jobs``.
        With a ``timeout`` the function runs on a thread of its own; a call
        that outlives it is abandoned and its result never commits.
        """

        def register(function: S) -> S:
            self._add_sensor(
                define_sensor(
                    function,
                    kind=SensorKind.POLL,
                    name=name,
                    job=job,
                    jobs=jobs,
                    interval=interval,
                    backoff=backoff,
                    timeout=timeout,
                )
            )
            return function

        return register

    def push_sensor(
        self,
        job: str | None = None,
        *,
        name: str | None = None,
        jobs: Sequence[str] | None = None,
        timeout: float | None = DEFAULT_PUSH_TIMEOUT,
        source: Source | None = None,
    ) -> Callable[[S], S]:
        """Register ``fn(ctx, message) -> list[RunRequest]``, called by :meth:`ingest`.

        Each message is evaluated once: a redelivered ``message_id`` returns
        the first evaluation and writes nothing. Routing is as for
        :meth:`poll_sensor`.

        With a ``source`` (``fm.sources.rabbitmq(...)``, ``redis_stream``,
        ``nats``, ``sqs``), ``ferryman run`` consumes it on a supervised
        thread: batches of messages are delivered in one transaction each,
        and each message is acknowledged only after its evaluation committed.
        """
        if source is not None and not isinstance(source, Source):
            raise ConfigurationError(
                f"source must be one of fm.sources (rabbitmq, redis_stream, nats, sqs), "
                f"got {source!r}"
            )

        def register(function: S) -> S:
            definition = define_sensor(
                function,
                kind=SensorKind.PUSH,
                name=name,
                job=job,
                jobs=jobs,
                backoff=DEFAULT_SENSOR_BACKOFF,
                timeout=timeout,
            )
            self._add_sensor(definition)
            if source is not None:
                self._sources[definition.name] = source
            return function

        return register

    def schedule(
        self,
        name: str,
        *,
        job: str,
        cron: str,
        timezone: str = "UTC",
        payload: Any = None,
        catch_up: str = "latest",
        max_catch_up: int = DEFAULT_MAX_CATCH_UP,
        grace: float = DEFAULT_GRACE,
        interval: float = DEFAULT_SCHEDULE_INTERVAL,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        """Run ``job`` once per tick of ``cron`` in ``timezone``: a poll sensor named ``name``.

        Each tick's run has run_key ``"{name}:{tick as ISO 8601 UTC}"`` and is
        committed in the transaction that moves the schedule's cursor to the
        tick, so a tick gets exactly one run across processes and crashes. A
        wall time skipped by a clock change is no tick; one repeated when the
        clocks go back is a tick at each real instant. Ticks missed while
        nothing evaluated the schedule run by ``catch_up``: ``"all"``,
        ``"latest"`` (the newest only) or ``"none"`` (only those less than
        ``grace`` seconds late), at most ``max_catch_up`` per evaluation (the
        newest). The run's payload is ``payload``, ``payload(tick)`` if it is
        a function, or ``{"tick": ISO}`` if it is None. The schedule is
        evaluated at its next tick, or after ``interval`` seconds if sooner.
        ``clock`` (an aware ``datetime`` now) replaces the store's clock, for
        tests. ``job`` must be registered first; any bad argument is a
        :class:`~ferryman.ConfigurationError` naming the schedule and field.
        """
        self._add_sensor(
            define_schedule(
                name,
                job=job,
                cron=cron,
                timezone=timezone,
                payload=payload,
                catch_up=catch_up,
                max_catch_up=max_catch_up,
                grace=grace,
                interval=interval,
                clock=clock,
                known_jobs=list(self._jobs),
            )
        )

    def _add_sensor(self, definition: SensorDefinition) -> None:
        if definition.name in self._sensors:
            raise ConfigurationError(f"sensor {definition.name!r} is registered twice")
        self._sensors[definition.name] = definition

    @property
    def sensor_definitions(self) -> dict[str, SensorDefinition]:
        """The registered poll and push sensors, by name."""
        return dict(self._sensors)

    # -- runs ----------------------------------------------------------------

    def submit(
        self, job: str, *run_requests: RunRequest, conn: sa.Connection | None = None
    ) -> SubmitResult:
        """Enqueue runs of ``job``; a ``run_key`` that already has a run is deduplicated.

        All requests are written in one transaction and have committed when
        this returns; on PostgreSQL that is one statement (one round trip),
        shared with the submits other threads of this process make at the
        same moment. With ``conn``, they are written in the caller's own
        transaction on the store database and commit or roll back with it.
        A request with a payload that is not JSON-serialisable refuses the
        whole batch before anything is written, and so does a run_key that
        cannot be stored exactly (it holds NUL or a lone surrogate); keys of
        any length are fine.
        """
        if len(run_requests) == 1:  # the usual call: one request, no batch to build
            return self.store.enqueue((self._jobs.new_run(job, run_requests[0]),), conn=conn)
        new_runs = self._jobs.new_runs((job, request) for request in run_requests)
        return self.store.enqueue(new_runs, conn=conn)

    def work(
        self,
        *,
        until_idle: bool = False,
        concurrency: int = 4,
        processes: int | None = None,
        jobs: Sequence[str] | None = None,
        prefetch: int | None = None,
        claim_batch: int = MAX_CLAIM,
        poll_interval: float = 0.5,
        grace_seconds: float = 30.0,
        handle_signals: bool = True,
        on_started: Callable[[], None] | None = None,
    ) -> WorkReport:
        """Claim and execute due runs; with ``until_idle``, return when none is due.

        ``concurrency`` job threads per process; ``processes`` forks that many
        worker processes (for CPU-bound jobs), each with ``concurrency``
        threads. A worker holds ``concurrency + prefetch`` runs at most; the
        default prefetch is what the threads get through in 0.5 s (up to
        4,000; none for long runs), so short runs are claimed ``claim_batch``
        at a time and long ones spread evenly over workers (see
        :mod:`ferryman.worker.pacing`). ``jobs``: some of the app's jobs only.
        On SIGTERM or SIGINT the worker stops claiming, gives running jobs
        ``grace_seconds`` and releases the rest without using up an attempt.
        ``on_started`` is called once the workers are up (after forking them):
        start threads of your own there, so that no child inherits them.
        """
        settings.work_settings(
            concurrency=concurrency,
            processes=processes,
            prefetch=prefetch,
            claim_batch=claim_batch,
            poll_interval=poll_interval,
            grace_seconds=grace_seconds,
        )
        make_worker = functools.partial(
            Worker,
            self.store,
            {name: self._jobs.definition(name) for name in (jobs or self._jobs)},
            lease_seconds=self.lease_seconds,
            concurrency=concurrency,
            prefetch=prefetch,
            claim_batch=claim_batch,
            poll_interval=poll_interval,
            grace_seconds=grace_seconds,
            plan_runs=self._jobs.new_runs,
        )
        if processes is None:
            worker = make_worker()
            if on_started is not None:
                on_started()
            return worker.run(until_idle=until_idle, handle_signals=handle_signals)
        return run_processes(
            make_worker,
            processes=processes,
            until_idle=until_idle,
            after_fork=functools.partial(_after_fork, self.store),
            on_started=on_started,
        )

    def run(
        self,
        *,
        concurrency: int = 4,
        jobs: Sequence[str] | None = None,
        prefetch: int | None = None,
        grace_seconds: float = 30.0,
        sensor_concurrency: int = 8,
        resume_transfers: bool = True,
    ) -> WorkReport:
        """The daemon: the sensor loop on a supervised thread, a worker on this one.

        Poll sensors are evaluated when due, each on its own thread (at most
        ``sensor_concurrency`` at once); evaluation history is pruned to
        ``evaluation_retention`` and push deliveries to ``delivery_retention``
        now and then. SIGTERM or SIGINT stop the
        worker (see :meth:`work`) and then the sensor loop.

        With ``resume_transfers``, standalone uploads (``ferryman upload``)
        that a crash left active are resumed on a background thread at
        start; transfers inside jobs resume with their runs.
        """
        if not self._jobs and not self._sensors:
            raise ConfigurationError("this app registers no job and no sensor: nothing to run")
        # Checked before anything starts, so a bad value leaves nothing half-started.
        settings.work_settings(
            concurrency=concurrency, prefetch=prefetch, grace_seconds=grace_seconds
        )
        settings.count("sensor_concurrency", sensor_concurrency, minimum=1)
        work = functools.partial(
            self.work,
            until_idle=False,
            concurrency=concurrency,
            jobs=jobs,
            prefetch=prefetch,
            grace_seconds=grace_seconds,
        )
        self._consumers = broker_consumers(self._sensor_engine, self._sources)
        return run_daemon_parts(
            SensorDaemon(
                self._sensor_engine,
                max_concurrent=sensor_concurrency,
                keep_last=self.evaluation_retention,
            ),
            work if self._jobs else None,
            consumers=self._consumers,
            resume_in=self.store if resume_transfers else None,
            prune=(
                DailyPrune(lambda: self.store, self.prune_finished_after)
                if self.prune_finished_after is not None
                else None
            ),
            grace_seconds=grace_seconds,
        )


def _after_fork(store: Store) -> None:
    """In a forked worker: the parent's connections and console belong to the parent."""
    store.after_fork()
    logs.after_fork()
