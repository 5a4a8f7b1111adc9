"""Submits on MariaDB: one autocommit statement on a connection of their own.

The statement meets keys that exist (a whole statement undone by MariaDB,
then the runs written in a transaction that skips those keys), and a
connection the server closed since the last submit (replaced, the submit
sent again): neither loses a run nor makes one twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

import ferryman as fm
from ferryman.store.schema import runs
from ferryman.worker.context import JobContext
from tests.mariadb_pool import admin_connection, execute, rows


@pytest.fixture
def app(mariadb_url: str) -> Iterator[fm.App]:
    app = fm.App(mariadb_url)
    app.job(name="load")(lambda ctx, payload: None)
    yield app
    app.close()


def stored(app: fm.App) -> list[tuple[str, str, float, float, float]]:
    """``(run_key, payload, available_at, created_at, updated_at)`` of every run, by id."""
    query = sa.select(
        runs.c.run_key, runs.c.payload, runs.c.available_at, runs.c.created_at, runs.c.updated_at
    ).order_by(runs.c.id)
    with app.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(query)]  # type: ignore[misc]


def submit_sessions(database: str) -> list[int]:
    """The ids of the sessions on ``database`` other than the caller's."""
    with admin_connection() as admin:
        found = rows(
            admin,
            "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s AND ID <> CONNECTION_ID()",
            database,
        )
    return [session for (session,) in found]


def test_keys_that_exist_are_skipped_and_the_new_ones_written_once(app: fm.App) -> None:
    first = app.submit("load", fm.RunRequest("a", {"n": 1}), fm.RunRequest("b", {"n": 2}))
    assert first.created == 2
    # "b" exists: the statement fails on it as a whole, and the runs go again
    # in a transaction that skips it.
    again = app.submit("load", fm.RunRequest("b", {"n": 20}), fm.RunRequest("c", {"n": 3}))
    assert (again.created, again.deduplicated) == (1, 1)
    assert again.run_ids[0] == first.run_ids[1]
    # Then single submits of new keys, and one of a key that exists.
    assert app.submit("load", fm.RunRequest("d", {"n": 4})).created == 1
    assert app.submit("load", fm.RunRequest("e", {"n": 5})).created == 1
    repeated = app.submit("load", fm.RunRequest("a", {"n": 10}))
    assert (repeated.created, repeated.run_ids) == (0, (first.run_ids[0],))

    written = stored(app)
    assert [(key, payload) for key, payload, *_ in written] == [
        ("a", '{"n":1}'),
        ("b", '{"n":2}'),
        ("c", '{"n":3}'),
        ("d", '{"n":4}'),
        ("e", '{"n":5}'),
    ]
    # Each run's times read from one clock: due when created, and not yet updated.
    assert all(due == created == updated for _, _, due, created, updated in written)


def test_a_run_due_later_is_due_at_its_time_measured_on_the_database_clock(app: fm.App) -> None:
    at = 4_102_444_800.0  # 2100-01-01, UTC
    app.submit("load", fm.RunRequest("later", not_before=datetime.fromtimestamp(at, UTC)))
    app.submit("load", fm.RunRequest("delayed", not_before=timedelta(hours=1)))
    (later, delayed) = stored(app)
    assert later[2] == at
    assert delayed[2] == pytest.approx(delayed[3] + 3600, abs=1e-3)


def test_a_submit_whose_connection_the_server_closed_is_sent_again_on_a_new_one(
    app: fm.App, mariadb_url: str
) -> None:
    app.submit("load", fm.RunRequest("before"))  # opens the submit connection
    database = sa.make_url(mariadb_url).database
    assert database is not None
    app.engine.dispose()  # leave the submit connection the only session
    sessions = submit_sessions(database)
    assert len(sessions) == 1
    with admin_connection() as admin:
        execute(admin, f"KILL {int(sessions[0])}")  # as wait_timeout would

    after = app.submit("load", fm.RunRequest("after"))
    assert after.created == 1
    assert [key for key, *_ in stored(app)] == ["before", "after"]
    assert len(submit_sessions(database)) >= 1


def test_a_run_too_big_for_one_statement_is_refused_by_name_and_its_batch_not_written(
    app: fm.App,
) -> None:
    big = "x" * (17 << 20)  # over the server's max_allowed_packet (16 MiB by default)
    with pytest.raises(fm.PayloadError, match=r"run_key 'b' .* \(max_allowed_packet\)"):
        app.submit("load", fm.RunRequest("a", "small"), fm.RunRequest("b", big))
    with pytest.raises(fm.PayloadError, match=r"run_key 'b'"):
        app.submit("load", fm.RunRequest("b", big))
    assert stored(app) == []
    # The connection was never cut: the next submit goes through at once.
    assert app.submit("load", fm.RunRequest("c", "small")).created == 1


def test_runs_that_fit_one_statement_each_but_not_together_are_all_written(app: fm.App) -> None:
    payloads = {key: key * (6 << 20) for key in "abc"}  # 6 MiB each, 18 together
    result = app.submit("load", *(fm.RunRequest(key, text) for key, text in payloads.items()))
    assert result.created == 3
    assert [(key, len(payload)) for key, payload, *_ in stored(app)] == [
        (key, len(text) + 2)
        for key, text in payloads.items()  # JSON strings: quoted
    ]


def test_a_checkpoint_too_big_for_one_statement_is_refused_and_the_lease_kept(
    app: fm.App,
) -> None:
    app.submit("load", fm.RunRequest("a"))
    (run,) = app.store.claim(worker_id="w", jobs=["load"], limit=1, lease_seconds=30)
    ctx = JobContext(store=app.store, run=run, worker_id="w", lease_seconds=30)
    with pytest.raises(fm.PayloadError, match=rf"checkpoint of run {run.id} "):
        ctx.checkpoint({"rows": "x" * (17 << 20)})
    ctx.checkpoint({"offset": 1})  # still held, and the connection fine
    held = app.get_run(run.id)
    assert held is not None and held.checkpoint == {"offset": 1}
