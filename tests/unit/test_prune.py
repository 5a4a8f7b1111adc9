"""Pruning old finished runs, on every store: what goes, what stays, and that workers go on.

A pruned run loses its payload, checkpoint and processing log and keeps its
row: its run key still deduplicates, and it cannot be retried (there is
nothing to run it with). Runs not finished, or finished after the cutoff,
keep everything. Batches are short transactions of their own: a worker
claims and finishes runs between them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import ferryman as fm
from ferryman.cli import prune as cli_prune
from ferryman.housekeeping import DailyPrune
from ferryman.store import Store, prune
from tests.helpers import wait_until

DEADLINE = 60.0


def finished_app(make_app: type[fm.App], count: int) -> fm.App:
    """An App with ``count`` succeeded runs of ``load``, one failed run of ``bad``, one queued."""
    app = make_app()

    @app.job()
    def load(ctx: fm.JobContext, payload: Any) -> None:
        ctx.checkpoint({"done": payload["n"]})

    @app.job(max_attempts=1)
    def bad(ctx: fm.JobContext, payload: Any) -> None:
        raise fm.Reject("bad input")

    @app.job()
    def later(ctx: fm.JobContext, payload: Any) -> None:
        pass

    app.submit("load", *[fm.RunRequest(f"k-{n}", {"n": n}) for n in range(count)])
    app.submit("bad", fm.RunRequest("b-1", {"n": -1}))
    app.work(until_idle=True, jobs=["load", "bad"])
    app.submit("later", fm.RunRequest("q-1", {"n": -2}))
    return app


def test_prune_empties_old_finished_runs_and_keeps_their_keys(make_app: type[fm.App]) -> None:
    app = finished_app(make_app, 5)
    assert app.store.prune_runs(3600).runs == 0  # nothing finished an hour ago

    result = app.store.prune_runs(0, batch=2)

    assert (result.runs, result.batches) == (6, 3)  # 5 succeeded + 1 failed, 2 per batch
    assert result.payloads == 6
    for run in app.get_runs(job="load") + app.get_runs(job="bad"):
        assert run.payload is None and run.checkpoint is None
        assert app.get_run_events(run.id) == []
    assert {r.status for r in app.get_runs(job="load")} == {fm.RunStatus.SUCCEEDED}
    assert app.get_runs(job="bad")[0].last_error is not None  # the reason stays
    queued = app.get_runs(job="later")[0]
    assert queued.payload == {"n": -2} and app.get_run_events(queued.id) != []

    again = app.submit("load", *[fm.RunRequest(f"k-{n}", {"n": n}) for n in range(5)])
    assert (again.created, again.deduplicated) == (0, 5)
    assert app.retry(job="bad") == []  # nothing to run a pruned run with
    assert app.store.prune_runs(0).payloads == 0  # pruning again changes nothing


def test_a_dry_run_counts_what_a_prune_does_and_changes_nothing(make_app: type[fm.App]) -> None:
    app = finished_app(make_app, 7)
    # Stored rows: not the requested event shown from a run's row (id 0).
    events_before = sum(
        sum(1 for e in app.get_run_events(r.id) if e.id) for r in app.get_runs(job="load")
    )

    dry = app.store.prune_runs(0, batch=3, dry_run=True)

    assert all(run.payload is not None for run in app.get_runs(job="load"))
    assert (
        sum(sum(1 for e in app.get_run_events(r.id) if e.id) for r in app.get_runs(job="load"))
        == events_before
    )
    done = app.store.prune_runs(0, batch=3)
    assert (dry.runs, dry.events, dry.payloads) == (done.runs, done.events, done.payloads)
    assert done.events >= events_before


def test_a_run_retried_after_its_batch_was_read_keeps_everything(make_app: type[fm.App]) -> None:
    app = finished_app(make_app, 1)
    store = app.store
    with store.read("test") as conn:
        cutoff = store.runs.now(conn) + 1
        batch = prune.next_batch(conn, None, cutoff, 10)
    (failed,) = app.get_runs(job="bad")
    assert failed.id in [p.run_id for p in batch]
    assert app.retry([failed.id]) == [failed.id]  # queued again before the write
    with store.write("test") as conn:
        prune.prune_batch(conn, [p.run_id for p in batch], cutoff)
    retried = app.get_run(failed.id)
    assert retried is not None and retried.payload == {"n": -1}
    assert app.get_run_events(failed.id) != []


def test_workers_claim_and_finish_runs_between_prune_batches(make_app: type[fm.App]) -> None:
    app = finished_app(make_app, 40)
    ran = threading.Event()

    @app.job()
    def fresh(ctx: fm.JobContext, payload: Any) -> None:
        ran.set()

    store = app.store
    with store.read("test") as conn:
        cutoff = store.runs.now(conn) + 1
    app.submit("fresh", *[fm.RunRequest(f"f-{n}") for n in range(20)])
    committed: list[int] = []

    @contextlib.contextmanager
    def write(doing: str) -> Iterator[sa.Connection]:
        with store.write(doing) as conn:
            yield conn
        committed.append(len(committed) + 1)
        if len(committed) == 1:  # the prune goes on only once a worker ran a run
            assert ran.wait(DEADLINE), "no run was claimed while the prune was under way"

    worker = threading.Thread(target=lambda: app.work(until_idle=True, jobs=["fresh"]))
    worker.start()
    try:
        result = prune.prune_runs(store.read, write, cutoff, batch=5)
    finally:
        worker.join(DEADLINE)
    assert not worker.is_alive()
    assert result.batches == len(committed) >= 8  # 41 finished runs, five at a time
    assert {r.status for r in app.get_runs(job="fresh")} == {fm.RunStatus.SUCCEEDED}
    assert all(r.payload is None for r in app.get_runs(job="load"))


def test_the_daily_prune_starts_after_the_last_run_it_walked(make_app: type[fm.App]) -> None:
    app = finished_app(make_app, 3)
    daily = DailyPrune(lambda: app.store, timedelta(0))
    daily.prune_once()
    assert daily.pruned_runs == 4
    daily.prune_once()  # walks nothing again
    assert daily.pruned_runs == 4
    app.submit("load", fm.RunRequest("k-new", {"n": 99}))
    app.work(until_idle=True, jobs=["load"])
    daily.prune_once()
    assert daily.pruned_runs == 5
    (new,) = [run for run in app.get_runs(job="load") if run.run_key == "k-new"]
    assert new.payload is None


def test_the_daemon_prunes_at_start_when_the_app_asks(make_app: type[fm.App]) -> None:
    app = finished_app(make_app, 2)
    pruning = make_app(prune_finished_after=timedelta(0))
    assert pruning.prune_finished_after == timedelta(0)
    daily = DailyPrune(lambda: pruning.store, pruning.prune_finished_after)
    daily.start()
    daily.stop(DEADLINE)  # the first prune is made at start, before the stop is looked at
    assert daily.pruned_runs == 3
    assert all(r.payload is None for r in app.get_runs(job="load"))


def test_a_prune_setting_must_be_a_duration() -> None:
    with pytest.raises(fm.ConfigurationError, match="prune_finished_after"):
        fm.App("sqlite:///unused.db", prune_finished_after=-1)


def test_the_cli_default_batch_is_the_stores() -> None:
    assert cli_prune.DEFAULT_BATCH == prune.DEFAULT_BATCH


def test_ferryman_prune_from_the_command_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    app = fm.App(url)

    @app.job()
    def load(ctx: fm.JobContext, payload: Any) -> None:
        pass

    app.submit("load", *[fm.RunRequest(f"k-{n}", {"n": n}) for n in range(3)])
    app.work(until_idle=True)
    app.close()

    def prune_cli(*arguments: str) -> str:
        completed = subprocess.run(
            [sys.executable, "-m", "ferryman", "--store", url, "prune", *arguments],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert completed.returncode == 0, completed.stderr
        return completed.stdout

    assert "pruned 0 runs" in prune_cli("--finished-before", "1d")
    assert "would prune 3 runs" in prune_cli("--finished-before", "0s", "--dry-run")
    assert '"payloads": 3' in prune_cli("--finished-before", "0s", "--json", "--batch", "2")
    reopened = Store(url)
    try:
        assert all(run.payload is None for run in reopened.get_runs(job="load"))
    finally:
        reopened.close()


def test_ferryman_run_prunes_at_start_when_the_app_says_so(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    (tmp_path / "prune_app.py").write_text(
        "import ferryman as fm\n"
        f"app = fm.App({url!r}, prune_finished_after=0)\n"
        "@app.job()\n"
        "def load(ctx, payload):\n"
        "    pass\n"
    )
    app = fm.App(url)

    @app.job()
    def load(ctx: fm.JobContext, payload: Any) -> None:
        pass

    app.submit("load", *[fm.RunRequest(f"k-{n}", {"n": n}) for n in range(3)])
    app.work(until_idle=True)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMAN_")}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "ferryman", "--app", "prune_app.py:app", "run", "--no-serve"],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(
            lambda: all(run.payload is None for run in app.get_runs(job="load")),
            timeout=DEADLINE,
            what="the daemon's first prune",
        )
        # Stopped once its worker is up: SIGTERM before then ends the process
        # by the default action, before the daemon's stop handlers exist.
        wait_until(lambda: app.workers(), timeout=DEADLINE, what="the daemon's worker")
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=DEADLINE)
        app.close()
    assert daemon.returncode == 0, stderr.decode()
    assert app.submit("load", fm.RunRequest("k-0", {"n": 0})).created == 0
