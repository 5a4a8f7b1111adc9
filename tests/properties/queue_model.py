"""The model the run queue's state machine checks the store against.

:class:`ModelRun` is what the documented rules say a run's row must hold;
:func:`check_row` compares a row with it, and :func:`check_progress` checks
what must hold between two moments: tokens never go down, a claim moves them
up, attempts only come down by a release or a retry, and the processing log
only grows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ferryman.model import Run, RunEvent, RunEventKind, RunStatus
from tests.properties.store_adapter import Lease

LONG_LEASE = 3600.0
LAPSE = 0.001
WORKERS = ("worker-a", "worker-b", "worker-c")
KEYS = tuple(f"key-{n}" for n in range(6))
BACKOFF = 3600.0  # a retry's wait that never passes by itself during a test
RETRY_DELAYS = (0.0, BACKOFF)
TERMINAL = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.DEAD, RunStatus.CANCELLED})
FINISHED = frozenset({RunStatus.FAILED, RunStatus.DEAD})
ENDINGS = ("succeeded", "attempt_failed", "rejected")
STALE_WRITES = ("transaction", "checkpoint", "heartbeat", "release", *ENDINGS)

QUEUED, RUNNING = RunStatus.QUEUED, RunStatus.RUNNING


@dataclass
class ModelRun:
    """What the store must hold for one run, by the documented rules."""

    id: int
    job: str
    run_key: str
    payload: Any
    max_attempts: int
    status: RunStatus = QUEUED
    attempt: int = 0
    token: int = 0
    owner: str | None = None
    lapsed: int | None = None  # when its lease lapsed, in lapse order; None while it holds
    due: bool = True  # while queued: may be claimed now (False: waiting out a backoff)
    checkpoint: Any = None
    last_error: str | None = None
    error_is_prefix: bool = False
    effects: int = 0


@dataclass(frozen=True)
class Held:
    """A lease a worker got from a claim; it stays in the list after it goes stale."""

    worker: str
    lease: Lease
    attempt: int


@dataclass(frozen=True)
class Snapshot:
    runs: dict[int, Run]
    events: dict[int, list[RunEvent]]
    effects: list[dict[str, Any]]


def check_row(row: Run, model: ModelRun) -> None:
    """The run's row holds what the documented rules say it must."""
    where = f"run {row.id} ({row.job} {row.run_key})"
    assert (row.job, row.run_key, row.max_attempts) == (
        model.job,
        model.run_key,
        model.max_attempts,
    )
    assert row.status is model.status, f"{where}: {row.status}, expected {model.status}"
    assert (row.attempt, row.lease_token) == (model.attempt, model.token), where
    assert row.lease_owner == model.owner, where
    assert (row.payload, row.checkpoint) == (model.payload, model.checkpoint), where
    assert (row.lease_expires_at is not None) == (row.status is RUNNING), where
    assert (row.finished_at is not None) == (row.status in TERMINAL), where
    if model.error_is_prefix:
        assert (row.last_error or "").startswith(model.last_error or ""), where
    else:
        assert row.last_error == model.last_error, where


def check_progress(old: Run, new: Run, old_events: list[RunEvent], snapshot: Snapshot) -> None:
    """Tokens never go down, a claim moves them up, and the log only ever grows."""
    events = snapshot.events[new.id]
    assert events[: len(old_events)] == old_events, f"run {new.id}: its log was rewritten"
    added = events[len(old_events) :]
    assert new.lease_token >= old.lease_token, f"run {new.id}: its token went down"
    kinds = {event.kind for event in added}
    if RunEventKind.CLAIMED in kinds:
        assert new.lease_token > old.lease_token, f"run {new.id}: claimed without a new token"
    if new.attempt < old.attempt:  # only a release gives an attempt back, a retry resets it
        assert kinds & {RunEventKind.RELEASED, RunEventKind.REQUEUED}, (
            f"run {new.id}: its attempt went down from {old.attempt} to {new.attempt}"
        )
