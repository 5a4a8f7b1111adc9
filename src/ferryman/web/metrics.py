"""``/metrics`` in Prometheus' text format, computed from the store.

Every figure comes from the store, not from this process's memory, so it is
right whichever processes and hosts do the work, and it survives restarts.

* Gauges (``ferryman_runs``, ``ferryman_oldest_due_run_age_seconds``,
  ``ferryman_transfer_*``, ``ferryman_workers_live``) are read at scrape time
  from indexes.
* Counters and histograms (run finishes and their durations, lease
  expirations, retries, evaluations and their durations) are folded in from
  the append-only processing log and evaluation history: each scrape reads
  only the rows written since the last, by primary key. A process starts
  from the totals a server saved last; on a store that never had them, it
  folds the whole history once (the server begins that as it starts), and a
  scrape that comes meanwhile gets the gauges alone: the counters appear
  once folded, as new series do (and ``ferryman_runs`` once the server's
  first count of every run is done). On PostgreSQL rows are folded once
  they are a few seconds old, because ids there commit out of order.
* The broker source consumers' figures (``ferryman_source_*``) are the
  exception: they are this process's own (see :class:`SourceCollector`).
* Scrapes within ``cache_seconds`` of each other share one reading, so
  several Prometheus servers cost the store no more than one.

A run's duration is that of the attempt that finished it: from that
attempt's own claim to its ``succeeded``, ``failed`` or ``dead`` event, so a
run retried by hand is timed by its last attempt, never across attempts, and
no duration is negative. A run that died because its lease expired on its
last attempt counts as a ``dead`` finish but is not timed (its attempt ended
unseen). Every bucket count is at most the histogram's count, which is the
``+Inf`` bucket.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator

from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ferryman.app import App
from ferryman.errors import StoreError
from ferryman.model import RunEventKind, RunStatus, TransferStatus
from ferryman.store.read_model import (
    DURATION_BUCKETS,
    FINISHING_KINDS,
    Folded,
    Histogram,
    MetricsReading,
    TransferTotals,
)
from ferryman.store.read_snapshots import SAVE_EVERY
from ferryman.web.run_counts import RunCounts

log = logging.getLogger("ferryman.web")

router = APIRouter()

CACHE_SECONDS = 5.0


def _histogram(name: str, documentation: str, label: str, by: dict[str, Histogram]) -> Metric:
    family = HistogramMetricFamily(name, documentation, labels=[label])
    for value, histogram in sorted(by.items()):
        cumulative, buckets = 0, []
        for bound, count in zip(DURATION_BUCKETS, histogram.buckets, strict=True):
            cumulative += count
            buckets.append((repr(bound), cumulative))
        buckets.append(("+Inf", histogram.count))
        family.add_metric([value], buckets, histogram.total)
    return family


class StoreCollector:
    """A prometheus_client collector over one App's store."""

    def __init__(
        self,
        app: App,
        *,
        cache_seconds: float = CACHE_SECONDS,
        counts: RunCounts | None = None,
    ) -> None:
        self.app = app
        self.cache_seconds = cache_seconds
        self.counts = counts
        self._lock = threading.Lock()
        self._folded: Folded | None = None
        self._folding_everything = False  # the first fold of a store with no saved totals
        self._saved = float("-inf")
        self._cached: list[Metric] = []
        self._cached_at = float("-inf")

    def collect(self) -> Iterator[Metric]:
        if self.counts is not None and self.counts.first_under_way:
            # A server just started, counting every run (seconds on a big store):
            # the other gauges will not wait; the runs' appear once counted.
            yield from self._gauges(with_runs=False)
            return
        if not self._lock.acquire(blocking=False):
            if self._folding_everything:  # seconds on a big store: the gauges will not wait
                yield from self._gauges()
                return
            self._lock.acquire()
        try:
            if time.monotonic() - self._cached_at >= self.cache_seconds:
                self._cached = list(self._read())
                self._cached_at = time.monotonic()
            yield from self._cached
        finally:
            self._lock.release()

    def _read(self) -> Iterable[Metric]:
        folded = self._folded
        if folded is None:  # the totals saved last, by any server: only what is newer is folded
            saved = self.app.store.saved_folded()
            self._folding_everything = saved is None
            folded = self._folded = saved or Folded()
        try:
            reading = self._reading(folded)
        finally:
            self._folding_everything = False
        self._save(folded)
        yield from _run_gauges(reading)
        yield from _run_counters(folded, set(reading.counts))
        yield from _evaluation_counters(folded)
        yield from self._other_gauges(reading)

    def _reading(self, folded: Folded | None, *, with_runs: bool = True) -> MetricsReading:
        counted = self.counts.fresh() if self.counts is not None and with_runs else None
        return self.app.store.read_metrics(
            folded, alive_within=self.app.lease_seconds, counted=counted, count=with_runs
        )

    def _gauges(self, *, with_runs: bool = True) -> Iterator[Metric]:
        reading = self._reading(None, with_runs=with_runs)
        yield from _run_gauges(reading)
        yield from self._other_gauges(reading)

    def _other_gauges(self, reading: MetricsReading) -> Iterator[Metric]:
        yield from _transfer_gauges(reading.transfers)
        yield GaugeMetricFamily(
            "ferryman_workers_live",
            "Workers that sent a heartbeat within a lease",
            value=reading.live_workers,
        )

    def _save(self, folded: Folded) -> None:
        if time.monotonic() - self._saved < SAVE_EVERY:
            return
        self._saved = time.monotonic()
        try:
            self.app.store.save_folded(folded)
        except StoreError as exc:  # a store the server may only read: it folds at each start
            log.info("could not save the metrics' totals: %s", exc)


