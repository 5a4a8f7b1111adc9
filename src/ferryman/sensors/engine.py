"""Sensor evaluation: user code outside any transaction, results committed by the rules.

A **poll evaluation** reads the sensor's ``(cursor, state_version)``, calls
``fn(ctx, cursor)`` with no transaction open, then commits the requested
runs, the evaluation row and the new cursor in one transaction whose
compare-and-swap on ``state_version`` decides whether it counts (see
:mod:`ferryman.store.sensors`). The cursor never moves before the runs it
stands for are durable, and never moves backwards: an evaluator that lost the
race records a ``conflict`` and nothing else.

A **failure** — an exception, a result that is not a
:class:`~ferryman.SensorResult`, a run routed to a job the sensor may not
use, a payload that is not JSON, a stored cursor this code cannot read, or
the function outliving its ``timeout`` — leaves the cursor where it was,
records a ``failed`` evaluation with the error, and makes the sensor wait
``backoff.delay(consecutive_failures, key=name)`` before it is due again.
The failure bumps ``state_version`` too, so nothing that evaluation
computed can commit later.

A **push evaluation** runs ``fn(ctx, message)`` once per message: its
evaluation carries the idempotency key ``push:{sensor}:{message_id}``,
unique in the store, so a redelivered message writes nothing and gets the
first delivery's evaluation back. A failed delivery is recorded without the
key, so delivering the message again runs the sensor again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from ferryman.errors import ConfigurationError, PayloadError, StoreError, UnknownJob, UnknownSensor
from ferryman.model import (
    Evaluation,
    EvaluationOutcome,
    Message,
    RunRequest,
    SensorResult,
    SensorState,
)
from ferryman.sensors.context import SensorContext
from ferryman.sensors.cursor import UnreadableCursor, decode_cursor, encode_cursor, shown_cursor
from ferryman.sensors.registry import RoutingError, SensorDefinition, SensorKind
from ferryman.store import NewRun, PollCommit, PollFailure, PushCommit, Store
from ferryman.store.sensors import PAUSED, RUNNING
from ferryman.worker.worker import describe_error

log = logging.getLogger("ferryman.sensors")

TICK_THREADS = 8
T = TypeVar("T")
NewRunsFactory = Callable[[Sequence[tuple[str, RunRequest]]], list[NewRun]]


class SensorOutputError(ValueError):
    """A sensor returned something that is not what its kind must return."""


# Errors in what a sensor returned are explained in one line; anything else
# the sensor raised is kept with its (trimmed) traceback.
_OUTPUT_ERRORS = (SensorOutputError, RoutingError, UnknownJob, PayloadError)


def evaluator_id() -> str:
    """Who evaluated: host and process, kept on each evaluation row."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(slots=True)
class _Called(Generic[T]):
    value: T | None = None
    error: BaseException | None = None
    timed_out: bool = False


def call_with_timeout(fn: Callable[[], T], timeout: float | None, *, name: str) -> _Called[T]:
    """Call ``fn``; with a ``timeout``, on a thread of its own that is abandoned if late.

    Python cannot stop a thread, so a late call keeps running in the
    background; its result is dropped, never committed.
    """
    outcome: _Called[T] = _Called()
    if timeout is None:
        try:
            outcome.value = fn()
        except Exception as exc:
            outcome.error = exc
        return outcome
    done = threading.Event()

    def target() -> None:
        try:
            outcome.value = fn()
        except BaseException as exc:  # reported to the evaluating thread, not lost
            outcome.error = exc
        finally:
            done.set()

    threading.Thread(target=target, name=name, daemon=True).start()
    if not done.wait(timeout):
        return _Called(timed_out=True)
    return outcome


@dataclass(frozen=True, slots=True)
class _Prepared:
    new_runs: list[NewRun]
    cursor: str | None
    skipped: int


