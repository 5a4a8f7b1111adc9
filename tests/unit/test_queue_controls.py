"""Priorities, due times, concurrency and key limits: enforced by the store, on every store."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

import ferryman as fm
from ferryman.store import JobLimits
from ferryman.store.limits import SCAN_SLACK
from ferryman.store.run_rows import ClaimedRun, Outcome, OutcomeKind
from ferryman.store.schema import runs
from tests.helpers import wait_until
from tests.queue_support import held_slots, most_at_once, most_at_once_per_key


def noop(ctx: fm.JobContext, payload: object) -> None: ...


def db_now(app: fm.App) -> float:
    with app.store.engine.begin() as conn:
        return app.store.runs.now(conn)


# -- priorities --------------------------------------------------------------


@pytest.mark.parametrize("limited", [False, True], ids=["plain", "limited"])
def test_higher_priorities_are_claimed_before_any_queued_lower_one(
    make_app: type[fm.App], limited: bool
) -> None:
    app = make_app()
    app.job(name="load", concurrency=10_000 if limited else None)(noop)
    limits = {"load": JobLimits(concurrency=10_000)} if limited else None
    app.submit("load", *(fm.RunRequest(f"low-{i:04d}") for i in range(1000)))
    app.submit("load", *(fm.RunRequest(f"high-{i}", priority=10) for i in range(10)))

    claimed = []
    for _ in range(4):  # claims of 4: the 10 first, whatever the batch
        batch = app.store.claim(
            worker_id="w", jobs=["load"], limit=4, lease_seconds=30, limits=limits
        )
        claimed.extend(run.run_key for run in batch)
    assert claimed[:10] == [f"high-{i}" for i in range(10)]  # FIFO within a priority
    assert claimed[10:] == ["low-0000", "low-0001", "low-0002", "low-0003", "low-0004", "low-0005"]


def test_a_batch_of_mixed_priorities_is_claimed_in_order_and_its_ids_answer_its_requests(
    make_app: type[fm.App],
) -> None:
    app = make_app()
    app.job(name="load")(noop)
    requests = [fm.RunRequest(f"r{i}", priority=i % 3) for i in range(9)]
    submitted = app.submit("load", *requests, fm.RunRequest("late", not_before=timedelta(hours=1)))
    by_key = {run.run_key: run.id for run in app.get_runs()}
    assert submitted.run_ids == tuple(by_key[r.run_key] for r in [*requests, fm.RunRequest("late")])
    claimed = app.store.claim(worker_id="w", jobs=["load"], limit=20, lease_seconds=30)
    in_claim_order = ["r2", "r5", "r8", "r1", "r4", "r7", "r0", "r3", "r6"]
    assert [run.run_key for run in claimed] == in_claim_order
    if app.store.backend.name == "sqlite":  # laid out as claimed: ids in claim order
        assert [run.id for run in claimed] == sorted(run.id for run in claimed)
        assert by_key["late"] > max(by_key[key] for key in in_claim_order)


def test_a_job_gives_its_priority_to_its_runs_unless_they_ask_for_another(
    make_app: type[fm.App],
) -> None:
    app = make_app()
    app.job(name="urgent", priority=5)(noop)
    app.job(name="routine")(noop)
    app.submit("routine", fm.RunRequest("r1"))
    app.submit("urgent", fm.RunRequest("u1"), fm.RunRequest("u0", priority=-1))
    assert {run.run_key: run.priority for run in app.get_runs()} == {"r1": 0, "u1": 5, "u0": -1}
    order = app.store.claim(worker_id="w", jobs=["routine", "urgent"], limit=3, lease_seconds=30)
    assert [run.run_key for run in order] == ["u1", "r1", "u0"]


def test_priorities_and_keys_are_checked_where_they_are_given() -> None:
    with pytest.raises(fm.PayloadError, match="priority must be an int"):
        fm.RunRequest("a", priority="high")  # type: ignore[arg-type]
    with pytest.raises(fm.PayloadError, match="concurrency_key must be a non-empty string"):
        fm.RunRequest("a", concurrency_key="")
    app = fm.App("sqlite:///unused.db")
    with pytest.raises(fm.ConfigurationError, match="concurrency must be a whole number >= 1"):
        app.job(concurrency=0)(noop)
    with pytest.raises(fm.ConfigurationError, match=r"rate must be a ferryman\.Rate"):
        app.job(rate=100)(noop)  # type: ignore[arg-type]
    with pytest.raises(fm.ConfigurationError, match=r"Rate\.count must be a positive number"):
        fm.Rate(0)
    # The name given where the function goes, as other queues' decorators take it.
    with pytest.raises(fm.ConfigurationError, match=r"@app\.job\(name='noop'\)"):
        app.job("noop")  # type: ignore[call-overload]
    assert "noop" not in app.jobs


# -- due times ---------------------------------------------------------------


def test_not_before_is_never_claimed_early_and_a_resubmit_does_not_move_it(
    make_app: type[fm.App],
) -> None:
    app = make_app()
    app.job(name="load")(noop)
    far = datetime.now(UTC) + timedelta(days=1)
    app.submit(
        "load",
        fm.RunRequest("tomorrow", not_before=far),
        fm.RunRequest("soon", not_before=timedelta(seconds=1.5)),
    )
    runs = {run.run_key: run for run in app.get_runs()}
    assert runs["tomorrow"].available_at.timestamp() == pytest.approx(far.timestamp())
    due = runs["soon"].available_at.timestamp()
    assert due == pytest.approx(db_now(app) + 1.5, abs=1.0)  # measured on the store's clock

    # Submitted again, due now: the runs stay as first requested.
    again = app.submit("load", fm.RunRequest("soon"), fm.RunRequest("tomorrow", priority=9))
    assert again.created == 0
    assert {run.run_key: run.available_at.timestamp() for run in app.get_runs()} == {
        "tomorrow": runs["tomorrow"].available_at.timestamp(),
        "soon": due,
    }
    claimed: list[fm.Run] = []

    def claim_soon() -> bool:
        for run in app.store.claim(worker_id="w", jobs=["load"], limit=10, lease_seconds=30):
            claimed.append(run)
            assert db_now(app) >= due
        return bool(claimed)

    wait_until(claim_soon, timeout=20, what="the delayed run to be due")
    assert [run.run_key for run in claimed] == ["soon"]
    (event,) = [e for e in app.get_run_events(claimed[0].id) if e.kind == "claimed"]
    assert event.at.timestamp() >= due


def test_a_naive_not_before_is_refused_naming_the_fix() -> None:
    with pytest.raises(fm.PayloadError, match=r"has no time zone.*aware datetime"):
        fm.RunRequest("a", not_before=datetime(2030, 1, 1))


# -- concurrency -------------------------------------------------------------


def work_in_threads(app: fm.App, threads: int) -> None:
    """``threads`` workers, each its own Worker in this process, until none finds work."""
    errors: list[BaseException] = []

    def work() -> None:
        try:
            app.work(until_idle=True, concurrency=3, poll_interval=0.05, handle_signals=False)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert not errors


def test_job_concurrency_is_never_exceeded_by_concurrent_claimers(make_app: type[fm.App]) -> None:
    app = make_app()

    @app.job(concurrency=2)
    def limited(ctx: fm.JobContext, payload: object) -> None:
        time.sleep(0.01)

    app.submit("limited", *(fm.RunRequest(f"run-{i:03d}") for i in range(60)))
    while any(run.status != "succeeded" for run in app.get_runs()):
        work_in_threads(app, threads=4)
    held = held_slots(app, "limited")
    assert len(held) == 60
    assert most_at_once(held) == 2  # reached, never exceeded


def test_runs_sharing_a_key_never_overlap_while_other_keys_go_on(make_app: type[fm.App]) -> None:
    app = make_app()

    @app.job(key_concurrency=1)
    def per_customer(ctx: fm.JobContext, payload: object) -> None:
        time.sleep(0.01)

    @app.job(key_concurrency=2)
    def two_per_customer(ctx: fm.JobContext, payload: object) -> None:
        time.sleep(0.01)

    for job in ("per_customer", "two_per_customer"):
        app.submit(
            job,
            *(
                fm.RunRequest(f"run-{i:03d}", concurrency_key=f"customer-{i % 4}")
                for i in range(48)
            ),
        )
    while any(run.status != "succeeded" for run in app.get_runs()):
        work_in_threads(app, threads=4)
    one = held_slots(app, "per_customer")
    assert len(one) == 48
    assert set(most_at_once_per_key(one).values()) == {1}
    assert most_at_once(one) > 1  # other keys ran meanwhile
    two = most_at_once_per_key(held_slots(app, "two_per_customer"))
    assert max(two.values()) <= 2
    assert {run.concurrency_key for run in app.get_runs(job="per_customer")} == {
        f"customer-{i}" for i in range(4)
    }


@pytest.mark.parametrize("limits", [JobLimits(), JobLimits(concurrency=1)], ids=["key", "job"])
def test_an_expired_lease_frees_its_slot_only_when_taken_over(
    make_app: type[fm.App], limits: JobLimits
) -> None:
    app = make_app()
    app.job(name="serial", concurrency=limits.concurrency)(noop)
    key = "k" if limits.concurrency is None else None
    app.submit("serial", *(fm.RunRequest(f"run-{i}", concurrency_key=key) for i in range(2)))
    claim = {"jobs": ["serial"], "limit": 2, "limits": {"serial": limits}}

    (zombie,) = app.store.claim(worker_id="zombie", lease_seconds=0.5, **claim)  # type: ignore[arg-type]
    assert app.store.claim(worker_id="other", lease_seconds=30, **claim) == []  # type: ignore[arg-type]
    run = app.get_run(zombie.id)
    assert run is not None and run.lease_expires_at is not None
    expiry = run.lease_expires_at.timestamp()
    wait_until(lambda: db_now(app) > expiry, what="the zombie's lease to expire")

    # Past its expiry the zombie's run is taken over, and still holds the slot.
    taken = app.store.claim(worker_id="taker", lease_seconds=30, **claim)  # type: ignore[arg-type]
    assert [(run.id, run.attempt) for run in taken] == [(zombie.id, 2)]
    assert app.store.claim(worker_id="other", lease_seconds=30, **claim) == []  # type: ignore[arg-type]
    held = held_slots(app, "serial")
    assert most_at_once(held) == 1


def test_a_key_at_its_limit_holds_up_no_other_key_however_many_runs_it_has_queued(
    make_app: type[fm.App],
) -> None:
    app = make_app()
    app.job(name="per_customer")(noop)
    app.submit("per_customer", fm.RunRequest("busy-0", concurrency_key="busy"))
    claim = {"worker_id": "w", "jobs": app.jobs, "lease_seconds": 30}
    assert [run.run_key for run in app.store.claim(limit=1, **claim)] == ["busy-0"]  # type: ignore[arg-type]
    # Far more runs of the busy key than one claim reads, ahead of the other key's run.
    busy = [fm.RunRequest(f"busy-{i}", concurrency_key="busy", priority=1) for i in range(1, 3000)]
    app.submit("per_customer", *busy)
    app.submit("per_customer", fm.RunRequest("idle-0", concurrency_key="idle"))

    assert [run.run_key for run in app.store.claim(limit=10, **claim)] == ["idle-0"]  # type: ignore[arg-type]


def test_one_claim_takes_runs_of_a_key_up_to_its_limit_counting_those_running(
    make_app: type[fm.App],
) -> None:
    app = make_app()
    app.job(name="two_per_customer", key_concurrency=2)(noop)
    app.submit("two_per_customer", fm.RunRequest("a-0", concurrency_key="a"))
    claim = {"worker_id": "w", "jobs": app.jobs, "lease_seconds": 30}
    assert len(app.store.claim(limit=1, **claim)) == 1  # type: ignore[arg-type]
    app.submit(
        "two_per_customer",
        *(fm.RunRequest(f"a-{i}", concurrency_key="a") for i in range(1, 5)),
        *(fm.RunRequest(f"b-{i}", concurrency_key="b") for i in range(4)),
        fm.RunRequest("no-key"),
    )

    claimed = app.store.claim(limit=100, **claim)  # type: ignore[arg-type]
    assert sorted(run.run_key for run in claimed) == ["a-1", "b-0", "b-1", "no-key"]


def test_keys_at_their_limit_of_two_are_read_once_however_many_runs_they_have_queued(
    make_app: type[fm.App],
) -> None:
    # Statistics gathered while nothing ran: a planner that trusts them may
    # count each due run's key by walking every running run. The claim reads
    # each run of the job at most once instead (PostgreSQL: rows its plan read).
    app = make_app()
    app.job(name="two_per_customer", key_concurrency=2)(noop)
    busy = [f"busy-{key}" for key in range(20)]
    app.submit(
        "two_per_customer",
        *(
            fm.RunRequest(f"{key}-{i}", concurrency_key=key, priority=1)
            for key in busy
            for i in (0, 1)
        ),
        fm.RunRequest("half-0", concurrency_key="half", priority=1),
        *(fm.RunRequest(f"{key}-{i}", concurrency_key=key) for i in range(2, 100) for key in busy),
        *(
            fm.RunRequest(f"{key}-{i}", concurrency_key=key)
            for i in (1, 2)
            for key in ("half", "free")
        ),
    )
    with app.store.engine.begin() as conn:
        if app.store.backend.name == "mariadb":
            conn.execute(sa.text(f"ANALYZE TABLE {runs.name}")).all()
        else:
            conn.execute(sa.text("ANALYZE"))
    claim = {"worker_id": "w", "jobs": app.jobs, "lease_seconds": 30}
    assert len(app.store.claim(limit=41, **claim)) == 41  # type: ignore[arg-type]
    queued, running, leased = 20 * 98 + 4, 41, 3

    if app.store.backend.name == "postgres":
        # Each run once, and the runs leased twice more (locked, then updated).
        read = rows_read_by_a_limited_claim(app, "two_per_customer", key_concurrency=2)
        assert read <= queued + running + 2 * leased
    claimed = app.store.claim(limit=100, **claim)  # type: ignore[arg-type]
    assert sorted(run.run_key for run in claimed) == ["free-1", "free-2", "half-1"]


def rows_read_by_a_limited_claim(app: fm.App, job: str, *, key_concurrency: int) -> int:
    """Rows of the runs table a limited claim's statement reads: EXPLAIN ANALYZE, rolled back."""
    from ferryman.store.limits import DUE_ORDERED
    from ferryman.store.postgres import _lease_due_sql

    sql, defaults = _lease_due_sql(DUE_ORDERED[min(key_concurrency, 2)], app.store.engine.dialect)
    params = {**defaults, "job": job, "now": db_now(app), "scan": 100 + SCAN_SLACK, "room": 100}
    params.update(key_concurrency=key_concurrency, tokens=None, lease_seconds=30.0, worker="w")
    with app.store.engine.connect() as conn, conn.begin() as transaction:
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params)
        ((plan,),) = cursor.fetchall()
        transaction.rollback()

    def read(node: dict[str, Any]) -> int:
        own = 0
        if node.get("Relation Name") == runs.name and node["Node Type"] != "ModifyTable":
            per_loop = node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
            own = per_loop * node["Actual Loops"]
        return own + sum(read(child) for child in node.get("Plans", ()))

    return read(plan[0]["Plan"])


