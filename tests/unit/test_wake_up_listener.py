"""The PostgreSQL wake-up listener: it hears its jobs' runs, and it stops at once.

A worker stops its listener on the way out of ``work()``, so the listener's
wait for notifications must end when it is stopped, not at its next look up.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
import sqlalchemy as sa

import ferryman as fm
from ferryman.store import Listener
from tests.helpers import wait_until


def _listening_backends(pg_url: str) -> int:
    """Connections of this database that wait for notifications (LISTEN), now."""
    with psycopg.connect(_admin_url(pg_url)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query LIKE 'LISTEN%%'"
        ).fetchone()
    assert row is not None
    return int(row[0])


@contextlib.contextmanager
def _listening(pg_url: str) -> Iterator[tuple[fm.App, queue.Queue[str], Listener]]:
    """A started listener of an app with a job ``load``, whose wake-ups go to the queue."""
    app = fm.App(pg_url)

    @app.job
    def load(ctx: fm.JobContext, payload: dict[str, int]) -> None: ...

    woken: queue.Queue[str] = queue.Queue()
    listener = app.store.listener(woken.put, name="test-listener")
    assert listener is not None
    listener.start()
    try:
        yield app, woken, listener
    finally:
        listener.stop()
        app.close()


@pytest.mark.parametrize("runs_per_submit", [1, 3])
def test_a_submit_wakes_listeners_of_its_job(pg_url: str, runs_per_submit: int) -> None:
    with _listening(pg_url) as (app, woken, _):
        wait_until(_woken_by_a_submit(app, woken, runs_per_submit), what="a wake-up for job load")


def test_a_stopped_listener_is_gone_with_its_connection(pg_url: str) -> None:
    with _listening(pg_url) as (app, woken, listener):
        # Listening (a wake-up arrived), and waiting for the next one when stopped.
        wait_until(_woken_by_a_submit(app, woken), what="a wake-up for job load")
        assert _listening_backends(pg_url) == 1
        listener.stop()
        assert "test-listener" not in {thread.name for thread in threading.enumerate()}
        wait_until(lambda: _listening_backends(pg_url) == 0, what="the listener's backend gone")
        listener.stop()  # a second stop is harmless


def test_a_listener_whose_connection_is_cut_listens_again(pg_url: str) -> None:
    with _listening(pg_url) as (app, woken, _):
        wait_until(_woken_by_a_submit(app, woken), what="a wake-up for job load")
        _terminate_listening_backends(pg_url)
        wait_until(lambda: _listening_backends(pg_url) == 0, what="the listener's backend gone")
        wait_until(_woken_by_a_submit(app, woken), what="a wake-up after reconnecting")
    assert "test-listener" not in {thread.name for thread in threading.enumerate()}


def _woken_by_a_submit(
    app: fm.App, woken: queue.Queue[str], runs_per_submit: int = 1
) -> Callable[[], bool]:
    """A condition for wait_until: a submit of new runs of job load woke the listener.

    Until the listener listens, a wake-up can be missed: wait_until submits again."""
    submitted = itertools.count()

    def woken_once() -> bool:
        key = f"k{next(submitted)}-{uuid.uuid4().hex}"
        app.submit("load", *(fm.RunRequest(f"{key}-{n}", {}) for n in range(runs_per_submit)))
        try:
            return woken.get(timeout=0.2) == "load"
        except queue.Empty:
            return False

    return woken_once


def _terminate_listening_backends(pg_url: str) -> None:
    with psycopg.connect(_admin_url(pg_url), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query LIKE 'LISTEN%%'"
        )


def _admin_url(pg_url: str) -> str:
    return sa.make_url(pg_url).set(drivername="postgresql").render_as_string(False)
