"""What an attempt that raised comes to: failed at once, a retry after backoff, or dead."""

from __future__ import annotations

import logging

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
