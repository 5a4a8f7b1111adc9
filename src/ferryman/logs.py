"""Structured log lines: every record carries its run, job, sensor and attempt fields."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

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
