"""``ferryman cancel`` and ``ferryman retry``: an operator's hand on runs, one or many."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated

import typer

from ferryman.cli.output import EXIT_NOT_FOUND, EXIT_USAGE, fail, out, print_json
from ferryman.cli.transfers import parse_duration
from ferryman.errors import ConfigurationError
from ferryman.model import Run, RunStatus

if TYPE_CHECKING:  # the App and Rich's tables load when a command runs, not for --help
    from ferryman.app import App

SHOWN = 20  # runs listed after a bulk action; the rest are counted


class RetryableStatus(enum.StrEnum):
    FAILED = "failed"
    DEAD = "dead"


class CancellableStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"


JsonOption = Annotated[bool, typer.Option("--json", help="Print the runs as JSON.")]


def _report(app: App, verb: str, run_ids: Sequence[int], as_json: bool) -> None:
    """The runs an action changed: their ids as JSON, or a count and a table of the first few."""
    if as_json:
        print_json({verb: len(run_ids), "run_ids": list(run_ids)})
        return
    out.print(f"{verb} {len(run_ids)} runs", highlight=False)
    runs: list[Run] = [run for rid in run_ids[:SHOWN] if (run := app.get_run(rid)) is not None]
    if not runs:
        return
    from rich.table import Table

    table = Table()
    for column in ("id", "job", "run_key", "status", "attempt"):
        table.add_column(column, overflow="fold")
    for run in runs:
        table.add_row(str(run.id), run.job, run.run_key, run.status.value, str(run.attempt))
    if len(run_ids) > SHOWN:
        table.caption = f"and {len(run_ids) - SHOWN} more"
    out.print(table)


def register(cli: typer.Typer, load_app: Callable[[], App]) -> None:
    """Add ``cancel`` and ``retry`` to ``cli``."""
    _add_retry(cli, load_app)
    _add_cancel(cli, load_app)


def _add_retry(cli: typer.Typer, load_app: Callable[[], App]) -> None:
    @cli.command()
    def retry(
        run_ids: Annotated[list[int] | None, typer.Argument(help="Run ids.")] = None,
        job: Annotated[str | None, typer.Option("--job")] = None,
        status_filter: Annotated[
            RetryableStatus | None, typer.Option("--status", help="failed or dead (default both).")
        ] = None,
        since: Annotated[
            str | None,
            typer.Option("--since", help="Only runs that finished within this, e.g. 1h, 30m."),
        ] = None,
        as_json: JsonOption = False,
    ) -> None:
        """Put failed or dead runs back in the queue, same run_key, fresh attempts."""
        if not run_ids and job is None and status_filter is None:
            fail("name run ids, or --job and/or --status", EXIT_USAGE)
        try:
            within = None if since is None else parse_duration(since).total_seconds()
        except ConfigurationError as exc:
            fail(f"--since: {exc}", EXIT_USAGE)
        status = None if status_filter is None else RunStatus(status_filter.value)
        app = load_app()
        requeued = app.retry(run_ids or None, job=job, status=status, by="cli", since=within)
        _report(app, "requeued", requeued, as_json)
        if not requeued:
            raise typer.Exit(EXIT_NOT_FOUND)


def _add_cancel(cli: typer.Typer, load_app: Callable[[], App]) -> None:
    @cli.command()
    def cancel(
        run_id: Annotated[int | None, typer.Argument(help="Run id.")] = None,
        job: Annotated[str | None, typer.Option("--job", help="Cancel runs of this job.")] = None,
        status_filter: Annotated[
            CancellableStatus | None,
            typer.Option("--status", help="With --job: cancel its queued or its running runs."),
        ] = None,
        as_json: JsonOption = False,
    ) -> None:
        """Cancel a queued or running run, or (--job, --status) many.

        A running run's lease is revoked: nothing its job writes afterwards
        commits, and the job sees ctx.cancelled at its worker's next heartbeat.
        """
        if (run_id is None) == (status_filter is None):
            fail("name a run id, or --status (with --job to narrow it)", EXIT_USAGE)
        app = load_app()
        if run_id is not None:
            if job is not None:
                fail("--job goes with --status, not with a run id", EXIT_USAGE)
            if app.cancel(run_id, by="cli") is None:
                fail(
                    f"run {run_id} is not queued or running (or does not exist); nothing cancelled",
                    EXIT_NOT_FOUND,
                )
            _report(app, "cancelled", [run_id], as_json)
            return
        assert status_filter is not None
        cancelled = app.cancel_runs(job=job, status=RunStatus(status_filter.value), by="cli")
        _report(app, "cancelled", cancelled, as_json)
        if not cancelled:
            raise typer.Exit(EXIT_NOT_FOUND)
