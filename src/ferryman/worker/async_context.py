"""What an ``async def`` job sees of its run: :class:`AsyncJobContext`.

The store's connections are blocking (SQLAlchemy's synchronous engine, the
same one every other part of ferryman uses), so an async job's writes go to
threads and the event loop only awaits them:

* :meth:`AsyncJobContext.transaction` and :meth:`AsyncJobContext.read` hold
  **a thread of their own** from the start of the block to its end. The
  transaction is begun, used and committed (or rolled back) on that one
  thread, exactly as a synchronous job's ``with ctx.transaction()`` would
  be, so everything said there holds here: the effects and the run's
  ``succeeded`` transition commit together, fenced by the lease. The job
  awaits each statement (:meth:`AsyncConnection.execute`); the loop goes on
  with the other runs meanwhile.
* :meth:`AsyncJobContext.checkpoint` and :meth:`AsyncJobContext.heartbeat`
  run on the worker's pool of I/O threads.

A transaction that stays open across slow awaits holds its connection (and
on SQLite the process's write lock, see :mod:`ferryman.store.group_commit`)
for as long, and one of the worker's :data:`BLOCKS_AT_ONCE` slots: await
the slow part first, then open the transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import sqlalchemy as sa

from ferryman.store import Lease, Store
from ferryman.worker.context import JobContext, RunLogger

T = TypeVar("T")

# Transaction and read blocks of one worker's async jobs open at once, at most:
# with the I/O pool's threads, well inside the store's pool of connections
# (10, and 20 more under load), so the worker's heartbeat and committer never
# wait for one. A block beyond them waits on the loop, not in the pool.
BLOCKS_AT_ONCE = 8


class AsyncConnection:
    """A store connection in a transaction, for async code: every call runs on the
    transaction's own thread and is awaited.

    Results are read in full on that thread (SQLAlchemy's ``AsyncConnection``
    does the same), so rows can be used on the loop afterwards.
    """

    def __init__(self, connection: sa.Connection, thread: Executor) -> None:
        self._connection = connection
        self._thread = thread

    async def run_sync(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(connection, *args, **kwargs)`` on the transaction's thread, with the
        synchronous :class:`sqlalchemy.Connection` (for pandas' ``to_sql`` and the like)."""
        return await _on(self._thread, fn, self._connection, *args, **kwargs)

    async def execute(self, statement: sa.Executable, parameters: Any = None) -> sa.Result[Any]:
        """Execute ``statement``; the rows it returns are already fetched."""
        return await _on(self._thread, _buffered, self._connection, statement, parameters)

    async def scalar(self, statement: sa.Executable, parameters: Any = None) -> Any:
        """The first column of the first row, or None."""
        result = await self.execute(statement, parameters)
        return result.scalar()


def _buffered(connection: sa.Connection, statement: sa.Executable, parameters: Any) -> Any:
    result = connection.execute(statement, parameters)
    if not result.returns_rows:
        return result  # closed already; its rowcount and inserted keys stay readable
    return result.freeze()()