def test_queued_runs_of_one_key_filling_the_read_ahead_hold_up_no_other_key(
    make_app: type[fm.App],
) -> None:
    # More queued runs of key "a" than a claim reads ahead of its room: the
    # claim reads further and takes "b" too, and the rate bucket is charged
    # for the two runs it took, not for what it read.
    app = make_app()
    app.job(name="per_customer", rate=fm.Rate(10, per=3600.0, burst=10))(noop)
    app.submit(
        "per_customer",
        *(fm.RunRequest(f"a-{i}", concurrency_key="a") for i in range(3 * SCAN_SLACK)),
        fm.RunRequest("b-0", concurrency_key="b"),
    )
    claim = {"worker_id": "w", "jobs": app.jobs, "lease_seconds": 30}

    claimed = app.store.claim(limit=2, **claim)  # type: ignore[arg-type]
    assert sorted(run.run_key[0] for run in claimed) == ["a", "b"]
    # 10 tokens, 2 taken: 8 left, as many runs of "a", one claim after another's end.
    taken: list[str] = []
    for _ in range(10):
        succeed(app, claimed)
        claimed = app.store.claim(limit=100, **claim)  # type: ignore[arg-type]
        taken += [run.run_key for run in claimed]
    assert len(taken) == len(set(taken)) == 8
    assert {key[0] for key in taken} == {"a"}


