"""The consumer of one broker source inside ``ferryman run``.

Threads: one named, supervised thread per source
(``ferryman-source-<sensor>``), the only one that talks to the broker, and
its committer (``ferryman-commit-<sensor>``). The source thread connects,
takes a batch of messages and hands it to the committer, which delivers it
to the push sensor in ONE store transaction
(:func:`ferryman.sensors.batch.deliver_many`); while that commits, the
source thread takes the next batch from the broker. Only once the commit
has returned does the source thread settle each message of the batch:

* evaluation ``ok`` (new, or a redelivery of a message already recorded) → ack;
* evaluation ``failed`` (bad payload, no id, the sensor raised or timed
  out) → the broker's dead-letter mechanism, the reason on the evaluation;
* the sensor is paused → released unprocessed, delivered again later.

What a crash of each part does:

* the process dies before the commit: nothing was recorded, nothing acked —
  the broker redelivers and the sensor runs again;
* it dies between the commit and the ack: the broker redelivers, the
  redelivery finds its delivery row and writes nothing, and is acked;
* the broker connection drops or the broker restarts: the thread closes the
  session (unsettled messages go back), logs, and reconnects after
  ``RECONNECT_BACKOFF`` — growing delays, reset by the first batch received;
* the store fails: the batch is given back the same way (nothing was
  recorded) and the consumer reconnects after the same backoff;
* anything else in the loop: logged, counted in ``crashes`` and restarted
  the same way, never a tight loop.

A crash of the committer (a store error included) reaches the source thread
when it waits for that batch's commit: the batch and the one taken since
are not settled, and closing the session gives both back.

``stop()`` (SIGTERM in ``ferryman run``) lets a batch whose commit is under
way finish and be settled; a batch not yet delivered is not acked, and
closing the session gives it back.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field, replace

from ferryman.errors import StoreError
from ferryman.model import Backoff, EvaluationOutcome
from ferryman.sensors.batch import Delivered, deliver_many
from ferryman.sensors.engine import SensorEngine
from ferryman.sources.base import BrokerSession, Received, Source
from ferryman.store.sensors import RUNNING
from ferryman.supervise import Supervised, supervised
from ferryman.worker.worker import describe_error

log = logging.getLogger("ferryman.sources")

RECONNECT_BACKOFF = Backoff(base=0.5, factor=2.0, max=30.0)
LAG_EVERY = 5.0  # seconds between two questions to the broker about the backlog
PAUSED_WAIT = 1.0  # how often a paused sensor's status is read again
# Seconds a receive may wait for messages while the previous batch commits: about
# a batch's commit, so a quiet queue delays that batch's acks by no more than that.
IN_FLIGHT_WAIT = 0.05


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceStats:
    """What one consumer did since it started (this process's figures)."""

    sensor: str
    kind: str
    where: str
    connected: bool = False
    consumed: int = 0  # messages taken from the broker
    acked: int = 0
    redelivered: int = 0  # messages the broker said it had delivered before
    duplicates: int = 0  # messages whose delivery was already recorded: nothing written
    dead_lettered: int = 0
    released: int = 0  # given back unprocessed (sensor paused)
    reconnects: int = 0
    crashes: int = 0
    lag: int | None = None  # messages waiting, where the broker tells
    last_error: str | None = None
    last_error_at: float | None = None


@dataclass(slots=True)
class _Counters:
    stats: SourceStats
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, **changes: int | bool | str | float | None) -> None:
        with self.lock:
            values = {}
            for name, value in changes.items():
                current = getattr(self.stats, name)
                if isinstance(value, int) and not isinstance(value, bool) and name in _SUMMED:
                    values[name] = current + value
                else:
                    values[name] = value
            self.stats = replace(self.stats, **values)


_SUMMED = frozenset(
    {
        "consumed",
        "acked",
        "redelivered",
        "duplicates",
        "dead_lettered",
        "released",
        "reconnects",
        "crashes",
    }
)


