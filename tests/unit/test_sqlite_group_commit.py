"""SQLite: writers of one process share commits; processes queue on a lock file."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

import ferryman as fm
from ferryman.store.group_commit import GroupCommit
from tests.helpers import wait_until

HOLD_THE_QUEUE = """
import sys, time
import ferryman as fm
app = fm.App(sys.argv[1])
with app.store.transaction():
    print("holding", flush=True)
    time.sleep(600)
"""


def test_a_writer_killed_while_holding_the_queue_does_not_block_the_others(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    app = fm.App(url)
    app.job(name="noop")(lambda ctx, payload: None)
    try:
        app.submit("noop", fm.RunRequest("before", {}))  # creates the store and the lock file
        assert (tmp_path / "store.db-writer.lock").exists()
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_THE_QUEUE, url], stdout=subprocess.PIPE, text=True
        )
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline() == "holding\n"
            # While the other process holds the queue, a write here waits its turn.
            submitted = threading.Event()
            writer = threading.Thread(
                target=lambda: (app.submit("noop", fm.RunRequest("after", {})), submitted.set())
            )
            writer.start()
            assert not submitted.wait(0.5)
        finally:
            holder.kill()  # SIGKILL: no chance to unlock
            holder.wait(timeout=30)
            assert holder.stdout is not None
            holder.stdout.close()
        writer.join(timeout=30)
        assert submitted.is_set()
        assert {run.run_key for run in app.get_runs()} == {"before", "after"}
    finally:
        app.close()


# -- group commit --------------------------------------------------------------


@pytest.fixture
def store_with_table(tmp_path: Path) -> Iterator[fm.App]:
    """A SQLite store with a table of the user's own, written through the store."""
    app = fm.App(f"sqlite:///{tmp_path}/store.db")
    app.job(name="noop")(lambda ctx, payload: None)
    with app.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        conn.exec_driver_sql(
            "CREATE TABLE item (name TEXT PRIMARY KEY, parent_id INTEGER "
            "REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
        )
        conn.exec_driver_sql("INSERT INTO parent (id) VALUES (1)")
    try:
        yield app
    finally:
        app.close()


def _names(app: fm.App) -> set[str]:
    with app.store.read("reading items") as conn:
        return {row[0] for row in conn.exec_driver_sql("SELECT name FROM item")}


def _insert(conn: sa.Connection, name: str, parent_id: int = 1) -> None:
    conn.exec_driver_sql("INSERT INTO item (name, parent_id) VALUES (?, ?)", (name, parent_id))


class _Writers:
    """Threads that write through the store while the first one holds its turn."""

    def __init__(self, app: fm.App) -> None:
        self.app = app
        group = app.store.backend.group_commit
        assert group is not None
        self.group: GroupCommit = group
        self.first_inside = threading.Event()
        self.let_first_finish = threading.Event()
        self.returned: list[str] = []  # writers, in the order their block returned
        self.errors: dict[str, BaseException] = {}
        self.threads: list[threading.Thread] = []

    def start(self, name: str, body: Callable[[sa.Connection], None], *, first: bool) -> None:
        def write() -> None:
            try:
                with self.app.store.transaction() as conn:
                    body(conn)
                    if first:
                        self.first_inside.set()
                        assert self.let_first_finish.wait(30)
                self.returned.append(name)
            except BaseException as exc:
                self.errors[name] = exc

        thread = threading.Thread(target=write, name=f"writer-{name}")
        thread.start()
        self.threads.append(thread)
        if first:
            assert self.first_inside.wait(30)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=30)
            assert not thread.is_alive()


def test_writers_that_queue_share_one_commit_and_each_keeps_all_or_nothing(
    store_with_table: fm.App,
) -> None:
    app = store_with_table
    writers = _Writers(app)
    commits_before = writers.group.commits

    def fails(conn: sa.Connection) -> None:
        _insert(conn, "b")
        raise RuntimeError("b changed its mind")

    writers.start("a", lambda conn: _insert(conn, "a"), first=True)
    writers.start("b", fails, first=False)
    writers.start("c", lambda conn: _insert(conn, "c"), first=False)
    wait_until(lambda: writers.group._queued == 2, what="b and c queued behind a")
    writers.let_first_finish.set()
    writers.join()

    assert str(writers.errors.pop("b")) == "b changed its mind"
    assert writers.errors == {}
    # a's block returned only once c's commit had made it durable: one commit for both.
    assert sorted(writers.returned) == ["a", "c"]
    assert writers.group.commits == commits_before + 1
    assert _names(app) == {"a", "c"}


def test_a_shared_commit_that_fails_fails_every_writer_in_it_and_keeps_nothing(
    store_with_table: fm.App,
) -> None:
    app = store_with_table
    writers = _Writers(app)
    writers.start("a", lambda conn: _insert(conn, "a"), first=True)
    # A deferred foreign key is checked at COMMIT: SQLite refuses the whole transaction.
    writers.start("orphan", lambda conn: _insert(conn, "orphan", parent_id=99), first=False)
    wait_until(lambda: writers.group._queued == 1, what="the orphan queued behind a")
    writers.let_first_finish.set()
    writers.join()

    assert set(writers.errors) == {"a", "orphan"}
    for error in writers.errors.values():
        assert isinstance(error, fm.StoreError)
        assert "the commit failed and nothing of this transaction was kept" in str(error)
        assert "FOREIGN KEY constraint failed" in str(error)
    assert _names(app) == set()
    # The store goes on: the next write commits.
    with app.store.transaction() as conn:
        _insert(conn, "after")
    assert _names(app) == {"after"}
    assert [run.run_key for run in app.get_runs()] == []
    app.submit("noop", fm.RunRequest("still-works", {}))
    assert [run.run_key for run in app.get_runs()] == ["still-works"]


def test_a_store_write_inside_a_store_write_of_the_same_thread_is_refused(
    store_with_table: fm.App,
) -> None:
    app = store_with_table
    refused = pytest.raises(fm.FerrymanError, match="inside another store write of the same thread")
    with refused, app.store.transaction() as conn:
        _insert(conn, "outer")
        app.submit("noop", fm.RunRequest("inner", {}))
    assert _names(app) == set()
    assert app.get_runs() == []
