"""Workers: claim runs under a lease, execute jobs, commit outcomes fenced by the lease."""

from ferryman.worker.async_context import AsyncConnection, AsyncJobContext
from ferryman.worker.context import JobContext
from ferryman.worker.worker import JobDefinition, Worker, WorkReport

__all__ = [
    "AsyncConnection",
    "AsyncJobContext",
    "JobContext",
    "JobDefinition",
    "WorkReport",
    "Worker",
]
