"""What an attempt that raised comes to: failed at once, a retry after backoff, or dead.

Whatever a job raises is the outcome of its attempt, ``SystemExit`` and other
``BaseException`` included: a library calling ``sys.exit()`` fails the run,
never the worker. Only when the store's database failed under the attempt
(see :mod:`ferryman.worker.outages`) is the attempt given back: the job thread
releases the run, once the store answers again, without using an attempt.
``KeyboardInterrupt`` in the thread that called :meth:`~ferryman.worker.worker.Worker.run` means
"stop", as SIGINT does: no new claims, drain, release, then re-raise.
"""

from __future__ import annotations

import logging
import queue

from ferryman.errors import Reject
from ferryman.store import ClaimedRun, Outcome, OutcomeKind
from ferryman.supervise import describe_error
from ferryman.worker.definitions import JobDefinition

log = logging.getLogger("ferryman.worker")


def failure(run: ClaimedRun, definition: JobDefinition, exc: BaseException) -> Outcome:
    """Reject → failed now; any other error → retry after backoff, or dead."""
    fields = {"run_id": run.id, "job": run.job, "attempt": run.attempt}
    if isinstance(exc, Reject):
        log.info("run rejected: %s", exc.reason, extra=fields)
        return Outcome(
            kind=OutcomeKind.FAILED, lease=run.lease, attempt=run.attempt, error=exc.reason
        )
    error = describe_error(exc)
    if run.attempt >= run.max_attempts:
        log.warning("run dead after %d attempts: %r", run.attempt, exc, extra=fields)
        return Outcome(kind=OutcomeKind.DEAD, lease=run.lease, attempt=run.attempt, error=error)
    delay = definition.backoff.delay(run.attempt, f"{run.job}\x00{run.run_key}")
    log.info("run failed, retry in %.2fs: %r", delay, exc, extra=fields)
    return Outcome(
        kind=OutcomeKind.RETRY,
        lease=run.lease,
        attempt=run.attempt,
        error=error,
        retry_delay=delay,
    )


COMMIT_BATCH = 1000  # outcomes written per transaction at most


def next_batch(
    outcomes: queue.SimpleQueue[tuple[ClaimedRun, Outcome] | None],
) -> list[tuple[ClaimedRun, Outcome]] | None:
    """The committer's next batch: what is waiting, once one outcome is; None: stop.

    Taking whatever has piled up while the last batch was being written makes
    the batches grow with the load (group commit) without waiting for any.
    """
    first = outcomes.get()
    if first is None:
        return None
    batch = [first]
    while len(batch) < COMMIT_BATCH:
        try:
            item = outcomes.get_nowait()
        except queue.Empty:
            break
        if item is None:
            outcomes.put(None)  # stop after this batch
            break
        batch.append(item)
    return batch
