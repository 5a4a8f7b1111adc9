"""An App's jobs by name, and how a run request becomes a run to enqueue.

:meth:`ferryman.App.submit` and the sensor engine both turn
:class:`~ferryman.RunRequest` objects into runs here, so a request is checked
the same way whichever door it came in by: its job must be registered, its
payload JSON, its run_key storable exactly (:class:`~ferryman.PayloadError`
naming the request otherwise).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timedelta

from ferryman.errors import ConfigurationError, PayloadError, UnknownJob
from ferryman.model import RunRequest
from ferryman.store import NewRun
from ferryman.store.records import shown_key, to_json
from ferryman.worker.worker import JobDefinition


class JobRegistry(Mapping[str, JobDefinition]):
    """The registered jobs, by name; filled while the App is defined, read afterwards."""

    def __init__(self) -> None:
        self._jobs: dict[str, JobDefinition] = {}

    def __getitem__(self, name: str) -> JobDefinition:
        return self._jobs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._jobs)

    def __len__(self) -> int:
        return len(self._jobs)

    def add(self, definition: JobDefinition) -> None:
        if definition.name in self._jobs:
            raise ConfigurationError(f"job {definition.name!r} is registered twice")
        self._jobs[definition.name] = definition

    def definition(self, name: str) -> JobDefinition:
        """The job called ``name``, or :class:`~ferryman.UnknownJob` listing the known ones."""
        try:
            return self._jobs[name]
        except KeyError:
            raise UnknownJob(name, list(self._jobs)) from None

    def new_runs(self, requests: Iterable[tuple[str, RunRequest]]) -> list[NewRun]:
        """The runs to enqueue for ``(job, request)`` pairs; ``request.job`` wins when set.

        Refuses the whole list (UnknownJob, PayloadError) before anything is written.
        """
        new_runs = []
        # Looked up once per job in the batch, not once per run.
        definitions: dict[str, JobDefinition] = {}
        for job, request in requests:
            name = request.job or job
            definition = definitions.get(name)
            if definition is None:
                definition = definitions[name] = self.definition(name)
            try:
                payload_json = to_json(request.payload, "payload")
            except PayloadError:
                # Named only when refused: naming costs more than a small payload's JSON.
                to_json(
                    request.payload,
                    f"payload of job {definition.name!r} run_key {shown_key(request.run_key)}",
                )
                raise
            delay, not_before = (
                (0.0, None) if request.not_before is None else _due(request.not_before)
            )
            new_runs.append(
                NewRun(
                    job=definition.name,
                    run_key=request.run_key,
                    payload_json=payload_json,
                    max_attempts=definition.max_attempts,
                    priority=definition.priority if request.priority is None else request.priority,
                    delay=delay,
                    not_before=not_before,
                    concurrency_key=request.concurrency_key,
                )
            )
        return new_runs


def _due(not_before: datetime | timedelta | None) -> tuple[float, float | None]:
    """``(delay, not_before)`` of a new run: seconds after the database's now, or an instant.

    A timedelta is measured from the store's clock when the run is written,
    not from this host's; an aware datetime is an instant, whatever its zone.
    """
    if isinstance(not_before, timedelta):
        return max(0.0, not_before.total_seconds()), None
    if isinstance(not_before, datetime):
        return 0.0, not_before.timestamp()
    return 0.0, None