def succeed(app: fm.App, claimed: list[ClaimedRun]) -> None:
    outcomes = [
        Outcome(kind=OutcomeKind.SUCCEEDED, lease=run.lease, attempt=run.attempt) for run in claimed
    ]
    assert all(app.store.finish(outcomes, worker_id="w"))


def test_a_keyed_submit_rolled_back_leaves_the_next_one_to_mark_its_job(
    make_app: type[fm.App],
) -> None:
    app = make_app()
    app.job(name="per_customer")(noop)  # limited by its runs' keys alone
    with pytest.raises(RuntimeError), app.engine.begin() as conn:
        app.submit("per_customer", fm.RunRequest("first", concurrency_key="k"), conn=conn)
        raise RuntimeError("the application's own transaction fails")
    app.submit("per_customer", fm.RunRequest("second", concurrency_key="k"))
    app.submit("per_customer", fm.RunRequest("third", concurrency_key="other"))

    claimed = app.store.claim(worker_id="w", jobs=app.jobs, limit=10, lease_seconds=30)
    assert sorted(run.run_key for run in claimed) == ["second", "third"]


def test_keyed_runs_submitted_one_by_one_keep_their_key_and_its_limit(
    make_app: type[fm.App],
) -> None:
    app = make_app()
    app.job(name="per_customer")(noop)  # limited by its runs' keys alone
    for i in range(4):  # the first marks the job; the others may take the one-statement submit
        app.submit("per_customer", fm.RunRequest(f"run-{i}", concurrency_key=f"k{i % 2}"))

    assert [run.concurrency_key for run in app.get_runs()] == ["k0", "k1", "k0", "k1"]
    claimed = app.store.claim(worker_id="w", jobs=app.jobs, limit=10, lease_seconds=30)
    assert sorted(run.run_key for run in claimed) == ["run-0", "run-1"]


