"""What a job sees of its run: identity, payload, fenced writes."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from ferryman.errors import FerrymanError, LeaseLost
from ferryman.store import ClaimedRun, Lease, Store
from ferryman.store.records import to_json


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
    ) -> None:
        self._run_store = store
        self._run = run
        self._lease_seconds = lease_seconds
        # Set by the heartbeat thread, read by the job's: a flag is enough.
        self._lease_lost = False
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
    def succeeded_in_transaction(self) -> bool:
        return self._succeeded_in_transaction

    def mark_lease_lost(self) -> None:
        self._lease_lost = True

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
                conn, self.lease, attempt=self.attempt, worker_id=self.worker_id
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
