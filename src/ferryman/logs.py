"""Structured log lines: every record carries its run, job, sensor and attempt fields.

Also the two short texts that log lines and the store's rows share: who
wrote them (:func:`process_id`) and the one line that names an error
(:func:`error_summary`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from typing import Any

from rich.console import Console


def process_id() -> str:
    """This process, as ``host:pid``: who evaluated a sensor, the start of a worker's id
    (``host:pid:random``) and of an upload's owner (``host:pid/call``)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def error_summary(text: str | None, width: int = 300) -> str:
    """The line that names an error: the last non-empty line of a traceback or a
    message, stripped and cut to ``width`` characters; ``""`` if there is none."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1][:width] if lines else ""


# Fields ferryman attaches to records through ``extra=``; shown when present.
CONTEXT_FIELDS = ("run_id", "job", "run_key", "attempt", "sensor", "worker_id", "transfer_id")


def _context(record: logging.LogRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in CONTEXT_FIELDS if hasattr(record, name)}


class KeyValueFormatter(logging.Formatter):
    """``2026-01-01T10:00:00 INFO ferryman.worker message run_id=3 job=load``"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(f"{key}={value!r}" for key, value in _context(record).items())
        return f"{line} {fields}" if fields else line


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_context(record),
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Send ferryman's logs to stderr; ``fmt`` is ``text`` or ``json``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Alembic announces every migration context at INFO; only its warnings matter here.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # The AWS SDK's DEBUG lines carry request headers (signatures, tokens) and
    # every byte count; ferryman's own transfer logs say what matters.
    for name in ("boto3", "botocore", "s3transfer", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)


class ConsoleHandler(logging.Handler):
    """Writes formatted records through a Rich console, above its live progress view."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.print(self.format(record), markup=False, highlight=False, soft_wrap=True)
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def through_console(console: Console, *, level: int = logging.WARNING) -> Iterator[None]:
    """Route the root logger's output through ``console`` (same format) for the block.

    Records below ``level`` are held back meanwhile: a live view on the
    console already counts what they would say one line per run.
    """
    root = logging.getLogger()
    saved = root.handlers[:]
    saved_level = root.level
    root.setLevel(max(saved_level, level))
    replacements: list[logging.Handler] = []
    for handler in saved:
        replacement = ConsoleHandler(console)
        replacement.setFormatter(handler.formatter)
        replacement.setLevel(handler.level)
        replacements.append(replacement)
    root.handlers[:] = replacements
    try:
        yield
    finally:
        root.handlers[:] = saved
        root.setLevel(saved_level)


def after_fork() -> None:
    """In a forked child: log straight to stderr instead of through the parent's console.

    The console's lock may have been held by one of the parent's threads at
    the moment of the fork, and would then stay locked in the child for ever.
    """
    root = logging.getLogger()
    for index, handler in enumerate(root.handlers):
        if isinstance(handler, ConsoleHandler):
            replacement = logging.StreamHandler(sys.stderr)
            replacement.setFormatter(handler.formatter)
            replacement.setLevel(handler.level)
            root.handlers[index] = replacement
