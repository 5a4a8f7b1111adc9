"""Background threads, named and supervised: one helper for all of them.

Every thread ferryman starts goes through :func:`supervised`. A thread whose
target raises is never lost silently:

* the crash is logged with its traceback, under the thread's name;
* it is counted in this process's :data:`CRASHES` book, which the worker's
  heartbeat writes to the process's row in the store, so that ``ferryman
  status`` and the dashboard's workers page show it, and which
  :class:`~ferryman.worker.worker.WorkReport` reports;
* ``on_crash`` (if given) is told, so an owner that cannot go on without the
  thread (the worker's committer) stops, or one that must report it (an
  upload's lease heartbeat) keeps the error;
* with ``restart=Backoff(...)`` the target is called again after the
  backoff's delay for the crashes so far — only for loops that are
  safe to start over (the sensor loop, a recount); a target that returns
  normally ends the thread, and so does ``stop`` being set.

It also holds the two ways ferryman describes an error: :func:`first_line`
(the type and first line, for a crash count or a log line) and
:func:`describe_error` (the trimmed traceback kept as a run's last error).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ferryman.model import Backoff

log = logging.getLogger("ferryman.supervise")

SUMMARY_LENGTH = 300
TRACEBACK_HEAD = 2_000
TRACEBACK_TAIL = 6_000


def first_line(exc: BaseException) -> str:
    """One line that says what went wrong: the exception's type and its first line."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    line = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return line[:SUMMARY_LENGTH]


def describe_error(exc: BaseException) -> str:
    """The traceback, trimmed in the middle so the cause and the raise site both survive."""
    text = "".join(traceback.format_exception(exc)).rstrip()
    if len(text) <= TRACEBACK_HEAD + TRACEBACK_TAIL:
        return text
    cut = len(text) - TRACEBACK_HEAD - TRACEBACK_TAIL
    return f"{text[:TRACEBACK_HEAD]}\n  ... {cut} characters cut ...\n{text[-TRACEBACK_TAIL:]}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Crash:
    """One crash of a supervised thread."""

    thread: str
    error: str  # the exception's type and first line
    at: float  # time.time() when it crashed

    def __str__(self) -> str:
        return f"{self.thread}: {self.error}"


class CrashBook:
    """The crashes of this process's supervised threads, numbered from 1.

    Readers take a :meth:`mark` when they start and later ask what happened
    :meth:`since` it; only the latest ``KEEP`` crashes are kept in full.
    """

    KEEP = 100

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._recent: deque[Crash] = deque(maxlen=self.KEEP)

    def record(self, crash: Crash) -> None:
        with self._lock:
            self._count += 1
            self._recent.append(crash)

    def mark(self) -> int:
        with self._lock:
            return self._count

    def since(self, mark: int) -> tuple[int, list[Crash]]:
        """How many crashes came after ``mark``, and those of them still kept."""
        with self._lock:
            count = self._count - mark
            return count, list(self._recent)[-count:] if count else []


CRASHES = CrashBook()


def crashed(name: str, exc: BaseException, *, note: str = "") -> None:
    """Log a crash of background work ``name`` with its traceback, and count it.

    For a loop that must go on past one bad item (the transfer resumer); a
    supervised thread calls it for its own crashes.
    """
    CRASHES.record(Crash(thread=name, error=first_line(exc), at=time.time()))
    log.error("%s crashed%s", name, note, exc_info=exc)


class Supervised:
    """A named background thread that calls ``target`` under supervision (see the module)."""

    def __init__(
        self,
        name: str,
        target: Callable[[], None],
        *,
        restart: Backoff | None = None,
        stop: threading.Event | None = None,
        on_crash: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.name = name
        self.crashes = 0
        self.last_crash: BaseException | None = None
        self._target = target
        self._restart = restart
        self._stop = stop if stop is not None else threading.Event()
        self._on_crash = on_crash
        self.thread = threading.Thread(target=self._body, name=name, daemon=True)

    def start(self) -> Supervised:
        self.thread.start()
        return self

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread; True if it has ended."""
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def is_alive(self) -> bool:
        return self.thread.is_alive()

    def _body(self) -> None:
        while True:
            try:
                self._target()
                return
            except BaseException as exc:  # supervision: every crash is logged and counted
                self._crashed(exc)
            if self._restart is None or self._stop.is_set():
                return
            # The target returns only when its work is done, so every restart
            # follows a crash: the delay grows with the crashes so far.
            delay = self._restart.delay(self.crashes, self.name)
            log.info("restarting thread %s in %.1fs", self.name, delay)
            if self._stop.wait(delay):
                return

    def _crashed(self, exc: BaseException) -> None:
        self.crashes += 1
        self.last_crash = exc
        restarting = "; restarting" if self._restart is not None else ""
        crashed(self.name, exc, note=f" ({self.crashes} so far){restarting}")
        if self._on_crash is not None:
            try:
                self._on_crash(exc)
            except Exception:  # the hook must not hide the crash it reports
                log.exception("thread %s: reporting its crash failed", self.name)


def supervised(
    name: str,
    target: Callable[[], None],
    *,
    restart: Backoff | None = None,
    stop: threading.Event | None = None,
    on_crash: Callable[[BaseException], None] | None = None,
    start: bool = True,
) -> Supervised:
    """Run ``target`` on a daemon thread called ``name``, supervised (see the module).

    ``restart``: restart after a crash, waiting ``restart.delay(crashes so
    far)``; None (the default) lets the thread end. ``stop``: an event that,
    once set, ends the restarts (and the wait before one). ``start=False``
    builds the thread without starting it.
    """
    thread = Supervised(name, target, restart=restart, stop=stop, on_crash=on_crash)
    return thread.start() if start else thread