def _run_gauges(reading: MetricsReading) -> Iterator[Metric]:
    runs = GaugeMetricFamily("ferryman_runs", "Runs in the store", labels=["job", "status"])
    for job, by_status in sorted(reading.counts.items()):
        for status in RunStatus:
            runs.add_metric([job, status.value], by_status.get(status, 0))
    yield runs
    age = GaugeMetricFamily(
        "ferryman_oldest_due_run_age_seconds",
        "How long the oldest queued run that is due has waited, by job",
        labels=["job"],
    )
    for job in sorted(reading.counts):
        age.add_metric([job], reading.oldest_due_age.get(job, 0.0))
    yield age


def _run_counters(folded: Folded, counted_jobs: set[str]) -> Iterator[Metric]:
    finished = CounterMetricFamily(
        "ferryman_run_finishes",
        "Attempts that ended a run, by job and outcome (succeeded, failed, dead)",
        labels=["job", "outcome"],
    )
    expirations = CounterMetricFamily(
        "ferryman_lease_expirations",
        "Leases that expired (a worker died or stalled), by job",
        labels=["job"],
    )
    retries = CounterMetricFamily(
        "ferryman_retries",
        "Runs put back in the queue: retries scheduled after an error, and manual "
        "retries of failed or dead runs, by job and kind",
        labels=["job", "kind"],
    )
    for job in sorted({job for job, _ in folded.events} | counted_jobs):
        for kind in FINISHING_KINDS:
            finished.add_metric([job, kind.value], folded.events.get((job, kind.value), 0))
        expired = folded.events.get((job, RunEventKind.LEASE_EXPIRED.value), 0)
        expirations.add_metric([job], expired)
        for kind in (RunEventKind.RETRY_SCHEDULED, RunEventKind.REQUEUED):
            retries.add_metric([job, kind.value], folded.events.get((job, kind.value), 0))
    yield finished
    yield expirations
    yield retries
    yield _histogram(
        "ferryman_run_duration_seconds",
        "Duration of the attempt that finished each run, by job",
        "job",
        folded.run_durations,
    )


def _evaluation_counters(folded: Folded) -> Iterator[Metric]:
    evaluations = CounterMetricFamily(
        "ferryman_evaluations",
        "Sensor evaluations by sensor and outcome (ok, failed, conflict, manual)",
        labels=["sensor", "outcome"],
    )
    for (sensor, outcome), count in sorted(folded.evaluations.items()):
        evaluations.add_metric([sensor, outcome], count)
    yield evaluations
    yield _histogram(
        "ferryman_evaluation_duration_seconds",
        "Duration of sensor evaluations, by sensor",
        "sensor",
        folded.evaluation_durations,
    )


def _transfer_gauges(totals: dict[TransferStatus, TransferTotals]) -> Iterator[Metric]:
    transfer_bytes = GaugeMetricFamily(
        "ferryman_transfer_bytes_confirmed",
        "Bytes of transfers S3 acknowledged and the store recorded, by transfer status",
        labels=["status"],
    )
    transfer_parts = GaugeMetricFamily(
        "ferryman_transfer_parts_confirmed",
        "Parts of transfers S3 acknowledged and the store recorded, by transfer status",
        labels=["status"],
    )
    transfer_count = GaugeMetricFamily(
        "ferryman_transfers", "Transfers by status", labels=["status"]
    )
    for transfer_status in TransferStatus:
        total = totals.get(transfer_status, TransferTotals(0, 0, 0))
        transfer_bytes.add_metric([transfer_status.value], total.bytes_confirmed)
        transfer_parts.add_metric([transfer_status.value], total.parts_confirmed)
        transfer_count.add_metric([transfer_status.value], total.transfers)
    yield transfer_bytes
    yield transfer_parts
    yield transfer_count


class SourceCollector:
    """The broker source consumers of this process (``ferryman run`` with ``--serve``).

    Unlike the store's figures these are the process's own: each daemon's
    consumers count what they took and settled since it started, as
    Prometheus counters of that process. Lag is what the broker last said.
    """

    COUNTERS = (
        ("consumed", "Messages taken from the broker"),
        ("acked", "Messages acknowledged after their evaluation committed"),
        ("redelivered", "Messages the broker said it had delivered before"),
        ("duplicates", "Messages whose delivery was already recorded: nothing written"),
        ("dead_lettered", "Messages sent to the broker's dead-letter mechanism"),
        ("released", "Messages given back unprocessed (sensor paused)"),
        ("reconnects", "Sessions opened again after a lost connection or a failure"),
    )

    def __init__(self, app: App) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        stats = sorted(self.app.source_stats().values(), key=lambda s: s.sensor)
        labels = ["sensor", "source"]
        for name, documentation in self.COUNTERS:
            family = CounterMetricFamily(f"ferryman_source_{name}", documentation, labels=labels)
            for one in stats:
                family.add_metric([one.sensor, one.kind], getattr(one, name))
            yield family
        lag = GaugeMetricFamily(
            "ferryman_source_lag",
            "Messages waiting for the consumer, as the broker last told",
            labels=labels,
        )
        connected = GaugeMetricFamily(
            "ferryman_source_connected", "1 while the consumer is connected", labels=labels
        )
        for one in stats:
            if one.lag is not None:
                lag.add_metric([one.sensor, one.kind], one.lag)
            connected.add_metric([one.sensor, one.kind], 1 if one.connected else 0)
        yield lag
        yield connected


def registry_for(app: App, counts: RunCounts | None = None) -> CollectorRegistry:
    """A registry of its own per App, so two Apps in one process never share figures;
    ``counts``: the server's count of runs, carried forward for each scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(app, counts=counts))
    registry.register(SourceCollector(app))
    return registry


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """Prometheus exposition of the store's runs, evaluations and transfers."""
    registry: CollectorRegistry = request.app.state.metrics
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
