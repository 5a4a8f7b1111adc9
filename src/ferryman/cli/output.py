"""Output shared by the ``ferryman`` commands: consoles, errors, JSON, durations.

Exit codes: 0 done; 1 the operation found nothing to do on what was asked
(no such run or sensor, an evaluation that failed); 2 usage or configuration
error; 3 the store cannot be reached; 4 the store's schema does not match
this version; 5 another store error; 6 S3 refused a request (access
denied); 7 S3 cannot be reached; 8 a transfer failed and was recorded so;
70 an unexpected error (a bug in ferryman or in the loaded app).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
from datetime import UTC, datetime
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from ferryman.logs import error_summary
from ferryman.model import Run, RunStatus

EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_SCHEMA = 4
EXIT_STORE = 5
EXIT_S3_REFUSED = 6
EXIT_S3_UNAVAILABLE = 7
EXIT_TRANSFER_FAILED = 8
EXIT_INTERNAL = 70  # sysexits' EX_SOFTWARE

out = Console()
err = Console(stderr=True)


def fail(message: str, code: int) -> NoReturn:
    """One line on stderr (line breaks in ``message`` folded), then exit with ``code``."""
    line = " ".join(message.split())
    err.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, default=_json_default, indent=2) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def age(moment: datetime | None) -> str:
    """How long ago ``moment`` was."""
    return "-" if moment is None else duration((datetime.now(UTC) - moment).total_seconds())


def due(run: Run) -> str:
    """When a queued run becomes due: ``now``, or ``in 5m`` and the instant (UTC)."""
    if run.status is not RunStatus.QUEUED:
        return ""
    wait = (run.available_at - datetime.now(UTC)).total_seconds()
    if wait <= 0:
        return "now"
    return f"in {duration(wait)} ({run.available_at.strftime('%Y-%m-%d %H:%M:%S')}Z)"


def last_line(text: str | None, width: int = 80) -> str:
    """An error's summary (:func:`~ferryman.logs.error_summary`) cut to a table cell."""
    return error_summary(text, width)