async def _on(thread: Executor, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(thread, lambda: fn(*args, **kwargs))


class _Block:
    """A synchronous ``with`` block entered and left on its thread, at most once each."""

    def __init__(self, manager: AbstractContextManager[sa.Connection]) -> None:
        self._manager = manager
        self._entered = False

    def enter(self) -> sa.Connection:
        connection = self._manager.__enter__()
        self._entered = True
        return connection

    def leave(self, exc: BaseException | None) -> bool | None:
        if not self._entered:
            return False
        self._entered = False
        if exc is None:
            return self._manager.__exit__(None, None, None)
        return self._manager.__exit__(type(exc), exc, exc.__traceback__)


@contextlib.asynccontextmanager
async def _on_own_thread(
    opened: Callable[[], AbstractContextManager[sa.Connection]],
    name: str,
    blocks: asyncio.Semaphore,
) -> AsyncIterator[AsyncConnection]:
    """Enter ``opened()`` on a new thread, hand the block its connection, leave it there too.

    At most as many blocks as ``blocks`` allows are open at once: each holds
    one of the store's pooled connections, and a pool emptied by jobs would
    leave the worker's heartbeat waiting for one while its leases expire.
    """
    async with blocks, _holding_thread(opened, name) as connection:
        yield connection


@contextlib.asynccontextmanager
async def _holding_thread(
    opened: Callable[[], AbstractContextManager[sa.Connection]], name: str
) -> AsyncIterator[AsyncConnection]:
    thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
    block = _Block(opened())
    try:
        connection = await _on(thread, block.enter)
        try:
            yield AsyncConnection(connection, thread)
        except BaseException as exc:
            if not await _on(thread, block.leave, exc):  # rolled back; never a commit
                raise
        else:
            await _on(thread, block.leave, None)
    finally:
        # A task cancelled while its thread was entering or leaving does not
        # wait for it; the thread goes on in order, and a block it entered but
        # never left is rolled back here: never a connection left in a
        # transaction (on SQLite, holding the process's write lock).
        thread.submit(block.leave, asyncio.CancelledError("the job's task was cancelled"))
        thread.shutdown(wait=False)


class AsyncJobContext:
    """Handed to an ``async def`` job with its payload: the run, and its fenced writes awaited.

    The same run and guarantees as :class:`~ferryman.JobContext`: every write
    through the context commits only while this worker still holds the run's
    lease, or raises :class:`~ferryman.LeaseLost` and writes nothing. What
    it does not define (anything a later JobContext adds that does not write)
    is read from the run's :class:`~ferryman.JobContext`.
    """

    def __init__(
        self, context: JobContext, io: Executor, blocks: asyncio.Semaphore | None = None
    ) -> None:
        self._context = context
        self._io = io  # checkpoints and heartbeats: a bounded pool, so bounded connections
        # open transaction and read blocks, at most (each holds a connection)
        self._blocks = blocks or asyncio.Semaphore(BLOCKS_AT_ONCE)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    @property
    def sync(self) -> JobContext:
        """The run's :class:`~ferryman.JobContext`, for code that blocks (call it in a thread)."""
        return self._context

    @property
    def logger(self) -> RunLogger:
        """A logger whose records carry the run's id, job, run_key and attempt."""
        return self._context.logger

    @property
    def run_id(self) -> int:
        return self._context.run_id

    @property
    def run_key(self) -> str:
        return self._context.run_key

    @property
    def job(self) -> str:
        return self._context.job

    @property
    def attempt(self) -> int:
        """1 for the first attempt; a run taken over after a lease expired counts up too."""
        return self._context.attempt

    @property
    def max_attempts(self) -> int:
        return self._context.max_attempts

    @property
    def payload(self) -> Any:
        return self._context.payload

    @property
    def lease(self) -> Lease:
        return self._context.lease

    @property
    def worker_id(self) -> str:
        return self._context.worker_id

    @property
    def store(self) -> Store:
        """The store the run lives in (see :attr:`JobContext.store`)."""
        return self._context.store

    @property
    def last_checkpoint(self) -> Any:
        """The newest checkpoint of this run, from this attempt or an earlier one."""
        return self._context.last_checkpoint

    @property
    def lease_lost(self) -> bool:
        """True once a heartbeat found that another worker took the run over."""
        return self._context.lease_lost

    def transaction(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        """``async with ctx.transaction() as conn:`` — :meth:`JobContext.transaction`, awaited.

        What the job writes through ``conn`` commits in the same transaction
        as the run's ``succeeded`` transition, fenced by the lease, when the
        block ends; if the block raises, or the lease was lost, nothing is
        written. The transaction lives on a thread of its own from begin to
        commit. A run succeeds once, so the block can be entered once.
        """
        return _on_own_thread(self._context.transaction, "ferryman-transaction", self._blocks)

    def read(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        """``async with ctx.read() as conn:`` — :meth:`JobContext.read`, awaited: reads
        in a transaction of their own, not fenced, on a thread of their own."""
        return _on_own_thread(self._context.read, "ferryman-read", self._blocks)

    async def checkpoint(self, data: Any) -> None:
        """Durably record progress; a later attempt finds it in :attr:`last_checkpoint`."""
        await _on(self._io, self._context.checkpoint, data)

    async def heartbeat(self) -> None:
        """Renew the lease now (the worker also does so every ``lease_seconds / 3``)."""
        await _on(self._io, self._context.heartbeat)
