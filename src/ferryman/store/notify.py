"""Wake-ups on PostgreSQL: LISTEN/NOTIFY so idle workers start at once.

Writers send ``NOTIFY ferryman_runs, '<job>'`` inside the transaction that
makes runs due, so the notification is delivered only if that transaction
commits. Notifications are an optimisation: a worker that misses one (the
listener reconnecting, say) still finds the run at its next poll.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

import psycopg
import sqlalchemy as sa

from ferryman.model import Backoff

log = logging.getLogger("ferryman.store")

CHANNEL = "ferryman_runs"
RECONNECT_BACKOFF = Backoff(base=0.2, factor=2.0, max=10.0)
# How often the thread looks up from its wait to see whether it should stop:
# stop() waits for it, and a stopping worker should not linger for it.
STOP_CHECK = 0.2


def notify_jobs(conn: sa.Connection, jobs: Iterable[str]) -> None:
    """Queue a notification per job; PostgreSQL delivers them on commit."""
    for job in sorted(set(jobs)):
        conn.execute(sa.select(sa.func.pg_notify(CHANNEL, job)))


class Listener:
    """A named background thread that calls ``on_job(job)`` for each notification."""

    def __init__(self, url: sa.URL, on_job: Callable[[str], None], *, name: str) -> None:
        # psycopg takes a libpq URL: the same URL without SQLAlchemy's driver suffix.
        self._conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._on_job = on_job
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening; return once the thread and its connection are gone (or ``timeout``)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    failures = 0
                    while not self._stop.is_set():
                        for notification in conn.notifies(timeout=STOP_CHECK):
                            self._on_job(notification.payload)
            except psycopg.Error as exc:
                if self._stop.is_set():
                    return  # stopped while waiting: a connection closed under us is no news
                failures += 1
                delay = RECONNECT_BACKOFF.delay(failures, self._thread.name)
                log.warning("wake-up listener lost its connection, polling meanwhile: %s", exc)
                self._stop.wait(delay)
