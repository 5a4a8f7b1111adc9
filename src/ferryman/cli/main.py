"""The ``ferryman`` command.

Exit codes are listed in :mod:`ferryman.cli.output`; errors are one line on
stderr, never a traceback.

Only what ``ferryman --help`` needs is imported at the top: the App (and
with it SQLAlchemy), the store's migrations, Rich's tables and progress view
are imported in the commands that use them, so that the help and a cron
``ferryman tick`` start at once (``tests/unit/test_startup.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import importlib
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from ferryman import logs
from ferryman.cli import download as cli_download
from ferryman.cli import errors as cli_errors
from ferryman.cli import prune as cli_prune
from ferryman.cli import runctl as cli_runctl
from ferryman.cli import sensors as cli_sensors
from ferryman.cli import serve as cli_serve
from ferryman.cli import submit as cli_submit
from ferryman.cli import sync as cli_sync
from ferryman.cli import transfers as cli_transfers
from ferryman.cli.errors import describe
from ferryman.cli.output import (
    EXIT_NOT_FOUND,
    EXIT_SCHEMA,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    age,
    due,
    duration,
    err,
    fail,
    last_line,
    out,
    print_json,
)
from ferryman.model import Run, RunStatus, chain_links, redact
from ferryman.settings import DEFAULT_STORE

if TYPE_CHECKING:
    from ferryman.app import App

LIVE_INTERVAL = 0.5  # seconds between refreshes of the progress view
LOG_INTERVAL = 30.0  # seconds between progress log lines when not on a terminal

log = logging.getLogger("ferryman.cli")

cli = typer.Typer(
    name="ferryman",
    help="Crash-safe, resumable ingestion: sensors, jobs, runs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
runs_cli = typer.Typer(help="List runs, or show one with its processing log.")
db_cli = typer.Typer(help="Store schema.", no_args_is_help=True)
cli.add_typer(runs_cli, name="runs")
cli.add_typer(db_cli, name="db")


# Commands that serve until stopped wait for their store as long as it takes
# (a database still booting with the host); the others give up after a while.
LONG_RUNNING = ("run", "work", "serve")
ONE_SHOT_CONNECT_TIMEOUT = 10.0


@dataclasses.dataclass
class Settings:
    app_spec: str | None = None
    store: str | None = None
    connect_timeout: float | None = ONE_SHOT_CONNECT_TIMEOUT
    long_running: bool = False
    _app: App | None = None

    def app(self, *, need_jobs: bool = False, connect: bool = True) -> App:
        """The App, with its store open (waiting up to ``--connect-timeout`` for it)."""
        if self._app is None:
            self._app = self._load(need_jobs)
        if connect:
            # Each try is worth a log line for a daemon; a one-shot command
            # says it once, in its error.
            level = logging.WARNING if self.long_running else logging.DEBUG
            self._app.connect(self.connect_timeout, log_level=level)
        return self._app

    def _load(self, need_jobs: bool) -> App:
        from ferryman.app import App

        if self.app_spec is None:
            if need_jobs:
                fail(
                    "this command runs jobs: name the app with --app module:attribute "
                    "(or FERRYMAN_APP)",
                    EXIT_USAGE,
                )
            return App(self.store or DEFAULT_STORE)
        app = load_app(self.app_spec)
        if self.store is not None:
            app.use_store(self.store)
        return app


settings = Settings()


def load_app(spec: str) -> App:
    """Import ``module:attribute`` or ``path/to/file.py:attribute``."""
    from ferryman.app import App

    module_name, _, attribute = spec.partition(":")
    attribute = attribute or "app"
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).resolve()
            if not path.is_file():
                fail(f"--app {spec}: no file {path}", EXIT_USAGE)
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[path.stem] = module
            module_spec.loader.exec_module(module)
        else:
            sys.path.insert(0, os.getcwd())
            module = importlib.import_module(module_name)
    except ImportError as exc:
        fail(f"--app {spec}: cannot import {module_name!r}: {exc}", EXIT_USAGE)
    except Exception as exc:  # the app's own module failed while it was imported
        log.debug("importing %s failed", module_name, exc_info=exc)
        fail(f"--app {spec}: importing {module_name!r} raised {describe(exc)}", EXIT_USAGE)
    app = getattr(module, attribute, None)
    if not isinstance(app, App):
        fail(f"--app {spec}: {module_name}.{attribute} is not a ferryman.App", EXIT_USAGE)
    return app


# -- global options ----------------------------------------------------------


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


@cli.callback()
def main_options(
    ctx: typer.Context,
    app: Annotated[
        str | None,
        typer.Option("--app", envvar="FERRYMAN_APP", help="The App to load: module:attribute."),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            envvar="FERRYMAN_STORE",
            help=f"Store URL (default {DEFAULT_STORE}); overrides the App's.",
        ),
    ] = None,
    log_level: Annotated[
        LogLevel, typer.Option(case_sensitive=False, help="Log level.")
    ] = LogLevel.INFO,
    log_format: Annotated[
        LogFormat, typer.Option(case_sensitive=False, help="text or json.")
    ] = LogFormat.TEXT,
    connect_timeout: Annotated[
        float | None,
        typer.Option(
            "--connect-timeout",
            min=0,
            metavar="SECONDS",
            help="How long to wait at start for a store that cannot be reached, trying again "
            "with backoff (default: forever for run, work and serve; "
            f"{ONE_SHOT_CONNECT_TIMEOUT:g} s for the other commands).",
        ),
    ] = None,
) -> None:
    settings.app_spec = app
    settings.store = store
    settings.long_running = ctx.invoked_subcommand in LONG_RUNNING
    settings.connect_timeout = (
        connect_timeout
        if connect_timeout is not None
        else None
        if settings.long_running
        else ONE_SHOT_CONNECT_TIMEOUT
    )
    logs.configure(log_level.value, log_format.value)


# -- work --------------------------------------------------------------------


@cli.command()
def work(
    concurrency: Annotated[int, typer.Option(min=1, help="Job threads per process.")] = 4,
    processes: Annotated[
        int | None, typer.Option(min=1, help="Worker processes (for CPU-bound jobs).")
    ] = None,
    until_idle: Annotated[bool, typer.Option(help="Stop when no run is due.")] = False,
    jobs: Annotated[str | None, typer.Option(help="Comma-separated jobs to work on.")] = None,
    prefetch: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Runs claimed ahead of free threads. Default: what the threads get "
            "through in 0.5 s at the measured run time (none for long runs), up to 4,000.",
        ),
    ] = None,
    grace: Annotated[float, typer.Option(help="Seconds running jobs get on SIGTERM.")] = 30.0,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="Live progress view (done, failed, rate, ETA; logs below WARNING held back). "
            "Default: on when stderr is a terminal, else a progress log line every 30 s.",
        ),
    ] = None,
) -> None:
    """Claim and execute due runs until stopped (SIGTERM/SIGINT) or idle."""
    from ferryman.cli.progress import WorkProgress

    app = settings.app(need_jobs=True)
    served = jobs.split(",") if jobs else list(app.jobs)
    live = err.is_terminal if progress is None else progress
    view = WorkProgress(
        app, served, err, live=live, interval=LIVE_INTERVAL if live else LOG_INTERVAL
    )
    watching = progress is not False
    with logs.through_console(err) if live else contextlib.nullcontext():
        try:
            report = app.work(
                until_idle=until_idle,
                concurrency=concurrency,
                processes=processes,
                jobs=served,
                prefetch=prefetch,
                grace_seconds=grace,
                on_started=view.start if watching else None,
            )
        finally:
            view.stop()
    err.print(
        f"worked: {report.succeeded} succeeded, {report.retried} retried, {report.failed} failed, "
        f"{report.dead} dead, {report.lease_lost} lost their lease, {report.released} released"
        + (f", {report.timed_out} timed out" if report.timed_out else ""),
        highlight=False,
    )


@cli.command()
def run(
    concurrency: Annotated[int, typer.Option(min=1, help="Job threads.")] = 4,
    jobs: Annotated[str | None, typer.Option(help="Comma-separated jobs to work on.")] = None,
    prefetch: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Runs claimed ahead of free threads. Default: what the threads get "
            "through in 0.5 s at the measured run time (none for long runs), up to 4,000.",
        ),
    ] = None,
    grace: Annotated[float, typer.Option(help="Seconds running jobs get on SIGTERM.")] = 30.0,
    sensor_concurrency: Annotated[int, typer.Option(min=1, help="Sensor evaluations at once.")] = 8,
    serve: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Serve the dashboard and API too.")
    ] = True,
    host: cli_serve.HostOption = "127.0.0.1",
    port: cli_serve.PortOption = 8765,
    read_only: cli_serve.ReadOnlyOption = False,
) -> None:
    """The daemon: evaluate sensors when due, consume broker sources, and work on runs,
    until SIGTERM/SIGINT.

    With --serve (the default) the dashboard, the JSON API and /metrics are
    served from the same process, on 127.0.0.1:8765 unless told otherwise.
    If that port is taken (another daemon on this host), a warning says so
    and the daemon goes on without them.
    """
    app = settings.app(need_jobs=True)
    web = None
    if serve:
        web = cli_serve.start_beside_daemon(app, host=host, port=port, read_only=read_only)
    try:
        report = app.run(
            concurrency=concurrency,
            jobs=jobs.split(",") if jobs else None,
            prefetch=prefetch,
            grace_seconds=grace,
            sensor_concurrency=sensor_concurrency,
        )
    finally:
        if web is not None:
            web.stop()
        # Closing the store's connections can take a while (on SQLite the
        # last one checkpoints the write-ahead log into the database file):
        # done before the line below, so that "stopped" is true when printed.
        app.close()
    err.print(
        f"stopped: {report.succeeded} succeeded, {report.retried} retried, {report.failed} "
        f"failed, {report.dead} dead, {report.released} released",
        highlight=False,
    )


# -- status ------------------------------------------------------------------


@cli.command()
def status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Run counts per job and status, oldest due run, alive workers."""
    from rich.table import Table

    app = settings.app()
    summaries = app.status()
    workers = app.workers()
    if as_json:
        print_json({"jobs": summaries, "workers": workers})
        return
    table = Table(title="runs")
    table.add_column("job")
    for run_status in RunStatus:
        table.add_column(run_status.value, justify="right")
    table.add_column("oldest due", justify="right")
    for summary in summaries:
        name = (
            summary.job
            if summary.registered or settings.app_spec is None
            else (f"{summary.job} [yellow](not in this app)[/]")
        )
        table.add_row(
            name,
            *(str(summary.counts.get(s, 0)) for s in RunStatus),
            duration(summary.oldest_due_age),
        )
    out.print(table)
    unregistered = [s.job for s in summaries if not s.registered and s.counts.get(RunStatus.QUEUED)]
    if settings.app_spec is not None and unregistered:
        err.print(
            f"[yellow]warning:[/] queued runs of jobs this app does not register: "
            f"{', '.join(unregistered)}; no worker of this app will run them (renamed job?)",
            highlight=False,
        )
    out.print(f"alive workers: {len(workers)}", highlight=False)
    for worker in workers:
        out.print(f"  {worker.id} (pid {worker.pid}, up {age(worker.started_at)})", highlight=False)
        if worker.crashes:
            out.print(
                f"    [red]{worker.crashes} background crash{'es' if worker.crashes > 1 else ''}"
                f"[/], last: {escape(worker.last_crash or '?')}",
                highlight=False,
            )


