"""Submits from many threads at once: one run per key, durable on return, statements shared."""

from __future__ import annotations

import queue
import random
import signal
import threading
from collections.abc import Sequence

import pytest
import sqlalchemy as sa

import ferryman as fm
from ferryman.store import shared_submits
from ferryman.store.run_rows import NewRun
from ferryman.store.schema import run_events, runs
from ferryman.store.shared_submits import SharedSubmits
from tests.helpers import wait_until

THREADS = 8
KEYS = [f"key-{i}" for i in range(40)]


def test_threads_submitting_the_same_keys_one_by_one_get_one_run_each(
    make_app: type[fm.App],
) -> None:
    app = make_app()

    @app.job
    def load(ctx: fm.JobContext, payload: dict[str, int]) -> None: ...

    _ = app.store
    start = threading.Barrier(THREADS)
    results: dict[int, dict[str, fm.SubmitResult]] = {}
    unseen: list[str] = []
    errors: list[BaseException] = []
    # A reader of its own: a submit that returned is committed, not merely sent.
    reader = sa.create_engine(app.store.url)

    def submitter(t: int) -> None:
        mine: dict[str, fm.SubmitResult] = {}
        order = random.Random(t).sample(KEYS, len(KEYS))
        start.wait()
        try:
            for key in order:
                mine[key] = result = app.submit("load", fm.RunRequest(key, {"t": t}))
                with reader.connect() as conn:
                    found = conn.execute(
                        sa.select(runs.c.id).where(runs.c.id == result.run_ids[0])
                    ).first()
                if found is None:
                    unseen.append(key)
        except BaseException as exc:
            errors.append(exc)
        results[t] = mine

    threads = [threading.Thread(target=submitter, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    reader.dispose()

    assert errors == [] and unseen == []
    for key in KEYS:
        answers = [results[t][key] for t in range(THREADS)]
        assert len({answer.run_ids for answer in answers}) == 1, key  # the same run for all
        assert sum(answer.created for answer in answers) == 1, key  # created by exactly one
        assert sum(answer.deduplicated for answer in answers) == THREADS - 1, key
    with app.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(runs)).scalar_one() == len(KEYS)
        assert conn.scalar(sa.select(sa.func.count()).select_from(run_events)) == 0
    for run in app.get_runs():  # each run's log shows it requested once, from its row
        kinds = [event.kind for event in app.get_run_events(run.id)]
        assert kinds == [fm.RunEventKind.REQUESTED], run


class _HeldFirstStatement:
    """The app's shared submits with their first statement held until the
    submitters started after it have queued behind it."""

    def __init__(self, app: fm.App) -> None:
        backend = app.store.backend
        self.statements: list[int] = []  # runs per statement
        self._out = threading.Event()
        self._release = threading.Event()

        def write(new_runs: Sequence[NewRun]) -> list[tuple[int, bytes]]:
            self.statements.append(len(new_runs))
            if len(self.statements) == 1:
                self._out.set()
                self._release.wait()
            return backend.enqueue_committed(new_runs)

        self._shared = app.store.runs._shared = SharedSubmits(write)

    def run(self, first: threading.Thread, others: list[threading.Thread]) -> None:
        """``first`` out alone, ``others`` queued behind it; then all of them to their end."""
        first.start()
        self._out.wait()
        for thread in others:
            thread.start()
        queued = len(others)
        wait_until(lambda: len(self._shared._pending) == queued, what=f"{queued} queued")
        self._release.set()
        for thread in [first, *others]:
            thread.join()


def _app_loading(store: str, request: pytest.FixtureRequest) -> fm.App:
    app = fm.App(request.getfixturevalue({"postgres": "pg_url", "sqlite": "sqlite_url"}[store]))

    @app.job
    def load(ctx: fm.JobContext, payload: dict[str, int]) -> None: ...

    return app


@pytest.mark.parametrize("store", ["postgres", "sqlite"])
def test_threads_that_keep_submitting_go_out_together_in_each_statement(
    store: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a statement carried several threads, the next waits for all of them
    to submit again (the wait's bound raised here, so that it is the threads
    coming back that end it): four threads, one statement each round."""
    monkeypatch.setattr(shared_submits, "GATHER_MAX_S", 10.0)
    monkeypatch.setattr(shared_submits, "GATHER_SHARE", 1e6)
    app = _app_loading(store, request)
    held = _HeldFirstStatement(app)
    rounds = 5

    def submit(thread: int, count: int) -> None:
        for i in range(count):
            app.submit("load", fm.RunRequest(f"t{thread}-{i}", {}))

    # The first thread goes out alone and is one submit ahead of the others from
    # then on: it submits once more, so that all of them end in the last round.
    held.run(
        threading.Thread(target=submit, args=(0, rounds)),
        [threading.Thread(target=submit, args=(i, rounds - 1)) for i in (1, 2, 3)],
    )
    created = len(app.get_runs(job="load"))
    app.close()

    assert held.statements == [1] + [4] * (rounds - 1)
    assert created == 4 * rounds - 3


@pytest.mark.parametrize("store", ["postgres", "sqlite"])
def test_submits_arriving_while_a_statement_is_out_share_the_next_one(
    store: str, request: pytest.FixtureRequest
) -> None:
    """The submitters queued behind a statement (on SQLite, a write transaction
    and its commit) go out in one."""
    app = _app_loading(store, request)
    held = _HeldFirstStatement(app)
    outcomes: queue.Queue[fm.SubmitResult] = queue.Queue()

    def submit(key: str) -> None:
        outcomes.put(app.submit("load", fm.RunRequest(key, {})))

    held.run(
        threading.Thread(target=submit, args=("first",)),
        [threading.Thread(target=submit, args=(f"other-{i}",)) for i in range(5)],
    )
    backend = app.store.backend
    commits = getattr(getattr(backend, "group_commit", None), "commits", None)
    app.close()

    assert held.statements == [1, 5]
    if store == "sqlite":
        assert commits == 2  # one commit for the five queued submits
    results = [outcomes.get_nowait() for _ in range(6)]
    assert sorted(r.created for r in results) == [1] * 6
    assert len({r.run_ids for r in results}) == 6


@pytest.mark.parametrize("store", ["postgres", "sqlite"])
def test_a_failed_shared_statement_fails_each_of_its_submitters(
    store: str, request: pytest.FixtureRequest
) -> None:
    app = fm.App(request.getfixturevalue({"postgres": "pg_url", "sqlite": "sqlite_url"}[store]))

    @app.job
    def load(ctx: fm.JobContext, payload: dict[str, int]) -> None: ...

    backend = app.store.backend
    release = threading.Event()
    calls: list[int] = []

    def write(new_runs: Sequence[NewRun]) -> list[tuple[int, bytes]]:
        calls.append(len(new_runs))
        if len(calls) == 1:
            release.wait()
            return backend.enqueue_committed(new_runs)
        with backend.engine.begin() as conn:  # the runs table is gone for this statement
            conn.execute(sa.text(f"ALTER TABLE {runs.name} RENAME TO runs_away"))
        try:
            return backend.enqueue_committed(new_runs)
        finally:
            with backend.engine.begin() as conn:
                conn.execute(sa.text(f"ALTER TABLE runs_away RENAME TO {runs.name}"))

    shared = app.store.runs._shared = SharedSubmits(write)
    failures: queue.Queue[BaseException | None] = queue.Queue()

    def submit(key: str) -> None:
        try:
            app.submit("load", fm.RunRequest(key, {}))
            failures.put(None)
        except fm.StoreError as exc:
            failures.put(exc)

    threads = [threading.Thread(target=submit, args=(f"k{i}",)) for i in range(4)]
    threads[0].start()
    wait_until(lambda: calls == [1], what="the first statement out")
    for thread in threads[1:]:
        thread.start()
    wait_until(lambda: len(shared._pending) == 3, what="three submitters queued")
    release.set()
    for thread in threads:
        thread.join()
    outcomes = [failures.get_nowait() for _ in range(4)]
    assert calls == [1, 3]
    assert outcomes.count(None) == 1
    assert all(isinstance(o, fm.StoreError) for o in outcomes if o is not None)
    assert [run.run_key for run in app.get_runs(job="load")] == ["k0"]  # nothing of the three
    app.close()


def test_a_submit_inside_a_store_write_is_refused_while_another_thread_submits(
    sqlite_url: str,
) -> None:
    """On SQLite: a thread inside a write of the store (``ctx.transaction()``) that
    submits is refused, even while another thread's submit waits for that write to
    end; queued behind that submit, it would wait forever."""
    app = fm.App(sqlite_url)

    @app.job
    def load(ctx: fm.JobContext, payload: dict[str, int]) -> None: ...

    store = app.store
    group_commit = store.backend.group_commit  # type: ignore[attr-defined]
    other: queue.Queue[fm.SubmitResult] = queue.Queue()
    submitter = threading.Thread(
        target=lambda: other.put(app.submit("load", fm.RunRequest("other", {})))
    )
    with store.transaction():
        submitter.start()  # its statement waits for this write to end
        wait_until(
            lambda: store.runs._shared._writing and group_commit._queued == 1,
            what="the other thread's submit waiting for this write",
        )
        with pytest.raises(fm.FerrymanError, match="inside another store write"):
            app.submit("load", fm.RunRequest("inside", {}))
    submitter.join()
    assert other.get_nowait().created == 1
    assert [run.run_key for run in app.get_runs()] == ["other"]
    app.close()


class _Interrupted(Exception):
    pass


def test_a_submitter_interrupted_while_queued_does_not_keep_the_others_waiting(
    request: pytest.FixtureRequest,
) -> None:
    """The submitters of a statement wake one another in turn; one that stopped
    waiting (Ctrl-C in the main thread) is passed over, not waited for."""
    app = _app_loading("sqlite", request)
    backend = app.store.backend
    out, release = threading.Event(), threading.Event()

    def write(new_runs: Sequence[NewRun]) -> list[tuple[int, bytes]]:
        if not out.is_set():
            out.set()
            release.wait()
        return backend.enqueue_committed(new_runs)

    shared = app.store.runs._shared = SharedSubmits(write)
    outcomes: queue.Queue[fm.SubmitResult] = queue.Queue()

    def submit(key: str) -> None:
        outcomes.put(app.submit("load", fm.RunRequest(key, {})))

    first = threading.Thread(target=submit, args=("first",))
    first.start()
    out.wait()
    leader = threading.Thread(target=submit, args=("leader",))  # writes the next statement
    leader.start()
    wait_until(lambda: len(shared._pending) == 1, what="the next statement's writer queued")
    after = [threading.Thread(target=submit, args=(f"after-{i}",)) for i in range(3)]

    def interrupt(signum: int, frame: object) -> None:
        raise _Interrupted

    def queue_the_others_then_interrupt() -> None:
        wait_until(lambda: len(shared._pending) == 2, what="the main thread queued")
        for queued, thread in enumerate(after, start=3):  # woken after the main thread
            thread.start()
            wait_until(lambda queued=queued: len(shared._pending) == queued, what="queued")
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, interrupt)
    helper = threading.Thread(target=queue_the_others_then_interrupt)
    try:
        helper.start()
        with pytest.raises(_Interrupted):
            app.submit("load", fm.RunRequest("interrupted", {}))
    finally:
        signal.signal(signal.SIGUSR1, previous)
    helper.join()
    release.set()
    for thread in [first, leader, *after]:
        thread.join(timeout=10)
        assert not thread.is_alive()  # else woken by nobody
    app.close()

    results = [outcomes.get_nowait() for _ in range(5)]
    assert sorted(r.created for r in results) == [1] * 5