def present_state(state: SensorState) -> SensorState:
    """The state as users see it: the cursor decoded (or as stored, if unreadable)."""
    return replace(state, cursor=shown_cursor(state.name, state.cursor))


def present_evaluation(evaluation: Evaluation) -> Evaluation:
    return replace(
        evaluation,
        cursor_before=shown_cursor(evaluation.sensor, evaluation.cursor_before),
        cursor_after=shown_cursor(evaluation.sensor, evaluation.cursor_after),
    )


class SensorEngine:
    """Evaluates an app's sensors against its store, by the commit rules above."""

    def __init__(
        self,
        store: Callable[[], Store],
        definitions: Mapping[str, SensorDefinition],
        new_runs: NewRunsFactory,
    ) -> None:
        self._store = store
        self.definitions = definitions
        self._new_runs_factory = new_runs
        self._ensured: set[str] = set()
        self._ensured_in: Store | None = None
        self._ensured_lock = threading.Lock()

    @property
    def store(self) -> Store:
        return self._store()

    # -- registration in the store -------------------------------------------

    def ensure(self, definitions: Sequence[SensorDefinition]) -> None:
        """Give each sensor its row (once per process; the insert is idempotent)."""
        store = self.store
        with self._ensured_lock:
            if store is not self._ensured_in:  # another store (or reopened): check again
                self._ensured, self._ensured_in = set(), store
            missing = [d for d in definitions if d.name not in self._ensured]
        if not missing:
            return
        store.ensure_sensors([(d.name, d.kind.value) for d in missing])
        with self._ensured_lock:
            if store is self._ensured_in:
                self._ensured.update(d.name for d in missing)

    def definition(self, name: str, kind: SensorKind | None = None) -> SensorDefinition:
        definition = self.definitions.get(name)
        if definition is None:
            raise UnknownSensor(name, list(self.definitions))
        if kind is not None and definition.kind is not kind:
            raise ConfigurationError(f"sensor {name!r} is a {definition.kind} sensor, not {kind}")
        return definition

    def poll_definitions(self, names: Sequence[str] | None = None) -> list[SensorDefinition]:
        if names is None:
            return [d for d in self.definitions.values() if d.kind is SensorKind.POLL]
        return [self.definition(name, SensorKind.POLL) for name in names]

    # -- poll ----------------------------------------------------------------

    def tick(self, names: Sequence[str] | None = None, *, force: bool = False) -> list[Evaluation]:
        """Evaluate each due (with ``force``: each) running poll sensor once.

        Sensors are evaluated concurrently, so a slow one delays only itself;
        the evaluations are returned in sensor-name order.
        """
        definitions = sorted(self.poll_definitions(names), key=lambda d: d.name)
        if not definitions:
            return []
        self.ensure(definitions)
        now, entries = self.store.sensor_schedule([d.name for d in definitions])
        schedule = {entry.name: entry for entry in entries}
        due = [
            d
            for d in definitions
            if schedule[d.name].due(now) or (force and schedule[d.name].status == RUNNING)
        ]
        if len(due) <= 1:
            results = [self.evaluate(d) for d in due]
        else:
            with ThreadPoolExecutor(
                max_workers=min(TICK_THREADS, len(due)), thread_name_prefix="ferryman-tick"
            ) as pool:
                results = list(pool.map(self.evaluate, due))
        return [evaluation for evaluation in results if evaluation is not None]

    def evaluate(self, definition: SensorDefinition) -> Evaluation | None:
        """One poll evaluation; None if the sensor is paused.

        Returns the recorded evaluation: ``ok``, ``failed`` or ``conflict``.
        Raises :class:`~ferryman.StoreError` only when the store cannot record
        even the failure.
        """
        store = self.store
        self.ensure([definition])
        state, started = store.read_sensor(definition.name)
        if state is None:  # the row was created above; only a dropped table gets here
            raise StoreError(f"sensor {definition.name!r} has no row in the store")
        if state.status != RUNNING:
            return None
        try:
            cursor = decode_cursor(definition.name, state.cursor)
        except UnreadableCursor as exc:
            return self._fail(definition, state, started, str(exc))
        context = self._context(definition, state, started)
        called = call_with_timeout(
            lambda: self._prepare_poll(definition, context, cursor),
            definition.timeout,
            name=f"ferryman-sensor-{definition.name}",
        )
        if called.timed_out:
            return self._fail(
                definition,
                state,
                started,
                f"sensor {definition.name!r} did not return within its timeout of "
                f"{definition.timeout}s; the evaluation failed and its late result, if any, "
                "is discarded",
            )
        if called.error is not None or called.value is None:
            return self._fail(definition, state, started, _describe(called.error))
        prepared = called.value
        commit = PollCommit(
            sensor=definition.name,
            state_version=state.state_version,
            cursor_before=state.cursor,
            cursor_after=(
                state.cursor if prepared.cursor is None else encode_cursor(prepared.cursor)
            ),
            new_runs=prepared.new_runs,
            skipped=prepared.skipped,
            started_at=started,
            next_delay=definition.interval,
            evaluator=evaluator_id(),
        )
        try:
            evaluation = store.commit_poll_evaluation(commit)
        except StoreError as exc:
            log.warning(
                "committing the evaluation failed: %s", exc, extra={"sensor": definition.name}
            )
            error = f"committing the evaluation failed: {exc}"
            return self._fail(definition, state, started, error)
        _log_evaluation(evaluation)
        return present_evaluation(evaluation)

    def _context(
        self, definition: SensorDefinition, state: SensorState, started: float
    ) -> SensorContext:
        return SensorContext(
            sensor=definition.name,
            evaluation_started_at=datetime.fromtimestamp(started, tz=UTC),
            state_version=state.state_version,
            job=definition.job,
            jobs=definition.jobs,
            logger=logging.LoggerAdapter(
                logging.getLogger("ferryman.sensor"), {"sensor": definition.name}
            ),
        )

    def _prepare_poll(
        self, definition: SensorDefinition, context: SensorContext, cursor: str | None
    ) -> _Prepared:
        result = definition.fn(context, cursor)
        if not isinstance(result, SensorResult):
            raise SensorOutputError(
                f"poll sensor {definition.name!r} returned {type(result).__name__}, "
                "expected ferryman.SensorResult"
            )
        if result.cursor is not None and not isinstance(result.cursor, str):
            raise SensorOutputError(
                f"poll sensor {definition.name!r} returned a {type(result.cursor).__name__} "
                "cursor; a cursor is a str (or None to keep the stored one)"
            )
        return _Prepared(
            self._new_runs(definition, result.run_requests),
            result.cursor,
            _skipped(definition, result),
        )

    def _new_runs(self, definition: SensorDefinition, requests: Any) -> list[NewRun]:
        requested = list(requests)
        for request in requested:
            if not isinstance(request, RunRequest):
                raise SensorOutputError(
                    f"sensor {definition.name!r} returned a {type(request).__name__} "
                    "among its run requests; expected ferryman.RunRequest"
                )
        return self._new_runs_factory([(definition.route(r), r) for r in requested])

    def _fail(
        self, definition: SensorDefinition, state: SensorState, started: float, error: str
    ) -> Evaluation:
        failures = state.consecutive_failures + 1
        delay = definition.backoff.delay(failures, key=definition.name)
        evaluation = self.store.record_poll_failure(
            PollFailure(
                sensor=definition.name,
                state_version=state.state_version,
                cursor_before=state.cursor,
                error=error,
                started_at=started,
                failures=failures,
                next_delay=delay,
                evaluator=evaluator_id(),
            )
        )
        if evaluation.outcome is EvaluationOutcome.FAILED:
            log.warning(
                "evaluation failed (%d in a row), next in %.1fs: %s",
                failures,
                delay,
                _last_line(error),
                extra={"sensor": definition.name},
            )
        else:
            _log_evaluation(evaluation)
        return present_evaluation(evaluation)

    # -- push ----------------------------------------------------------------

    def ingest(self, name: str, message_id: str, payload: Any = None) -> Evaluation:
        """Deliver one message to a push sensor; a redelivery returns the first evaluation."""
        return self.deliver(name, message_id, payload)[0]

    def deliver(self, name: str, message_id: str, payload: Any = None) -> tuple[Evaluation, bool]:
        """:meth:`ingest`, also telling whether this call recorded the evaluation.

        False means the message had been delivered before (perhaps by a
        concurrent call) and the first evaluation is returned.
        """
        definition = self.definition(name, SensorKind.PUSH)
        if not isinstance(message_id, str) or not message_id:
            raise ConfigurationError(f"message_id must be a non-empty string, got {message_id!r}")
        key = f"push:{name}:{message_id}"
        store = self.store
        self.ensure([definition])
        state, existing, started = store.find_push_delivery(name, key)
        if existing is not None:
            log.debug("message %r was delivered before", message_id, extra={"sensor": name})
            return present_evaluation(existing), False
        if state is None:
            raise StoreError(f"sensor {name!r} has no row in the store")
        if state.status != RUNNING:
            return self._fail_push(
                name,
                started,
                f"sensor {name!r} is paused: message {message_id!r} was not processed; "
                "deliver it again after it is resumed",
            ), True
        context = self._context(definition, state, started)
        message = Message(message_id, payload)
        called = call_with_timeout(
            lambda: self._prepare_push(definition, context, message),
            definition.timeout,
            name=f"ferryman-sensor-{name}",
        )
        if called.timed_out:
            return self._fail_push(
                name,
                started,
                f"sensor {name!r} did not return within its timeout of {definition.timeout}s "
                f"for message {message_id!r}; its late result, if any, is discarded",
            ), True
        if called.error is not None or called.value is None:
            return self._fail_push(name, started, _describe(called.error)), True
        evaluation, created = store.commit_push_evaluation(
            PushCommit(
                sensor=name,
                idempotency_key=key,
                new_runs=called.value.new_runs,
                skipped=called.value.skipped,
                started_at=started,
                evaluator=evaluator_id(),
            )
        )
        if created:
            _log_evaluation(evaluation)
        return present_evaluation(evaluation), created

    def _prepare_push(
        self, definition: SensorDefinition, context: SensorContext, message: Message
    ) -> _Prepared:
        result = definition.fn(context, message)
        skipped = 0
        if result is None:
            requests: Sequence[RunRequest] = ()
        elif isinstance(result, RunRequest):
            requests = (result,)
        elif isinstance(result, SensorResult):
            if result.cursor is not None:
                raise SensorOutputError(
                    f"push sensor {definition.name!r} returned a cursor; push sensors have none"
                )
            requests, skipped = result.run_requests, _skipped(definition, result)
        elif isinstance(result, list | tuple):
            requests = result
        else:
            raise SensorOutputError(
                f"push sensor {definition.name!r} returned {type(result).__name__}, "
                "expected a list of ferryman.RunRequest"
            )
        return _Prepared(self._new_runs(definition, requests), None, skipped)

    def _fail_push(self, name: str, started: float, error: str) -> Evaluation:
        evaluation = self.store.record_push_failure(
            sensor=name, error=error, started_at=started, evaluator=evaluator_id()
        )
        log.warning("delivery failed: %s", _last_line(error), extra={"sensor": name})
        return present_evaluation(evaluation)

    # -- state and history ---------------------------------------------------

    def get_sensor(self, name: str) -> SensorState:
        state = self.store.get_sensor_state(name)
        if state is not None:
            return present_state(state)
        return self._unrecorded(self.definition(name))

    def sensors(self) -> list[SensorState]:
        """Every sensor in the store, and registered ones that have never been evaluated."""
        found = {state.name: present_state(state) for state in self.store.list_sensor_states()}
        for name, definition in self.definitions.items():
            found.setdefault(name, self._unrecorded(definition))
        return [found[name] for name in sorted(found)]

    @staticmethod
    def _unrecorded(definition: SensorDefinition) -> SensorState:
        return SensorState(
            name=definition.name,
            kind=definition.kind.value,
            cursor=None,
            state_version=0,
            status=RUNNING,
            consecutive_failures=0,
            next_evaluation_at=None,
            last_evaluation_at=None,
        )

    def get_evaluations(self, name: str, limit: int | None = None) -> list[Evaluation]:
        if limit is not None and limit < 1:
            raise ConfigurationError(f"limit must be at least 1, got {limit}")
        found = self.store.get_evaluations(name, limit)
        if not found:
            self.get_sensor(name)  # UnknownSensor if the name means nothing
        return [present_evaluation(evaluation) for evaluation in found]

    # -- operator actions ----------------------------------------------------

    def _known(self, name: str) -> None:
        definition = self.definitions.get(name)
        if definition is not None:
            self.ensure([definition])

    def set_status(self, name: str, paused: bool) -> SensorState:
        self._known(name)
        state = self.store.set_sensor_status(name, PAUSED if paused else RUNNING)
        if state is None:
            raise UnknownSensor(name, list(self.definitions))
        log.info("sensor %s", "paused" if paused else "resumed", extra={"sensor": name})
        return present_state(state)

    def set_cursor(self, name: str, value: str | None, *, by: str | None) -> Evaluation:
        if value is not None and not isinstance(value, str):
            raise ConfigurationError(f"a cursor is a str or None, got {type(value).__name__}")
        self._known(name)
        definition = self.definitions.get(name)
        # The built-in sensors read a cursor of their own format: refuse one they cannot
        # read now, rather than fail every evaluation after it. Other cursors are free text.
        check = getattr(definition.fn, "check_cursor", None) if definition else None
        if value is not None and check is not None:
            try:
                check(value)
            except ConfigurationError as exc:
                raise ConfigurationError(f"sensor {name!r}: {exc}") from exc
        evaluation = self.store.set_sensor_cursor(name, encode_cursor(value), by=by or "api")
        if evaluation is None:
            raise UnknownSensor(name, list(self.definitions))
        log.info("cursor set to %r by %s", value, by or "api", extra={"sensor": name})
        return present_evaluation(evaluation)

    def prune(self, keep_last: int) -> int:
        if keep_last < 0:
            raise ConfigurationError(f"keep_last must be >= 0, got {keep_last}")
        deleted = self.store.prune_evaluations(keep_last)
        if deleted:
            log.info("pruned %d evaluations, kept the last %d per sensor", deleted, keep_last)
        return deleted


def _skipped(definition: SensorDefinition, result: SensorResult) -> int:
    if not isinstance(result.skipped, int) or result.skipped < 0:
        raise SensorOutputError(
            f"sensor {definition.name!r} returned skipped={result.skipped!r}; "
            "it counts items seen but routed to no job (an int >= 0)"
        )
    return result.skipped


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "the sensor returned nothing"
    if isinstance(error, _OUTPUT_ERRORS):
        return str(error)
    return describe_error(error)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _log_evaluation(evaluation: Evaluation) -> None:
    fields = {"sensor": evaluation.sensor}
    if evaluation.outcome is EvaluationOutcome.CONFLICT:
        log.info("evaluation lost the race to another evaluator; nothing written", extra=fields)
    else:
        log.info(
            "evaluation %s: %d runs requested (%d deduplicated), %d skipped, state version %s",
            evaluation.outcome,
            evaluation.runs_requested,
            evaluation.runs_deduplicated,
            evaluation.items_skipped,
            evaluation.state_version_after,
            extra=fields,
        )
