"""Workers: claim runs under a lease, execute jobs, commit outcomes fenced by the lease."""

from ferryman.worker.context import JobContext
from ferryman.worker.worker import JobDefinition, Worker, WorkReport

__all__ = ["JobContext", "JobDefinition", "WorkReport", "Worker"]
