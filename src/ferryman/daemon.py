"""``ferryman run``: the sensor loop, the broker consumers, the transfer resumer,
the daily prune (``App(prune_finished_after=...)``) and a worker, started
together and stopped in order.

:meth:`ferryman.App.run` checks its arguments and hands the pieces to
:func:`run_daemon_parts`: the sensor loop (:class:`SensorDaemon`) on a
supervised thread, one consumer per push sensor with a broker source, the
resumer of standalone uploads a crash left active, and the worker on the
calling thread. When the worker returns (SIGTERM or SIGINT), the sensor loop
is stopped first, then the consumers (a batch not yet committed is not acked:
the broker gives it back) and last the resumer (an upload cut short stays
active and resumes next time).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

from ferryman.housekeeping import DailyPrune
from ferryman.sensors.daemon import SensorDaemon, run_daemon
from ferryman.sensors.engine import SensorEngine
from ferryman.sources.base import Source
from ferryman.sources.consumer import SourceConsumer, SourceConsumers
from ferryman.store import Store
from ferryman.worker.worker import WorkReport

__all__ = ["broker_consumers", "run_daemon_parts"]


def broker_consumers(engine: SensorEngine, sources: Mapping[str, Source]) -> SourceConsumers:
    """One consumer per push sensor with a broker source, by sensor name; not started."""
    return SourceConsumers(
        [SourceConsumer(engine, sensor, source) for sensor, source in sorted(sources.items())]
    )


def run_daemon_parts(
    daemon: SensorDaemon,
    work: Callable[[], WorkReport] | None,
    *,
    consumers: SourceConsumers,
    resume_in: Store | None,
    prune: DailyPrune | None = None,
    grace_seconds: float,
) -> WorkReport:
    """Start the daily prune (if any), the resumer (with a store to ``resume_in``),
    the consumers and the sensor loop, run ``work`` on this thread until stopped,
    then stop them in the reverse order, giving each ``grace_seconds``."""
    with (
        _pruning(prune, grace_seconds),
        _transfer_resumer(resume_in, grace_seconds),
        _consuming(consumers, grace_seconds),
    ):
        return run_daemon(daemon, work, grace_seconds=grace_seconds)


@contextlib.contextmanager
def _pruning(prune: DailyPrune | None, grace_seconds: float) -> Iterator[None]:
    if prune is None:
        yield
        return
    prune.start()
    try:
        yield
    finally:
        prune.stop(timeout=grace_seconds)


@contextlib.contextmanager
def _transfer_resumer(store: Store | None, grace_seconds: float) -> Iterator[None]:
    if store is None:
        yield
        return
    # Imported here: the transfer package loads boto3 only when it is used.
    from ferryman.transfer.janitor import TransferResumer

    resumer = TransferResumer(store)
    resumer.start()
    try:
        yield
    finally:
        # An upload cut short here stays active and resumes next time.
        resumer.stop(timeout=grace_seconds)


@contextlib.contextmanager
def _consuming(consumers: SourceConsumers, grace_seconds: float) -> Iterator[None]:
    consumers.start()
    try:
        yield
    finally:
        # Batches not yet committed are not acked: the broker gives them back.
        consumers.stop(timeout=grace_seconds)
