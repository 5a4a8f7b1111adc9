"""The read model: what the HTTP API, the dashboard and ``/metrics`` read, as Store methods.

:class:`ReadModel` is mixed into :class:`~ferryman.store.Store`, so a page
asks ``app.store.overview(...)`` or ``app.store.run_detail(run_id)`` and gets
records back; no caller outside the store holds a connection. Each method is
one read transaction, so what it returns is one consistent picture. The
queries themselves are in :mod:`ferryman.store.read_queries`; single records
(a run, its processing log, a transfer and its parts) come from the same
queries the rest of ferryman uses.

Every list is paged by keyset (``before_id``, newest first) and every count
is read from an index (see :mod:`~ferryman.store.read_queries`), so a page
costs the same on the millionth run as on the first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import weakref
from collections.abc import Iterator, Mapping, Sequence

import sqlalchemy as sa

from ferryman.model import (
    Evaluation,
    EvaluationOutcome,
    Run,
    RunEvent,
    RunStatus,
    SensorState,
    Transfer,
    TransferPart,
    TransferStatus,
)
from ferryman.store import (
    history,
    processing_log,
    read_snapshots,
    read_views,
    run_search,
    run_tally,
)
from ferryman.store import read_queries as q
from ferryman.store.dialect import Backend, translated_errors
from ferryman.store.history import LagSlot, QueuePoint
from ferryman.store.queue import RunQueue
from ferryman.store.read_queries import (
    DEAD_LETTER_SAMPLE,
    DURATION_BUCKETS,
    FINISHING_KINDS,
    MAX_PAGE,
    ErrorGroup,
    Folded,
    Histogram,
    MinuteCount,
    Page,
    TransferTotals,
)
from ferryman.store.read_views import AttemptBar, DurationSlot, SlotCount, Timeline
from ferryman.store.read_workers import WorkerView, count_live_workers, list_workers
from ferryman.store.run_search import RunFilter, RunSearchPage
from ferryman.store.run_tally import RunTally
from ferryman.store.sensors import PAUSED, SensorQueries
from ferryman.store.transfers import TransferQueries

__all__ = [
    "DEAD_LETTER_SAMPLE",
    "DURATION_BUCKETS",
    "FINISHING_KINDS",
    "MAX_PAGE",
    "AttemptBar",
    "DurationSlot",
    "ErrorGroup",
    "Folded",
    "Histogram",
    "LagSlot",
    "MetricsReading",
    "MinuteCount",
    "Overview",
    "Page",
    "QueuePoint",
    "ReadModel",
    "RunCount",
    "RunDetail",
    "RunFilter",
    "RunSearchPage",
    "SensorDetail",
    "SlotCount",
    "Timeline",
    "TransferDetail",
    "TransferTotals",
    "WorkerView",
]

# Where ids are handed out at insert and committed in any order (PostgreSQL),
# /metrics folds a row of the log only once it is this old (see
# :func:`~ferryman.store.read_queries.fold_events`); SQLite commits in id order.
SETTLE_SECONDS = 5.0
# Each store's runs created and finished per slot, the slots long past remembered.
_SLOT_COUNTS: weakref.WeakKeyDictionary[ReadModel, history.SlotCounts] = weakref.WeakKeyDictionary()


# Runs by job and status, the database's clock when they were counted, and the
# processing-log id they include (see ferryman.store.run_tally).
RunCount = RunTally


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Overview:
    """What the overview page shows."""

    now: float
    counted_at: float | None  # when ``counts`` were taken; None: not counted yet (no counts)
    counts: dict[str, dict[RunStatus, int]]  # job -> status -> runs
    oldest_due_age: dict[str, float]  # job -> seconds its oldest due run has waited
    sensors: list[SensorState]  # failing first
    throughput: list[MinuteCount]  # the last hour, oldest minute first, no gaps
    live_workers: int
    active_transfers: int

    def total(self, status: RunStatus) -> int:
        return sum(by_status.get(status, 0) for by_status in self.counts.values())


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RunDetail:
    """A run with its processing log (oldest event first) and its transfers."""

    run: Run
    events: list[RunEvent]
    transfers: list[Transfer]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SensorDetail:
    """A sensor, a page of its evaluations and the newest moves of its cursor."""

    state: SensorState
    evaluations: Page[Evaluation]
    cursor_history: list[Evaluation]  # newest first


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TransferDetail:
    transfer: Transfer
    parts: list[TransferPart]  # by part number


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MetricsReading:
    """The gauges of one ``/metrics`` scrape; the counters are in the :class:`Folded`."""

    counts: dict[str, dict[RunStatus, int]]
    oldest_due_age: dict[str, float]
    transfers: dict[TransferStatus, TransferTotals]
    live_workers: int


class ReadModel:
    """The read-only Store methods behind the API, the dashboard and ``/metrics``."""

    backend: Backend
    runs: RunQueue
    transfers: TransferQueries

    @property
    def ids_in_commit_order(self) -> bool:
        raise NotImplementedError

    @property
    def sensors(self) -> SensorQueries:
        raise NotImplementedError

    def read(self, doing: str) -> contextlib.AbstractContextManager[sa.Connection]:
        raise NotImplementedError

    def write(self, doing: str) -> contextlib.AbstractContextManager[sa.Connection]:
        raise NotImplementedError

    def now(self) -> float:
        """The database's clock, in seconds since the epoch: the one every lease is measured by."""
        with self.read("reading the clock") as conn:
            return self.runs.now(conn)

    # -- runs ----------------------------------------------------------------

    def count_runs(self, previous: RunCount | None = None) -> RunCount:
        """Runs by job and status: ``previous`` carried forward by the processing log
        written since (see :mod:`~ferryman.store.run_tally`), or, without one or when
        that would read more, every run counted from the ``(job, status, id)`` index
        (about a tenth of a second per million runs)."""
        with self._read_snapshot("counting runs") as conn:
            at = self.runs.now(conn)
            if previous is not None:
                total = sum(sum(by.values()) for by in previous.counts.values())
                carried = run_tally.carry(conn, at, previous, total)
                if carried is not None:
                    return carried
            return run_tally.count(conn, at, self.runs.counts(conn))

    def saved_run_count(self) -> RunCount | None:
        """The count persisted last by :meth:`save_run_count` (any process's), if any."""
        with self.read("reading the saved count of runs") as conn:
            return run_tally.load(conn)

    def save_run_count(self, counted: RunCount) -> None:
        """Persist ``counted`` for the next server to carry forward (unless one newer is)."""
        with self.write("saving the count of runs") as conn:
            run_tally.save(conn, counted)

    @contextlib.contextmanager
    def _read_snapshot(self, doing: str) -> Iterator[sa.Connection]:
        """A read transaction whose statements all see one snapshot (repeatable read):
        SQLite's reads always do; PostgreSQL's and MariaDB's read committed do not."""
        engine = self.backend.read_engine
        with translated_errors(self.backend, doing), engine.connect() as conn:
            if engine.dialect.name != "sqlite":
                conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    def overview(
        self, *, alive_within: float, counted: RunCount | None = None, count: bool = True
    ) -> Overview:
        """The overview; ``counted`` (an earlier :meth:`count_runs`) saves counting again.
        Without it and with ``count`` False, the runs are not counted (``counted_at`` None)."""
        with self.read("reading the overview") as conn:
            at = self.runs.now(conn)
            if counted is None and count:
                counted = RunCount(counts=self.runs.counts(conn), at=at)
            return Overview(
                now=at,
                counted_at=None if counted is None else counted.at,
                counts={} if counted is None else counted.counts,
                oldest_due_age=q.oldest_due_age(conn, at),
                sensors=self._sensors_failing_first(conn),
                throughput=history.throughput(conn, self._slot_counts(), at),
                live_workers=count_live_workers(conn, at, alive_within=alive_within),
                active_transfers=q.count_active_transfers(conn),
            )

    def run_page(
        self,
        *,
        job: str | None = None,
        status: RunStatus | None = None,
        since: float | None = None,
        until: float | None = None,
        before_id: int | None = None,
        limit: int = 50,
    ) -> Page[Run]:
        """Runs newest first; ``since``/``until`` bound when they were created
        (see :func:`~ferryman.store.read_queries.list_runs`)."""
        with self.read("listing runs") as conn:
            return run_search.list_runs(
                conn,
                job=job,
                status=status,
                since=since,
                until=until,
                before_id=before_id,
                limit=limit,
            )

    def search_runs(
        self,
        found: RunFilter,
        *,
        before_id: int | None = None,
        after_id: int | None = None,
        limit: int = 50,
    ) -> RunSearchPage:
        """Runs newest first by any of :class:`~ferryman.store.run_search.RunFilter`'s fields,
        paged both ways (``before_id``: older, ``after_id``: newer)."""
        with self.read("searching runs") as conn:
            return run_search.search_runs(
                conn, found, before_id=before_id, after_id=after_id, limit=limit
            )

    def job_names(self) -> list[str]:
        """Every job that has runs; cheap however many runs there are."""
        with self.read("listing job names") as conn:
            return q.job_names(conn)

    def run_detail(self, run_id: int) -> RunDetail | None:
        """The run, its processing log and its transfers, read together."""
        with self.read("reading a run") as conn:
            run = self.runs.get_run(conn, run_id)
            if run is None:
                return None
            return RunDetail(
                run=run,
                events=self.runs.get_events(conn, run_id),
                transfers=self.transfers.list(conn, run_id=run_id)[::-1],
            )

    def timeline(self, *, since: float, until: float, job: str | None = None) -> Timeline:
        """The attempts of runs that finished in ``[since, until)`` or are running, claim to
        end; aggregated per slot when too many (see :func:`~ferryman.store.read_views.timeline`)."""
        with self.read("reading the timeline") as conn:
            return read_views.timeline(conn, since=since, until=until, job=job)

    def run_attempts(self, run_id: int) -> list[AttemptBar]:
        """Every attempt of one run, claim to end, from its processing log."""
        with self.read("reading a run's attempts") as conn:
            return read_views.attempt_bars(conn, [run_id])

    def durations(self, *, job: str, since: float, until: float) -> list[DurationSlot]:
        """Run duration percentiles of ``job`` per time slot (see
        :func:`~ferryman.store.read_views.durations`)."""
        with self.read("reading run durations") as conn:
            return read_views.durations(conn, job=job, since=since, until=until)

    def existing_run_keys(
        self, run_keys_by_job: Mapping[str, Sequence[str]]
    ) -> set[tuple[str, str]]:
        """The ``(job, run_key)`` pairs among ``run_keys_by_job`` that have a run."""
        with self.read("looking up run keys") as conn:
            return processing_log.existing_run_keys(conn, run_keys_by_job)

    def dead_letters(
        self, *, job: str | None = None, sample: int = DEAD_LETTER_SAMPLE
    ) -> list[ErrorGroup]:
        """Failed and dead runs grouped by job, status and error line, largest group first,
        from the newest ``sample`` of them."""
        with self.read("grouping failed runs") as conn:
            return q.dead_letters(conn, job=job, sample=sample)

    # -- sensors -------------------------------------------------------------

    def _sensors_failing_first(self, conn: sa.Connection) -> list[SensorState]:
        return sorted(
            read_views.push_failure_streaks(conn, self.sensors.states(conn)),
            key=lambda s: (-s.consecutive_failures, s.status != PAUSED, s.name),
        )

    def sensors_failing_first(self) -> list[SensorState]:
        """Every sensor in the store, failing first, then paused, then by name."""
        with self.read("listing sensors") as conn:
            return self._sensors_failing_first(conn)

    def last_outcomes(self, names: Sequence[str]) -> dict[str, EvaluationOutcome]:
        """The outcome of each named sensor's newest evaluation (none yet: left out)."""
        with self.read("reading sensors' last outcomes") as conn:
            return read_views.last_outcomes(conn, names)

    def evaluation_slots(self, sensor: str, *, since: float, until: float) -> list[SlotCount]:
        """A sensor's evaluations per time slot by outcome (its newest few thousand)."""
        with self.read("counting a sensor's evaluations") as conn:
            return read_views.evaluation_slots(conn, sensor, since=since, until=until)

    def _slot_counts(self) -> history.SlotCounts:
        return _SLOT_COUNTS.setdefault(self, history.SlotCounts())

    def queue_history(
        self,
        *,
        since: float,
        until: float,
        depth_at_count: int,
        counted_at: float,
        oldest_due_at: float | None,
    ) -> list[QueuePoint]:
        """The queue's depth and oldest due age over a window (see
        :func:`~ferryman.store.history.queue_history`)."""
        with self.read("reading the queue's history") as conn:
            return history.queue_history(
                conn,
                self._slot_counts(),
                since=since,
                until=until,
                depth_at_count=depth_at_count,
                counted_at=counted_at,
                oldest_due_at=oldest_due_at,
            )

    def sensor_lag(
        self, sensor: str, *, interval: float | None, since: float, until: float
    ) -> list[LagSlot]:
        """How late a sensor's evaluations started, per time slot (its newest few thousand)."""
        with self.read("reading a sensor's lag") as conn:
            return history.sensor_lag(conn, sensor, interval=interval, since=since, until=until)

    def runs_by_id(self, run_ids: Sequence[int]) -> list[Run]:
        """The runs of ``run_ids`` that exist, in the order asked."""
        with self.read("reading runs") as conn:
            return read_views.runs_by_id(conn, run_ids)

    def sensor_detail(
        self,
        name: str,
        *,
        outcome: EvaluationOutcome | None = None,
        before_id: int | None = None,
        limit: int = 50,
        history: int = 0,
    ) -> SensorDetail | None:
        """The sensor, a page of its evaluations (newest first) and its last ``history``
        cursor moves; None if the store has no such sensor."""
        with self.read("reading a sensor") as conn:
            state = self.sensors.state(conn, name)
            if state is None:
                return None
            (state,) = read_views.push_failure_streaks(conn, [state])
            page = q.list_evaluations(conn, name, outcome=outcome, before_id=before_id, limit=limit)
            moves = q.cursor_history(conn, name, limit=history) if history else []
            return SensorDetail(state=state, evaluations=page, cursor_history=moves)

    # -- transfers and workers -----------------------------------------------

    def transfer_page(
        self, *, status: TransferStatus | None = None, before_id: int | None = None, limit: int = 50
    ) -> Page[Transfer]:
        with self.read("listing transfers") as conn:
            return q.list_transfers(conn, status=status, before_id=before_id, limit=limit)

    def transfer_detail(self, transfer_id: int) -> TransferDetail | None:
        with self.read("reading a transfer") as conn:
            transfer = self.transfers.get(conn, transfer_id)
            if transfer is None:
                return None
            return TransferDetail(transfer=transfer, parts=self.transfers.parts(conn, transfer_id))

    def worker_views(self, *, alive_within: float) -> list[WorkerView]:
        """Workers newest first, live or not, each with the runs it holds."""
        with self.read("listing workers") as conn:
            return list_workers(conn, self.runs.now(conn), alive_within=alive_within)

    # -- /metrics ------------------------------------------------------------

    def read_metrics(
        self,
        folded: Folded | None,
        *,
        alive_within: float,
        counted: RunCount | None = None,
        count: bool = True,
    ) -> MetricsReading:
        """The gauges now, and the log and evaluations written since ``folded`` last saw them
        folded into it (in place; None: the gauges alone); ``counted`` (a fresh
        :meth:`count_runs`) saves counting; without it and with ``count`` False, the
        runs are not counted (no ``counts``)."""
        with self.read("reading metrics") as conn:
            now = self.runs.now(conn)
            cutoff = now if self.ids_in_commit_order else now - SETTLE_SECONDS
            if counted is not None:
                counts = counted.counts
            else:
                counts = self.runs.counts(conn) if count else {}
            reading = MetricsReading(
                counts=counts,
                oldest_due_age=q.oldest_due_age(conn, now),
                transfers=q.transfer_totals(conn),
                live_workers=count_live_workers(conn, now, alive_within=alive_within),
            )
            if folded is not None:
                q.fold_events(conn, folded, cutoff)
                q.fold_evaluations(conn, folded, cutoff)
            return reading

    def saved_folded(self) -> Folded | None:
        """The /metrics totals saved last by :meth:`save_folded` (any process's), if any."""
        with self.read("reading the saved metrics") as conn:
            found = read_snapshots.load(conn, read_snapshots.METRICS)
        return None if found is None else read_snapshots.folded_from(found[0], found[1])

    def save_folded(self, folded: Folded) -> None:
        """Save the /metrics totals for the next server to carry forward."""
        body = read_snapshots.folded_json(folded)
        with self.write("saving the metrics") as conn:
            at = self.runs.now(conn)
            read_snapshots.save(conn, read_snapshots.METRICS, folded.event_watermark, body, at)
