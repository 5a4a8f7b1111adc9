"""The queue's depth and oldest due age over time, and a sensor's lag, as the pages draw them.

On every store (sqlite, postgres, mariadb). The runs' times are moved into the
past by SQL, as days of work would have left them, and every point the store
derives is compared with a count of the rows themselves.
"""

from __future__ import annotations

import html
import re

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

import ferryman as fm
from ferryman.store import history
from ferryman.web import WebSettings, create_app
from tests.web.conftest import TOKEN, counted_app
from tests.web.test_pages import section

HOUR = 3600.0


def _app(store_url: str) -> fm.App:
    app = fm.App(store_url, lease_seconds=5.0)

    @app.job()
    def load(ctx: fm.JobContext, payload: dict[str, object]) -> None:
        return None

    return app


def _rewrite_times(app: fm.App, now: float) -> list[tuple[float, float | None, str]]:
    """Twelve runs created over the last three hours, some finished since; as (created,
    finished, status) rows."""
    shape = []
    for n in range(12):
        created = now - 3 * HOUR + n * 900 + 7  # off the slots' boundaries
        finished = created + 1800 + n * 60 if n % 3 else None  # every third still waits
        if finished is not None and finished > now - 30:
            finished = None
        shape.append((created, finished, "succeeded" if finished is not None else "queued"))
    engine = sa.create_engine(app.store_url)
    try:
        with engine.begin() as conn:
            ids = [row[0] for row in conn.execute(sa.text("SELECT id FROM ferryman_runs"))]
            for run_id, (created, finished, status) in zip(sorted(ids), shape, strict=True):
                conn.execute(
                    sa.text(
                        "UPDATE ferryman_runs SET created_at = :created, available_at = :created,"
                        " updated_at = :created, finished_at = :finished,"
                        " started_at = :started, status = :status WHERE id = :id"
                    ),
                    {
                        "created": created,
                        "finished": finished,
                        "started": finished - 1 if finished is not None else None,
                        "status": status,
                        "id": run_id,
                    },
                )
    finally:
        engine.dispose()
    return shape


def _unfinished_at(shape: list[tuple[float, float | None, str]], moment: float) -> int:
    return sum(1 for c, f, _ in shape if c < moment and (f is None or f >= moment))


@pytest.mark.parametrize("span", [HOUR, 4 * HOUR])
def test_queue_depth_at_every_moment_is_the_runs_unfinished_then(
    store_url: str, span: float
) -> None:
    app = _app(store_url)
    try:
        app.submit("load", *[fm.RunRequest(f"r-{n}", {}) for n in range(12)])
        now = app.store.now()
        shape = _rewrite_times(app, now)
        waiting = sum(1 for _, f, _ in shape if f is None)
        points = app.store.queue_history(
            since=now - span,
            until=now,
            depth_at_count=waiting,
            counted_at=now,
            oldest_due_at=min(c for c, f, _ in shape if f is None),
        )
        assert len(points) >= history.SLOTS // 2
        assert points[-1].at == now and points[-1].depth == waiting
        for point in points:
            assert point.depth == _unfinished_at(shape, point.at), point
        # Long before anything was created, nothing waited; within, the oldest waiting
        # run's age grows with the clock.
        if span > 3 * HOUR:
            assert points[0].depth == 0 and points[0].oldest_due_age is None
        ages = [(p.at, p.oldest_due_age) for p in points if p.oldest_due_age is not None]
        assert ages and all(age >= 0 for _, age in ages)
        oldest_created = min(c for c, _, _ in shape)
        last_at, last_age = ages[-1]
        assert last_age == pytest.approx(last_at - min(c for c, f, _ in shape if f is None))
        assert all(at - age >= oldest_created - 1 for at, age in ages)
    finally:
        app.close()


