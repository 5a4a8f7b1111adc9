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
  a lone submitter never waits for company.
* Submitters that arrive while a statement is on its way queue; when it
  returns, the first of them writes the runs of all of them in the next one
  (sorted by key, each key once, as a single submit would).
* A statement that follows another at once (submitters queued behind it, or
  it carried several) first waits, briefly, for the submitters of the one
  before to come back: else the first one back would write alone, or they
  would miss the next statement and queue for the one after it (8 threads
  sent 5.6-6.8 submits a statement, 7.5-7.9 with the wait; measured). The
  wait ends as soon as every one of them has submitted again, and after half
  the last statement's time at most (``GATHER_SHARE``, never over
  ``GATHER_MAX_S``): a thread that stopped submitting costs the next
  statement that much, once.
* Its submitters are woken one by one, each by the one before it.
* A submitter returns only once the statement carrying its runs committed; if
  it failed, each of its submitters gets the error and none of their runs was
  written (one statement: all or nothing).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Sequence

from ferryman.store.run_rows import NewRun

# (id, key digest) of the runs a statement created.
Created = list[tuple[int, bytes]]

# The longest the next statement waits for the last one's submitters, as a share
# of the last statement's time, and in seconds.
GATHER_SHARE = 0.5
GATHER_MAX_S = 0.002


class Latch:
    """Open once, for good; waited for by the threads that need it open.

    A lock held until then, rather than a ``threading.Event``: every write
    transaction, and every submit that waits for another's statement, makes
    one, and an Event (a Condition and its lock) cost 3.7 us made, set and
    waited for, of a lone submit's 70 us or so, against 0.35 us (measured).
    """

    __slots__ = ("_shut",)

    def __init__(self) -> None:
        self._shut = threading.Lock()
        self._shut.acquire()

    def set(self) -> None:
        if self._shut.locked():  # once; only one thread opens a given latch
            self._shut.release()

    def wait(self) -> None:
        # Every waiter takes the lock and gives it back at once: all pass once it is open.
        with self._shut:
            pass


class _Submit:
    __slots__ = (
        *("created", "done", "error", "gone", "ids", "leads", "new_runs", "thread"),
        *("wakes", "woken"),
    )

    def __init__(self, new_runs: Sequence[NewRun]) -> None:
        self.new_runs = new_runs
        self.thread = threading.get_ident()
        # Made only for a submitter that waits: a lone submitter, the common
        # case, writes at once and never waits.
        self.done: Latch | None = None
        self.leads = False  # handed the next statement, not its outcome
        # Set under the lock of SharedSubmits: the next submitter of the same
        # statement, which this one wakes once woken; whether it was woken;
        # whether it stopped waiting (interrupted) and will wake nobody.
        self.wakes: _Submit | None = None
        self.woken = False
        self.gone = False
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
        self._back = threading.Condition(self._lock)  # a submitter awaited is back
        self._pending: list[_Submit] = []
        self._writing = False
        # The threads the last statement carried that have not submitted since,
        # and how long that statement took: what the next one waits for, how long.
        self._awaited: set[int] = set()
        self._last_seconds = 0.0
        self._shared_last = False  # whether the last statement carried several submits
        self._gathering = False  # a leader waits on _back (a lone submitter need not notify)
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
                self._awaited, self._gathering = set(), False
            if me.thread in self._awaited:
                self._awaited.discard(me.thread)
                if not self._awaited and self._gathering:
                    self._back.notify()
            leads = not self._writing
            if not leads:
                me.done = Latch()
            self._pending.append(me)
            self._writing = True
        if me.done is not None:
            try:
                me.done.wait()
            finally:
                self._pass_on(me)
            if not me.leads:
                return me.outcome()
            self._gather()
        elif self._shared_last:
            # The last statement carried several submitters, and they are being
            # woken now: this one, back first, would otherwise go out alone, and
            # they would queue behind it for a statement of their own.
            self._gather()
        self._write_pending()
        return me.outcome()

    def _gather(self) -> None:
        """Wait, bounded, until the submitters the last statement carried queue again."""
        with self._lock:
            deadline = time.monotonic() + min(GATHER_MAX_S, GATHER_SHARE * self._last_seconds)
            self._gathering = True
            try:
                while self._awaited:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._back.wait(left):
                        break
            finally:
                self._gathering = False
            self._awaited = set()

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
                    following.leads = following.woken = True
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
        started = time.monotonic()
        try:
            created = self._write(merged)
        except BaseException as exc:  # every submitter of the statement raises it
            for submit in group:
                submit.error = exc
        with self._lock:  # before they are woken: one may be back before the next leader looks
            self._awaited = {submit.thread for submit in group}
            self._last_seconds = time.monotonic() - started
            # Woken one after the other, each by the one before once it runs,
            # rather than all at once by the writer: their Python runs one at
            # a time anyway (the GIL), and the writer took 55 us waking 7 at
            # once, holding the GIL while they contended for it (measured).
            waiting = _hand_out(group, created)
            for before, after in itertools.pairwise(waiting):
                before.wakes = after
            if waiting:
                _wake_from(waiting[0])

    def _pass_on(self, me: _Submit) -> None:
        """Wake the submitter after ``me`` in its statement; or, if ``me`` was
        interrupted before it was woken, let the one before it wake that one."""
        with self._lock:
            if not me.woken:
                me.gone = True
            elif me.wakes is not None:
                _wake_from(me.wakes)


def _wake_from(submit: _Submit | None) -> None:
    """Wake ``submit``, and past it those that stopped waiting (under the lock)."""
    while submit is not None:
        assert submit.done is not None  # only a submitter that waits is woken
        submit.woken = True
        submit.done.set()
        if not submit.gone:
            return
        submit = submit.wakes


def _hand_out(group: list[_Submit], created: Created) -> list[_Submit]:
    """Each created run to the first submitter of the group that asked for it;
    the submitters other than the writer that wait for it, to be woken."""
    ids = {digest: run_id for run_id, digest in created}
    if len(group) == 1:  # a lone submit, the common case: each key of it once, all its own
        (submit,) = group
        submit.ids, submit.created, submit.leads = ids, created, False
        if submit.done is not None:
            submit.done.set()
        return []
    claimed: set[bytes] = set()
    writer = threading.get_ident()
    waiting: list[_Submit] = []
    for submit in group:
        submit.ids = ids
        for new in submit.new_runs:
            digest = new.key_digest
            if digest in ids and digest not in claimed:
                claimed.add(digest)
                submit.created.append((ids[digest], digest))
        submit.leads = False
        if submit.done is not None and submit.thread != writer:
            waiting.append(submit)
    return waiting
