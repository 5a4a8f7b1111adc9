"""Async jobs: ``async def`` job functions, run as tasks on one event loop per worker.

Threads, besides the worker's own (:mod:`ferryman.worker.worker`):

* the **event loop** (``ferryman-event-loop``), started only by a worker that
  serves an async job: each claimed run of an async job becomes a task, at
  most ``concurrency`` running at once, so a thousand runs that mostly await
  need a thousand tasks, not a thousand threads. A crash of this thread (a
  bug in ferryman, never a job's exception, which ends its attempt) stops
  the worker as a crash of any worker thread does;
* the **async I/O pool** (``ferryman-async-io-N``): the blocking store calls
  of async runs — a checkpoint, a heartbeat, recording how an attempt ended —
  so that the loop never waits for the database;
* one thread per open ``ctx.transaction()`` or ``ctx.read()`` block (see
  :mod:`ferryman.worker.async_context`).

Everything else is the worker's, unchanged: runs are claimed under a lease by
the claim loop, renewed by the heartbeat (which marks a lost lease on the
run's context), and their outcomes are written, fenced by the lease, by the
committer or in the job's own ``ctx.transaction()``. An attempt begins and is
settled by the same worker methods as a job thread's (:class:`Attempts`):
retries, ``Reject``, attempts given back when the store failed, ``LeaseLost``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ferryman.errors import FerrymanError
from ferryman.store import ClaimedRun, Outcome
from ferryman.supervise import supervised
from ferryman.worker.async_context import BLOCKS_AT_ONCE, AsyncJobContext
from ferryman.worker.context import JobContext

log = logging.getLogger("ferryman.worker")

IO_THREADS = 8  # at most, per worker: checkpoints and outcomes are short writes
START_TIMEOUT = 10.0  # seconds for the loop thread to come up


def is_async_job(fn: Callable[..., Any]) -> bool:
    """Whether calling ``fn`` gives a coroutine to await: an ``async def`` (or a partial
    of one, or an object whose ``__call__`` is one)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - the method itself, not callable()
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Attempts:
    """What the worker does around each attempt, whichever thread calls the job."""

    deferred: Callable[[ClaimedRun], bool]  # stopping: keep the run for release instead
    begin: Callable[[ClaimedRun], JobContext]  # the run's context, registered as started
    settle: Callable[[ClaimedRun, JobContext, BaseException | None], Outcome | None]
    ended: Callable[[ClaimedRun, Outcome | None], None]  # None: nothing to commit
    call: Callable[[ClaimedRun, AsyncJobContext], Coroutine[Any, Any, Any]]  # the job


class EventLoop:
    """The event loop of one worker, running its async jobs, ``concurrency`` at once."""

    def __init__(self, *, concurrency: int, attempts: Attempts) -> None:
        self.concurrency = concurrency
        self._attempts = attempts
        self.io = ThreadPoolExecutor(
            max_workers=min(IO_THREADS, concurrency), thread_name_prefix="ferryman-async-io"
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._blocks: asyncio.Semaphore | None = None  # see async_context.BLOCKS_AT_ONCE
        self._stopping = False  # stop() was called: failures from here on are the stop's
        self._closing = False  # the tasks still running are being cancelled
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = threading.Lock()
        self._waiting = 0  # submitted runs not yet started
        self._failure: BaseException | None = None

    def start(self, *, on_crash: Callable[[BaseException], None]) -> threading.Thread:
        thread = supervised("ferryman-event-loop", self._serve, on_crash=on_crash).thread
        if not self._ready.wait(START_TIMEOUT):
            raise FerrymanError("the worker's event loop did not start")
        return thread

    def submit(self, run: ClaimedRun) -> None:
        """Start ``run`` as soon as one of the ``concurrency`` slots is free (any thread)."""
        assert self._loop is not None
        with self._lock:
            self._waiting += 1
        self._loop.call_soon_threadsafe(self._spawn, run)

    def waiting(self) -> int:
        """Runs submitted that have not started yet."""
        with self._lock:
            return self._waiting

    def stop(self) -> None:
        """Cancel the tasks still running (their runs were released), end the loop."""
        self._stopping = True
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended meanwhile (it crashed)
                loop.call_soon_threadsafe(stop.set)
        self.io.shutdown(wait=False, cancel_futures=True)

    # -- on the loop's thread -------------------------------------------------

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()
        if self._failure is not None:
            raise self._failure

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self._slots = asyncio.Semaphore(self.concurrency)
        self._blocks = asyncio.Semaphore(BLOCKS_AT_ONCE)
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        await self._stop.wait()
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, run: ClaimedRun) -> None:
        task = asyncio.get_running_loop().create_task(self._attempt(run), name=f"run-{run.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _attempt(self, run: ClaimedRun) -> None:
        assert self._slots is not None
        try:
            async with self._slots:
                with self._lock:
                    self._waiting -= 1
                await self._execute(run)
        except asyncio.CancelledError:
            if not self._closing:
                raise
        except BaseException as exc:  # ferryman's own failure, not the job's: stop the worker
            if self._stopping:  # the I/O pool is gone: the run was released already
                log.debug("run %d ended while the worker stopped: %r", run.id, exc)
                return
            self._failure = exc
            assert self._stop is not None
            self._stop.set()

    async def _execute(self, run: ClaimedRun) -> None:
        """One attempt of an async job, as a job thread makes one of a sync job."""
        attempts = self._attempts
        if attempts.deferred(run):
            return
        context = attempts.begin(run)
        try:
            await attempts.call(run, AsyncJobContext(context, self.io, self._blocks))
        except asyncio.CancelledError:
            if self._closing:  # it outlived the grace, and its run was released
                attempts.ended(run, None)
                raise
            ended: BaseException | None = FerrymanError("the job's task was cancelled")
        # Whatever the job raises ends its attempt, as on a job thread.
        except BaseException as exc:
            ended = exc
        else:
            ended = None
        loop = asyncio.get_running_loop()
        # Settling may wait for the store (an attempt given back): not on the loop.
        outcome = await loop.run_in_executor(self.io, attempts.settle, run, context, ended)
        attempts.ended(run, outcome)
