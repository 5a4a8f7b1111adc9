"""What a block of :meth:`Store.transaction` may do with the connection it is handed.

A block's writes commit when the block ends, together with what the store
adds to them (for ``ctx.transaction()``, the run's ``succeeded`` transition,
fenced by its lease). Two things a block can do to its connection would
break that, and :class:`BlockGuard` stops both, on every store:

* **Ending the transaction itself.** ``conn.commit()`` inside
  ``ctx.transaction()`` would commit the effect alone: the run's success
  would land in a transaction of its own (on PostgreSQL, one that is rolled
  back), the run would stay ``running``, and the attempt after its lease
  expired would apply the effect again. So a commit or rollback of the
  block's connection — ``conn.commit()``, ``conn.rollback()``, the
  transaction object's, or ``COMMIT`` sent as SQL — raises before it reaches
  the database, and a block whose job caught that error is still refused
  when it ends. Nothing of a refused block is kept.
* **Leaving a result open.** A result read in part (``fetchone()`` of a
  statement that returns several rows) keeps its statement running. On
  SQLite the store's writes in one process share one connection
  (:mod:`ferryman.store.group_commit`), and a statement left running there
  fails every later commit on it — another job's, a claim, a heartbeat —
  with "SQL statements in progress". So the cursors the block's connection
  opened are closed when the block ends, whether it raised or not.

The guard listens to the engine's events once; a connection is watched only
while it is inside a block, so a statement outside any block costs one
dictionary lookup.
"""

from __future__ import annotations

import contextlib
import re
import weakref
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from ferryman.errors import FerrymanError

# SQL that ends or starts a transaction, as opposed to a savepoint's
# ROLLBACK TO, which a block may use (SQLAlchemy's begin_nested() does).
_TRANSACTION_CONTROL = re.compile(
    r"\s*(COMMIT|END|ABORT|BEGIN|START\s+TRANSACTION|PREPARE\s+TRANSACTION"
    r"|ROLLBACK(?!(\s+TRANSACTION)?\s+TO\b))\b",
    re.IGNORECASE,
)


class _Block:
    """One block in progress: the cursors its connection opened, and what it was refused."""

    __slots__ = ("cursors", "refused")

    def __init__(self) -> None:
        # Weak: a result the job dropped is closed by the garbage collector
        # already, and a block of many statements keeps no memory for them.
        self.cursors: weakref.WeakSet[Any] = weakref.WeakSet()
        self.refused: str | None = None


class BlockGuard:
    """Watches the connections of one engine while they are inside a block (see the module)."""

    def __init__(self, engine: sa.Engine) -> None:
        self._blocks: dict[sa.Connection, _Block] = {}
        event.listen(engine, "before_cursor_execute", self._before_execute)
        event.listen(engine, "after_cursor_execute", self._after_execute)
        event.listen(engine, "commit", self._on_commit)
        event.listen(engine, "rollback", self._on_rollback)

    @contextlib.contextmanager
    def block(self, conn: sa.Connection, *, shared: bool) -> Iterator[None]:
        """Watch ``conn`` for the duration of the block; then close what it left open.

        ``shared``: the connection carries other blocks' writes too (SQLite's
        group commit), whose owner undoes a refused block with a savepoint.
        A connection of the block's own is dropped instead: a refused commit
        leaves SQLAlchemy believing the transaction ended while the database
        still holds it open, and the pool would hand it, effect included, to
        the next user.
        """
        block = self._blocks[conn] = _Block()
        try:
            yield
        finally:
            del self._blocks[conn]
            for cursor in list(block.cursors):
                with contextlib.suppress(Exception):  # closing is all that is asked
                    cursor.close()
            if block.refused is not None and not shared:
                conn.invalidate()  # the database rolls back what the block wrote
        if block.refused is not None:  # the job caught the error and went on
            raise _refusal(block.refused)

    def check(self, conn: sa.Connection) -> None:
        """Raise now if the block on ``conn`` was refused (its job caught the error)."""
        block = self._blocks.get(conn)
        if block is not None and block.refused is not None:
            raise _refusal(block.refused)

    def _refuse(self, conn: sa.Connection, what: str) -> None:
        block = self._blocks.get(conn)
        if block is not None:
            block.refused = block.refused or what
            raise _refusal(what)

    def _on_commit(self, conn: sa.Connection) -> None:
        self._refuse(conn, "conn.commit()")

    def _on_rollback(self, conn: sa.Connection) -> None:
        self._refuse(conn, "conn.rollback()")

    def _before_execute(
        self, conn: sa.Connection, _cursor: Any, statement: str, *_args: Any
    ) -> None:
        if conn in self._blocks and _TRANSACTION_CONTROL.match(statement):
            self._refuse(conn, f"{statement.split()[0].upper()} sent as SQL")

    def _after_execute(self, conn: sa.Connection, cursor: Any, *_args: Any) -> None:
        block = self._blocks.get(conn)
        if block is not None:
            block.cursors.add(cursor)


def _refusal(what: str) -> FerrymanError:
    return FerrymanError(
        f"{what} inside ctx.transaction() is refused: ferryman commits the block's writes "
        "with the run's success when the block ends, and a commit before that would apply "
        "them again on the next attempt. Remove it; to undo the block's writes, raise an "
        "exception from the block. Nothing of this block was kept"
    )
