"""Several worker processes under one supervisor, for CPU-bound jobs.

The supervisor forks ``processes`` children before it starts any thread of its
own; each child is an ordinary threaded worker with its own worker id, its own
connections and its own leases, exactly like a separate ``ferryman work``.
SIGTERM and SIGINT are passed on to the children, which drain and release as
usual. A child that dies while the supervisor is not stopping is replaced:
its runs come back to the queue when their leases expire, each having used an
attempt, so a run that kills every process it meets ends ``dead`` after
``max_attempts``. Children that keep dying soon after they start are replaced
after a growing delay (1 s, 2 s, 4 s ... up to a minute), never in a tight loop.
A child that ended itself because a job ignored its timeout
(:mod:`ferryman.worker.deadlines`) is replaced at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, fields
from types import FrameType
from typing import NoReturn

from ferryman.model import Backoff
from ferryman.worker.deadlines import EXIT_HUNG
from ferryman.worker.worker import Worker, WorkReport

log = logging.getLogger("ferryman.worker")

RESTART_BACKOFF = Backoff(base=1.0, factor=2.0, max=60.0)
# A child that lived this long before dying did work: the delay starts over.
HEALTHY_SECONDS = 60.0


def run_processes(
    make_worker: Callable[[], Worker],
    *,
    processes: int,
    until_idle: bool,
    after_fork: Callable[[], None],
    on_started: Callable[[], None] | None = None,
) -> WorkReport:
    if threading.active_count() > 1:
        log.warning("forking worker processes while other threads run; prefer starting them first")
    children: dict[int, tuple[int, float]] = {}  # pid -> read end of its report pipe, start
    stopping = _StopFlag()
    restarts = _Restarts()
    total = WorkReport(worker_id=f"supervisor:{os.getpid()}")

    def spawn() -> None:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            stopping.close()
            _child(write_end, make_worker, until_idle=until_idle, after_fork=after_fork)
        os.close(write_end)
        children[pid] = (read_end, time.monotonic())

    def forward(signum: int, _frame: FrameType | None) -> None:
        stopping.set()
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    restore_signals = _install(forward)
    try:
        for _ in range(processes):
            spawn()
        if on_started is not None:
            on_started()
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            child = children.pop(pid, None)
            if child is None:
                continue
            read_end, started = child
            _collect(read_end, total)
            code = os.waitstatus_to_exitcode(status)
            if code != 0 and _replace(pid, code, started, until_idle, stopping, restarts):
                spawn()
            elif code != 0:
                total.errors.append(f"worker process {pid} exited with {code}")
    finally:
        restore_signals()
        stopping.close()
    return total


def _replace(
    pid: int, code: int, started: float, until_idle: bool, stopping: _StopFlag, restarts: _Restarts
) -> bool:
    """Whether child ``pid``, which exited with ``code``, is to be replaced (after a wait)."""
    if stopping.is_set():
        return False
    if code == EXIT_HUNG:
        # It ended itself over a job that ignored its timeout: the process is
        # sound, replace it at once, even when working until idle (the
        # timed-out run is queued again).
        log.warning("worker process %d ended over a hung job; replacing it", pid)
        return True
    return not until_idle and restarts.wait(pid, code, time.monotonic() - started, stopping)


def _install(handler: Callable[[int, FrameType | None], None]) -> Callable[[], None]:
    """Handle SIGTERM and SIGINT with ``handler`` (main thread only); the result undoes it."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def _child(
    write_end: int,
    make_worker: Callable[[], Worker],
    *,
    until_idle: bool,
    after_fork: Callable[[], None],
) -> NoReturn:
    """The body of a forked worker process; it never returns."""
    code = 0
    try:
        after_fork()
        worker = make_worker()

        def last_words() -> None:  # a hung job ends this process: report what it did
            os.write(write_end, json.dumps(asdict(worker.report)).encode())

        worker.exit_when_hung = last_words
        report = worker.run(until_idle=until_idle, handle_signals=True)
        os.write(write_end, json.dumps(asdict(report)).encode())
    except BaseException:
        log.exception("worker process failed")
        code = 1
    finally:
        os.close(write_end)
        os._exit(code)


class _Restarts:
    """The wait before replacing a child: longer while children keep dying young."""

    def __init__(self) -> None:
        self._early_deaths = 0

    def wait(self, pid: int, code: int, lived: float, stopping: _StopFlag) -> bool:
        """Wait before a replacement of child ``pid``; False if a stop signal came meanwhile."""
        self._early_deaths = 0 if lived >= HEALTHY_SECONDS else self._early_deaths + 1
        delay = RESTART_BACKOFF.delay(max(self._early_deaths, 1), "worker process")
        log.warning(
            "worker process %d exited with %d after %.0fs; starting a replacement in %.1fs",
            *(pid, code, lived, delay),
        )
        return not stopping.wait(delay)


class _StopFlag:
    """Set by a signal handler, waited for by the supervisor with a timeout.

    A pipe rather than a ``threading.Event``: the handler runs on the thread
    that waits, and an Event's lock taken there could deadlock.
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._set = False

    def set(self) -> None:
        self._set = True
        with contextlib.suppress(OSError):  # full (already woken) or closed
            os.write(self._write, b"\0")

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        """True once set; else after ``timeout`` seconds, False."""
        if not self._set:
            select.select([self._read], [], [], timeout)
        return self._set

    def close(self) -> None:
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)


def _collect(read_end: int, total: WorkReport) -> None:
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    if not chunks:
        return
    report = json.loads(b"".join(chunks))
    for item in fields(WorkReport):
        if item.name == "worker_id":
            continue
        value = report.get(item.name)
        if isinstance(value, int):
            setattr(total, item.name, getattr(total, item.name) + value)
        elif isinstance(value, list):
            getattr(total, item.name).extend(value)