@dataclass(frozen=True, slots=True)
class _InFlight:
    """A batch handed to the committer, not yet settled with the broker."""

    batch: Sequence[Received]
    delivered: Future[list[Delivered]]


class SourceConsumer:
    """Consumes one source for one push sensor. ``start()``, then ``stop()`` and ``join()``."""

    def __init__(self, engine: SensorEngine, sensor: str, source: Source) -> None:
        self.engine = engine
        self.sensor = sensor
        self.source = source
        self.consumer_name = f"{socket.gethostname()}-{os.getpid()}-{sensor}"
        self._counters = _Counters(
            SourceStats(sensor=sensor, kind=source.kind, where=source.describe())
        )
        self._stopping = threading.Event()
        self._thread: Supervised | None = None
        self._next_lag = 0.0
        self._failures = 0  # failed sessions in a row; the reconnect delay grows with it
        self._fields = {"sensor": sensor}

    @property
    def stats(self) -> SourceStats:
        return self._counters.stats

    def start(self) -> None:
        # What escapes the reconnect loop is a crash: logged, counted, restarted like a reconnect.
        self._thread = supervised(
            f"ferryman-source-{self.sensor}",
            self._supervise,
            restart=RECONNECT_BACKOFF,
            stop=self._stopping,
        )

    def stop(self) -> None:
        self._stopping.set()

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    # -- supervision ---------------------------------------------------------

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            session: BrokerSession | None = None
            try:
                session = self.source.connect(self.consumer_name)
                self._counters.add(connected=True)
                log.info("connected to %s", self.source.describe(), extra=self._fields)
                self._consume(session)
            except Exception as exc:  # supervision: the broker, the store or our own fault
                self._failures += 1
                self._failed(exc, self._failures)
            finally:
                self._counters.add(connected=False)
                if session is not None:
                    _close_quietly(session, self.sensor)
            if self._failures and not self._stopping.is_set():
                delay = RECONNECT_BACKOFF.delay(self._failures, key=self.sensor)
                log.info("reconnecting in %.1fs", delay, extra=self._fields)
                self._stopping.wait(delay)
                self._counters.add(reconnects=1)

    def _failed(self, exc: Exception, failures: int) -> None:
        error = f"{type(exc).__name__}: {exc}"
        self._counters.add(last_error=error, last_error_at=time.time())
        if isinstance(exc, StoreError):
            log.warning(
                "the store failed; the batch goes back to the broker: %s", exc, extra=self._fields
            )
        elif _is_connection_error(exc):
            log.warning("lost the broker (%d in a row): %s", failures, error, extra=self._fields)
        else:
            self._counters.add(crashes=1)
            log.error("the consumer crashed: %s", describe_error(exc), extra=self._fields)

    # -- the loop ------------------------------------------------------------

    def _consume(self, session: BrokerSession) -> None:
        # One batch's commit runs on the committer thread while this thread
        # takes the next batch from the broker: broker and store round trips
        # overlap instead of adding up. Only this thread talks to the broker
        # (a session is one thread's), and it settles a batch only once the
        # committer has returned its evaluations.
        with ThreadPoolExecutor(
            1, thread_name_prefix=f"ferryman-commit-{self.sensor}"
        ) as committer:
            in_flight: _InFlight | None = None
            try:
                while not self._stopping.is_set():
                    if not self._sensor_running():
                        self._settle_in_flight(session, in_flight)
                        in_flight = None
                        self._stopping.wait(PAUSED_WAIT)
                        continue
                    self._maybe_read_lag(session)
                    # With a commit under way, take only what is there now: the
                    # committed batch is settled when this returns, and a long
                    # wait for messages would hold its acks back.
                    wait = self.source.wait if in_flight is None else IN_FLIGHT_WAIT
                    batch = session.receive(self.source.batch_size, wait)
                    self._failures = 0  # the broker answers: the next loss backs off from start
                    self._settle_in_flight(session, in_flight)
                    in_flight = None
                    if not batch or self._stopping.is_set():
                        continue  # not delivered: closing the session gives the batch back
                    self._counters.add(
                        consumed=len(batch), redelivered=sum(1 for m in batch if m.redelivered)
                    )
                    in_flight = _InFlight(batch, committer.submit(self._deliver, batch))
                # Stopping: the batch whose commit is under way finishes and is settled.
                self._settle_in_flight(session, in_flight)
            except BaseException:
                if in_flight is not None:
                    # Not settled on a session that failed: the broker redelivers the
                    # batch, and a redelivery of a committed message writes nothing.
                    futures_wait([in_flight.delivered])
                raise

    def _settle_in_flight(self, session: BrokerSession, in_flight: _InFlight | None) -> None:
        """Wait for the batch's commit, then settle its messages; a store error is raised."""
        if in_flight is not None:
            self._settle(session, in_flight.batch, in_flight.delivered.result())

    def _deliver(self, batch: Sequence[Received]) -> list[Delivered]:
        """The batch's evaluations, committed in one transaction (on the committer thread)."""
        good = [m for m in batch if m.error is None]
        bad = [m for m in batch if m.error is not None]
        return deliver_many(
            self.engine,
            self.sensor,
            [(m.message_id, m.payload) for m in good],
            refused=[(m.message_id, m.error or "") for m in bad],
        )

    def _settle(
        self, session: BrokerSession, batch: Sequence[Received], delivered: Sequence[Delivered]
    ) -> None:
        """Settle every message of a committed batch by what was recorded for it."""
        good = [m for m in batch if m.error is None]
        bad = [m for m in batch if m.error is not None]
        ack: list[Received] = []
        dead: list[tuple[Received, str]] = []
        again: list[Received] = []
        duplicates = 0
        for message, outcome in zip([*good, *bad], delivered, strict=True):
            if outcome.retry_later:
                again.append(message)
            elif outcome.evaluation.outcome is EvaluationOutcome.OK:
                ack.append(message)
                duplicates += not outcome.created
            else:
                dead.append((message, _reason(outcome)))
        if dead:
            session.dead_letter(dead)
            for message, reason in dead:
                log.warning(
                    "message %r dead-lettered: %s",
                    message.message_id,
                    reason.strip().splitlines()[-1] if reason.strip() else reason,
                    extra=self._fields,
                )
        if ack:
            session.ack(ack)
        if again:
            session.release(again)
        self._counters.add(
            acked=len(ack), dead_lettered=len(dead), released=len(again), duplicates=duplicates
        )

    def _sensor_running(self) -> bool:
        return self.engine.get_sensor(self.sensor).status == RUNNING

    def _maybe_read_lag(self, session: BrokerSession) -> None:
        if time.monotonic() < self._next_lag:
            return
        self._next_lag = time.monotonic() + LAG_EVERY
        self._counters.add(lag=session.lag())


def _reason(outcome: Delivered) -> str:
    return outcome.evaluation.error or "the evaluation failed"


def _is_connection_error(exc: BaseException) -> bool:
    return (
        isinstance(exc, ConnectionError | OSError | TimeoutError)
        or "Connection" in type(exc).__name__
    )


def _close_quietly(session: BrokerSession, sensor: str) -> None:
    try:
        session.close()
    except Exception as exc:  # the connection is usually already gone; nothing is lost
        log.debug("closing the broker session: %s", exc, extra={"sensor": sensor})


class SourceConsumers:
    """Every source consumer of an app, started and stopped together by ``ferryman run``."""

    def __init__(self, consumers: Sequence[SourceConsumer]) -> None:
        self.consumers = list(consumers)

    def start(self) -> None:
        for consumer in self.consumers:
            consumer.start()

    def stop(self, timeout: float) -> None:
        for consumer in self.consumers:
            consumer.stop()
        deadline = time.monotonic() + timeout
        for consumer in self.consumers:
            if not consumer.join(max(0.0, deadline - time.monotonic())):
                log.warning(
                    "source consumer still delivering at exit; its batch is not acked",
                    extra={"sensor": consumer.sensor},
                )
