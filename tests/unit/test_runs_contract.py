"""The run queue's contract, on a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

import ferryman as fm
from ferryman.store import ClaimedRun, Outcome, OutcomeKind, Store
from ferryman.worker.context import JobContext
from tests.helpers import incompressible, wait_until

effects = sa.table("effects", sa.column("run_key"), sa.column("attempt"))


def create_effects(app: fm.App) -> None:
    with app.engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE effects (run_key TEXT NOT NULL, attempt INTEGER)"))


def effect_keys(app: fm.App) -> list[str]:
    with app.engine.begin() as conn:
        return sorted(conn.execute(sa.text("SELECT run_key FROM effects")).scalars())


def kinds(app: fm.App, run_id: int) -> list[str]:
    return [event.kind.value for event in app.get_run_events(run_id)]


def lease_expired(store: Store, run_id: int) -> bool:
    with store.engine.begin() as conn:
        now = store.runs.now(conn)
    run = store.get_run(run_id)
    assert run is not None and run.lease_expires_at is not None
    return run.lease_expires_at.timestamp() < now


# -- submit ------------------------------------------------------------------


def test_duplicate_run_keys_yield_one_run(make_app: type[fm.App]) -> None:
    app = make_app()

    @app.job
    def load(ctx: fm.JobContext, payload: dict[str, int]) -> None: ...

    first = app.submit("load", fm.RunRequest("a", {"n": 1}), fm.RunRequest("b", {"n": 2}))
    again = app.submit(
        "load", fm.RunRequest("b", {"n": 3}), fm.RunRequest("c", {}), fm.RunRequest("c", {})
    )

    assert (first.created, first.deduplicated) == (2, 0)
    assert (again.created, again.deduplicated) == (1, 2)
    assert again.run_ids[0] == first.run_ids[1]  # the existing run is returned
    assert again.run_ids[1] == again.run_ids[2]
    runs = app.get_runs(job="load")
    assert [run.run_key for run in runs] == ["a", "b", "c"]
    assert runs[1].payload == {"n": 2}  # the first request's payload is kept
    assert kinds(app, runs[1].id) == ["requested"]


def test_non_json_payload_is_refused_naming_job_and_key(make_app: type[fm.App]) -> None:
    app = make_app()

    @app.job
    def load(ctx: fm.JobContext, payload: object) -> None: ...

    with pytest.raises(fm.PayloadError, match=r"job 'load' run_key 'bad'"):
        app.submit("load", fm.RunRequest("ok", {}), fm.RunRequest("bad", {"when": datetime.now()}))
    assert app.get_runs() == []  # the whole batch was refused before anything was written


def test_unknown_job_is_refused(make_app: type[fm.App]) -> None:
    app = make_app()

    @app.job
    def load(ctx: fm.JobContext, payload: object) -> None: ...

    with pytest.raises(fm.UnknownJob, match=r"unknown job 'lod' \(registered: load\)"):
        app.submit("lod", fm.RunRequest("a"))


def test_submit_in_the_callers_transaction(make_app: type[fm.App]) -> None:
    app = make_app()

    @app.job
    def ship(ctx: fm.JobContext, payload: object) -> None: ...

    create_effects(app)
    with app.engine.begin() as conn:
        conn.execute(effects.insert().values(run_key="order-1", attempt=0))
        app.submit("ship", fm.RunRequest("order-1"), conn=conn)
    with pytest.raises(RuntimeError), app.engine.begin() as conn:
        conn.execute(effects.insert().values(run_key="order-2", attempt=0))
        app.submit("ship", fm.RunRequest("order-2"), conn=conn)
        raise RuntimeError("the application's own transaction fails")

    assert effect_keys(app) == ["order-1"]
    assert [run.run_key for run in app.get_runs()] == ["order-1"]


def test_large_batch_is_one_call(make_app: type[fm.App]) -> None:
    app = make_app()

    @app.job
    def load(ctx: fm.JobContext, payload: object) -> None: ...

    requests = [fm.RunRequest(f"k{i}", {"i": i}) for i in range(2500)]
    result = app.submit("load", *requests)
    assert result.created == 2500
    assert len(set(result.run_ids)) == 2500
    assert app.submit("load", *requests).deduplicated == 2500


def test_a_batch_stores_every_value_exactly_as_given(make_app: type[fm.App]) -> None:
    """What an array literal must quote or spell specially comes back as it went in."""
    app = make_app()

    @app.job(max_attempts=4)
    def load(ctx: fm.JobContext, payload: object) -> None: ...

    awkward = ["NULL", " ", ' a "quoted", {braced} \\ back\\slash ', "é 😀 \t\n"]
    later = datetime.fromtimestamp(4_102_444_800, tz=UTC)  # 2100-01-01
    requests = [
        fm.RunRequest(
            key,
            {key: [key, None, 1.5]} if i % 2 else None,
            priority=[-1_000_000, 1_000_000, 0, 7][i],
            concurrency_key=None if i % 2 else key,
            not_before=later if i == 3 else None,
        )
        for i, key in enumerate(awkward)
    ]
    # A keyed job's first submit marks it keyed in a transaction of its own; the
    # batch then takes the path of every later submit (one statement on PostgreSQL).
    app.submit("load", fm.RunRequest("first", concurrency_key="first"))
    assert app.submit("load", *requests).created == len(awkward)
    stored = {run.run_key: run for run in app.get_runs() if run.run_key != "first"}
    assert sorted(stored) == sorted(awkward)
    for i, key in enumerate(awkward):
        run = stored[key]
        assert run.payload == ({key: [key, None, 1.5]} if i % 2 else None)
        assert (run.priority, run.max_attempts) == ([-1_000_000, 1_000_000, 0, 7][i], 4)
        assert run.concurrency_key == (None if i % 2 else key)
    assert stored["é 😀 \t\n"].available_at == later


def test_a_batch_due_at_once_stores_every_value_exactly_and_names_each_run(
    make_app: type[fm.App],
) -> None:
    """A batch with no time of its own (the common one) is written its own way on some
    stores: every value still comes back as given, each id is its own request's run."""
    app = make_app()

    @app.job(max_attempts=4, priority=3)
    def load(ctx: fm.JobContext, payload: object) -> None: ...

    awkward = ["NULL", " ", ' a "quoted", {braced} \\ back\\slash ', "é 😀 \t\n", "\\u0000"]
    keys = [*awkward, *(f"plain-{i:04}" for i in range(1200, 0, -1))]
    app.submit("load", fm.RunRequest("first", concurrency_key="first"))  # the job is keyed

    def request(i: int, key: str) -> fm.RunRequest:
        return fm.RunRequest(
            key,
            {key: [key, None, 1.5, 2**53 + 1]} if i % 2 else None,
            priority=None if i % 3 else [-1_000_000, 1_000_000][i % 2],
            concurrency_key=key if i % 5 == 0 else None,
        )

    result = app.submit("load", *(request(i, key) for i, key in enumerate(keys)))
    assert result.created == len(keys)
    for i, key in enumerate(keys):
        run = app.get_run(result.run_ids[i])
        assert run is not None and run.run_key == key
        assert run.payload == ({key: [key, None, 1.5, 2**53 + 1]} if i % 2 else None)
        assert run.priority == (3 if i % 3 else [-1_000_000, 1_000_000][i % 2])
        assert (run.max_attempts, run.attempt, run.status) == (4, 0, fm.RunStatus.QUEUED)
        assert run.concurrency_key == (key if i % 5 == 0 else None)
    again = app.submit("load", *(request(i, key) for i, key in enumerate(keys)))
    assert (again.created, again.run_ids) == (0, result.run_ids)