@pytest.mark.parametrize("store", ["postgres", "mariadb"])
def test_a_run_another_transaction_holds_takes_no_token_from_the_claim_that_skips_it(
    request: pytest.FixtureRequest, store: str
) -> None:
    # Row locks are for servers: on SQLite a claim never meets a run that
    # another transaction holds.
    app = fm.App(request.getfixturevalue(f"{'pg' if store == 'postgres' else store}_url"))
    request.addfinalizer(app.close)
    app.job(name="metered", rate=fm.Rate(1, per=3600.0, burst=3))(noop)
    app.submit("metered", *(fm.RunRequest(f"run-{i}") for i in range(3)))
    held = app.get_run_by_key("metered", "run-0")
    assert held is not None
    claim = {"worker_id": "w", "jobs": app.jobs, "lease_seconds": 30}

    with app.engine.connect() as operator, operator.begin():  # an operator's cancel, say
        operator.execute(sa.select(runs.c.id).where(runs.c.id == held.id).with_for_update())
        skipped = app.store.claim(limit=3, **claim)  # type: ignore[arg-type]
    assert sorted(run.run_key for run in skipped) == ["run-1", "run-2"]

    # Three tokens, two runs claimed: the third is still there for the run skipped.
    assert [run.run_key for run in app.store.claim(limit=3, **claim)] == ["run-0"]  # type: ignore[arg-type]
    assert app.store.claim(limit=3, **claim) == []  # type: ignore[arg-type]
