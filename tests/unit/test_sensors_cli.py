"""The sensor commands, mounted on a Typer app as the main ``ferryman`` command mounts them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import ferryman as fm
from ferryman.cli.sensors import register


@pytest.fixture
def app(make_app: type[fm.App]) -> fm.App:
    app = make_app()

    @app.job
    def load(ctx: fm.JobContext, payload: object) -> None: ...

    @app.poll_sensor(job="load", interval=60, backoff=fm.Backoff(base=0))
    def inbox(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
        if cursor == "[broken]":
            raise RuntimeError("inbox unreachable")
        n = int(cursor or 0) + 1
        return fm.SensorResult(run_requests=[fm.RunRequest(f"doc-{n}")], cursor=str(n))

    @app.push_sensor(job="load")
    def hook(ctx: fm.SensorContext, message: fm.Message) -> list[fm.RunRequest]:
        if message.payload == "poison":
            raise ValueError("cannot parse message")
        return [fm.RunRequest(f"msg-{message.message_id}", message.payload)]

    return app


def invoke(app: fm.App, *args: str) -> tuple[int, str, str]:
    cli = typer.Typer()

    @cli.callback()
    def main() -> None:
        """ferryman"""

    register(cli, lambda: app)
    result = CliRunner(env={"COLUMNS": "250"}).invoke(cli, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_tick_list_and_history(app: fm.App) -> None:
    code, out, _ = invoke(app, "tick")
    assert code == 0 and "ok" in out
    code, out, _ = invoke(app, "tick")
    assert code == 0 and "no sensor was due" in out
    code, out, _ = invoke(app, "tick", "--force", "--sensor", "inbox", "--json")
    (evaluation,) = json.loads(out)
    assert (evaluation["cursor_before"], evaluation["cursor_after"]) == ("1", "2")

    code, out, _ = invoke(app, "sensors", "--json")
    listed = {s["name"]: s for s in json.loads(out)}
    assert listed["inbox"]["cursor"] == "2" and listed["inbox"]["state_version"] == 2
    assert listed["inbox"]["last_outcome"] == "ok"
    assert listed["hook"]["kind"] == "push" and listed["hook"]["last_outcome"] is None
    code, out, _ = invoke(app, "sensors")
    assert code == 0
    for text in ("inbox", "poll", "running", "hook", "push"):
        assert text in out
    assert re.search(r"in (59|60)\.\ds", out)  # the next evaluation, a minute on

    code, out, _ = invoke(app, "evaluations", "inbox", "--json")
    assert [e["cursor_after"] for e in json.loads(out)] == ["1", "2"]
    code, out, _ = invoke(app, "evaluations", "inbox", "--limit", "1")
    assert code == 0 and "1 → 2" in out and "1 / 0" in out


def test_pause_resume_and_set_cursor(app: fm.App) -> None:
    invoke(app, "tick")
    code, out, _ = invoke(app, "sensors", "pause", "inbox")
    assert code == 0 and "paused" in out
    assert app.get_sensor("inbox").status == "paused"
    _, out, _ = invoke(app, "sensors")
    assert "paused" in out
    code, out, _ = invoke(app, "sensors", "resume", "inbox")
    assert code == 0 and app.get_sensor("inbox").status == "running"

    code, out, _ = invoke(app, "sensors", "set-cursor", "inbox", "[broken]", "--by", "alice")
    assert code == 0 and "1 → [broken]" in out and "by alice" in out
    assert app.get_evaluations("inbox")[-1].outcome is fm.EvaluationOutcome.MANUAL
    code, out, err = invoke(app, "tick")  # the sensor fails on that cursor
    assert code == 1
    assert "failed" in out and "RuntimeError: inbox unreachable" in out
    assert err.strip() == "error: evaluation failed for inbox"
    _, out, _ = invoke(app, "sensors")
    assert "inbox unreachable" in out
    code, out, _ = invoke(app, "sensors", "set-cursor", "inbox", "--clear")
    assert code == 0 and app.get_sensor("inbox").cursor is None
    code, _, err = invoke(app, "sensors", "set-cursor", "inbox")
    assert code == 2 and "give a VALUE or --clear" in err


def test_ingest(app: fm.App, tmp_path: Path) -> None:
    code, out, _ = invoke(app, "ingest", "hook", "--id", "m-1", "--payload", '{"a": 1}')
    assert code == 0 and "evaluation" in out and "ok, 1 runs requested" in out
    body = tmp_path / "message.json"
    body.write_text('{"a": 2}')
    code, out, _ = invoke(app, "ingest", "hook", "--id", "m-1", "--payload", f"@{body}", "--json")
    assert code == 0 and json.loads(out)["idempotency_key"] == "push:hook:m-1"
    assert [run.payload for run in app.get_runs()] == [{"a": 1}]  # the redelivery wrote nothing
    code, _, err = invoke(app, "ingest", "hook", "--id", "m-2", "--payload", '"poison"')
    assert code == 1 and "ValueError: cannot parse message" in err
    code, _, err = invoke(app, "ingest", "hook", "--id", "m-3", "--payload", "{nope")
    assert code == 2 and err.startswith("error: --payload is not JSON")
    code, _, err = invoke(app, "ingest", "hook", "--id", "m-3", "--payload", "@/no/such/file")
    assert code == 2 and "cannot read" in err


def test_unknown_sensor_is_a_one_line_error(app: fm.App) -> None:
    for args in (
        ("sensors", "pause", "nope"),
        ("sensors", "resume", "nope"),
        ("sensors", "set-cursor", "nope", "1"),
        ("evaluations", "nope"),
        ("ingest", "nope", "--id", "1"),
        ("tick", "--sensor", "nope"),
    ):
        code, _, err = invoke(app, *args)
        assert code == 1, args
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: unknown sensor 'nope'"), args


def test_tick_needs_an_app_with_poll_sensors(make_app: type[fm.App]) -> None:
    code, _, err = invoke(make_app(), "tick")
    assert code == 2 and "registers no poll sensor" in err