def test_run_keys_up_to_64_kib_are_one_run_each(make_app: type[fm.App]) -> None:
    app = make_app()
    seen: list[str] = []
    base = incompressible(64 * 1024 - 1)  # compressed, a repeated letter would fit

    @app.job
    def load(ctx: fm.JobContext, payload: object) -> None:
        seen.append(ctx.run_key)

    first = app.submit("load", fm.RunRequest(base + "a"), fm.RunRequest(base + "b"))
    again = app.submit("load", fm.RunRequest(base + "a"))
    assert (first.created, again.created, again.deduplicated) == (2, 0, 1)
    assert again.run_ids == first.run_ids[:1]
    assert sorted(run.run_key for run in app.get_runs()) == [base + "a", base + "b"]
    app.work(until_idle=True, concurrency=1, handle_signals=False)
    assert sorted(seen) == [base + "a", base + "b"]  # the job sees its key in full


def test_a_batch_of_one_jobs_alike_runs_stores_keys_and_payloads_exactly(
    make_app: type[fm.App],
) -> None:
    """Runs alike in all but key and payload (the usual batch) travel their own way on
    some stores: each key and payload comes back as given, each id is its own key's,
    and each key is the one a later submit of it meets."""
    app = make_app()

    @app.job
    def load(ctx: fm.JobContext, payload: object) -> None: ...

    awkward = ["NULL", " ", ' a "quoted", [braced] \\ back\\slash ', "é 😀 \t\n\x01", "\\u0000"]
    keys = [*awkward, *(f"plain-{i:04}" for i in range(1100, 0, -1))]
    payloads = [{key: [key, None, 1.5, 2**53 + 1]} if i % 2 else key for i, key in enumerate(keys)]
    requests = [fm.RunRequest(key, payload) for key, payload in zip(keys, payloads, strict=True)]

    result = app.submit("load", *requests)
    assert result.created == len(keys)
    for run_id, key, payload in zip(result.run_ids, keys, payloads, strict=True):
        run = app.get_run(run_id)
        assert run is not None and (run.run_key, run.payload) == (key, payload)
    again = app.submit("load", *(fm.RunRequest(key) for key in reversed(awkward)))
    assert (again.created, again.run_ids) == (0, result.run_ids[len(awkward) - 1 :: -1])
    alone = app.submit("load", fm.RunRequest(awkward[2]))
    assert (alone.created, alone.run_ids) == (0, (result.run_ids[2],))


