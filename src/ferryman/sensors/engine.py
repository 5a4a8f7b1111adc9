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
use, a stored cursor this code cannot read, the function outliving its
``timeout``, or any error in ferryman's own code before the result is
committed — leaves the cursor where it was, records a ``failed`` evaluation
with the error, and makes the sensor wait
``backoff.delay(consecutive_failures, key=name)`` before it is due again.
The failure bumps ``state_version`` too, so nothing that evaluation
computed can commit later.

A **bad item** — a run request whose payload is not JSON or whose run_key
cannot be stored exactly — is not a failure: it is skipped, counted in
``items_skipped`` and named with its reason in the evaluation's ``error``,
and the other requests and the cursor commit. One bad item never holds the
others back.

A **push evaluation** runs ``fn(ctx, message)`` once per message: its
delivery is recorded under ``(sensor, message_id)``, unique in the store,
so a redelivered message writes nothing and gets the first delivery's
evaluation back. A failed delivery is recorded as an evaluation but not as
a delivery, so delivering the message again runs the sensor again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

from ferryman.errors import ConfigurationError, PayloadError, StoreError, UnknownSensor
from ferryman.jobs import JobRegistry
from ferryman.logs import error_summary, process_id
from ferryman.model import (
    Evaluation,
    EvaluationOutcome,
    Message,
    RunRequest,
    SensorResult,
    SensorState,
)
from ferryman.sensors.calls import (
    Prepared,
    SensorOutputError,
    call_each_with_timeout,
    call_with_timeout,
    prepared_or_failure,
    push_outcome,
    shown_id,
    skipped_count,
)
from ferryman.sensors.context import SensorContext
from ferryman.sensors.cursor import (
    UnreadableCursor,
    decode_cursor,
    encode_cursor,
    shown_cursor,
    unstorable_cursor,
)
from ferryman.sensors.registry import SensorDefinition, SensorKind
from ferryman.store import NewRun, PollCommit, PollFailure, PushCommit, Store
from ferryman.store.records import checked_key
from ferryman.store.sensors import PAUSED, RUNNING
from ferryman.worker.worker import describe_error

log = logging.getLogger("ferryman.sensors")

