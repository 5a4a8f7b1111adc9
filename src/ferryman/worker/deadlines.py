"""Job timeouts: end an attempt that outlives its job's ``timeout``.

A worker with jobs that have a timeout runs one more supervised thread, the
**deadline watcher**. When an attempt passes its deadline the watcher writes
its end — a retry after the job's backoff, or ``dead`` on the last attempt,
with the error ``timed out after Ns`` — fenced by the attempt's lease, and
bumps the lease token in the same write, so nothing the job commits later
counts (:class:`~ferryman.LeaseLost`). The job sees ``ctx.cancelled`` turn
true. A Python thread cannot be stopped from outside: a job that ignores
``ctx.cancelled`` for ``grace_seconds`` more is reported to ``on_hung``, which
in a worker process (``work(processes=N)``) ends the process so that the
supervisor replaces it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ferryman.errors import StoreError
from ferryman.model import Backoff
from ferryman.store import ClaimedRun, Lease, Outcome, OutcomeKind, Store
from ferryman.supervise import describe_error
from ferryman.worker.context import JobContext
from ferryman.worker.outages import STORE_RETRY

log = logging.getLogger("ferryman.worker")

# The exit code of a worker process that ended itself because a job ignored
# its timeout; the supervisor replaces such a process at once.
EXIT_HUNG = 75


def timed_out_message(timeout: float) -> str:
    return f"timed out after {timeout:g}s"


@dataclass(slots=True)
class _Watched:
    run: ClaimedRun
    context: JobContext
    timeout: float
    backoff: Backoff
    due: float  # time.monotonic() of the deadline, then of the end of the grace
    ended: bool = False  # the timeout was written; now waiting for the job to return
    failures: int = 0


class DeadlineWatcher:
    """The attempts of one worker that have a deadline, and the thread that ends them."""

    def __init__(
        self,
        store: Store,
        worker_id: str,
        *,
        grace_seconds: float,
        closed: threading.Event,
        on_ended: Callable[[ClaimedRun, str], None],
        on_hung: Callable[[ClaimedRun], None],
    ) -> None:
        self.store = store
        self.worker_id = worker_id
        self.grace_seconds = grace_seconds
        self._closed = closed
        self._on_ended = on_ended
        self._on_hung = on_hung
        self._watched: dict[int, _Watched] = {}
        self._changed = threading.Condition()

    def watch(self, run: ClaimedRun, context: JobContext, timeout: float, backoff: Backoff) -> None:
        """Start the clock of an attempt that is about to run."""
        due = time.monotonic() + timeout
        with self._changed:
            self._watched[run.id] = _Watched(run, context, timeout, backoff, due)
            self._changed.notify_all()

    def done(self, run: ClaimedRun) -> bool:
        """The job returned; True if its attempt had already been ended by its timeout."""
        with self._changed:
            watched = self._watched.get(run.id)
            if watched is None or watched.run.lease != run.lease:
                return False
            del self._watched[run.id]
            return watched.ended

    def wake(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def loop(self) -> None:
        """The watcher thread: sleep until the next deadline, end what passed it."""
        while not self._closed.is_set():
            with self._changed:
                now = time.monotonic()
                due = [w for w in self._watched.values() if w.due <= now]
                if not due:
                    nearest = min((w.due for w in self._watched.values()), default=now + 1.0)
                    self._changed.wait(max(0.0, min(nearest - now, 1.0)))
                    continue
            for watched in due:
                if watched.ended:
                    self._hung(watched)
                else:
                    self._end(watched)

    def _end(self, watched: _Watched) -> None:
        run, message = watched.run, timed_out_message(watched.timeout)
        outcome = self._outcome(watched, message)
        try:
            accepted = self.store.time_out(
                outcome, timeout=watched.timeout, worker_id=self.worker_id
            )
        except StoreError as exc:
            watched.failures += 1
            watched.due = time.monotonic() + STORE_RETRY.delay(watched.failures, self.worker_id)
            log.warning("could not end a timed-out attempt, trying again: %s", exc)
            return
        watched.context.mark_lease_lost(message)
        with self._changed:
            watched.ended = True
            watched.due = time.monotonic() + self.grace_seconds
        fields = {"run_id": run.id, "job": run.job, "attempt": run.attempt}
        if accepted:
            log.warning("attempt %s; ended, ctx.cancelled tells the job", message, extra=fields)
            self._on_ended(run, outcome.kind.value)
        else:
            log.info("attempt %s, but its lease was already lost", message, extra=fields)

    def _outcome(self, watched: _Watched, message: str) -> Outcome:
        run = watched.run
        error = describe_error(TimeoutError(message))
        if run.attempt >= run.max_attempts:
            return Outcome(kind=OutcomeKind.DEAD, lease=run.lease, attempt=run.attempt, error=error)
        delay = watched.backoff.delay(run.attempt, f"{run.job}\x00{run.run_key}")
        return Outcome(
            kind=OutcomeKind.RETRY,
            lease=run.lease,
            attempt=run.attempt,
            error=error,
            retry_delay=delay,
        )

    def _hung(self, watched: _Watched) -> None:
        with self._changed:
            if self._watched.get(watched.run.id) is not watched:
                return  # it returned meanwhile
            watched.due = float("inf")  # reported once
        self._on_hung(watched.run)


def hung(
    store: Store,
    worker_id: str,
    run: ClaimedRun,
    others: list[Lease],
    grace: float,
    exit_process: Callable[[], object] | None,
) -> None:
    """A job ignored its timeout for ``grace`` seconds more.

    In a worker process (``exit_process``: called last, to report what the
    process did) end the process; its supervisor
    replaces it. Its other runs are released first (no attempt used), so they
    need not wait for their leases to expire. The hung job's attempt was
    already ended by its timeout; its connection dies with the process, and
    whatever it had not committed is rolled back. In a thread of the caller's
    process nothing can stop it: say so.
    """
    fields = {"run_id": run.id, "job": run.job, "attempt": run.attempt}
    if not exit_process:
        log.error(
            "job still running %.0fs after its timeout; a thread cannot be stopped, so it "
            "keeps a job slot, and nothing it writes commits",
            grace,
            extra=fields,
        )
        return
    log.error(
        "job still running %.0fs after its timeout; ending this worker process (exit %d) so "
        "that it is replaced",
        *(grace, EXIT_HUNG),
        extra=fields,
    )
    try:
        store.release(others, worker_id=worker_id, reason="worker process replaced: a job hung")
        store.worker_stopped(worker_id)
    except StoreError as exc:
        log.warning("could not release this process's runs; their leases will expire: %s", exc)
    try:
        exit_process()
    finally:
        os._exit(EXIT_HUNG)