@pytest.mark.parametrize(
    ("run_key", "problem"), [("a\x00b", "NUL"), ("name-\udcff.csv", "lone surrogate")]
)
def test_a_run_key_that_cannot_be_stored_is_refused_naming_it(
    make_app: type[fm.App], run_key: str, problem: str
) -> None:
    app = make_app()

    @app.job
    def load(ctx: fm.JobContext, payload: object) -> None: ...

    with pytest.raises(fm.PayloadError, match=f"run_key of job 'load'.*{problem}"):
        app.submit("load", fm.RunRequest("ok"), fm.RunRequest(run_key))
    assert app.get_runs() == []  # the whole batch was refused before anything was written


def test_texts_with_lone_surrogates_are_stored_and_never_stop_the_worker(
    make_app: type[fm.App],
) -> None:
    app = make_app()
    name = "report-\udcff.csv"  # how Python names an undecodable byte in a file name

    @app.job(max_attempts=2, backoff=fm.Backoff(base=0))
    def load(ctx: fm.JobContext, payload: dict[str, str]) -> None:
        assert payload["name"] == name  # payload strings come back exactly
        raise ValueError(f"cannot parse {payload['name']}\x00")

    @app.job
    def other(ctx: fm.JobContext, payload: object) -> None: ...

    app.submit("load", fm.RunRequest("r1", {"name": name}))
    app.submit("other", fm.RunRequest("r2"))
    report = app.work(until_idle=True, concurrency=2, handle_signals=False)
    assert report.succeeded == 1
    (dead,) = app.get_runs(job="load")
    assert dead.status is fm.RunStatus.DEAD and dead.payload == {"name": name}
    # Errors are free text: stored with the surrogate and the NUL escaped.
    assert "ValueError: cannot parse report-\\udcff.csv\\x00" in (dead.last_error or "")
    assert [run.status for run in app.get_runs(job="other")] == [fm.RunStatus.SUCCEEDED]


