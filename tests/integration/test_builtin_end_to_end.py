"""The built-in sensors registered with ``app.poll_sensor`` and evaluated by ``app.tick``.

The engine commits each evaluation's runs with the sensor's cursor; these
tests check what lands in the store, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import ferryman as fm
from tests.s3_fixtures import s3_bucket, s3_client, s3_endpoint, s3_server
from tests.sensor_support import Clock

__all__ = ["s3_bucket", "s3_client", "s3_endpoint", "s3_server"]  # fixtures used here


def run_keys(app: fm.App, job: str) -> list[str]:
    return sorted(run.run_key.split("@")[0] for run in app.get_runs(job=job))


def test_folder_sensor_through_tick_and_workers(make_app: type[fm.App], tmp_path: Path) -> None:
    inbox = tmp_path / "in"
    inbox.mkdir()
    app = make_app()
    loaded: list[str] = []

    @app.job
    def load(ctx: fm.JobContext, payload: dict[str, Any]) -> None:
        loaded.append(Path(payload["path"]).read_text())

    clock = Clock(time.time() + 5)
    sensor = app.poll_sensor(job="load", interval=30, name="incoming")(
        fm.sensors.folder(inbox, "*.csv", clock=clock)
    )
    assert callable(sensor)
    (inbox / "a.csv").write_text("alpha")
    (inbox / "b.csv").write_text("beta")

    [evaluation] = app.tick(force=True)
    assert (evaluation.outcome, evaluation.runs_requested) == (fm.EvaluationOutcome.OK, 2)
    assert run_keys(app, "load") == ["a.csv", "b.csv"]
    stored = app.get_sensor("incoming").cursor
    assert stored is not None and json.loads(stored)["kind"] == "folder"

    [again] = app.tick(force=True)
    assert again.runs_requested == 0 and again.cursor_before == stored

    (inbox / "c.csv").write_text("gamma")
    clock.advance(5)
    [third] = app.tick(force=True)
    assert third.runs_requested == 1
    app.work(until_idle=True, handle_signals=False)
    assert sorted(loaded) == ["alpha", "beta", "gamma"]
    assert {run.status for run in app.get_runs(job="load")} == {fm.RunStatus.SUCCEEDED}


def test_routes_go_to_their_jobs_and_unmatched_items_are_recorded(
    make_app: type[fm.App], tmp_path: Path
) -> None:
    app = make_app()

    @app.job
    def parse_xml(ctx: fm.JobContext, payload: dict[str, Any]) -> None: ...

    @app.job
    def load_csv(ctx: fm.JobContext, payload: dict[str, Any]) -> None: ...

    drop = tmp_path / "drop"
    drop.mkdir()
    for name in ("a.xml", "b.csv", "c.txt"):
        (drop / name).write_text(name)
    routes = {r"\.xml$": "parse_xml", r"\.csv$": "load_csv"}
    app.poll_sensor(jobs=["parse_xml", "load_csv"], name="drop")(
        fm.sensors.folder(drop, routes=routes, clock=Clock(time.time() + 5))
    )
    [evaluation] = app.tick(force=True)
    assert (evaluation.runs_requested, evaluation.items_skipped) == (2, 1)
    assert run_keys(app, "parse_xml") == ["a.xml"]
    assert run_keys(app, "load_csv") == ["b.csv"]


def test_s3_sensor_through_tick(make_app: type[fm.App], s3_client: Any, s3_bucket: str) -> None:
    app = make_app()

    @app.job
    def load(ctx: fm.JobContext, payload: dict[str, Any]) -> None: ...

    for index in range(5):
        s3_client.put_object(Bucket=s3_bucket, Key=f"in/{index}.json", Body=b"{}")
    app.poll_sensor(job="load", name="objects")(fm.sensors.s3_prefix(s3_bucket, "in/", page_size=2))
    [first] = app.tick(force=True)
    assert first.runs_requested == 5
    [second] = app.tick(force=True)
    assert second.runs_requested == 0
    s3_client.put_object(Bucket=s3_bucket, Key="in/0.json", Body=b'{"v": 2}')
    [third] = app.tick(force=True)
    assert third.runs_requested == 1
    assert len(app.get_runs(job="load")) == 6
    assert run_keys(app, "load").count(f"s3://{s3_bucket}/in/0.json") == 2


def test_sql_sensors_through_tick(make_app: type[fm.App]) -> None:
    app = make_app()

    @app.job
    def load(ctx: fm.JobContext, payload: dict[str, Any]) -> None: ...

    @app.job
    def audit(ctx: fm.JobContext, payload: dict[str, Any]) -> None: ...

    table = sa.Table(
        "orders",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("total", sa.Integer),
    )
    table.metadata.create_all(app.engine)
    with app.engine.begin() as conn:
        conn.execute(table.insert(), [{"total": n} for n in range(4)])

    app.poll_sensor(job="load", name="new_orders")(
        fm.sensors.sql_table(app, "orders", "id", commit_lag=0)
    )
    # Missing mode finds the sensor's job from the engine: no job= needed.
    app.poll_sensor(job="audit", name="unaudited")(
        fm.sensors.sql_table(app, "orders", "id", mode="missing", batch_size=3)
    )
    evaluations = app.tick(force=True)
    assert [(e.sensor, e.runs_requested) for e in evaluations] == [
        ("new_orders", 4),
        ("unaudited", 4),
    ]
    assert [e.runs_requested for e in app.tick(force=True)] == [0, 0]
    with app.engine.begin() as conn:
        conn.execute(table.insert().values(total=99))
    assert [e.runs_requested for e in app.tick(force=True)] == [1, 1]
    assert run_keys(app, "load") == run_keys(app, "audit") == [f"orders:{i}" for i in range(1, 6)]
