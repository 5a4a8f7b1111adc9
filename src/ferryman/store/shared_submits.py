"""Submits from concurrent threads of one process, written by one statement.

On PostgreSQL a submit on its own is one autocommit statement
(:meth:`~ferryman.store.dialect.Backend.enqueue_committed`; on SQLite one
insert in a write transaction of its own), and the commit of
a transaction that sends NOTIFY holds a database-wide lock until its commit is
durable: concurrent submitters' commits would queue one behind the other, one
disk flush each. :class:`SharedSubmits` lets the threads of one process that
submit at about the same time share a statement instead, as
:mod:`ferryman.store.group_commit` shares SQLite's commits:

* A submitter that finds no statement on its way writes its runs at once, so
  a lone submitter never waits for company. (Right after a shared statement
  it first hands the interpreter over once, so that the submitters that
  statement is waking join its statement rather than follow it: groups of
  one alternating with full ones became full ones.)
* Submitters that arrive while a statement is on its way queue; when it
  returns, the first of them writes the runs of all of them in the next one
  (sorted by key, each key once, as a single submit would).
* A submitter returns only once the statement carrying its runs committed; if
  it failed, each of its submitters gets the error and none of their runs was
  written (one statement: all or nothing).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence

from ferryman.store.run_rows import NewRun

# (id, key digest) of the runs a statement created.
Created = list[tuple[int, bytes]]


class _Submit:
    __slots__ = ("created", "done", "error", "ids", "leads", "new_runs")

    def __init__(self, new_runs: Sequence[NewRun]) -> None:
        self.new_runs = new_runs
        # Made only for a submitter that waits: a lone submitter, the common
        # case, writes at once and never waits.
        self.done: threading.Event | None = None
        self.leads = False  # handed the next statement, not its outcome
        self.created: Created = []
        self.ids: dict[bytes, int] = {}
        self.error: BaseException | None = None

    def outcome(self) -> tuple[Created, dict[bytes, int]]:
        if self.error is not None:
            raise self.error
        return self.created, self.ids


class SharedSubmits:
    """Write concurrent submits of this process through ``write``, one statement at a time."""

    def __init__(
        self,
        write: Callable[[Sequence[NewRun]], Created],
        *,
        check: Callable[[], None] = lambda: None,
    ) -> None:
        self._write = write
        self._check = check  # raises if the calling thread may not wait for another's statement
        self._lock = threading.Lock()
        self._pending: list[_Submit] = []
        self._writing = False
        self._shared_last = False  # whether the last statement carried several submits
        self._pid = os.getpid()

    def submit(self, new_runs: Sequence[NewRun]) -> tuple[Created, dict[bytes, int]]:
        """Write ``new_runs`` (in key order, each key once); return once committed.

        Returns the runs this submit created, and the id of every key the
        statement created (another submitter's too: a key both asked for).
        """
        self._check()
        me = _Submit(new_runs)
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent's submitters are not here
                self._pending, self._writing, self._pid = [], False, os.getpid()
            leads = not self._writing
            if not leads:
                me.done = threading.Event()
            self._pending.append(me)
            self._writing = True
        if me.done is not None:
            me.done.wait()
            if not me.leads:
                return me.outcome()
        elif self._shared_last:
            # The last statement carried several submitters, and they are being
            # woken now: this one, which did not have to be, would otherwise go
            # out alone, and they would queue behind it for a statement of their
            # own. Handing the interpreter over once (not waiting for anyone: a
            # lone thread gets it straight back) lets them join this statement.
            time.sleep(0)
        self._write_pending()
        return me.outcome()

    def _write_pending(self) -> None:
        with self._lock:
            group, self._pending = self._pending, []
        self._shared_last = len(group) > 1
        try:
            self._write_group(group)
        finally:
            with self._lock:
                if self._pending:
                    # The next statement is written by the first submitter queued.
                    following = self._pending[0]
                    following.leads = True
                    assert following.done is not None  # queued behind a statement: it waits
                    following.done.set()
                else:
                    self._writing = False

    def _write_group(self, group: list[_Submit]) -> None:
        if len(group) == 1:
            merged: Sequence[NewRun] = group[0].new_runs
        else:
            unique: dict[bytes, NewRun] = {}
            for submit in group:
                for new in submit.new_runs:
                    unique.setdefault(new.key_digest, new)
            merged = sorted(unique.values(), key=lambda new: (new.job, new.run_key))
        created: Created = []
        try:
            created = self._write(merged)
        except BaseException as exc:  # every submitter of the statement raises it
            for submit in group:
                submit.error = exc
        _hand_out(group, created)


def _hand_out(group: list[_Submit], created: Created) -> None:
    """Each created run to the first submitter of the group that asked for it."""
    ids = {digest: run_id for run_id, digest in created}
    claimed: set[bytes] = set()
    for submit in group:
        submit.ids = ids
        for new in submit.new_runs:
            digest = new.key_digest
            if digest in ids and digest not in claimed:
                claimed.add(digest)
                submit.created.append((ids[digest], digest))
        submit.leads = False
        if submit.done is not None:
            submit.done.set()
