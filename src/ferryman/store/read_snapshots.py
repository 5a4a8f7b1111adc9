"""Read models persisted in ``ferryman_read_snapshots``, to be carried forward by whoever reads.

A server that starts reads the latest one and applies only what the
processing log gained since, instead of counting every run or folding the
whole log again. Each row is a name, the last log id the model includes and
the model as JSON; a model is saved only over an older one, so two servers
saving in turn never move it back.

Two models are kept: the runs by job and status (``run_counts``, see
:mod:`~ferryman.store.run_tally`) and the totals ``/metrics`` folds from the
log and the evaluation history (``metrics_log``, a
:class:`~ferryman.store.read_queries.Folded`). Nothing on a claim or a
finish writes here: the reader pays, now and then (``SAVE_EVERY`` seconds).
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from ferryman.store.read_queries import Folded, Histogram
from ferryman.store.schema import read_snapshots

SAVE_EVERY = 60.0  # seconds between two saves of a model by one reader
METRICS = "metrics_log"


def load(conn: sa.Connection, name: str) -> tuple[int, str, float] | None:
    """``(event_id, body, taken_at)`` of the model saved under ``name``, if any."""
    row = conn.execute(sa.select(read_snapshots).where(read_snapshots.c.name == name)).first()
    return None if row is None else (int(row.event_id), row.body, float(row.taken_at))


def save(conn: sa.Connection, name: str, event_id: int, body: str, taken_at: float) -> None:
    """Save a model under ``name`` unless the one saved includes more of the log."""
    values = {"event_id": event_id, "body": body, "taken_at": taken_at}
    updated = conn.execute(
        read_snapshots.update()
        .where(read_snapshots.c.name == name, read_snapshots.c.event_id <= event_id)
        .values(**values)
    )
    if updated.rowcount:
        return
    found = conn.scalar(
        sa.select(sa.func.count()).select_from(read_snapshots).where(read_snapshots.c.name == name)
    )
    if not found:
        conn.execute(read_snapshots.insert().values(name=name, **values))


def _histograms(by: dict[str, Histogram]) -> dict[str, list[Any]]:
    return {key: [h.buckets, h.count, h.total] for key, h in by.items()}


def _histograms_from(by: dict[str, list[Any]]) -> dict[str, Histogram]:
    return {
        key: Histogram(buckets=[int(b) for b in buckets], count=int(count), total=float(total))
        for key, (buckets, count, total) in by.items()
    }


def folded_json(folded: Folded) -> str:
    return json.dumps(
        {
            "evaluation_watermark": folded.evaluation_watermark,
            "events": [[*key, n] for key, n in folded.events.items()],
            "run_durations": _histograms(folded.run_durations),
            "evaluations": [[*key, n] for key, n in folded.evaluations.items()],
            "evaluation_durations": _histograms(folded.evaluation_durations),
        },
        separators=(",", ":"),
    )


def folded_from(event_id: int, body: str) -> Folded:
    loaded = json.loads(body)
    return Folded(
        event_watermark=event_id,
        evaluation_watermark=int(loaded["evaluation_watermark"]),
        events={(job, kind): int(n) for job, kind, n in loaded["events"]},
        run_durations=_histograms_from(loaded["run_durations"]),
        evaluations={(sensor, outcome): int(n) for sensor, outcome, n in loaded["evaluations"]},
        evaluation_durations=_histograms_from(loaded["evaluation_durations"]),
    )
