"""Many push messages of one sensor delivered in one store transaction.

The rules are those of a single delivery (:meth:`SensorEngine.deliver`):
the sensor runs once per message, outside any transaction; a message whose
delivery is already recorded writes nothing and gets its first evaluation
back; a message the sensor cannot handle gets a ``failed`` evaluation and
no delivery. What changes is the commit: every evaluation of the batch —
its runs, its delivery row, or its failure — commits in ONE transaction, so
a broker consumer pays one commit per batch, not one per message, and may
acknowledge the whole batch once :func:`deliver_many` has returned.

If the store fails, :class:`~ferryman.StoreError` is raised and nothing of
the batch was recorded: none of its messages may be acknowledged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ferryman.errors import ConfigurationError, StoreError
from ferryman.logs import error_summary, process_id
from ferryman.model import Evaluation, SensorState
from ferryman.sensors.calls import shown_id
from ferryman.sensors.engine import SensorEngine, _log_evaluation, present_evaluation
from ferryman.sensors.registry import SensorKind
from ferryman.store import PushCommit, PushFailure
from ferryman.store.records import checked_key
from ferryman.store.sensors import RUNNING
from ferryman.worker.worker import describe_error

log = logging.getLogger("ferryman.sensors")


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivered:
    """What became of one message of a batch.

    ``created``: this call recorded the evaluation (False: a redelivery, the
    first evaluation is returned). ``retry_later``: the sensor is paused; the
    message was not processed, through no fault of its own, and should be
    delivered again once the sensor is resumed (not dead-lettered).
    """

    evaluation: Evaluation
    created: bool
    retry_later: bool = False


def deliver_many(
    engine: SensorEngine,
    name: str,
    messages: Sequence[tuple[str, Any]],
    *,
    refused: Sequence[tuple[str, str]] = (),
) -> list[Delivered]:
    """Deliver ``(message_id, payload)`` pairs to push sensor ``name``; one commit for all.

    ``refused`` are ``(message_id, reason)`` pairs of messages that never
    reach the sensor (their payload did not decode, say): each is recorded
    as a ``failed`` evaluation with its reason, in the same transaction.

    Returns one :class:`Delivered` per message, then one per refused
    message, in order. A message id given twice among ``messages`` is
    evaluated once; the second gets the first's evaluation with
    ``created=False``.
    """
    definition = engine.definition(name, SensorKind.PUSH)
    for message_id, _ in messages:
        if not isinstance(message_id, str) or not message_id:
            raise ConfigurationError(f"message_id must be a non-empty string, got {message_id!r}")
        checked_key(message_id, f"message_id of sensor {name!r}")
    if not messages and not refused:
        return []
    engine.ensure([definition])
    unique = list(dict.fromkeys(message_id for message_id, _ in messages))
    state, earlier, started = engine.store.find_push_deliveries(name, unique)
    if state is None:
        raise StoreError(f"sensor {name!r} has no row in the store")
    batch = _Batch(name=name, started=started, evaluator=process_id())
    payloads = {message_id: payload for message_id, payload in reversed(messages)}
    fresh = [message_id for message_id in unique if message_id not in earlier]
    commits, failures = _evaluate_all(engine, batch, state, fresh, payloads)
    refusals = [batch.failure(message_id, reason) for message_id, reason in refused]
    committed, failed = engine.store.commit_push_batch(commits, failures + refusals)
    outcome: dict[str, Delivered] = {
        message_id: Delivered(evaluation=present_evaluation(evaluation), created=False)
        for message_id, evaluation in earlier.items()
    }
    for commit, (evaluation, created) in zip(commits, committed, strict=True):
        if created:
            _log_evaluation(evaluation)
        outcome[commit.message_id] = Delivered(
            evaluation=present_evaluation(evaluation), created=created
        )
    paused = state.status != RUNNING
    for failure, evaluation in zip(failures, failed, strict=False):
        log.warning("delivery failed: %s", error_summary(failure.error), extra={"sensor": name})
        outcome[failure.message_id] = Delivered(
            evaluation=present_evaluation(evaluation), created=True, retry_later=paused
        )
    return _in_order(messages, outcome) + [
        Delivered(evaluation=present_evaluation(evaluation), created=True)
        for evaluation in failed[len(failures) :]
    ]


def _in_order(
    messages: Sequence[tuple[str, Any]], outcome: dict[str, Delivered]
) -> list[Delivered]:
    """One :class:`Delivered` per message as given; a repeated id is not created again."""
    seen: set[str] = set()
    delivered = []
    for message_id, _ in messages:
        first = outcome[message_id]
        delivered.append(first if message_id not in seen else _again(first))
        seen.add(message_id)
    return delivered


@dataclass(frozen=True, slots=True, kw_only=True)
class _Batch:
    """What every evaluation of one batch shares."""

    name: str
    started: float
    evaluator: str

    def failure(self, message_id: str, error: str) -> PushFailure:
        return PushFailure(
            sensor=self.name,
            message_id=message_id,
            error=error,
            started_at=self.started,
            evaluator=self.evaluator,
        )


def _evaluate_all(
    engine: SensorEngine,
    batch: _Batch,
    state: SensorState,
    fresh: Sequence[str],
    payloads: dict[str, Any],
) -> tuple[list[PushCommit], list[PushFailure]]:
    """Call the sensor on each message not delivered before: the commits, the failures.

    A paused sensor is not called: each message fails, to be delivered again
    once the sensor is resumed.
    """
    if state.status != RUNNING:
        return [], [
            batch.failure(
                message_id,
                f"sensor {batch.name!r} is paused: message {shown_id(message_id)} was not "
                "processed; it is delivered again after the sensor is resumed",
            )
            for message_id in fresh
        ]
    definition = engine.definition(batch.name, SensorKind.PUSH)
    messages = [(message_id, payloads[message_id]) for message_id in fresh]
    try:  # the calls handed to the sensor's thread at once, not one by one
        outcomes = engine.push_commits(definition, state, batch.started, messages)
    except Exception:  # a fault of ferryman's own: each message alone, so only its own fails
        outcomes = [_evaluate(engine, batch.name, state, batch.started, m, payloads) for m in fresh]
    commits: list[PushCommit] = []
    failures: list[PushFailure] = []
    for message_id, outcome in zip(fresh, outcomes, strict=True):
        if isinstance(outcome, PushCommit):
            commits.append(outcome)
        else:
            failures.append(batch.failure(message_id, outcome))
    return commits, failures


def _again(first: Delivered) -> Delivered:
    return Delivered(evaluation=first.evaluation, created=False, retry_later=first.retry_later)


def _evaluate(
    engine: SensorEngine,
    name: str,
    state: SensorState,
    started: float,
    message_id: str,
    payloads: dict[str, Any],
) -> PushCommit | str:
    """Call the sensor on one message; the commit to make, or why it failed."""
    definition = engine.definition(name, SensorKind.PUSH)
    try:
        return engine.push_commit(definition, state, started, message_id, payloads[message_id])
    except Exception as exc:  # a fault of ferryman's own: this message fails, not the batch
        return (
            f"the delivery of message {shown_id(message_id)} failed inside ferryman: "
            f"{describe_error(exc)}"
        )
