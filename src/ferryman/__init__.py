"""ferryman: crash-safe, resumable ingestion.

Sensors find work, jobs process it, results land in a database or in S3, and
nothing is lost or done twice when processes are killed, machines restart or
several instances run at once.

``import ferryman`` loads the records and the errors only: the names that
bring SQLAlchemy, boto3 or the broker clients with them (``App``, the
contexts, ``fm.sensors``, ``fm.sources``, ``fm.transfer``) are imported on
first use (PEP 562), so that a command such as ``ferryman --help`` or a cron
``ferryman tick`` does not pay for what it does not use.
"""

import importlib as _importlib
import typing as _typing

from ferryman.errors import (
    ConfigurationError,
    DownloadFailed,
    FerrymanError,
    LeaseLost,
    PayloadError,
    PortInUse,
    Reject,
    RoutingError,
    S3Error,
    S3Unavailable,
    SchemaMismatch,
    SensorOutputError,
    StoreError,
    StoreUnavailable,
    TransferConflict,
    TransferError,
    TransferFailed,
    UnknownJob,
    UnknownSensor,
    UnreadableCursor,
)
from ferryman.model import (
    Backoff,
    Download,
    DownloadPart,
    Evaluation,
    EvaluationOutcome,
    JobSummary,
    Message,
    Rate,
    Run,
    RunEvent,
    RunEventKind,
    RunRequest,
    RunStatus,
    SensorKind,
    SensorResult,
    SensorState,
    SensorStatus,
    SubmitResult,
    Transfer,
    TransferPart,
    TransferStatus,
    WorkerInfo,
)

if _typing.TYPE_CHECKING:
    from ferryman import sensors, sources, transfer
    from ferryman.app import App
    from ferryman.sensors.context import SensorContext
    from ferryman.worker import AsyncJobContext, JobContext, WorkReport

# The public names imported on first use, and the module each comes from.
_LAZY = {
    "App": "ferryman.app",
    "AsyncJobContext": "ferryman.worker.async_context",
    "JobContext": "ferryman.worker.context",
    "SensorContext": "ferryman.sensors.context",
    "WorkReport": "ferryman.worker.worker",
}
_LAZY_MODULES = ("sensors", "sources", "transfer")

__version__ = "0.1.0"

__all__ = [
    "App",
    "AsyncJobContext",
    "Backoff",
    "ConfigurationError",
    "Download",
    "DownloadFailed",
    "DownloadPart",
    "Evaluation",
    "EvaluationOutcome",
    "FerrymanError",
    "JobContext",
    "JobSummary",
    "LeaseLost",
    "Message",
    "PayloadError",
    "PortInUse",
    "Rate",
    "Reject",
    "RoutingError",
    "Run",
    "RunEvent",
    "RunEventKind",
    "RunRequest",
    "RunStatus",
    "S3Error",
    "S3Unavailable",
    "SchemaMismatch",
    "SensorContext",
    "SensorKind",
    "SensorOutputError",
    "SensorResult",
    "SensorState",
    "SensorStatus",
    "StoreError",
    "StoreUnavailable",
    "SubmitResult",
    "Transfer",
    "TransferConflict",
    "TransferError",
    "TransferFailed",
    "TransferPart",
    "TransferStatus",
    "UnknownJob",
    "UnknownSensor",
    "UnreadableCursor",
    "WorkReport",
    "WorkerInfo",
    "sensors",
    "sources",
    "transfer",
]


def __getattr__(name: str) -> _typing.Any:
    """Import the heavier public names when first asked for (PEP 562)."""
    if name in _LAZY:
        value = getattr(_importlib.import_module(_LAZY[name]), name)
    elif name in _LAZY_MODULES:
        value = _importlib.import_module(f"ferryman.{name}")
    else:
        raise AttributeError(f"module 'ferryman' has no attribute {name!r}")
    globals()[name] = value  # once imported, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