def test_slots_long_past_are_counted_once_and_the_newest_again(store_url: str) -> None:
    app = _app(store_url)
    engine = sa.create_engine(store_url)
    try:
        app.submit("load", *[fm.RunRequest(f"r-{n}", {}) for n in range(12)])
        now = app.store.now()
        shape = _rewrite_times(app, now)
        counts = history.SlotCounts()
        with engine.connect() as conn:
            column = history.runs.c.created_at
            first = int((now - 4 * HOUR) // 240)
            before = counts.counts(conn, column, first, now, 240)
            assert sum(before.values()) == len(shape)
            # Runs moved out of the window since: the slots long past are reused as counted.
            with engine.begin() as write:
                write.execute(
                    sa.text("UPDATE ferryman_runs SET created_at = :far WHERE created_at < :at"),
                    {"far": now - 10 * HOUR, "at": now - 2 * HOUR},
                )
            after = counts.counts(conn, column, first, now, 240)
            assert after == before  # every slot but the last ended long ago: remembered
        with engine.connect() as conn:  # a new snapshot (MariaDB reads repeatably)
            fresh = history.SlotCounts().counts(conn, column, first, now, 240)
            assert sum(fresh.values()) == sum(1 for c, _, _ in shape if c >= now - 2 * HOUR)
    finally:
        engine.dispose()
        app.close()


def test_a_slot_not_ended_is_counted_by_minutes_and_its_ended_minutes_are_remembered(
    store_url: str,
) -> None:
    app = _app(store_url)
    engine = sa.create_engine(store_url)
    try:
        app.submit("load", *[fm.RunRequest(f"m-{n}", {}) for n in range(6)])
        start = (app.store.now() // 240) * 240  # the newest slot of four minutes
        up_to = start + 230  # its minutes 0 and 1 have ended a minute ago or more
        offsets = [-400, -100, 10, 70, 130, 200]  # two in ended slots, one a minute after
        with engine.begin() as write:
            ids = sorted(write.scalars(sa.text("SELECT id FROM ferryman_runs")))
            for run_id, offset in zip(ids, offsets, strict=True):
                write.execute(
                    sa.text("UPDATE ferryman_runs SET created_at = :at WHERE id = :id"),
                    {"at": start + offset, "id": run_id},
                )
        counts = history.SlotCounts()
        column = history.runs.c.created_at
        first = int(start // 240) - 2
        with engine.connect() as conn:
            before = counts.counts(conn, column, first, up_to, 240)
        assert before == {first: 1, first + 1: 1, first + 2: 4}
        with engine.begin() as write:  # out of ended minute 0, and of minute 2 not ended
            for offset in (10, 130):
                write.execute(
                    sa.text("UPDATE ferryman_runs SET created_at = :far WHERE created_at = :at"),
                    {"far": start - 9000, "at": start + offset},
                )
        with engine.connect() as conn:
            after = counts.counts(conn, column, first, up_to, 240)
            fresh = history.SlotCounts().counts(conn, column, first, up_to, 240)
        assert after == {first: 1, first + 1: 1, first + 2: 3}  # minute 0 as remembered
        assert fresh == {first: 1, first + 1: 1, first + 2: 2}
    finally:
        engine.dispose()
        app.close()


def test_throughput_counts_every_finish_and_reuses_the_minutes_long_past(
    store_url: str,
) -> None:
    app = _app(store_url)
    engine = sa.create_engine(store_url)
    try:
        app.submit("load", *[fm.RunRequest(f"t-{n}", {}) for n in range(40)])
        now = app.store.now()
        with engine.begin() as write:  # finishes over the last hour, a few in this minute
            for n, run_id in enumerate(write.scalars(sa.text("SELECT id FROM ferryman_runs"))):
                write.execute(
                    sa.text(
                        "UPDATE ferryman_runs SET status = :status, finished_at = :at"
                        " WHERE id = :id"
                    ),
                    {
                        "status": ("succeeded", "failed", "dead", "queued")[n % 4],
                        "at": None if n % 4 == 3 else now - n * 97.0,
                        "id": run_id,
                    },
                )
        counts = history.SlotCounts()

        def expected() -> list[tuple[float, int, int]]:
            with engine.connect() as conn:
                rows = conn.execute(sa.text("SELECT status, finished_at FROM ferryman_runs"))
                found = [(s, f) for s, f in rows if f is not None]
            first = int(now // 60) - 59
            return [
                (
                    m * 60.0,
                    sum(1 for s, f in found if s == "succeeded" and int(f // 60) == m),
                    sum(1 for s, f in found if s in ("failed", "dead") and int(f // 60) == m),
                )
                for m in range(first, first + 60)
            ]

        def drawn() -> list[tuple[float, int, int]]:
            with engine.connect() as conn:
                minutes = history.throughput(conn, counts, now)
            return [(m.minute, m.succeeded, m.failed) for m in minutes]

        before = expected()
        assert drawn() == before
        assert sum(s + f for _, s, f in before) >= 25  # most of the 30 finishes
        # Finishes moved out of the minutes long past are not seen again (remembered);
        # one moved into the newest minute is (it is counted again every time).
        with engine.begin() as write:
            write.execute(
                sa.text("UPDATE ferryman_runs SET finished_at = :far WHERE finished_at < :at"),
                {"far": now - 10 * HOUR, "at": now - 1200},
            )
            write.execute(
                sa.text(
                    "UPDATE ferryman_runs SET finished_at = :at WHERE id IN ("
                    "SELECT min(id) FROM ferryman_runs WHERE finished_at = :far)"
                ),
                {"at": now, "far": now - 10 * HOUR},
            )
        again = drawn()
        assert again[:-1] == before[:-1]
        assert again[-1][1] + again[-1][2] == before[-1][1] + before[-1][2] + 1
        assert drawn() == again
        with engine.connect() as conn:  # a new cache counts them all
            fresh = [
                (m.minute, m.succeeded, m.failed)
                for m in history.throughput(conn, history.SlotCounts(), now)
            ]
        assert fresh == expected()
    finally:
        engine.dispose()
        app.close()


def _titles(svg: str) -> list[str]:
    return [html.unescape(t) for t in re.findall(r"<title>([^<]*)</title>", svg)]


def test_the_overview_draws_the_queue_with_a_range_picker(store_url: str) -> None:
    app = _app(store_url)
    try:
        app.submit("load", *[fm.RunRequest(f"r-{n}", {}) for n in range(12)])
        shape = _rewrite_times(app, app.store.now())
        with TestClient(counted_app(app, WebSettings(token=TOKEN))) as client:
            for chosen in ("1h", "24h", "7d"):
                page = client.get(f"/?range={chosen}").text
                queue = section(page, "Queue over time")
                assert f'value="{chosen}" checked' in queue
                depth = [t for t in _titles(queue) if "queued or running" in t]
                waiting = sum(1 for _, f, _ in shape if f is None)
                assert depth and depth[-1].endswith(f"queued or running {waiting}")
                oldest = [t for t in _titles(queue) if "oldest due" in t]
                assert oldest and re.search(r"oldest due [\d.]+ (min|s)$", oldest[-1])
            custom = client.get("/?range=custom&since=2026-01-01T00:00&until=2026-01-02T00:00")
            assert custom.status_code == 200
            assert "2026-01-01 00:00:00 → 2026-01-02 00:00:00 UTC" in custom.text
            assert client.get("/?range=2h").status_code == 422
    finally:
        app.close()


def test_a_sensor_page_draws_how_late_its_evaluations_started(store_url: str) -> None:
    app = _app(store_url)
    try:

        @app.poll_sensor(job="load", interval=60)
        def numbers(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
            return fm.SensorResult(run_requests=[], cursor=str(int(cursor or 0) + 1))

        now = app.store.now()
        # Before its first evaluation: empty slots.
        empty = app.store.sensor_lag("numbers", interval=60.0, since=now - HOUR, until=now)
        assert empty and all(s.evaluations == 0 and s.max is None for s in empty)
        for _ in range(3):
            app.tick(force=True)
        engine = sa.create_engine(app.store_url)
        now = app.store.now()
        try:
            # Three evaluations 1,000 s apart with an interval of 60 s: the later two
            # started 1,000 - 60 - 2 s after they were due.
            with engine.begin() as conn:
                ids = sorted(
                    r[0]
                    for r in conn.execute(sa.text("SELECT id FROM ferryman_sensor_evaluations"))
                )
                for index, evaluation_id in enumerate(ids):
                    start = now - 3000 + index * 1000
                    conn.execute(
                        sa.text(
                            "UPDATE ferryman_sensor_evaluations SET started_at = :s,"
                            " finished_at = :f WHERE id = :id"
                        ),
                        {"s": start, "f": start + 2, "id": evaluation_id},
                    )
        finally:
            engine.dispose()
        slots = app.store.sensor_lag("numbers", interval=60.0, since=now - HOUR, until=now)
        lags = [s.max for s in slots if s.max is not None]
        assert lags == [pytest.approx(938.0), pytest.approx(938.0)]
        took = app.store.sensor_lag("numbers", interval=None, since=now - HOUR, until=now)
        assert [s.max for s in took if s.max is not None] == [pytest.approx(2.0)] * 3
        with TestClient(create_app(app, WebSettings(token=TOKEN))) as client:
            page = client.get("/sensors/numbers?range=1h").text
            assert "<h3>Evaluation lag</h3>" in page
            lag = page[page.index('id="lag"') :]
            assert any(t.endswith("lag max 15.6 min") for t in _titles(lag[: lag.index("</svg>")]))
    finally:
        app.close()