def test_lone_surrogates_json_would_join_are_refused_not_stored_changed(
    make_app: type[fm.App],
) -> None:
    """ "\ud800\udc80" is two code points; JSON writes and reads it as the one character
    "\U00010080". A document or cursor holding it is refused, naming where."""
    app = make_app()

    @app.job
    def load(ctx: fm.JobContext, payload: object) -> None: ...

    @app.poll_sensor(job="load", interval=3600)
    def joins(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
        return fm.SensorResult(cursor="at \ud800\udc80")

    with pytest.raises(fm.PayloadError, match=r"lone surrogates '\\ud800\\udc80' at position 1"):
        app.submit("load", fm.RunRequest("r1", {"name": ["x\ud800\udc80"]}))
    with pytest.raises(fm.ConfigurationError, match="cursor that cannot be stored exactly"):
        app.set_cursor("joins", "\udbff\udfff", by="test")
    (evaluation,) = app.tick(force=True)
    assert evaluation.outcome is fm.EvaluationOutcome.FAILED
    assert "returned a cursor that cannot be stored exactly" in (evaluation.error or "")
    assert app.get_sensor("joins").cursor is None
    # Apart, or the real character, they are stored exactly.
    app.submit("load", fm.RunRequest("r2", {"name": "\udc80\ud800 \U00010080"}))
    assert app.get_runs()[0].payload == {"name": "\udc80\ud800 \U00010080"}


# -- outcomes ----------------------------------------------------------------


def test_effects_commit_with_success(make_app: type[fm.App]) -> None:
    app = make_app()

    @app.job
    def load(ctx: fm.JobContext, payload: dict[str, str]) -> None:
        with ctx.transaction() as conn:
            conn.execute(effects.insert().values(run_key=ctx.run_key, attempt=ctx.attempt))

    create_effects(app)
    app.submit("load", *(fm.RunRequest(f"r{i}") for i in range(5)))
    report = app.work(until_idle=True, handle_signals=False)

    assert report.succeeded == 5
    assert effect_keys(app) == [f"r{i}" for i in range(5)]
    assert kinds(app, app.get_runs()[0].id) == ["requested", "claimed", "succeeded"]


def test_effects_roll_back_when_the_job_fails(make_app: type[fm.App]) -> None:
    app = make_app()

    @app.job(max_attempts=2, backoff=fm.Backoff(base=0))
    def load(ctx: fm.JobContext, payload: object) -> None:
        with ctx.transaction() as conn:
            conn.execute(effects.insert().values(run_key=ctx.run_key, attempt=ctx.attempt))
            if ctx.attempt == 1:
                raise ConnectionError("upstream went away")

    create_effects(app)
    app.submit("load", fm.RunRequest("r"))
    app.work(until_idle=True, handle_signals=False)

    with app.engine.begin() as conn:
        rows = conn.execute(sa.text("SELECT run_key, attempt FROM effects")).all()
    assert [tuple(row) for row in rows] == [("r", 2)]
    (run,) = app.get_runs()
    assert run.status is fm.RunStatus.SUCCEEDED
    assert run.last_error is None  # the first attempt's error lives on in the log
    (retry,) = [e for e in app.get_run_events(run.id) if e.kind.value == "retry_scheduled"]
    assert retry.detail["error"] == "ConnectionError: upstream went away"


def test_an_error_after_the_committed_transaction_keeps_the_success(
    make_app: type[fm.App],
) -> None:
    app = make_app()

    @app.job(max_attempts=3)
    def load(ctx: fm.JobContext, payload: object) -> None:
        with ctx.transaction() as conn:
            conn.execute(effects.insert().values(run_key=ctx.run_key, attempt=ctx.attempt))
        raise RuntimeError("cleanup failed after the commit")

    create_effects(app)
    app.submit("load", fm.RunRequest("r"))
    report = app.work(until_idle=True, handle_signals=False)

    assert (report.succeeded, report.retried, report.lease_lost) == (1, 0, 0)
    assert effect_keys(app) == ["r"]
    (run,) = app.get_runs()
    assert (run.status, run.attempt) == (fm.RunStatus.SUCCEEDED, 1)


def test_reject_fails_at_once_and_keeps_the_reason(make_app: type[fm.App]) -> None:
    app = make_app()
    calls: list[str] = []

    @app.job(max_attempts=5)
    def parse(ctx: fm.JobContext, payload: dict[str, str]) -> None:
        calls.append(ctx.run_key)
        if payload["xml"] == "<broken":
            raise fm.Reject("app 7: XML not well-formed at line 1")

    app.submit(
        "parse", fm.RunRequest("app-7", {"xml": "<broken"}), fm.RunRequest("app-8", {"xml": "<a/>"})
    )
    report = app.work(until_idle=True, handle_signals=False)

    assert (report.failed, report.succeeded) == (1, 1)
    failed = app.get_runs(status=fm.RunStatus.FAILED)
    assert [(r.run_key, r.attempt, r.last_error) for r in failed] == [
        ("app-7", 1, "app 7: XML not well-formed at line 1")
    ]
    assert calls.count("app-7") == 1
    assert kinds(app, failed[0].id)[-1] == "failed"


def test_exhausted_attempts_are_dead_then_retry_reuses_the_run_key(make_app: type[fm.App]) -> None:
    app = make_app()
    broken = threading.Event()
    broken.set()

    @app.job(max_attempts=3, backoff=fm.Backoff(base=0))
    def fetch(ctx: fm.JobContext, payload: object) -> None:
        if broken.is_set():
            raise TimeoutError("remote timed out")

    (run_id,) = app.submit("fetch", fm.RunRequest("day-2026-01-01")).run_ids
    app.work(until_idle=True, handle_signals=False)

    run = app.get_run(run_id)
    assert run is not None
    assert (run.status, run.attempt) == (fm.RunStatus.DEAD, 3)
    assert run.last_error is not None
    assert (
        run.last_error.startswith("Traceback")
        and "TimeoutError: remote timed out" in run.last_error
    )
    assert kinds(app, run_id) == [
        "requested",
        "claimed", "retry_scheduled",
        "claimed", "retry_scheduled",
        "claimed", "dead",
    ]  # fmt: skip

    broken.clear()
    assert app.retry([run_id]) == [run_id]
    assert app.retry([run_id]) == []  # already queued: nothing to retry
    app.work(until_idle=True, handle_signals=False)

    run = app.get_run(run_id)
    assert run is not None
    assert (run.status, run.attempt, run.run_key) == (fm.RunStatus.SUCCEEDED, 1, "day-2026-01-01")
    assert kinds(app, run_id)[-3:] == ["requeued", "claimed", "succeeded"]
    assert len(app.get_runs()) == 1


def test_retry_by_job_and_status(make_app: type[fm.App]) -> None:
    app = make_app()

    @app.job(max_attempts=1)
    def flaky(ctx: fm.JobContext, payload: dict[str, bool]) -> None:
        if payload["reject"]:
            raise fm.Reject("bad")
        raise ValueError("boom")

    app.submit("flaky", fm.RunRequest("a", {"reject": True}), fm.RunRequest("b", {"reject": False}))
    app.work(until_idle=True, handle_signals=False)

    assert len(app.retry(job="flaky", status="dead")) == 1
    assert [r.run_key for r in app.get_runs(status="queued")] == ["b"]
    assert [r.run_key for r in app.get_runs(status="failed")] == ["a"]
    with pytest.raises(fm.ConfigurationError):
        app.retry(status="succeeded")


def test_retry_delays_are_deterministic(make_app: type[fm.App]) -> None:
    backoff = fm.Backoff(base=1000.0, factor=2.0, max=10_000.0, jitter=0.2)
    app = make_app()

    @app.job(max_attempts=3, backoff=backoff)
    def sync(ctx: fm.JobContext, payload: object) -> None:
        raise RuntimeError("down")

    ids = app.submit("sync", fm.RunRequest("x"), fm.RunRequest("y")).run_ids
    app.work(until_idle=True, handle_signals=False)

    for run_id, key in zip(ids, ["x", "y"], strict=True):
        (scheduled,) = [e for e in app.get_run_events(run_id) if e.kind.value == "retry_scheduled"]
        expected = backoff.delay(1, f"sync\x00{key}")
        assert scheduled.detail["delay"] == round(expected, 3)
        run = app.get_run(run_id)
        assert run is not None
        waited = (run.available_at - scheduled.at).total_seconds()
        assert waited == pytest.approx(expected, abs=0.01)
    # Different keys spread apart; the same key and attempt always wait the same.
    assert backoff.delay(1, "sync\x00x") != backoff.delay(1, "sync\x00y")
    assert backoff.delay(1, "sync\x00x") == backoff.delay(1, "sync\x00x")


def test_cancel_a_queued_run(make_app: type[fm.App]) -> None:
    app = make_app()

    @app.job
    def load(ctx: fm.JobContext, payload: object) -> None:
        raise AssertionError("a cancelled run must not execute")

    (run_id,) = app.submit("load", fm.RunRequest("a")).run_ids
    assert app.cancel(run_id, by="test")
    assert not app.cancel(run_id)
    assert app.work(until_idle=True, handle_signals=False).claimed == 0
    assert kinds(app, run_id) == ["requested", "cancelled"]


# -- leases and fencing -------------------------------------------------------


def test_lost_lease_refuses_every_fenced_write(make_app: type[fm.App]) -> None:
    app = make_app(lease_seconds=0.3)

    @app.job
    def load(ctx: fm.JobContext, payload: object) -> None: ...

    create_effects(app)
    (run_id,) = app.submit("load", fm.RunRequest("r")).run_ids
    store = app.store
    (first,) = store.claim(worker_id="A", jobs=["load"], limit=1, lease_seconds=0.3)
    zombie = JobContext(store=store, run=first, worker_id="A", lease_seconds=0.3)
    zombie.checkpoint({"offset": 10})  # still the owner: accepted

    wait_until(lambda: lease_expired(store, run_id), what="lease expiry")
    (second,) = store.claim(worker_id="B", jobs=["load"], limit=1, lease_seconds=30)
    assert (second.attempt, second.lease_token) == (2, first.lease_token + 1)
    assert second.checkpoint == {"offset": 10}  # handed to the next attempt

    with pytest.raises(fm.LeaseLost):
        zombie.checkpoint({"offset": 20})
    # Before its heartbeat notices: the store itself refuses the success, and the effect.
    assert not zombie.lease_lost
    with pytest.raises(fm.LeaseLost), zombie.transaction() as conn:
        conn.execute(effects.insert().values(run_key="r", attempt=1))
    assert effect_keys(app) == []  # the zombie's effect was rolled back
    with pytest.raises(fm.LeaseLost):
        zombie.heartbeat()
    assert zombie.lease_lost

    owner = JobContext(store=store, run=second, worker_id="B", lease_seconds=30)
    with owner.transaction() as conn:
        conn.execute(effects.insert().values(run_key="r", attempt=2))
    assert effect_keys(app) == ["r"]
    events = app.get_run_events(run_id)
    assert [(e.kind.value, e.worker_id, e.lease_token) for e in events] == [
        ("requested", None, None),
        ("claimed", "A", 1),
        ("checkpointed", "A", 1),
        ("lease_expired", None, None),
        ("claimed", "B", 2),
        ("succeeded", "B", 2),
    ]


def test_a_batch_of_outcomes_writes_only_those_under_the_current_lease(
    make_app: type[fm.App],
) -> None:
    """Every kind of outcome in one batch, next to outcomes of leases since taken over."""
    app = make_app()

    @app.job
    def load(ctx: fm.JobContext, payload: object) -> None: ...

    run_ids = list(app.submit("load", *(fm.RunRequest(f"r{i}") for i in range(8))).run_ids)
    store = app.store
    lapsed = store.claim(worker_id="A", jobs=["load"], limit=4, lease_seconds=0.3)
    held = store.claim(worker_id="A", jobs=["load"], limit=4, lease_seconds=30)
    assert [run.id for run in lapsed + held] == run_ids
    for run in lapsed:
        wait_until(lambda run=run: lease_expired(store, run.id), what="lease expiry")
    taken = store.claim(worker_id="B", jobs=["load"], limit=4, lease_seconds=30)
    assert [run.id for run in taken] == run_ids[:4]

    kinds_in_turn = [OutcomeKind.SUCCEEDED, OutcomeKind.RETRY, OutcomeKind.FAILED, OutcomeKind.DEAD]

    def outcome(run: ClaimedRun, kind: OutcomeKind) -> Outcome:
        error = None if kind is OutcomeKind.SUCCEEDED else f"{kind.value} {run.run_key}"
        delay = 60.0 if kind is OutcomeKind.RETRY else 0.0
        return Outcome(
            kind=kind, lease=run.lease, attempt=run.attempt, error=error, retry_delay=delay
        )

    stale = [outcome(run, kind) for run, kind in zip(lapsed, kinds_in_turn, strict=True)]
    current = [outcome(run, kind) for run, kind in zip(held, kinds_in_turn, strict=True)]
    by_b = outcome(taken[0], OutcomeKind.FAILED)  # the same run as the stale success
    batch = [current[3], stale[1], by_b, current[0], stale[0], current[2], stale[3], current[1]]
    accepted = store.finish(batch, worker_id="A")
    assert accepted == [item in current or item is by_b for item in batch]

    runs = {run_id: app.get_run(run_id) for run_id in run_ids}
    statuses = [(run.status.value, run.last_error) for run in runs.values() if run]
    assert statuses == [
        ("failed", "failed r0"),
        *[("running", None)] * 3,
        ("succeeded", None),
        ("queued", "retry r5"),
        ("failed", "failed r6"),
        ("dead", "dead r7"),
    ]
    retried = runs[run_ids[5]]
    assert retried is not None and retried.finished_at is None
    assert retried.available_at.timestamp() > retried.updated_at.timestamp() + 59
    assert [runs[run_id].lease_owner for run_id in run_ids] == [None, "B", "B", "B"] + [None] * 4  # type: ignore[union-attr]
    ended = [event for run_id in run_ids for event in app.get_run_events(run_id)[-1:]]
    assert [(e.kind.value, e.worker_id, e.lease_token, e.detail) for e in ended] == [
        ("failed", "A", 2, {"error": "failed r0"}),
        *[("claimed", "B", 2, {})] * 3,
        ("succeeded", "A", 1, {}),
        ("retry_scheduled", "A", 1, {"delay": 60.0, "error": "retry r5"}),
        ("failed", "A", 1, {"error": "failed r6"}),
        ("dead", "A", 1, {"error": "dead r7"}),
    ]


def test_lease_expiry_on_the_last_attempt_is_dead(make_app: type[fm.App]) -> None:
    app = make_app(lease_seconds=0.2)

    @app.job(max_attempts=1)
    def crashy(ctx: fm.JobContext, payload: object) -> None: ...

    (run_id,) = app.submit("crashy", fm.RunRequest("r")).run_ids
    app.store.claim(worker_id="gone", jobs=["crashy"], limit=1, lease_seconds=0.2)
    wait_until(lambda: lease_expired(app.store, run_id), what="lease expiry")

    assert app.work(until_idle=True, handle_signals=False).claimed == 0
    run = app.get_run(run_id)
    assert run is not None
    assert run.status is fm.RunStatus.DEAD
    assert "lease expired on attempt 1 of 1" in (run.last_error or "")
    assert kinds(app, run_id)[-2:] == ["lease_expired", "dead"]


def test_lapsed_leases_are_taken_over_oldest_expiry_first(make_app: type[fm.App]) -> None:
    app = make_app()

    @app.job
    def load(ctx: fm.JobContext, payload: object) -> None: ...

    run_ids = app.submit("load", *(fm.RunRequest(f"r{i}") for i in range(3))).run_ids
    store = app.store
    leases = {
        run.id: run.lease
        for run in store.claim(worker_id="gone", jobs=["load"], limit=3, lease_seconds=60)
    }
    # The last run's lease lapses first, the first run's last: expiry order is
    # the reverse of id order.
    for run_id in reversed(run_ids):
        assert store.renew([leases[run_id]], 0.001) == set()
        wait_until(lambda run_id=run_id: lease_expired(store, run_id), what="lease expiry")

    taken = [
        run.id
        for _ in run_ids
        for run in store.claim(worker_id="next", jobs=["load"], limit=1, lease_seconds=60)
    ]
    assert taken == list(reversed(run_ids))


def test_heartbeats_keep_a_long_job_owned(make_app: type[fm.App]) -> None:
    app = make_app(lease_seconds=0.6)
    other_claims: list[int] = []

    @app.job
    def slow(ctx: fm.JobContext, payload: object) -> None:
        # Outlive the lease several times over; the worker's heartbeat keeps it.
        for _ in range(6):
            wait_until(lambda: lease_was_renewed(ctx), timeout=5, what="heartbeat")
            other = app.store.claim(worker_id="rival", jobs=["slow"], limit=1, lease_seconds=5)
            other_claims.extend(run.id for run in other)

    renewals: dict[int, datetime] = {}

    def lease_was_renewed(ctx: fm.JobContext) -> bool:
        run = app.get_run(ctx.run_id)
        assert run is not None and run.lease_expires_at is not None
        previous = renewals.get(ctx.run_id)
        renewals[ctx.run_id] = run.lease_expires_at
        return previous is not None and run.lease_expires_at > previous

    app.submit("slow", fm.RunRequest("r"))
    report = app.work(until_idle=True, handle_signals=False)
    assert report.succeeded == 1
    assert other_claims == []


def test_stop_releases_unfinished_runs_without_using_an_attempt(make_app: type[fm.App]) -> None:
    app = make_app()
    started = threading.Event()
    proceed = threading.Event()
    outcome: list[str] = []

    @app.job
    def slow(ctx: fm.JobContext, payload: object) -> None:
        started.set()
        proceed.wait(30)
        try:
            with ctx.transaction():
                pass
            outcome.append("committed")
        except fm.LeaseLost:
            outcome.append("lease lost")
            raise

    (run_id,) = app.submit("slow", fm.RunRequest("r")).run_ids
    from ferryman.worker import Worker

    worker = Worker(app.store, app.jobs, lease_seconds=30, concurrency=1, grace_seconds=0.2)
    thread = threading.Thread(target=lambda: worker.run(handle_signals=False))
    thread.start()
    assert started.wait(30)
    worker.stop()
    thread.join(30)
    assert not thread.is_alive()

    run = app.get_run(run_id)
    assert run is not None
    assert (run.status, run.attempt) == (fm.RunStatus.QUEUED, 0)
    assert run.lease_token == 2  # claimed with 1; the release moved it on
    assert kinds(app, run_id) == ["requested", "claimed", "released"]
    assert worker.report.released == 1

    proceed.set()  # the abandoned job wakes up: its commit must be refused
    wait_until(lambda: outcome, what="the abandoned job to finish")
    assert outcome == ["lease lost"]
    app.work(until_idle=True, handle_signals=False, grace_seconds=0)
    run = app.get_run(run_id)
    assert run is not None and (run.status, run.attempt) == (fm.RunStatus.SUCCEEDED, 1)


def test_checkpoint_is_handed_to_the_next_attempt(make_app: type[fm.App]) -> None:
    app = make_app()
    seen: list[object] = []

    @app.job(max_attempts=3, backoff=fm.Backoff(base=0))
    def resumable(ctx: fm.JobContext, payload: object) -> None:
        seen.append(ctx.last_checkpoint)
        ctx.checkpoint({"done": ctx.attempt * 10})
        if ctx.attempt < 3:
            raise OSError("disk hiccup")

    (run_id,) = app.submit("resumable", fm.RunRequest("r")).run_ids
    app.work(until_idle=True, handle_signals=False)
    assert seen == [None, {"done": 10}, {"done": 20}]
    run = app.get_run(run_id)
    assert run is not None and run.checkpoint == {"done": 30}
    assert kinds(app, run_id).count("checkpointed") == 3


def test_runs_of_unknown_jobs_stay_queued(make_app: type[fm.App]) -> None:
    old = make_app()

    @old.job
    def parse_v1(ctx: fm.JobContext, payload: object) -> None: ...

    old.submit("parse_v1", fm.RunRequest("a"))
    renamed = make_app()

    @renamed.job
    def parse_v2(ctx: fm.JobContext, payload: object) -> None: ...

    assert renamed.work(until_idle=True, handle_signals=False).claimed == 0
    (run,) = renamed.get_runs()
    assert run.status is fm.RunStatus.QUEUED
    summary = {s.job: s for s in renamed.status()}
    assert summary["parse_v1"].registered is False
    assert summary["parse_v1"].counts == {fm.RunStatus.QUEUED: 1}
    assert summary["parse_v2"].registered is True


def test_workers_register_and_stop(make_app: type[fm.App]) -> None:
    app = make_app()

    @app.job
    def load(ctx: fm.JobContext, payload: object) -> None:
        assert [w.id for w in app.workers()] == [ctx.worker_id]

    app.submit("load", fm.RunRequest("a"))
    report = app.work(until_idle=True, handle_signals=False)
    assert report.succeeded == 1
    assert app.workers() == []
    (stopped,) = app.workers(include_stopped=True)
    assert stopped.id == report.worker_id and stopped.stopped_at is not None