@cli.command()
def workers(
    all_workers: Annotated[bool, typer.Option("--all", help="Include stopped workers.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Workers and when they were last seen."""
    from rich.table import Table

    found = settings.app().workers(include_stopped=all_workers)
    if as_json:
        print_json(found)
        return
    table = Table(title="workers")
    for column in ("id", "host", "pid", "started", "last seen", "state", "crashes"):
        table.add_column(column)
    for worker in found:
        state = "alive" if worker.alive else ("stopped" if worker.stopped_at else "lost")
        table.add_row(
            worker.id,
            worker.host,
            str(worker.pid),
            worker.started_at.isoformat(timespec="seconds"),
            f"{age(worker.last_seen_at)} ago",
            state,
            f"{worker.crashes} (last: {escape(worker.last_crash or '?')})"
            if worker.crashes
            else "0",
        )
    out.print(table)


# -- runs --------------------------------------------------------------------


def shown(app: App, run: Run) -> Run:
    """The run with the payload keys its job marks sensitive shown as ``***``."""
    job = app.jobs.get(run.job)
    if job is None or not job.sensitive:
        return run
    return dataclasses.replace(run, payload=redact(run.payload, job.sensitive))


@runs_cli.callback(invoke_without_command=True)
def runs_list(
    ctx: typer.Context,
    status_filter: Annotated[RunStatus | None, typer.Option("--status")] = None,
    job: Annotated[str | None, typer.Option("--job")] = None,
    key: Annotated[
        str | None, typer.Option("--key", help="The run with this run_key (of --job, or any job).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Newest N runs.")] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Newest runs, filtered by status and job; or the run with a run_key."""
    from rich.table import Table

    if ctx.invoked_subcommand is not None:
        return
    app = settings.app()
    if key is not None:
        keyed = app.store.find_runs_by_key(key, None if job is None else [job])
        if status_filter is not None:
            keyed = [run for run in keyed if run.status is status_filter]
        if not keyed and not as_json:
            fail(
                f"no run with run_key {key!r}{'' if job is None else f' of {job}'}", EXIT_NOT_FOUND
            )
    found = [
        shown(app, run)
        for run in (
            keyed if key is not None else app.get_runs(job=job, status=status_filter, limit=limit)
        )
    ]
    if as_json:
        print_json(found)
        return
    table = Table(title=f"runs keyed {key!r}" if key is not None else f"runs (newest {limit})")
    columns = ("id", "job", "run_key", "status", "prio", "due", "key", "attempt", "updated")
    for column in (*columns, "last error"):
        table.add_column(column, overflow="fold")
    for run in found:
        table.add_row(
            str(run.id),
            run.job,
            run.run_key,
            run.status.value,
            str(run.priority),
            due(run),
            run.concurrency_key or "",
            f"{run.attempt}/{run.max_attempts}",
            f"{age(run.updated_at)} ago",
            last_line(run.last_error),
        )
    out.print(table)


@runs_cli.command("show")
def runs_show(
    run_id: Annotated[int, typer.Argument(help="Run id.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """One run with its processing log and full last error."""
    from rich.table import Table

    app = settings.app()
    run = app.get_run(run_id)
    if run is None:
        fail(f"no run {run_id} in store", EXIT_NOT_FOUND)
    run = shown(app, run)
    events = app.get_run_events(run_id)
    parent, children = chain_links(events)
    if as_json:
        links = {"parent_run_id": parent, "child_run_ids": children}
        print_json({"run": run, "events": events, **links})
        return
    out.print(
        f"[bold]run {run.id}[/] {run.job} {run.run_key!r}: [bold]{run.status.value}[/] "
        f"attempt {run.attempt}/{run.max_attempts}",
        highlight=False,
    )
    queue = f"priority {run.priority}"
    if run.status is RunStatus.QUEUED:
        queue += f", due {due(run)}"
    if run.concurrency_key is not None:
        queue += f", concurrency key {run.concurrency_key!r}"
    out.print(queue, highlight=False, markup=False)
    out.print(f"payload: {json.dumps(run.payload)[:500]}", highlight=False, soft_wrap=True)
    if run.checkpoint is not None:
        out.print(f"checkpoint: {json.dumps(run.checkpoint)[:500]}", highlight=False)
    if parent is not None:
        out.print(f"requested by run {parent}", highlight=False)
    if children:
        out.print(f"requested runs: {', '.join(map(str, children))}", highlight=False)
    table = Table(title="processing log")
    for column in ("at", "event", "attempt", "worker", "token", "detail"):
        table.add_column(column, overflow="fold")
    for event in events:
        table.add_row(
            event.at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
            event.kind.value,
            str(event.attempt),
            event.worker_id or "",
            "" if event.lease_token is None else str(event.lease_token),
            json.dumps(event.detail) if event.detail else "",
        )
    out.print(table)
    if run.last_error:
        out.print("[bold]last error[/]")
        out.print(run.last_error, highlight=False, markup=False)


# -- db ----------------------------------------------------------------------


@db_cli.command("upgrade")
def db_upgrade() -> None:
    """Create or upgrade the store's tables to this version's schema."""
    from ferryman.store import upgrade as upgrade_store

    url = settings.store or (
        settings.app(connect=False).store_url if settings.app_spec else DEFAULT_STORE
    )
    before, after = upgrade_store(url)
    if before == (after,):
        out.print(f"store already at revision {after}", highlight=False)
    else:
        out.print(
            f"store upgraded from {', '.join(before) or 'nothing'} to {after}", highlight=False
        )


cli_sensors.register(cli, lambda: settings.app())
cli_transfers.register(cli, lambda: settings.app())
cli_serve.register(cli, lambda: settings.app())
cli_submit.register(cli, lambda: settings.app(need_jobs=True))
cli_download.register(cli, lambda: settings.app())
cli_runctl.register(cli, lambda: settings.app())
cli_sync.register(cli, lambda: settings.store or DEFAULT_STORE)
cli_prune.register(cli, lambda: settings.app())


def main() -> None:
    """Console-script entry point: every error is one line on stderr and an exit code."""
    cli_errors.run(cli)


__all__ = ["EXIT_NOT_FOUND", "EXIT_SCHEMA", "EXIT_UNAVAILABLE", "EXIT_USAGE", "cli", "main"]
