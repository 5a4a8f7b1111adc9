"""The App's methods for its runs once submitted: read, retry, cancel, and the workers.

:class:`RunOperations` is mixed into :class:`~ferryman.App`; submitting and
working stay in ``app.py``. Each method is one :class:`~ferryman.store.Store`
call, its arguments checked first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ferryman.errors import ConfigurationError
from ferryman.jobs import JobRegistry
from ferryman.model import JobSummary, Run, RunEvent, RunStatus, WorkerInfo
from ferryman.store import Store

__all__ = ["RunOperations"]


class RunOperations:
    """Reading the App's runs, putting them back, cancelling them; its workers."""

    lease_seconds: float
    _jobs: JobRegistry

    if TYPE_CHECKING:

        @property
        def store(self) -> Store: ...  # the App's: opened on first use

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

    def get_run_by_key(self, job: str, run_key: str) -> Run | None:
        """The run of ``job`` with ``run_key`` (a run_key yields one run per job), or None."""
        return self.store.get_run_by_key(job, run_key)

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
        since: float | None = None,
    ) -> list[int]:
        """Put failed or dead runs back in the queue under their run_key, with fresh attempts.

        ``since``: only runs that finished within that many seconds.
        """
        if run_ids is None and job is None and status is None:
            raise ConfigurationError("retry needs run ids, a job, or a status")
        statuses = (RunStatus.FAILED, RunStatus.DEAD) if status is None else (RunStatus(status),)
        for candidate in statuses:
            if candidate not in (RunStatus.FAILED, RunStatus.DEAD):
                raise ConfigurationError(
                    f"only failed or dead runs can be retried, not {candidate}"
                )
        return self.store.requeue(run_ids=run_ids, job=job, statuses=statuses, by=by, since=since)

    def cancel(self, run_id: int, *, by: str | None = None) -> Run | None:
        """Cancel a queued or running run; the run as cancelled, or None if it was neither.

        A running run's lease token is bumped, so nothing its job writes
        afterwards commits; the job sees ``ctx.cancelled`` at the worker's
        next heartbeat. ``by`` is recorded in the processing log.
        """
        return self.store.cancel(run_id, by=by)

    def cancel_runs(
        self, *, job: str | None = None, status: RunStatus | str, by: str | None = None
    ) -> list[int]:
        """Cancel every ``queued`` (or every ``running``) run of ``job`` or of all jobs."""
        wanted = RunStatus(status)
        if wanted not in (RunStatus.QUEUED, RunStatus.RUNNING):
            raise ConfigurationError(f"only queued or running runs can be cancelled, not {wanted}")
        return self.store.cancel_where(job=job, status=wanted, by=by)

    def status(self) -> list[JobSummary]:
        """Run counts per job and status, and how long the oldest due run has waited."""
        return self.store.summary(list(self._jobs))

    def workers(self, *, include_stopped: bool = False) -> list[WorkerInfo]:
        """Workers that sent a heartbeat within one lease period (and stopped ones if asked)."""
        return self.store.list_workers(
            alive_within=self.lease_seconds, include_stopped=include_stopped
        )
