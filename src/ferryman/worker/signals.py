"""SIGTERM and SIGINT as "stop", for the worker and the sensor loop of ``ferryman run``."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

log = logging.getLogger("ferryman.worker")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def on_stop_signals(stop: Callable[[], None], what: str) -> Callable[[], None] | None:
    """Call ``stop`` on SIGTERM or SIGINT; return what puts the previous handlers back.

    Python delivers signals to the main thread only, so elsewhere nothing is
    installed and None is returned. ``what`` ends the log line ("no new
    claims ...", "stopping the sensor loop").
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: %s", signal.Signals(signum).name, what)
        stop()

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
