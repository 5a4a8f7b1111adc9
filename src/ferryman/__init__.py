"""ferryman: crash-safe, resumable ingestion.

Sensors find work, jobs process it, results land in a database or in S3, and
nothing is lost or done twice when processes are killed, machines restart or
several instances run at once.
"""

from ferryman import sources, transfer
from ferryman.app import App
from ferryman.errors import (
    ConfigurationError,
    FerrymanError,
    LeaseLost,
    PayloadError,
    Reject,
    S3Error,
    S3Unavailable,
    SchemaMismatch,
    StoreError,
    StoreUnavailable,
    TransferConflict,
    TransferError,
    TransferFailed,
    UnknownJob,
    UnknownSensor,
)
from ferryman.model import (
    Backoff,
    Evaluation,
    EvaluationOutcome,
    JobSummary,
    Message,
    Run,
    RunEvent,
    RunEventKind,
    RunRequest,
    RunStatus,
    SensorResult,
    SensorState,
    SubmitResult,
    Transfer,
    TransferPart,
    TransferStatus,
    WorkerInfo,
)
from ferryman.sensors import SensorContext
from ferryman.worker import JobContext, WorkReport

__version__ = "0.1.0"

__all__ = [
    "App",
    "Backoff",
    "ConfigurationError",
    "Evaluation",
    "EvaluationOutcome",
    "FerrymanError",
    "JobContext",
    "JobSummary",
    "LeaseLost",
    "Message",
    "PayloadError",
    "Reject",
    "Run",
    "RunEvent",
    "RunEventKind",
    "RunRequest",
    "RunStatus",
    "S3Error",
    "S3Unavailable",
    "SchemaMismatch",
    "SensorContext",
    "SensorResult",
    "SensorState",
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
    "WorkReport",
    "WorkerInfo",
    "sources",
    "transfer",
]
