"""SQL for the workers table: who is processing runs, and since when."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from ferryman.model import WorkerInfo
from ferryman.store import records
from ferryman.store.dialect import Backend
from ferryman.store.schema import workers

# (crashes of the process's supervised threads, "thread: error" of the latest)
Crashes = tuple[int, str | None]


def _crashes(crashes: Crashes | None) -> dict[str, object]:
    if crashes is None:
        return {}
    count, last = crashes
    return {"crashes": count, "last_crash": last}


class WorkerQueries:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def register(
        self, conn: sa.Connection, *, worker_id: str, host: str, pid: int, jobs: Sequence[str]
    ) -> None:
        now = self.backend.now
        conn.execute(
            workers.insert().values(
                id=worker_id,
                host=host,
                pid=pid,
                jobs=records.to_json(sorted(jobs), "worker jobs"),
                started_at=now,
                last_seen_at=now,
            )
        )

    def seen(self, conn: sa.Connection, worker_id: str, crashes: Crashes | None = None) -> None:
        conn.execute(
            workers.update()
            .where(workers.c.id == worker_id)
            .values(last_seen_at=self.backend.now, **_crashes(crashes))
        )

    def stopped(self, conn: sa.Connection, worker_id: str, crashes: Crashes | None = None) -> None:
        now = self.backend.now
        conn.execute(
            workers.update()
            .where(workers.c.id == worker_id)
            .values(last_seen_at=now, stopped_at=now, **_crashes(crashes))
        )

    def list(
        self, conn: sa.Connection, *, alive_within: float, include_stopped: bool = False
    ) -> list[WorkerInfo]:
        now = float(conn.execute(sa.select(self.backend.now)).scalar_one())
        query = sa.select(workers).order_by(workers.c.started_at.desc())
        if not include_stopped:
            query = query.where(
                workers.c.stopped_at.is_(None), workers.c.last_seen_at >= now - alive_within
            )
        return [
            records.worker_from_row(
                row,
                alive=row["stopped_at"] is None and row["last_seen_at"] >= now - alive_within,
            )
            for row in conn.execute(query).mappings()
        ]
