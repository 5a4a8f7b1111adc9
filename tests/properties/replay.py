"""A run's state rebuilt from its processing log alone.

The log is the record operators read (``ferryman runs show``) and the crash
tests audit; it must tell the whole story. :func:`replay` applies each event
to the state it leaves, checking on the way that the event could happen
there, and returns the status, attempt and lease token the run's row must
hold. It knows nothing of how the store writes; it knows only the meaning of
each event:

* ``claimed`` gives the run a new lease: the token goes up by one, the
  attempt by one, and the worker named becomes the holder;
* ``lease_expired`` is followed by the takeover's ``claimed``, or by
  ``dead`` on the last attempt, which also moves the token on;
* ``released`` gives the attempt back and moves the token on;
* the holder's writes (``checkpointed``, ``succeeded``, ``retry_scheduled``,
  ``failed``, ``dead``) carry the holder's worker, token and attempt;
* ``requeued`` starts a fresh budget (attempt 0) for a failed or dead run;
  ``cancelled`` ends a queued or running one and moves the token on;
* an ending with ``timeout`` in its detail was written by the worker's
  deadline watcher, which moves the token on too;
* ``submitted`` (the runs a run asked for) follows its success.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ferryman.model import RunEvent, RunEventKind, RunStatus


class LogInconsistent(AssertionError):
    """An event that cannot follow the ones before it."""


@dataclass(frozen=True, slots=True)
class Replayed:
    status: RunStatus
    attempt: int
    lease_token: int
    holder: str | None  # the worker whose lease is current, while running
    successes: int


@dataclass(slots=True)
class _State:
    status: RunStatus | None = None
    attempt: int = 0
    token: int = 0
    holder: str | None = None
    expired: bool = False
    successes: int = 0


def _require(condition: bool, event: RunEvent, state: _State, what: str) -> None:
    if not condition:
        raise LogInconsistent(
            f"event {event.kind.value} (attempt {event.attempt}, worker {event.worker_id}, "
            f"token {event.lease_token}) cannot follow status {state.status}, attempt "
            f"{state.attempt}, token {state.token}, holder {state.holder}: {what}"
        )


def _holder_write(event: RunEvent, state: _State) -> None:
    _require(state.status is RunStatus.RUNNING, event, state, "the run is not running")
    _require(not state.expired, event, state, "the lease was declared expired")
    _require(event.lease_token == state.token, event, state, "not the current token")
    _require(event.attempt == state.attempt, event, state, "not the current attempt")
    _require(event.worker_id == state.holder, event, state, "not written by the holder")


def _apply(event: RunEvent, state: _State) -> None:
    kind = event.kind
    if kind is RunEventKind.REQUESTED:
        _require(state.status is None and event.attempt == 0, event, state, "requested twice")
        state.status = RunStatus.QUEUED
    elif kind is RunEventKind.CLAIMED:
        due = state.status is RunStatus.QUEUED or state.expired
        _require(due, event, state, "claimed while neither queued nor expired")
        _require(event.attempt == state.attempt + 1, event, state, "attempt not one more")
        _require(event.lease_token == state.token + 1, event, state, "token not one more")
        state.status, state.expired = RunStatus.RUNNING, False
        state.attempt, state.token, state.holder = event.attempt, state.token + 1, event.worker_id
    elif kind is RunEventKind.LEASE_EXPIRED:
        _require(state.status is RunStatus.RUNNING, event, state, "no lease to expire")
        _require(event.attempt == state.attempt, event, state, "not the current attempt")
        state.expired = True
    elif kind is RunEventKind.DEAD and state.expired:  # the last attempt's lease expired
        _require(event.attempt == state.attempt, event, state, "not the current attempt")
        state.status, state.expired, state.holder = RunStatus.DEAD, False, None
        state.token += 1
    elif kind is RunEventKind.CHECKPOINTED:
        _holder_write(event, state)
    elif kind in _ENDINGS:
        _holder_write(event, state)
        state.status, state.holder = _ENDINGS[kind], None
        state.successes += kind is RunEventKind.SUCCEEDED
        if "timeout" in event.detail:  # ended by the job's timeout, which revoked the lease
            state.token += 1
    elif kind is RunEventKind.RELEASED:
        _require(state.status is RunStatus.RUNNING, event, state, "nothing to release")
        _require(event.worker_id == state.holder, event, state, "released by another worker")
        _require(event.attempt == state.attempt - 1, event, state, "attempt not given back")
        state.status, state.expired, state.holder = RunStatus.QUEUED, False, None
        state.attempt, state.token = event.attempt, state.token + 1
    elif kind is RunEventKind.REQUEUED:
        finished = state.status in (RunStatus.FAILED, RunStatus.DEAD)
        _require(finished, event, state, "only failed or dead runs are requeued")
        state.status, state.attempt = RunStatus.QUEUED, 0
    elif kind is RunEventKind.CANCELLED:
        cancellable = state.status in (RunStatus.QUEUED, RunStatus.RUNNING)
        _require(cancellable, event, state, "only queued or running runs are cancelled")
        state.status, state.expired, state.holder = RunStatus.CANCELLED, False, None
        state.token += 1  # a running run's lease is revoked with it
    elif kind is RunEventKind.SUBMITTED:
        _require(state.status is RunStatus.SUCCEEDED, event, state, "submitted without success")
    else:
        raise LogInconsistent(f"unknown event {kind}")


_ENDINGS = {
    RunEventKind.SUCCEEDED: RunStatus.SUCCEEDED,
    RunEventKind.RETRY_SCHEDULED: RunStatus.QUEUED,
    RunEventKind.FAILED: RunStatus.FAILED,
    RunEventKind.DEAD: RunStatus.DEAD,
}


def replay(events: Sequence[RunEvent]) -> Replayed:
    """The state ``events`` leave a run in; :class:`LogInconsistent` if they cannot happen."""
    state = _State()
    for event in events:
        _apply(event, state)
    if state.status is None:
        raise LogInconsistent("a run's log starts with its request")
    return Replayed(
        status=state.status,
        attempt=state.attempt,
        lease_token=state.token,
        holder=state.holder if state.status is RunStatus.RUNNING else None,
        successes=state.successes,
    )
