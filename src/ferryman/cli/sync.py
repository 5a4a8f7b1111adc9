"""``ferryman sync``: upload a folder to an S3 prefix, once or as a daemon.

:func:`register` adds the command to the main Typer app. The work is done by
:mod:`ferryman.transfer.sync` (a folder sensor and an upload job); this module
draws the progress and reads the options. Exit codes, after the summary:

* 0 — every file found was uploaded (or was already there); files that
  vanished, or changed and were uploaded again as their newer version, are
  reported but are not failures;
* 2 — a usage error (bad URL, folder, option);
* 8 — some files could not be uploaded (listed on stderr with the reason:
  verification failed, S3 refused them, attempts exhausted);
* 130 — stopped by SIGINT/SIGTERM; run it again to resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from ferryman import logs
from ferryman.cli import serve as cli_serve
from ferryman.cli.output import (
    EXIT_TRANSFER_FAILED,
    EXIT_USAGE,
    err,
    fail,
    out,
    print_json,
)
from ferryman.cli.transfers import parse_duration
from ferryman.errors import ConfigurationError

# The transfer package (SQLAlchemy, the store) and the live view (Rich's
# progress bars) are imported by the command, not by ``ferryman --help``.
if TYPE_CHECKING:
    from ferryman.app import App
    from ferryman.transfer.sync import Sync, SyncResult, SyncTarget

EXIT_INTERRUPTED = 130


def _seconds(text: str, what: str) -> float:
    """``5``, ``5s``, ``2m`` ... as seconds."""
    if not text.strip():
        raise ConfigurationError(f"{what} is empty")
    try:
        return float(text)
    except ValueError:
        return parse_duration(text).total_seconds()


@contextlib.contextmanager
def _interruptible(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` and interrupt the worker as Ctrl-C does."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        stop.set()
        raise KeyboardInterrupt

    saved = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _summary(target: SyncTarget, result: SyncResult, seconds: float) -> None:
    from ferryman.transfer.s3 import format_size

    rate = f", {format_size(result.uploaded_bytes / seconds)}/s" if seconds > 0 else ""
    waiting = f", {result.waiting} waiting for their marker" if result.waiting else ""
    out.print(
        f"synced {escape(str(target.root))} to {escape(target.url)}: {result.uploaded} uploaded "
        f"({format_size(result.uploaded_bytes)} in {seconds:.1f}s{rate}), "
        f"{result.already} already there{waiting}",
        highlight=False,
        soft_wrap=True,
    )
    for problem in result.problems:
        kind = "failed" if problem in result.failures else "skipped"
        err.print(
            f"{kind}: {escape(problem.relpath)}: {problem.reason}: {escape(problem.detail)}",
            highlight=False,
            soft_wrap=True,
        )


def register(cli: typer.Typer, store_of: Callable[[], str]) -> None:
    """Add ``sync`` to ``cli``; ``store_of`` gives the store URL the global options name."""

    @cli.command("sync")
    def sync_command(
        folder: Annotated[Path, typer.Argument(help="The folder to upload (recursively).")],
        url: Annotated[str, typer.Argument(help="Where to: s3://bucket or s3://bucket/prefix.")],
        watch: Annotated[
            bool, typer.Option(help="Keep watching: the daemon, dashboard included.")
        ] = False,
        stable_for: Annotated[
            str, typer.Option(help="A file unchanged this long is complete (e.g. 5s, 2m).")
        ] = "5s",
        done_suffix: Annotated[
            str | None,
            typer.Option(help="A file is complete once <file><suffix> exists (e.g. .done)."),
        ] = None,
        include: Annotated[
            list[str] | None,
            typer.Option(help="Only files matching this glob (repeatable; '/' matches paths)."),
        ] = None,
        exclude: Annotated[
            list[str] | None, typer.Option(help="Leave out files matching this glob (repeatable).")
        ] = None,
        concurrency: Annotated[int, typer.Option(min=1, help="Files uploaded at once.")] = 4,
        dry_run: Annotated[
            bool, typer.Option(help="List what would be uploaded; upload nothing.")
        ] = False,
        store: Annotated[
            str | None, typer.Option("--store", help="Store URL (overrides the global --store).")
        ] = None,
        lease_seconds: Annotated[
            float,
            typer.Option(
                min=1.0,
                help="A killed sync's files are taken up again after this long.",
            ),
        ] = 15.0,
        serve: Annotated[
            bool, typer.Option("--serve/--no-serve", help="--watch: serve the dashboard too.")
        ] = True,
        host: cli_serve.HostOption = "127.0.0.1",
        port: cli_serve.PortOption = 8765,
        as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
    ) -> None:
        """Upload every file of FOLDER to URL once per version, resumably; --watch keeps going.

        Each file version (path, size, mtime) is uploaded once, verified, with
        its sidecar <key>.meta.json; killed at any point and run again, it goes
        on where it stood. A file is taken once unchanged for --stable-for (or
        once its --done-suffix marker exists).
        """
        from ferryman.cli.sync_view import SyncView
        from ferryman.transfer.sync import SyncTarget, sync_app, sync_once

        try:
            target = SyncTarget.parse(
                folder,
                url,
                stable_for=_seconds(stable_for, "--stable-for"),
                done_suffix=done_suffix,
                include=tuple(include or ("*",)),
                exclude=tuple(exclude or ()),
            )
            sync = sync_app(
                target,
                store or store_of(),
                lease_seconds=lease_seconds,
                interval=min(max(target.stable_for / 2, 0.5), 5.0),
            )
        except ConfigurationError as exc:
            fail(str(exc), EXIT_USAGE)
        if dry_run:
            _dry_run(sync, as_json=as_json)
            return
        if watch:
            _watch(sync.app, concurrency=concurrency, serve=serve, host=host, port=port)
            return
        started = time.monotonic()
        stop = threading.Event()
        live = err.is_terminal and not as_json
        with (
            logs.through_console(err) if live else contextlib.nullcontext(),
            SyncView(sync, live=live),
            _interruptible(stop),
        ):
            try:
                result = sync_once(sync, concurrency=concurrency, stop=stop)
            except ConfigurationError as exc:
                sync.app.close()
                fail(str(exc), EXIT_USAGE)
        sync.app.close()
        if as_json:
            print_json({**dataclasses.asdict(result), "interrupted": stop.is_set()})
        else:
            _summary(target, result, time.monotonic() - started)
        if stop.is_set():
            err.print("interrupted: run the same command again to resume", highlight=False)
            raise typer.Exit(EXIT_INTERRUPTED)
        if result.failures:
            raise typer.Exit(EXIT_TRANSFER_FAILED)


def _dry_run(sync: Sync, *, as_json: bool) -> None:
    from ferryman.transfer.s3 import format_size
    from ferryman.transfer.sync import planned

    found, waiting = planned(sync)
    sync.app.close()
    if as_json:
        print_json({"files": found, "waiting": waiting})
        return
    for item in found:
        out.print(
            f"would upload {escape(str(item['relpath']))} ({format_size(int(item['size']))}) "
            f"to s3://{sync.target.bucket}/{escape(str(item['key']))}",
            highlight=False,
            soft_wrap=True,
        )
    total = sum(int(item["size"]) for item in found)
    note = f"; {waiting} still being written (or waiting for a marker)" if waiting else ""
    out.print(f"would upload {len(found)} files, {format_size(total)}{note}", highlight=False)


def _watch(app: App, *, concurrency: int, serve: bool, host: str, port: int) -> None:
    web: Any = None
    if serve:
        web = cli_serve.start_beside_daemon(app, host=host, port=port, read_only=False)
    try:
        report = app.run(concurrency=concurrency)
    finally:
        if web is not None:
            web.stop()
        app.close()
    err.print(
        f"stopped: {report.succeeded} files uploaded, {report.retried} retried, "
        f"{report.failed} failed, {report.dead} dead, {report.released} released",
        highlight=False,
    )


__all__ = ["register"]
