"""One run per submit, the common call: the row and its log entry as a batch would write them.

On PostgreSQL a submit of one run has a statement of its own
(``ENQUEUE_ONE``); these pin what it writes to what the batch statement does.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

import ferryman as fm
from ferryman.store.schema import run_events, runs


def _row(app: fm.App, run_id: int) -> tuple[float, float, float, int, int]:
    """created_at, updated_at, available_at, priority, max_attempts of a run."""
    with app.engine.connect() as conn:
        row = conn.execute(
            sa.select(
                runs.c.created_at,
                runs.c.updated_at,
                runs.c.available_at,
                runs.c.priority,
                runs.c.max_attempts,
            ).where(runs.c.id == run_id)
        ).one()
    return (row[0], row[1], row[2], row[3], row[4])


def _requested_shown(app: fm.App, run_id: int) -> list[datetime]:
    """When the run's public log says it was requested."""
    events = app.get_run_events(run_id)
    assert events[0].kind is fm.RunEventKind.REQUESTED
    return [event.at for event in events if event.kind is fm.RunEventKind.REQUESTED]


def _requested_at(app: fm.App, run_id: int) -> list[float]:
    """The run's stored ``requested`` rows: none for a plain submit."""
    with app.engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(run_events.c.at).where(
                    run_events.c.run_id == run_id, run_events.c.kind == "requested"
                )
            ).scalars()
        )


def test_one_run_per_submit_is_timed_by_one_reading_of_the_store_clock(
    make_app: type[fm.App],
) -> None:
    app = make_app()

    @app.job(max_attempts=7, priority=2)
    def load(ctx: fm.JobContext, payload: object) -> None: ...

    later = app.submit("load", fm.RunRequest("later", {"a": 1}, not_before=timedelta(hours=1)))
    (run_id,) = later.run_ids
    created, updated, available, priority, max_attempts = _row(app, run_id)
    assert updated == created
    assert available == created + 3600.0
    assert (priority, max_attempts) == (2, 7)
    assert _requested_at(app, run_id) == []  # the run's row says it all
    assert _requested_shown(app, run_id) == [datetime.fromtimestamp(created, UTC)]

    # An instant in the past is due at once; one in the future when it says.
    past = app.submit("load", fm.RunRequest("past", not_before=datetime(2001, 1, 1, tzinfo=UTC)))
    created, _, available, _, _ = _row(app, past.run_ids[0])
    assert available == created
    future = datetime.now(UTC) + timedelta(days=2)
    ahead = app.submit("load", fm.RunRequest("ahead", not_before=future, priority=-1))
    _, _, available, priority, _ = _row(app, ahead.run_ids[0])
    assert (available, priority) == (future.timestamp(), -1)


def test_a_run_key_submitted_again_alone_writes_nothing(make_app: type[fm.App]) -> None:
    app = make_app()

    @app.job
    def load(ctx: fm.JobContext, payload: object) -> None: ...

    first = app.submit("load", fm.RunRequest("k", {"v": 1}))
    again = app.submit("load", fm.RunRequest("k", {"v": 2}, not_before=timedelta(days=1)))
    assert (first.created, again.created, again.deduplicated) == (1, 0, 1)
    assert again.run_ids == first.run_ids
    created, _, available, _, _ = _row(app, first.run_ids[0])
    assert available == created  # as first requested
    assert _requested_at(app, first.run_ids[0]) == []
    assert _requested_shown(app, first.run_ids[0]) == [datetime.fromtimestamp(created, UTC)]
    (run,) = app.get_runs()
    assert run.payload == {"v": 1}
