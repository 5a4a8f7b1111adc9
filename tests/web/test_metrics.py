"""/metrics on both stores: the figures a user would graph, read back from the exposition."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

import ferryman as fm
from ferryman.store.read_model import DURATION_BUCKETS
from tests.helpers import wait_until
from tests.web.web_app import add_transfer

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def lease_expired(store: Any, run_id: int) -> bool:
    with store.read("reading the clock") as conn:
        now = store.runs.now(conn)
    run = store.get_run(run_id)
    return (
        run is not None
        and run.lease_expires_at is not None
        and (run.lease_expires_at.timestamp() < now)
    )


def test_metrics_count_runs_evaluations_leases_and_retries(
    client: TestClient, web_app: fm.App, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A worker that claimed a run and died: its lease expires, another finishes it.
    (orphan,) = web_app.submit("load", fm.RunRequest("orphan", {"n": 5})).run_ids
    web_app.store.claim(worker_id="gone", jobs=["load"], limit=1, lease_seconds=0.2)
    wait_until(lambda: lease_expired(web_app.store, orphan), what="the lease to expire")
    # The dead flaky run is retried by hand and succeeds.
    (dead,) = [r.id for r in web_app.get_runs(job="flaky")]
    web_app.retry([dead])
    fixed = tmp_path / "fixed"
    fixed.touch()
    monkeypatch.setenv("FERRYMAN_TEST_FLAKY_FIXED", str(fixed))
    web_app.work(until_idle=True, concurrency=1, handle_signals=False)
    # A queued run that is due, waiting for a worker.
    web_app.submit("load", fm.RunRequest("waiting", {"n": 6}))

    def settled() -> Samples | None:
        samples = scrape(client)
        finishes = value(samples, "ferryman_run_finishes_total", job="load", outcome="succeeded")
        return samples if finishes == 5 else None

    # Counters fold in rows once they are settled (seconds, on PostgreSQL).
    samples = wait_until(settled, what="the finishes to be counted")
    assert value(samples, "ferryman_runs", job="load", status="succeeded") == 5
    assert value(samples, "ferryman_runs", job="load", status="failed") == 1
    assert value(samples, "ferryman_runs", job="load", status="queued") == 1
    assert value(samples, "ferryman_runs", job="flaky", status="succeeded") == 1
    assert value(samples, "ferryman_runs", job="flaky", status="dead") == 0
    assert value(samples, "ferryman_run_finishes_total", job="load", outcome="failed") == 1
    assert value(samples, "ferryman_run_finishes_total", job="flaky", outcome="dead") == 1
    assert value(samples, "ferryman_run_finishes_total", job="flaky", outcome="succeeded") == 1
    assert value(samples, "ferryman_lease_expirations_total", job="load") == 1
    assert value(samples, "ferryman_retries_total", job="flaky", kind="requeued") == 1
    # One observation per finish; every duration fits under the last bound.
    assert value(samples, "ferryman_run_duration_seconds_count", job="load") == 6
    assert value(samples, "ferryman_run_duration_seconds_bucket", job="load", le="+Inf") == 6
    assert value(samples, "ferryman_run_duration_seconds_bucket", job="load", le="3600.0") == 6
    assert value(samples, "ferryman_run_duration_seconds_sum", job="load") > 0
    assert value(samples, "ferryman_oldest_due_run_age_seconds", job="load") >= 0
    assert value(samples, "ferryman_evaluations_total", sensor="numbers", outcome="ok") == 2
    assert value(samples, "ferryman_evaluations_total", sensor="inbox", outcome="ok") == 1
    assert value(samples, "ferryman_evaluation_duration_seconds_count", sensor="numbers") == 2


def test_metrics_show_transfer_bytes_and_parts(client: TestClient, web_app: fm.App) -> None:
    add_transfer(web_app, parts=2)
    samples = scrape(client)
    assert value(samples, "ferryman_transfers", status="active") == 1
    assert value(samples, "ferryman_transfer_bytes_confirmed", status="active") == 10 * 1024**2
    assert value(samples, "ferryman_transfer_parts_confirmed", status="active") == 2


def attempt_durations(app: fm.App, job: str) -> list[float]:
    """Each finish's duration from the claim of its own attempt, read from the processing log."""
    durations = []
    for run in app.get_runs(job=job):
        claimed_at: dict[int | None, float] = {}
        for event in app.get_run_events(run.id):
            if event.kind is fm.RunEventKind.CLAIMED:
                claimed_at[event.lease_token] = event.at.timestamp()
            elif event.kind.value in ("succeeded", "failed", "dead"):
                durations.append(event.at.timestamp() - claimed_at[event.lease_token])
    return durations


