"""What a worker is given (a job's definition) and what it reports."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ferryman.model import Backoff, Rate

if TYPE_CHECKING:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class JobDefinition:
    name: str
    fn: Callable[..., Any]  # fn(ctx, payload); an async def one is awaited (async_jobs.py)
    max_attempts: int
    backoff: Backoff
    sensitive: frozenset[str] = frozenset()  # payload keys never shown (see App.job)
    timeout: float | None = None  # seconds an attempt may take (see App.job)
    priority: int = 0  # this and the three below: see App.job (enforced at claim time)
    concurrency: int | None = None
    key_concurrency: int = 1
    rate: Rate | None = None


@dataclass(slots=True)
class WorkReport:
    """What one call of :meth:`ferryman.App.work` did."""

    worker_id: str = ""
    claimed: int = 0
    succeeded: int = 0
    retried: int = 0
    failed: int = 0
    dead: int = 0
    lease_lost: int = 0
    released: int = 0  # given back without using an attempt (on stop, or the store failed)
    timed_out: int = 0  # attempts ended by their job's timeout (also counted retried or dead)
    errors: list[str] = field(default_factory=list)
    # "thread: error" of each crash of this process's background threads while it
    # worked (ferryman.supervise); a crash of a worker thread also stops the worker
    crashes: list[str] = field(default_factory=list)

    def count(self, outcomes: Mapping[str, int]) -> None:
        """Add attempts that ended, by outcome ("succeeded", "retry", "failed", "dead")."""
        for outcome, count in outcomes.items():
            attribute = _COUNTERS[outcome]
            setattr(self, attribute, getattr(self, attribute) + count)


# The WorkReport counter of each outcome.
_COUNTERS = {"succeeded": "succeeded", "retry": "retried", "failed": "failed", "dead": "dead"}
