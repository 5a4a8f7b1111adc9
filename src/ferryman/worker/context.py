"""What a job sees of its run: identity, payload, fenced writes."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from ferryman.errors import ConfigurationError, FerrymanError, LeaseLost
from ferryman.model import RunRequest
from ferryman.store import ClaimedRun, Lease, NewRun, Store
from ferryman.store.records import to_json

# Turns ``(job, request)`` pairs into runs to enqueue (the App's JobRegistry.new_runs).
PlanRuns = Callable[[Iterable[tuple[str, RunRequest]]], list[NewRun]]


class RunLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger whose records carry ``run_id``, ``job``, ``run_key`` and ``attempt``."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


class JobContext:
    """Handed to a job with its payload: who the run is, and its fenced writes.

    Every write through the context — :meth:`transaction`, :meth:`checkpoint`,
    :meth:`heartbeat` — only commits while this worker still holds the run's
    lease; otherwise it raises :class:`~ferryman.LeaseLost` and writes nothing.
    """

    def __init__(
        self,
        *,
        store: Store,
        run: ClaimedRun,
        worker_id: str,
        lease_seconds: float,
        timeout: float | None = None,
        plan_runs: PlanRuns | None = None,
    ) -> None:
        self._run_store = store
        self._run = run
        self._lease_seconds = lease_seconds
        # The attempt starts now (it may have waited in the worker since its
        # claim): its deadline on the database's clock, read at the claim.
        self._deadline = (
            None
            if timeout is None
            else run.claimed_at + (time.monotonic() - run.claimed_monotonic) + timeout
        )
        self._plan_runs = plan_runs
        self._children: list[NewRun] = []
        # Set by the heartbeat thread, read by the job's: a flag is enough.
        self._lease_lost = False
        self.ended_by: str | None = None  # why the attempt ended elsewhere (timeout, cancel)
        self._succeeded_in_transaction = False
        self._last_checkpoint = run.checkpoint
        self.worker_id = worker_id
        self._logger: RunLogger | None = None

    @property
    def logger(self) -> RunLogger:
        """A logger whose records carry the run's id, job, run_key and attempt."""
        if self._logger is None:
            run = self._run
            self._logger = RunLogger(
                logging.getLogger(f"ferryman.job.{run.job}"),
                {"run_id": run.id, "job": run.job, "run_key": run.run_key, "attempt": run.attempt},
            )
        return self._logger

    @property
    def run_id(self) -> int:
        return self._run.id

    @property
    def run_key(self) -> str:
        return self._run.run_key

    @property
    def job(self) -> str:
        return self._run.job

    @property
    def attempt(self) -> int:
        """1 for the first attempt; a run taken over after a lease expired counts up too."""
        return self._run.attempt

    @property
    def max_attempts(self) -> int:
        return self._run.max_attempts

    @property
    def payload(self) -> Any:
        return self._run.payload

    @property
    def lease(self) -> Lease:
        return self._run.lease

    @property
    def store(self) -> Store:
        """The store the run lives in.

        For ferryman's own helpers that write on the run's behalf, fenced by
        :attr:`lease` (:func:`ferryman.transfer.upload`); a job writes its
        effects through :meth:`transaction`.
        """
        return self._run_store

    @property
    def last_checkpoint(self) -> Any:
        """The newest checkpoint of this run, from this attempt or an earlier one."""
        return self._last_checkpoint

    @property
    def lease_lost(self) -> bool:
        """True once a heartbeat found that another worker took the run over."""
        return self._lease_lost

    @property
    def cancelled(self) -> bool:
        """True once the job should stop: cancelled, past its deadline, or taken over.

        Set by the worker's heartbeat (within ``lease_seconds / 3`` of a
        cancel) or at the deadline. Nothing the job writes afterwards commits.
        """
        return self._lease_lost

    @property
    def deadline(self) -> datetime | None:
        """When this attempt times out (``timeout`` seconds after it started), on the
        database's clock; None if the job has no timeout."""
        return None if self._deadline is None else datetime.fromtimestamp(self._deadline, UTC)

    @property
    def succeeded_in_transaction(self) -> bool:
        return self._succeeded_in_transaction

    @property
    def children(self) -> tuple[NewRun, ...]:
        """The runs :meth:`submit` asked for, enqueued with this run's success."""
        return tuple(self._children)

    def mark_lease_lost(self, reason: str | None = None) -> None:
        if reason is not None and self.ended_by is None:
            self.ended_by = reason
        self._lease_lost = True

    def submit(self, job: str, *run_requests: RunRequest) -> None:
        """Ask for runs of ``job`` that are enqueued if, and only if, this run succeeds.

        They are written in the same transaction as the run's success: in
        :meth:`transaction` when the job uses it, otherwise with the success
        the worker records when the job returns. A failed attempt enqueues
        nothing; the next attempt asks again. ``RunRequest.job`` overrides
        ``job``; run_keys are deduplicated as everywhere.
        """
        if self._succeeded_in_transaction:
            raise FerrymanError(
                f"run {self.run_id}: ctx.submit() after ctx.transaction() committed the "
                "run's success; submit before or inside the transaction"
            )
        if self._plan_runs is None:
            raise ConfigurationError("this worker was built without its app's jobs: no ctx.submit")
        self._children.extend(self._plan_runs((job, request) for request in run_requests))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        """A connection to the store database, in a transaction that completes the run.

        Whatever the job writes through the connection commits in the same
        transaction as the run's ``succeeded`` transition and its processing-log
        row, fenced by the lease: effect and record commit together or not at
        all. If the job raises inside the block, or the lease was lost, nothing
        is written. A run succeeds once, so the block can be entered once.
        """
        if self._succeeded_in_transaction:
            raise FerrymanError(
                f"run {self.run_id}: ctx.transaction() already committed this run's success; "
                "write all of the run's effects in one transaction"
            )
        if self._lease_lost:
            raise LeaseLost(self.run_id, self.lease.token)
        with self._run_store.transaction() as conn:
            yield conn
            self._run_store.succeed_within(
                conn,
                self.lease,
                attempt=self.attempt,
                worker_id=self.worker_id,
                children=self._children,
            )
        self._succeeded_in_transaction = True

    @contextlib.contextmanager
    def read(self) -> Iterator[sa.Connection]:
        """A connection to the store database for reads, in a transaction of its own.

        Read what the job needs here (a staging row, say) and do the slow part
        of the work before :meth:`transaction`, which holds the write lock on
        SQLite for as long as it is open. Reads are not fenced: nothing read
        here commits anything, and on SQLite the read never blocks a writer.
        """
        with self._run_store.read_for_job(self.run_id) as conn:
            yield conn

    def checkpoint(self, data: Any) -> None:
        """Durably record progress; a later attempt finds it in :attr:`last_checkpoint`."""
        data_json = to_json(data, f"checkpoint of run {self.run_id} ({self.job} {self.run_key!r})")
        self._run_store.checkpoint(
            self.lease, attempt=self.attempt, worker_id=self.worker_id, data_json=data_json
        )
        self._last_checkpoint = data

    def heartbeat(self) -> None:
        """Renew the lease now (the worker also does so every ``lease_seconds / 3``)."""
        lost = self._run_store.renew([self.lease], self._lease_seconds)
        if lost:
            self._lease_lost = True
            raise LeaseLost(self.run_id, self.lease.token)