TICK_THREADS = 8


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
        jobs: JobRegistry,
        *,
        delivery_retention: float | None = None,
    ) -> None:
        self._open_store = store
        self.definitions = definitions
        self.jobs = jobs  # what the run requests of the sensors become runs of
        self.delivery_retention = delivery_retention  # seconds; None keeps deliveries
        self._ensured: set[str] = set()
        self._ensured_in: Store | None = None
        self._ensured_lock = threading.Lock()

    @property
    def store(self) -> Store:
        return self._open_store()

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
        fields = {"sensor": definition.name}
        result: Evaluation | str
        try:
            result = self._run_and_commit(store, definition, state, started)
        except StoreError as exc:
            log.warning("committing the evaluation failed: %s", exc, extra=fields)
            result = f"committing the evaluation failed: {exc}"
        except Exception as exc:  # a fault of ferryman's own: fail and back off, never loop
            error = describe_error(exc)
            log.error(
                "the evaluation failed inside ferryman: %s", error_summary(error), extra=fields
            )
            result = f"the evaluation failed inside ferryman: {error}"
        if isinstance(result, str):
            return self._fail(definition, state, started, result)
        _log_evaluation(result)
        return present_evaluation(result)

    def _run_and_commit(
        self, store: Store, definition: SensorDefinition, state: SensorState, started: float
    ) -> Evaluation | str:
        """Call the sensor and commit what it returned; a str says why the evaluation failed."""
        try:
            cursor = decode_cursor(definition.name, state.cursor)
        except UnreadableCursor as exc:
            return str(exc)
        context = self._context(definition, state, started)
        called = call_with_timeout(
            lambda: self._prepare_poll(definition, context, cursor),
            definition.timeout,
            name=f"ferryman-sensor-{definition.name}",
        )
        late = "; the evaluation failed and its late result, if any, is discarded"
        prepared = prepared_or_failure(definition, called, late=late)
        if isinstance(prepared, str):
            return prepared
        return store.commit_poll_evaluation(
            PollCommit(
                sensor=definition.name,
                state_version=state.state_version,
                cursor_before=state.cursor,
                cursor_after=(
                    state.cursor if prepared.cursor is None else encode_cursor(prepared.cursor)
                ),
                new_runs=prepared.new_runs,
                skipped=prepared.skipped,
                started_at=started,
                next_delay=definition.next_delay(
                    cursor if prepared.cursor is None else prepared.cursor, started
                ),
                evaluator=process_id(),
                skip_reasons=prepared.skip_reasons,
            )
        )

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
    ) -> Prepared:
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
        if result.cursor is not None and (problem := unstorable_cursor(result.cursor)):
            raise SensorOutputError(
                f"poll sensor {definition.name!r} returned a cursor that {problem}"
            )
        return self._prepared(definition, result.run_requests, result.cursor, result)

    def _prepared(
        self,
        definition: SensorDefinition,
        requests: Any,
        cursor: str | None,
        result: SensorResult | None,
    ) -> Prepared:
        """The runs to insert, each request checked on its own.

        A request that is not a RunRequest, or routed to a job the sensor may
        not use, fails the evaluation: the sensor itself is wrong. A request
        whose payload or run_key cannot be stored is refused alone, with its
        reason: bad data in one item must not hold back the others.
        """
        requested = list(requests)
        for request in requested:
            if not isinstance(request, RunRequest):
                raise SensorOutputError(
                    f"sensor {definition.name!r} returned a {type(request).__name__} "
                    "among its run requests; expected ferryman.RunRequest"
                )
        routed = [(definition.route(request), request) for request in requested]
        new_runs: list[NewRun] = []
        refused: list[str] = []
        for job_and_request in routed:
            try:
                new_runs.extend(self.jobs.new_runs([job_and_request]))
            except PayloadError as exc:
                refused.append(str(exc))
        skipped = 0 if result is None else skipped_count(definition, result)
        return Prepared(
            new_runs=new_runs, cursor=cursor, skipped=skipped + len(refused), refused=refused
        )

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
                evaluator=process_id(),
            )
        )
        if evaluation.outcome is EvaluationOutcome.FAILED:
            log.warning(
                "evaluation failed (%d in a row), next in %.1fs: %s",
                failures,
                delay,
                error_summary(error),
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
        concurrent call) and the first evaluation is returned. A message id
        that cannot be stored exactly is refused with
        :class:`~ferryman.PayloadError` before the sensor runs.
        """
        definition = self.definition(name, SensorKind.PUSH)
        if not isinstance(message_id, str) or not message_id:
            raise ConfigurationError(f"message_id must be a non-empty string, got {message_id!r}")
        checked_key(message_id, f"message_id of sensor {name!r}")
        store = self.store
        self.ensure([definition])
        state, existing, started = store.find_push_delivery(name, message_id)
        shown = shown_id(message_id)
        if existing is not None:
            log.debug("message %s was delivered before", shown, extra={"sensor": name})
            return present_evaluation(existing), False
        if state is None:
            raise StoreError(f"sensor {name!r} has no row in the store")
        if state.status != RUNNING:
            return self._fail_push(
                name,
                message_id,
                started,
                f"sensor {name!r} is paused: message {shown} was not processed; "
                "deliver it again after it is resumed",
            ), True
        try:
            result = self._run_and_commit_push(
                store, definition, state, started, message_id, payload
            )
        except StoreError:
            raise  # nothing was recorded: the caller must not acknowledge the message
        except Exception as exc:  # a fault of ferryman's own: the message stays undelivered
            result = (
                f"the delivery of message {shown} failed inside ferryman: {describe_error(exc)}"
            )
        if isinstance(result, str):
            return self._fail_push(name, message_id, started, result), True
        evaluation, created = result
        if created:
            _log_evaluation(evaluation)
        return present_evaluation(evaluation), created

    def _run_and_commit_push(
        self,
        store: Store,
        definition: SensorDefinition,
        state: SensorState,
        started: float,
        message_id: str,
        payload: Any,
    ) -> tuple[Evaluation, bool] | str:
        """Call the sensor on the message and commit; a str says why the delivery failed."""
        commit = self.push_commit(definition, state, started, message_id, payload)
        return commit if isinstance(commit, str) else store.commit_push_evaluation(commit)

    def push_commit(
        self,
        definition: SensorDefinition,
        state: SensorState,
        started: float,
        message_id: str,
        payload: Any,
    ) -> PushCommit | str:
        """Call the sensor on the message: what to commit, or why the delivery failed."""
        return self.push_commits(definition, state, started, [(message_id, payload)])[0]

    def push_commits(
        self,
        definition: SensorDefinition,
        state: SensorState,
        started: float,
        messages: Sequence[tuple[str, Any]],
    ) -> list[PushCommit | str]:
        """Call the sensor on each message in turn: what to commit, or why its delivery failed."""
        calls = [
            partial(
                self._prepare_push,
                definition,
                self._context(definition, state, started),
                Message(message_id, payload),
            )
            for message_id, payload in messages
        ]
        name = f"ferryman-sensor-{definition.name}"
        called = call_each_with_timeout(calls, definition.timeout, name=name)
        return [
            push_outcome(definition, started, message_id, outcome)
            for (message_id, _), outcome in zip(messages, called, strict=True)
        ]

    def _prepare_push(
        self, definition: SensorDefinition, context: SensorContext, message: Message
    ) -> Prepared:
        result = definition.fn(context, message)
        if result is None:
            return self._prepared(definition, (), None, None)
        if isinstance(result, RunRequest):
            return self._prepared(definition, (result,), None, None)
        if isinstance(result, SensorResult):
            if result.cursor is not None:
                raise SensorOutputError(
                    f"push sensor {definition.name!r} returned a cursor; push sensors have none"
                )
            return self._prepared(definition, result.run_requests, None, result)
        if isinstance(result, list | tuple):
            return self._prepared(definition, result, None, None)
        raise SensorOutputError(
            f"push sensor {definition.name!r} returned {type(result).__name__}, "
            "expected a list of ferryman.RunRequest"
        )

    def _fail_push(self, name: str, message_id: str, started: float, error: str) -> Evaluation:
        evaluation = self.store.record_push_failure(
            sensor=name,
            message_id=message_id,
            error=error,
            started_at=started,
            evaluator=process_id(),
        )
        log.warning("delivery failed: %s", error_summary(error), extra={"sensor": name})
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
            kind=definition.kind,
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
        if value is not None and (problem := unstorable_cursor(value)):
            raise ConfigurationError(f"sensor {name!r}: a cursor that {problem}")
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

    def prune_deliveries(self) -> int:
        """Forget push deliveries older than ``delivery_retention``; how many were."""
        if self.delivery_retention is None:
            return 0
        forgotten = self.store.prune_deliveries(self.delivery_retention)
        if forgotten:
            log.info("forgot %d push deliveries older than %ss", forgotten, self.delivery_retention)
        return forgotten

    def prune(self, keep_last: int | None) -> int:
        """Forget old deliveries, then keep the newest ``keep_last`` evaluations per sensor
        (and those of deliveries still remembered); return how many evaluations went."""
        if keep_last is not None and keep_last < 0:
            raise ConfigurationError(f"keep_last must be >= 0, got {keep_last}")
        self.prune_deliveries()  # first: their evaluations may go now
        if keep_last is None:
            return 0
        deleted = self.store.prune_evaluations(keep_last)
        if deleted:
            log.info("pruned %d evaluations, kept the last %d per sensor", deleted, keep_last)
        return deleted


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
