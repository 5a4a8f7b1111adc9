"""``ferryman submit``: enqueue runs from the shell, one or a stream of them.

Every request is deduplicated by run_key, so submitting the same file twice
creates nothing the second time, and a submission cut short (a bad line, a
store that went away) is finished by running the same command again: what
was committed is reported as existing.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

import typer

from ferryman.cli.output import EXIT_USAGE, err, fail, out, print_json
from ferryman.errors import PayloadError, UnknownJob
from ferryman.model import RunRequest, SubmitResult
from ferryman.run_requests import run_request

if TYPE_CHECKING:  # the App and Rich's progress bars load when a command runs, not for --help
    from ferryman.app import App

BATCH = 1000  # requests per transaction


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{what} is not JSON: {exc}", EXIT_USAGE)


def _requests(lines: IO[str], options: dict[str, Any]) -> Iterator[RunRequest]:
    """One request per non-blank line (``options`` where it sets none); a bad line stops
    the stream, naming it."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PayloadError(f"line {number} is not JSON: {exc}") from None
        if isinstance(record, dict):
            record = {**options, **record}
        yield run_request(record, where=f"line {number}")


def submit_stream(
    app: App,
    job: str,
    requests: Iterator[RunRequest],
    *,
    batch: int,
    on_batch: Callable[[SubmitResult], None],
) -> tuple[int, int]:
    """Submit ``requests`` ``batch`` at a time (one transaction each); (created, existing)."""
    created = existing = 0
    pending: list[RunRequest] = []

    def flush() -> None:
        nonlocal created, existing
        result = app.submit(job, *pending)
        created += result.created
        existing += result.deduplicated
        pending.clear()
        on_batch(result)

    for request in requests:
        pending.append(request)
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    return created, existing


def _submit_one(app: App, job: str, request: RunRequest, as_json: bool) -> None:
    result = app.submit(job, request)
    run = app.get_run(result.run_ids[0])
    assert run is not None  # submitted a moment ago; runs are never deleted
    if as_json:
        print_json({"created": bool(result.created), "run": run})
    elif result.created:
        out.print(f"created run {run.id}: {run.job} {run.run_key!r}", highlight=False)
    else:
        out.print(
            f"run {run.id} already exists: {run.job} {run.run_key!r} is {run.status.value}; "
            "nothing submitted",
            highlight=False,
        )


def _submit_lines(
    app: App, job: str, source: str, batch: int, as_json: bool, options: dict[str, Any]
) -> None:
    from rich.progress import MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]submitting to {task.description}"),
        MofNCompleteColumn(),
        TextColumn("{task.fields[created]} created, {task.fields[existing]} existing"),
        console=err,
        disable=not err.is_terminal,
        transient=True,
    )
    task = progress.add_task(job, total=None, created=0, existing=0)
    seen = {"created": 0, "existing": 0}

    def advance(result: SubmitResult) -> None:
        seen["created"] += result.created
        seen["existing"] += result.deduplicated
        progress.update(
            task, advance=len(result.run_ids), created=seen["created"], existing=seen["existing"]
        )

    with ExitStack() as stack:
        lines: IO[str] = sys.stdin
        if source != "-":
            path = Path(source)
            if not path.is_file():
                fail(f"--jsonl {source}: no such file", EXIT_USAGE)
            lines = stack.enter_context(path.open(encoding="utf-8"))
        stack.enter_context(progress)
        try:
            created, existing = submit_stream(
                app, job, _requests(lines, options), batch=batch, on_batch=advance
            )
        except PayloadError as exc:
            submitted = seen["created"] + seen["existing"]
            fail(
                f"{exc} (the {submitted} requests before it were submitted: "
                f"{seen['created']} created; run the command again once it is fixed)",
                EXIT_USAGE,
            )
    if as_json:
        print_json({"job": job, "created": created, "existing": existing})
    else:
        out.print(
            f"submitted {created + existing} run requests to {job}: {created} created, "
            f"{existing} already existed",
            highlight=False,
        )


def register(cli: typer.Typer, load_app: Callable[[], App]) -> None:
    @cli.command("submit")
    def submit(
        job: Annotated[str, typer.Argument(help="The job to run.")],
        run_key: Annotated[
            str | None, typer.Argument(help="The run's key (one run per job and key).")
        ] = None,
        payload: Annotated[
            str | None, typer.Option("--payload", help="The run's payload, as JSON.")
        ] = None,
        jsonl: Annotated[
            str | None,
            typer.Option(
                "--jsonl",
                metavar="FILE|-",
                help='Many runs: one JSON object per line, {"run_key": ..., "payload": ...} '
                "(and any other RunRequest field); - reads stdin.",
            ),
        ] = None,
        priority: Annotated[
            int | None, typer.Option(help="Higher is claimed first (default: the job's).")
        ] = None,
        not_before: Annotated[
            str | None,
            typer.Option("--not-before", metavar="ISO|+10m", help="Not claimed before this time."),
        ] = None,
        batch: Annotated[
            int, typer.Option(min=1, help="Requests per transaction with --jsonl.")
        ] = BATCH,
        as_json: Annotated[bool, typer.Option("--json")] = False,
    ) -> None:
        """Enqueue runs of JOB: one by RUN_KEY, or many from --jsonl; existing keys are kept."""
        if (run_key is None) == (jsonl is None):
            fail("give either RUN_KEY (with --payload) or --jsonl FILE|-", EXIT_USAGE)
        if jsonl is not None and payload is not None:
            fail("--payload goes with RUN_KEY; with --jsonl each line has its payload", EXIT_USAGE)
        app = load_app()
        if job not in app.jobs:
            raise UnknownJob(job, list(app.jobs))
        # Queue options, given as RunRequest fields (see ferryman.run_requests).
        options = {"priority": priority, "not_before": not_before}
        options = {name: value for name, value in options.items() if value is not None}
        if run_key is not None:
            record = {"run_key": run_key, **options}
            if payload is not None:
                record["payload"] = _json(payload, "--payload")
            _submit_one(app, job, run_request(record, where="the request"), as_json)
        else:
            assert jsonl is not None
            _submit_lines(app, job, jsonl, batch, as_json, options)