def test_run_durations_are_per_attempt_after_retries_by_hand(
    client: TestClient, web_app: fm.App, tmp_path: Path
) -> None:
    fixed = tmp_path / "fixed"

    @web_app.job(max_attempts=1)
    def fragile(ctx: fm.JobContext, payload: object) -> None:
        if not fixed.exists():
            raise RuntimeError("upstream unavailable")

    web_app.submit("fragile", *(fm.RunRequest(f"f-{i}") for i in range(20)))
    web_app.work(until_idle=True, concurrency=2, handle_signals=False)
    assert {run.status for run in web_app.get_runs(job="fragile")} == {fm.RunStatus.DEAD}
    fixed.touch()
    assert len(web_app.retry(job="fragile")) == 20
    web_app.work(until_idle=True, concurrency=2, handle_signals=False)
    assert {run.status for run in web_app.get_runs(job="fragile")} == {fm.RunStatus.SUCCEEDED}

    def settled() -> Samples | None:
        samples = scrape(client)
        count = value(samples, "ferryman_run_duration_seconds_count", job="fragile")
        return samples if count == 40 else None

    samples = wait_until(settled, what="the 40 finishes to be timed")
    expected = attempt_durations(web_app, "fragile")
    assert len(expected) == 40 and min(expected) >= 0
    total = value(samples, "ferryman_run_duration_seconds_sum", job="fragile")
    assert total >= 0
    assert total == pytest.approx(sum(expected), abs=1e-3)
    assert value(samples, "ferryman_run_duration_seconds_bucket", job="fragile", le="+Inf") == 40
    cumulative = [
        value(samples, "ferryman_run_duration_seconds_bucket", job="fragile", le=repr(bound))
        for bound in DURATION_BUCKETS
    ]
    assert cumulative == sorted(cumulative) and cumulative[-1] <= 40
    for bound, observed in zip(DURATION_BUCKETS, cumulative, strict=True):
        # Timestamps read back through the API are rounded to microseconds.
        assert sum(d <= bound - 1e-5 for d in expected) <= observed
        assert observed <= sum(d <= bound + 1e-5 for d in expected)


def test_a_scrape_during_the_first_fold_of_a_store_gets_the_gauges_without_waiting(
    web_app: fm.App,
) -> None:
    """On a store with no saved totals the first fold reads the whole log (seconds on a
    big one): a scrape meanwhile gets the gauges, and the counters once it is done."""
    from ferryman.web.metrics import StoreCollector

    collector = StoreCollector(web_app, cache_seconds=0)
    folding, go_on = threading.Event(), threading.Event()
    read_metrics = web_app.store.read_metrics

    def first_fold_held_open(folded: Any, **kwargs: Any) -> Any:
        if folded is not None and not go_on.is_set():
            folding.set()
            go_on.wait(timeout=60)
        return read_metrics(folded, **kwargs)

    web_app.store.read_metrics = first_fold_held_open  # type: ignore[method-assign]
    first: list[set[str]] = []
    scraping = threading.Thread(target=lambda: first.append(names(collector)))
    scraping.start()
    assert folding.wait(timeout=60)
    meanwhile = names(collector)  # returns although the first fold has not ended
    go_on.set()
    scraping.join(timeout=60)
    assert "ferryman_runs" in meanwhile and "ferryman_workers_live" in meanwhile
    assert "ferryman_run_finishes" not in meanwhile
    assert "ferryman_run_finishes" in first[0]
    assert "ferryman_run_finishes" in names(collector)


def names(collector: Any) -> set[str]:
    return {family.name for family in collector.collect()}
