"""``ferryman`` commands for sensors: list, pause, resume, set-cursor, evaluations, ingest, tick.

:func:`register` adds them to the main Typer app. Exit codes follow the
main command's: 0 done; 1 nothing found (no such sensor) or, for ``tick``
and ``ingest``, an evaluation that failed; 2 a usage error. Errors are one
line on stderr.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from ferryman.cli.output import (
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    duration,
    fail,
    last_line,
    out,
    print_json,
)
from ferryman.errors import UnknownSensor
from ferryman.model import Evaluation, EvaluationOutcome, SensorState

if TYPE_CHECKING:  # both imported by the commands that use them (see cli/main.py)
    from rich.table import Table

    from ferryman.app import App


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    seconds = (moment - datetime.now(UTC)).total_seconds()
    if seconds <= 0:
        return "due"
    return f"in {duration(seconds)}"


def _cursor(value: str | None) -> str:
    return "-" if value is None else escape(value)


def _evaluation_row(evaluation: Evaluation) -> list[str]:
    took = (evaluation.finished_at - evaluation.started_at).total_seconds()
    moved = (
        f"{_cursor(evaluation.cursor_before)} → {_cursor(evaluation.cursor_after)}"
        if evaluation.state_version_after is not None
        else f"{_cursor(evaluation.cursor_before)} (unchanged)"
    )
    return [
        str(evaluation.id),
        escape(evaluation.sensor),
        evaluation.finished_at.strftime("%m-%d %H:%M:%S"),
        evaluation.outcome.value,
        moved,
        f"{evaluation.runs_requested} / {evaluation.runs_deduplicated}",
        str(evaluation.items_skipped),
        f"{took:.3f}s",
        escape(last_line(evaluation.error)),
    ]


def _evaluations_table(title: str, evaluations: Sequence[Evaluation]) -> Table:
    from rich.table import Table

    table = Table(title=title)
    for column in (
        "id",
        "sensor",
        "finished",
        "outcome",
        "cursor",
        "runs req/dedup",
        "skipped",
        "duration",
        "error",
    ):
        table.add_column(column, overflow="fold")
    for evaluation in evaluations:
        table.add_row(*_evaluation_row(evaluation))
    return table


def login_name() -> str:
    """The name of the user running the command, for the record of who moved a cursor.

    ``getpass.getuser()`` reads ``LOGNAME``, ``USER``... and then the password
    database; a uid with no entry there (a container's) is shown as ``uid:N``.
    """
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def _read_payload(raw: str | None) -> Any:
    if raw is None:
        return None
    text = raw
    if raw.startswith("@"):
        path = Path(raw[1:])
        try:
            text = path.read_text()
        except OSError as exc:
            fail(f"--payload {raw}: cannot read {path}: {exc.strerror or exc}", EXIT_USAGE)
    try:
        return json.loads(text)
    except ValueError as exc:
        fail(f"--payload is not JSON: {exc}", EXIT_USAGE)


def register(cli: typer.Typer, load_app: Callable[[], App]) -> None:
    """Add the sensor commands to ``cli``; ``load_app`` gives the App the options name."""
    sensors_cli = typer.Typer(
        help="Sensors and their state; pause, resume, or move a cursor.",
        invoke_without_command=True,
    )
    cli.add_typer(sensors_cli, name="sensors")

    def known(action: Callable[[App], Any]) -> Any:
        try:
            return action(load_app())
        except UnknownSensor as exc:
            fail(f"{exc}; is it registered by the --app you named?", EXIT_NOT_FOUND)

    _add_list(sensors_cli, load_app)
    _add_state_commands(sensors_cli, known)
    _add_evaluation_commands(cli, known)
    _add_tick(cli, load_app, known)


Known = Callable[[Callable[["App"], Any]], Any]  # runs an action, UnknownSensor -> exit 1


def _add_list(sensors_cli: typer.Typer, load_app: Callable[[], App]) -> None:
    @sensors_cli.callback(invoke_without_command=True)
    def sensors_list(
        ctx: typer.Context,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Every sensor: kind, status, cursor, state version, last outcome, next evaluation."""
        if ctx.invoked_subcommand is not None:
            return
        app = load_app()
        states = app.sensors()
        last: dict[str, Evaluation | None] = {}
        for state in states:
            newest = app.get_evaluations(state.name, limit=1)
            last[state.name] = newest[-1] if newest else None
        if as_json:
            print_json(
                [
                    {
                        **dataclasses.asdict(state),
                        "last_outcome": getattr(last[state.name], "outcome", None),
                        "last_evaluation": last[state.name],
                    }
                    for state in states
                ]
            )
            return
        out.print(_sensors_table(states, last))


def _add_state_commands(sensors_cli: typer.Typer, known: Known) -> None:
    @sensors_cli.command("pause")
    def sensors_pause(name: Annotated[str, typer.Argument(help="Sensor name.")]) -> None:
        """Stop evaluating a sensor, in every process, until it is resumed."""
        state: SensorState = known(lambda app: app.pause_sensor(name))
        out.print(f"sensor {state.name} paused", highlight=False)

    @sensors_cli.command("resume")
    def sensors_resume(name: Annotated[str, typer.Argument(help="Sensor name.")]) -> None:
        """Evaluate a paused sensor again, starting at once."""
        state: SensorState = known(lambda app: app.resume_sensor(name))
        out.print(f"sensor {state.name} resumed", highlight=False)

    @sensors_cli.command("set-cursor")
    def sensors_set_cursor(
        name: Annotated[str, typer.Argument(help="Sensor name.")],
        value: Annotated[str | None, typer.Argument(help="The new cursor.")] = None,
        clear: Annotated[bool, typer.Option("--clear", help="Remove the cursor.")] = False,
        by: Annotated[
            str | None, typer.Option("--by", help="Who moves it (default cli:LOGIN_NAME).")
        ] = None,
    ) -> None:
        """Move a sensor's cursor; recorded as a `manual` evaluation."""
        if (value is None) == (not clear):
            fail("give a VALUE or --clear (not both)", EXIT_USAGE)
        who = by or f"cli:{login_name()}"
        evaluation: Evaluation = known(lambda app: app.set_cursor(name, value, by=who))
        out.print(
            f"sensor {name} cursor {_cursor(evaluation.cursor_before)} → "
            f"{_cursor(evaluation.cursor_after)} (state version "
            f"{evaluation.state_version_after}, by {who})",
            highlight=False,
        )


def _add_evaluation_commands(cli: typer.Typer, known: Known) -> None:
    @cli.command("evaluations")
    def evaluations(
        name: Annotated[str, typer.Argument(help="Sensor name.")],
        limit: Annotated[int, typer.Option(min=1, help="Newest N evaluations.")] = 50,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """A sensor's evaluation history, oldest first."""
        found: list[Evaluation] = known(lambda app: app.get_evaluations(name, limit=limit))
        if as_json:
            print_json(found)
            return
        out.print(_evaluations_table(f"evaluations of {name} (newest {limit})", found))

    @cli.command("ingest")
    def ingest(
        sensor: Annotated[str, typer.Argument(help="Push sensor name.")],
        message_id: Annotated[str, typer.Option("--id", help="The message's id.")],
        payload: Annotated[
            str | None, typer.Option("--payload", help="JSON, or @file holding JSON.")
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Deliver one message to a push sensor (a redelivery writes nothing)."""
        document = _read_payload(payload)
        evaluation: Evaluation = known(lambda app: app.ingest(sensor, message_id, document))
        if as_json:
            print_json(evaluation)
        else:
            out.print(
                f"message {message_id}: evaluation {evaluation.id} {evaluation.outcome.value}, "
                f"{evaluation.runs_requested} runs requested "
                f"({evaluation.runs_deduplicated} deduplicated)",
                highlight=False,
            )
        if evaluation.outcome is EvaluationOutcome.FAILED:
            fail(f"sensor {sensor}: {last_line(evaluation.error, 300)}", EXIT_NOT_FOUND)


def _add_tick(cli: typer.Typer, load_app: Callable[[], App], known: Known) -> None:
    @cli.command("tick")
    def tick(
        sensor: Annotated[
            list[str] | None, typer.Option("--sensor", help="Only these sensors.")
        ] = None,
        force: Annotated[bool, typer.Option(help="Evaluate even if not due.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Evaluate every due poll sensor once, then exit (for cron)."""
        app = load_app()
        if not any(d.kind == "poll" for d in app.sensor_definitions.values()):
            fail(
                "this app registers no poll sensor: name the app with --app module:attribute",
                EXIT_USAGE,
            )
        done: list[Evaluation] = known(lambda app: app.tick(sensor or None, force=force))
        if as_json:
            print_json(done)
        elif done:
            out.print(_evaluations_table("evaluations", done))
        else:
            out.print("no sensor was due", highlight=False)
        failed = [e.sensor for e in done if e.outcome is EvaluationOutcome.FAILED]
        if failed:
            fail(f"evaluation failed for {', '.join(failed)}", EXIT_NOT_FOUND)


def _sensors_table(states: Sequence[SensorState], last: dict[str, Evaluation | None]) -> Table:
    from rich.table import Table

    table = Table(title="sensors")
    for column in (
        "name",
        "kind",
        "status",
        "cursor",
        "version",
        "failures",
        "last outcome",
        "next",
    ):
        table.add_column(column, overflow="fold")
    for state in states:
        evaluation = last[state.name]
        outcome = "-" if evaluation is None else evaluation.outcome.value
        if evaluation is not None and evaluation.outcome is EvaluationOutcome.FAILED:
            outcome = f"[red]failed[/]: {escape(last_line(evaluation.error, 60))}"
        table.add_row(
            escape(state.name),
            state.kind,
            state.status,
            _cursor(state.cursor),
            str(state.state_version),
            str(state.consecutive_failures),
            outcome,
            _next(state),
        )
    return table


def _next(state: SensorState) -> str:
    if state.kind != "poll":
        return "-"
    if state.status != "running":
        return state.status
    return _when(state.next_evaluation_at)


__all__ = ["register"]
