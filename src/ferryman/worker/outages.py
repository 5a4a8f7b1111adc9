"""What a worker does when the store fails under it, so that no attempt is lost to an outage.

* **An attempt cut short** by a failure of the store's database (see
  :mod:`ferryman.store.faults`) is given back: the job thread releases the
  run, retrying until the store answers, with its attempt counter
  decremented. What the attempt wrote through ``ctx.transaction()`` was
  rolled back with the failed transaction, so the run can safely be done
  again; if the commit did land before the connection dropped, the run is
  ``succeeded`` and the fenced release leaves it alone.
* **A claim whose answer was lost** (committed, then the connection dropped)
  leaves runs leased to a worker that does not know it holds them; after a
  failed claim the worker releases whatever the store says it holds and it
  does not.

A run given back :data:`GIVE_BACK_LIMIT` times in a row by one worker counts
its next failure: a job that makes the store fail itself (kills its own
connection, fills the disk) must not loop for ever.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Collection, Sequence

from ferryman.errors import StoreError
from ferryman.model import Backoff
from ferryman.store import ClaimedRun, Store
from ferryman.store.faults import caused_by_store
from ferryman.supervise import first_line

log = logging.getLogger("ferryman.worker")

GIVE_BACK_LIMIT = 10
# Between tries of a store write that failed (claims, outcomes, releases).
STORE_RETRY = Backoff(base=0.2, factor=2.0, max=5.0)


class Outages:
    """One worker's bookkeeping of the store failing under it."""

    def __init__(self, store: Store, worker_id: str, *, stop_trying: threading.Event) -> None:
        self.store = store
        self._worker_id = worker_id
        self._stop_trying = stop_trying  # set when the worker shuts down
        self._given_back: dict[int, int] = {}  # run id -> attempts given back in a row
        self.orphans_possible = False  # a claim failed: it may have leased runs all the same

    def may_give_back(self, run: ClaimedRun, exc: BaseException) -> bool:
        """Whether ``exc`` is the store's failure and the run's attempt may be given back."""
        if not caused_by_store(exc):
            self.forget(run.id)
            return False
        given = self._given_back.get(run.id, 0)
        if given >= GIVE_BACK_LIMIT:
            log.warning(
                "the store failed under this run %d times in a row; this time the attempt "
                "counts: %r",
                given,
                exc,
                extra={"run_id": run.id, "job": run.job, "attempt": run.attempt},
            )
            self.forget(run.id)
            return False
        if len(self._given_back) > 10_000:  # runs that went on to other workers
            self._given_back.clear()
        self._given_back[run.id] = given + 1
        return True

    def forget(self, run_id: int) -> None:
        """The run's attempt ended otherwise: the count of give-backs in a row starts over."""
        self._given_back.pop(run_id, None)

    def give_back(self, run: ClaimedRun, exc: BaseException) -> bool | None:
        """Release the run, retrying until the store answers.

        True: released, its attempt not used. False: no longer this worker's
        (its success committed before the connection dropped, or its lease
        was lost). None: the worker is shutting down; the run is still held.
        """
        reason = f"the store failed during the attempt, which does not count: {first_line(exc)}"
        failures = 0
        while True:
            try:
                released = self.store.release(
                    [run.lease], worker_id=self._worker_id, reason=reason[:1000]
                )
                break
            except StoreError as store_exc:
                failures += 1
                delay = STORE_RETRY.delay(failures, self._worker_id)
                log.warning("giving a run back failed, retrying in %.1fs: %s", delay, store_exc)
                if self._stop_trying.wait(delay):
                    return None
        fields = {"run_id": run.id, "job": run.job, "attempt": run.attempt}
        if released:
            log.warning(
                "the store failed under the job; run released, attempt not used: %r",
                exc,
                extra=fields,
            )
        else:
            log.warning(
                "the store failed under the job, and the run is no longer this worker's: its "
                "success committed before the connection dropped, or its lease was lost",
                extra=fields,
            )
        return bool(released)

    def release_orphans(self, held: Collection[int]) -> int:
        """After a failed claim: release the runs leased to this worker beyond ``held``.

        Left alone, they would wait out their leases and be taken over with
        an attempt counted, although no job ever ran them. Returns how many.
        """
        try:
            released = self.store.release_unheld(
                worker_id=self._worker_id,
                held=held,
                reason="claimed while the store's answer was lost; never started",
            )
        except StoreError as exc:
            log.warning("could not look for runs claimed without an answer, later: %s", exc)
            return 0
        self.orphans_possible = False
        if released:
            log.warning(
                "released %d runs a claim had leased to this worker while its answer was lost",
                len(released),
            )
        return len(released)


def register(
    store: Store, worker_id: str, jobs: Sequence[str], *, stopping: threading.Event
) -> bool:
    """Record a starting worker in the store, retrying as the worker's loops do.

    False if ``stopping`` was set before the store could be written.
    """
    tries = 0
    while not stopping.is_set():
        try:
            store.register_worker(
                worker_id=worker_id, host=socket.gethostname(), pid=os.getpid(), jobs=jobs
            )
            return True
        except StoreError as exc:
            tries += 1
            delay = STORE_RETRY.delay(tries, worker_id)
            log.warning(
                "registering the worker failed (try %d), retrying in %.1fs: %s", tries, delay, exc
            )
            stopping.wait(delay)
    return False
