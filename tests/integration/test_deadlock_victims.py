"""A deadlock is the store's contention: not the job's failure, not the submit's.

MariaDB and PostgreSQL break a deadlock by rolling back one transaction whole
(the victim's: InnoDB's error 1213, PostgreSQL's SQLSTATE 40P01). A run whose
transaction was the victim wrote nothing and did nothing wrong: its attempt is
given back and the run is due again at once,
as for any failure of the store under an attempt, so ``work --until-idle``
does not stop while it waits out a backoff (and a run allowed one attempt
does not end ``failed``).

The deadlock is made on purpose: another connection locks row 1 after
updating many rows (InnoDB picks the transaction that changed fewer rows as
the victim; PostgreSQL the first to wait past its deadlock_timeout, the job),
the job locks row 2 then asks for row 1, and once the job waits for it, the
other connection asks for row 2. A submit that loses a deadlock is tried
again by the store: it was rolled back whole, and a submit is idempotent.
"""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

import ferryman as fm
from tests.conftest import STORE_FIXTURES
from tests.helpers import wait_until

ROWS = 200
contended = sa.Table(
    "contended",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("n", sa.Integer, nullable=False),
)


def _hold_row_1_then_ask_for_row_2(
    engine: sa.Engine, locked: threading.Event, job_holds_row_2: threading.Event
) -> None:
    """The other side of the deadlock: it changes many rows, so it is not the victim."""
    with engine.begin() as conn:
        conn.execute(contended.update().where(contended.c.id > 2).values(n=contended.c.n + 1))
        conn.execute(contended.update().where(contended.c.id == 1).values(n=contended.c.n + 1))
        locked.set()
        assert job_holds_row_2.wait(60)
        # PostgreSQL rolls back whoever waited past deadlock_timeout first: ask for
        # row 2 only once the job waits for row 1, so that it is the job.
        wait_until(lambda: _waiting_for_a_lock(engine), what="the job waiting for row 1")
        # Waits for the job's lock on row 2 while the job waits for row 1: the
        # server rolls the job's transaction back, and this update then goes through.
        conn.execute(contended.update().where(contended.c.id == 2).values(n=contended.c.n + 1))


def _waiting_for_a_lock(engine: sa.Engine) -> bool:
    """Whether a transaction of the store's database waits for a row lock, now."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            query = (
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        else:
            query = (
                "SELECT count(*) FROM information_schema.innodb_trx WHERE trx_state = 'LOCK WAIT'"
            )
        return bool(conn.exec_driver_sql(query).scalar_one())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("store", ["mariadb", "postgres"])
def test_a_deadlock_victim_in_the_transaction_uses_no_attempt_and_is_due_at_once(
    store: str, request: pytest.FixtureRequest
) -> None:
    app = fm.App(request.getfixturevalue(STORE_FIXTURES[store]))
    locked, job_holds_row_2 = threading.Event(), threading.Event()
    victims: list[str] = []

    # One attempt, and a backoff no --until-idle would wait for: were the
    # deadlock the job's failure, the run would end failed.
    @app.job(max_attempts=1, backoff=fm.Backoff(base=3600.0))
    def contend(ctx: fm.JobContext, payload: object) -> None:
        first = not victims
        if first:
            assert locked.wait(60)
        with ctx.transaction() as conn:
            conn.execute(contended.update().where(contended.c.id == 2).values(n=contended.c.n + 1))
            if first:
                victims.append(ctx.run_key)
                job_holds_row_2.set()
            conn.execute(contended.update().where(contended.c.id == 1).values(n=contended.c.n + 1))

    try:
        contended.create(app.engine)
        with app.engine.begin() as conn:
            conn.execute(contended.insert(), [{"id": i, "n": 0} for i in range(1, ROWS + 1)])
        other = threading.Thread(
            target=_hold_row_1_then_ask_for_row_2, args=(app.engine, locked, job_holds_row_2)
        )
        other.start()
        (run_id,) = app.submit("contend", fm.RunRequest("r-1")).run_ids
        report = app.work(until_idle=True, handle_signals=False, concurrency=1)
        other.join(60)
        assert not other.is_alive()

        run = app.get_run(run_id)
        assert run is not None
        assert (run.status, run.attempt) == (fm.RunStatus.SUCCEEDED, 1)
        assert (report.succeeded, report.released, report.failed, report.dead) == (1, 1, 0, 0)
        events = app.get_run_events(run_id)
        assert [e.kind.value for e in events] == [
            *("requested", "claimed", "released", "claimed", "succeeded")
        ]
        reason = str(events[2].detail.get("reason"))
        assert reason.startswith("the store failed during the attempt"), reason
        assert "deadlock" in reason.lower(), reason
        # The victim's writes were undone; the redo's and the other side's landed once each.
        with app.engine.connect() as conn:
            counts = dict(conn.execute(sa.select(contended.c.id, contended.c.n)).all())
        assert (counts[1], counts[2], counts[3]) == (2, 2, 1)
    finally:
        app.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("store", ["mariadb", "postgres"])
def test_a_submit_that_loses_a_deadlock_is_tried_again(
    store: str, request: pytest.FixtureRequest
) -> None:
    """A producer's open transaction holds run "b" when a submit of "a" and "b"
    comes: the submit takes "a", then waits for "b". The producer then asks for
    "a" too: a deadlock, whose victim is the submit (it waited first, and holds
    less). The database rolled it back whole, so the store tries it again; once
    the producer rolls back, the submit makes both runs and returns normally."""
    app = fm.App(request.getfixturevalue(STORE_FIXTURES[store]))

    @app.job
    def load(ctx: fm.JobContext, payload: object) -> None: ...

    app.submit("load", fm.RunRequest("warm-up"))  # the store exists before the race
    submitted: list[fm.SubmitResult | BaseException] = []

    def submit() -> None:
        try:
            submitted.append(app.submit("load", fm.RunRequest("a"), fm.RunRequest("b")))
        except BaseException as exc:  # shown by the assertion below
            submitted.append(exc)

    submitter = threading.Thread(target=submit)
    try:
        with app.engine.connect() as producer:
            transaction = producer.begin()
            # Rows, so that InnoDB picks the submit as the deadlock's victim.
            app.submit("load", *(fm.RunRequest(f"ballast-{i}") for i in range(ROWS)), conn=producer)
            app.submit("load", fm.RunRequest("b"), conn=producer)
            submitter.start()
            wait_until(lambda: _waiting_for_a_lock(app.engine), what='the submit waiting for "b"')
            # Waits for the submit's "a" until the database ends the deadlock.
            taken = app.submit("load", fm.RunRequest("a"), conn=producer)
            assert taken.created == 1, "the producer, not the submit, lost the deadlock"
            wait_until(
                lambda: _waiting_for_a_lock(app.engine) or not submitter.is_alive(),
                what="the submit, tried again, waiting for the producer",
            )
            transaction.rollback()
        submitter.join(timeout=60)
        [result] = submitted
        assert isinstance(result, fm.SubmitResult), f"the submit failed: {result!r}"
        assert (result.created, result.deduplicated) == (2, 0)
        made = {run.run_key: run.id for run in app.get_runs(job="load")}
        assert set(made) == {"warm-up", "a", "b"}
        assert sorted(result.run_ids) == sorted([made["a"], made["b"]])
    finally:
        submitter.join(timeout=60)
        app.close()
