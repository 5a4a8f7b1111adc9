"""fm.sensors.sql_table on a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import ferryman as fm
from tests.sensor_support import Clock, Driver

metadata = sa.MetaData()
events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("body", sa.Text),
    sa.Column("amount", sa.Numeric(10, 2)),
)
readings = sa.Table(
    "readings",
    metadata,
    sa.Column("taken_at", sa.DateTime, primary_key=True),
    sa.Column("value", sa.Float),
)


def create_tables(engine: sa.Engine) -> None:
    metadata.create_all(engine)


def insert(engine: sa.Engine, *kinds: str) -> list[int]:
    with engine.begin() as conn:
        return [
            conn.execute(
                events.insert().values(kind=kind, body=f"{kind} body").returning(events.c.id)
            ).scalar_one()
            for kind in kinds
        ]


def ids(result: fm.SensorResult) -> list[int]:
    return [request.payload["id"] for request in result.run_requests]


@pytest.fixture
def app(make_app: type[fm.App]) -> fm.App:
    app = make_app()

    @app.job
    def load(ctx: fm.JobContext, payload: dict[str, Any]) -> None: ...

    create_tables(app.engine)
    return app


# -- cursor mode ---------------------------------------------------------------------


def test_cursor_mode_requests_each_new_row_once(app: fm.App) -> None:
    insert(app.engine, "a", "b", "c", "d", "e")
    clock = Clock()
    sensor = fm.sensors.sql_table(app.engine, "events", "id", batch_size=2, clock=clock)
    driver = Driver(sensor)

    first = driver.evaluate()
    assert ids(first) == [1, 2, 3, 4, 5]
    assert first.run_requests[0].run_key == "events:1"
    assert first.run_requests[0].payload == {"id": 1, "kind": "a", "body": "a body", "amount": None}
    assert app.submit("load", *first.run_requests).created == 5
    assert driver.evaluate().run_requests == []

    insert(app.engine, "f", "g")
    clock.advance(1)
    assert ids(driver.evaluate()) == [6, 7]
    clock.advance(120)  # past any commit_lag: the cursor settles on the last key
    assert driver.evaluate().run_requests == []
    document = driver.cursor_document()
    assert (document["settled"], document["recent"]) == (7, [])
    assert sensor.__name__ == "table_events"


def test_a_row_committed_out_of_key_order_is_not_skipped(pg_url: str) -> None:
    """PostgreSQL hands out id 1 to a transaction that commits after the one with id 2."""
    engine = sa.create_engine(pg_url)
    try:
        create_tables(engine)
        clock = Clock()
        guarded = Driver(fm.sensors.sql_table(engine, "events", "id", clock=clock))
        naive = Driver(fm.sensors.sql_table(engine, "events", "id", commit_lag=0, clock=clock))

        with engine.connect() as slow:
            slow.begin()
            slow.execute(events.insert().values(kind="slow"))  # takes id 1, not committed
            assert insert(engine, "fast") == [2]  # id 2 commits first
            assert ids(guarded.evaluate()) == [2]
            assert ids(naive.evaluate()) == [2]
            slow.commit()

        clock.advance(1)
        assert ids(guarded.evaluate()) == [1]  # found: 2 had not been visible for commit_lag
        assert ids(naive.evaluate()) == []  # a cursor that moved to 2 lost row 1 for good
        clock.advance(61)
        assert guarded.evaluate().run_requests == []
        assert guarded.cursor_document()["settled"] == 2
        assert guarded.cursor_document()["recent"] == []
    finally:
        engine.dispose()


def test_cursor_mode_keeps_requested_keys_compact_and_bounded(app: fm.App) -> None:
    insert(app.engine, *["k"] * 50)
    clock = Clock()
    sensor = fm.sensors.sql_table(
        app.engine, "events", "id", commit_lag=30, max_recent=20, batch_size=7, clock=clock
    )
    driver = Driver(sensor)
    assert ids(driver.evaluate()) == list(range(1, 21))  # 20 keys wait for commit_lag
    assert '"ranges":[[1,20]]' in (driver.cursor or "")
    assert driver.evaluate().run_requests == []  # full: new rows wait, nothing is lost
    clock.advance(31)
    assert ids(driver.evaluate()) == list(range(21, 41))
    clock.advance(31)
    assert ids(driver.evaluate()) == list(range(41, 51))


def test_datetime_keys_round_trip_through_the_cursor(app: fm.App) -> None:
    start = dt.datetime(2024, 6, 1, 12, 0, 0)
    with app.engine.begin() as conn:
        conn.execute(
            readings.insert(),
            [{"taken_at": start + dt.timedelta(minutes=i), "value": i / 2} for i in range(3)],
        )
    driver = Driver(fm.sensors.sql_table(app.engine, "readings", "taken_at", commit_lag=0))
    first = driver.evaluate()
    assert [r.run_key for r in first.run_requests] == [
        "readings:2024-06-01T12:00:00",
        "readings:2024-06-01T12:01:00",
        "readings:2024-06-01T12:02:00",
    ]
    assert first.run_requests[1].payload == {"taken_at": "2024-06-01T12:01:00", "value": 0.5}
    assert driver.cursor_document()["settled"] == {"datetime": "2024-06-01T12:02:00"}
    with app.engine.begin() as conn:
        conn.execute(readings.insert().values(taken_at=start + dt.timedelta(hours=1), value=9))
    assert [r.run_key for r in driver.evaluate().run_requests] == ["readings:2024-06-01T13:00:00"]


# -- missing mode --------------------------------------------------------------------


def test_missing_mode_in_the_store_database_is_one_anti_join(app: fm.App) -> None:
    insert(app.engine, "a", "b", "c", "d", "e")
    app.submit("load", fm.RunRequest("events:2"), fm.RunRequest("events:4"))
    sensor = fm.sensors.sql_table(app.engine, "events", "id", mode="missing", job="load")
    driver = Driver(sensor)

    first = driver.evaluate()
    assert ids(first) == [1, 3, 5]
    assert first.cursor is None  # the runs are the state
    app.submit("load", *first.run_requests)
    assert driver.evaluate().run_requests == []
    insert(app.engine, "f")
    assert ids(driver.evaluate()) == [6]


def test_missing_mode_elsewhere_walks_the_table_and_asks_the_store(
    app: fm.App, tmp_path: Path
) -> None:
    source = sa.create_engine(f"sqlite:///{tmp_path}/source.db")
    try:
        create_tables(source)
        insert(source, *"abcdefg")
        app.submit("load", fm.RunRequest("events:2"), fm.RunRequest("events:6"))
        sensor = fm.sensors.sql_table(
            source, "events", "id", mode="missing", store=app, batch_size=2, max_scan=2
        )
        driver = Driver(sensor, job="load")
        passes = [ids(driver.evaluate()) for _ in range(4)]
        assert passes == [[1], [3, 4], [5], [7]]
        assert driver.cursor_document()["after"] is None  # end reached: start over next time
        for result in driver.results:
            app.submit("load", *result.run_requests)
        assert [ids(driver.evaluate()) for _ in range(4)] == [[], [], [], []]
    finally:
        source.dispose()


def test_missing_mode_routes_by_a_column_and_counts_unmatched_rows(
    app: fm.App, caplog: pytest.LogCaptureFixture
) -> None:
    @app.job
    def parse_xml(ctx: fm.JobContext, payload: dict[str, Any]) -> None: ...

    insert(app.engine, "xml", "csv", "bin", "xml")
    app.submit("parse_xml", fm.RunRequest("events:1"))
    sensor = fm.sensors.sql_table(
        app.engine,
        "events",
        "id",
        mode="missing",
        routes={"^xml$": "parse_xml", "^csv$": "load"},
        route_column="kind",
        columns=["kind"],
    )
    with caplog.at_level(logging.WARNING, "ferryman.sensor"):
        result = Driver(sensor, job=None).evaluate()
    assert [(r.run_key, r.job) for r in result.run_requests] == [
        ("events:2", "load"),
        ("events:4", "parse_xml"),
    ]
    assert result.run_requests[0].payload == {"id": 2, "kind": "csv"}
    assert result.skipped == 1
    assert "1 rows match no route and were skipped, e.g. events:3" in caplog.text


def test_missing_mode_needs_to_know_the_job(app: fm.App) -> None:
    sensor = fm.sensors.sql_table(app.engine, "events", "id", mode="missing")
    with pytest.raises(fm.ConfigurationError, match="pass job="):
        Driver(sensor, job=None).evaluate()
    assert Driver(sensor, job="load").evaluate().run_requests == []  # the sensor's own job


# -- identifiers and values ----------------------------------------------------------


def test_identifiers_are_checked_by_reflection_and_values_are_bound(app: fm.App) -> None:
    insert(app.engine, "a", "it's")
    hostile = fm.sensors.sql_table(app.engine, "events; DROP TABLE events", "id")
    with pytest.raises(fm.ConfigurationError, match="does not exist"):
        Driver(hostile).evaluate()
    unknown = fm.sensors.sql_table(app.engine, "events", "id", columns=["id OR 1=1"])
    with pytest.raises(fm.ConfigurationError, match="has no column 'id OR 1=1'"):
        Driver(unknown).evaluate()

    quoted = fm.sensors.sql_table(app.engine, "events", "id", where={"kind": "a' OR '1'='1"})
    assert Driver(quoted).evaluate().run_requests == []
    exact = fm.sensors.sql_table(app.engine, "events", "id", where={"kind": "it's"})
    assert ids(Driver(exact).evaluate()) == [2]
    as_function = fm.sensors.sql_table(
        app.engine, "events", "id", where=lambda table: table.c.kind.like("a%")
    )
    assert ids(Driver(as_function).evaluate()) == [1]
    with app.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(events)).scalar_one() == 2


def test_a_url_builds_its_own_engine(app: fm.App, store_url: str) -> None:
    insert(app.engine, "a")
    sensor = fm.sensors.sql_table(store_url.replace("+psycopg", ""), "events", "id")
    try:
        assert ids(Driver(sensor).evaluate()) == [1]
    finally:
        sensor.close()
