"""A PostgreSQL worker's connections: bounded by the threads alive, not by the workers ever run.

The plain claim and a batch of successes run in autocommit on a connection
of the calling thread's own. A process that runs ``app.work(until_idle=True)``
again and again (a cron-like loop) gets new worker threads each time; the
connections of the threads that ended must not pile up on the server.
"""

from __future__ import annotations

import psycopg
import sqlalchemy as sa

import ferryman as fm
from tests.helpers import wait_until


def _connections(pg_url: str) -> int:
    """Connections to this database now, this look-up's own left out."""
    url = sa.make_url(pg_url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert row is not None
    return int(row[0])


def _own_connections(app: fm.App, pg_url: str) -> int:
    """Connections to this database other than those the store's pools hold.

    A pool keeps as many connections as the most its threads ever used at
    once, which varies from one work() to the next; the connections of the
    worker's threads are the others.
    """
    backend = app.store.backend
    pools = {id(engine.pool): engine.pool for engine in (backend.engine, backend.read_engine)}
    pooled = sum(pool.checkedin() + pool.checkedout() for pool in pools.values())  # type: ignore[attr-defined]
    return _connections(pg_url) - pooled


def test_working_until_idle_again_and_again_keeps_the_connections_it_had(pg_url: str) -> None:
    app = fm.App(pg_url)
    done: list[int] = []

    @app.job
    def load(ctx: fm.JobContext, payload: dict[str, int]) -> None:
        done.append(payload["n"])

    try:
        app.submit("load", fm.RunRequest("0", {"n": 0}))
        app.work(until_idle=True)
        after_one = _own_connections(app, pg_url)
        for n in range(1, 8):
            app.submit("load", fm.RunRequest(str(n), {"n": n}))
            app.work(until_idle=True)
        assert sorted(done) == list(range(8))
        # A connection its thread closed is listed until its server process
        # has exited, a moment later: wait for that, not for a pile-up.
        wait_until(
            lambda: _own_connections(app, pg_url) <= after_one,
            timeout=10,
            what=f"at most the {after_one} connections of the first work() besides the pools'",
        )
    finally:
        app.close()
    wait_until(lambda: _connections(pg_url) == 0, timeout=10, what="every connection closed")
