"""``ferryman`` commands for S3 transfers: ``upload``, ``transfers``, ``transfers gc``.

:func:`register` adds them to the main Typer app. Exit codes follow
:mod:`ferryman.cli.output`: 1 the file or bucket does not exist; 2 a usage
error (bad URL, size, duration); 6 S3 refused the request (access denied);
7 S3 cannot be reached; 8 the transfer failed (source missing or changed,
verification failed) and was recorded so. Errors are one line on stderr.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from ferryman.cli.output import (
    EXIT_NOT_FOUND,
    EXIT_S3_REFUSED,
    EXIT_S3_UNAVAILABLE,
    EXIT_TRANSFER_FAILED,
    EXIT_USAGE,
    age,
    err,
    fail,
    last_line,
    out,
    print_json,
)
from ferryman.errors import (
    ConfigurationError,
    S3Error,
    S3Unavailable,
    TransferConflict,
    TransferFailed,
)
from ferryman.model import Transfer, TransferStatus

# ferryman.transfer (SQLAlchemy, the store, boto3 on use) and Rich's tables and
# progress bars are imported by the commands that use them, not by --help.
if TYPE_CHECKING:
    from ferryman.app import App
    from ferryman.transfer import TransferProgress

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``12h``, ``7d``, ``2w``."""
    match = _DURATION.match(text)
    if match is None:
        raise ConfigurationError(f"bad duration {text!r}: expected e.g. 90s, 15m, 12h, 7d")
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match[2]]
    return timedelta(seconds=float(match[1]) * unit)


def _rate(transfer: Transfer) -> str:
    from ferryman.transfer.s3 import format_size

    end = transfer.finished_at or datetime.now(UTC)
    seconds = (end - transfer.created_at).total_seconds()
    if seconds <= 0 or not transfer.bytes_confirmed:
        return "-"
    return f"{format_size(transfer.bytes_confirmed / seconds)}/s"


def _bytes(transfer: Transfer) -> str:
    from ferryman.transfer.s3 import format_size

    total = transfer.total_size if transfer.total_size is not None else transfer.source_size
    done = format_size(transfer.bytes_confirmed)
    return f"{done} / {format_size(total)}" if total else done


class _Bar:
    """A Rich progress bar on a terminal; nothing otherwise."""

    def __init__(self, label: str, enabled: bool) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.enabled = enabled
        self._lock = threading.Lock()
        self._task: Any = None
        self.last: TransferProgress | None = None
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err,
            disable=not enabled,
        )
        self._label = label

    def __enter__(self) -> _Bar:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def __call__(self, update: TransferProgress) -> None:
        from ferryman.transfer.s3 import format_size

        with self._lock:
            if self.last is None and update.resumed_bytes and not update.done:
                err.print(
                    f"resuming transfer {update.transfer_id} from "
                    f"{format_size(update.resumed_bytes)}",
                    highlight=False,
                )
            self.last = update
            if self._task is None:
                self._task = self._progress.add_task(
                    self._label, total=update.total, completed=update.resumed_bytes
                )
            self._progress.update(self._task, completed=update.bytes_confirmed, total=update.total)


# The options of ``upload``, named here so that the command reads as a list.
PartSizeOption = Annotated[
    str | None, typer.Option(help="Part size, e.g. 8MiB (default: automatic).")
]
FollowOption = Annotated[
    bool, typer.Option(help="Upload a growing file; finish when it stops changing.")
]
StableForOption = Annotated[
    float, typer.Option(help="--follow: seconds unchanged before finishing.")
]
DoneFileOption = Annotated[
    Path | None, typer.Option(help="--follow: finish once this file exists instead.")
]
MetadataOption = Annotated[
    str | None, typer.Option(help="JSON object for the sidecar (implies --sidecar).")
]
SidecarOption = Annotated[
    bool, typer.Option(help="Write <key>.meta.json after the object is verified.")
]
RestartOption = Annotated[
    bool, typer.Option(help="Upload afresh if the file changed under a confirmed part.")
]
FileSha256Option = Annotated[
    bool,
    typer.Option(
        help="Record the whole file's SHA-256 (one more pass over its bytes); "
        "the object is verified by its parts' checksums either way."
    ),
]


def register(cli: typer.Typer, load_app: Callable[[], App]) -> None:
    """Add ``upload`` and ``transfers`` to ``cli``; ``load_app`` gives the App the options name."""
    transfers_cli = typer.Typer(help="S3 transfers: list them, abort orphaned uploads.")
    cli.add_typer(transfers_cli, name="transfers")
    _add_upload(cli, load_app)
    _add_transfer_commands(transfers_cli, load_app)


def _add_upload(cli: typer.Typer, load_app: Callable[[], App]) -> None:
    @cli.command("upload")
    def upload_command(
        path: Annotated[Path, typer.Argument(help="Local file to upload.")],
        url: Annotated[str, typer.Argument(help="Destination, s3://bucket/key.")],
        part_size: PartSizeOption = None,
        concurrency: Annotated[int, typer.Option(min=1, help="Parts in flight at once.")] = 4,
        follow: FollowOption = False,
        stable_for: StableForOption = 10.0,
        done_file: DoneFileOption = None,
        metadata: MetadataOption = None,
        sidecar: SidecarOption = False,
        restart_on_change: RestartOption = False,
        file_sha256: FileSha256Option = True,
        retries: Annotated[int, typer.Option(min=1, help="Attempts per S3 request.")] = 10,
        as_json: Annotated[
            bool, typer.Option("--json", help="Print the transfer as JSON.")
        ] = False,
    ) -> None:
        """Upload PATH to s3://bucket/key, resumably: run it again after a crash to continue."""
        from ferryman.transfer import parse_size, upload

        user_metadata = _metadata(metadata)
        _check_source(path, follow=follow, load_app=load_app)
        with _exit_codes():
            size = parse_size(part_size) if part_size is not None else None
            app = load_app()
            bar = _Bar(path.name, enabled=err.is_terminal and not as_json)
            with bar:
                transfer = upload(
                    path,
                    url,
                    part_size=size,
                    concurrency=concurrency,
                    follow=follow,
                    stable_for=stable_for,
                    done_file=done_file,
                    metadata=user_metadata,
                    sidecar=sidecar or user_metadata is not None,
                    file_sha256=file_sha256,
                    on_change="restart" if restart_on_change else "fail",
                    store=app,
                    retries=retries,
                    progress=bar,
                )
        if as_json:
            print_json(transfer)
        else:
            _print_uploaded(transfer, bar)


def _add_transfer_commands(transfers_cli: typer.Typer, load_app: Callable[[], App]) -> None:
    @transfers_cli.callback(invoke_without_command=True)
    def transfers_list(
        ctx: typer.Context,
        status: Annotated[TransferStatus | None, typer.Option("--status")] = None,
        limit: Annotated[int, typer.Option(min=1, help="Newest N transfers.")] = 50,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Newest transfers: status, bytes, rate, age, error."""
        if ctx.invoked_subcommand is not None:
            return
        found = load_app().store.list_transfers(status=status, limit=limit)
        if as_json:
            print_json(found)
            return
        from rich.table import Table

        table = Table(title=f"transfers (newest {limit})")
        for column in ("id", "source", "object", "status", "bytes", "rate", "age", "error"):
            table.add_column(column, overflow="fold")
        for transfer in found:
            table.add_row(
                str(transfer.id),
                escape(transfer.source_path),
                escape(transfer.uri),
                transfer.status.value + (" (following)" if transfer.follow else ""),
                _bytes(transfer),
                _rate(transfer),
                age(transfer.created_at),
                escape(last_line(transfer.error)),
            )
        out.print(table)

    @transfers_cli.command("gc")
    def transfers_gc(
        prefix: Annotated[
            list[str], typer.Option("--prefix", help="s3://bucket/prefix to clean (repeatable).")
        ],
        older_than: Annotated[str, typer.Option(help="Only uploads older than this.")] = "7d",
        dry_run: Annotated[bool, typer.Option(help="List, do not abort.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Abort multipart uploads under the prefixes that no active transfer owns."""
        from ferryman.transfer.janitor import gc_uploads

        with _exit_codes():
            cutoff = parse_duration(older_than)
            found = gc_uploads(load_app().store, prefix, older_than=cutoff, dry_run=dry_run)
        if as_json:
            print_json(found)
            return
        verb = "would abort" if dry_run else "aborted"
        for upload_found in found:
            out.print(
                f"{verb} {upload_found.upload_id} s3://{upload_found.bucket}/{upload_found.key} "
                f"(started {upload_found.initiated.isoformat(timespec='seconds')})",
                highlight=False,
            )
        out.print(f"{verb} {len(found)} orphaned uploads", highlight=False)


@contextmanager
def _exit_codes() -> Iterator[None]:
    """Transfer and S3 errors as one line on stderr and the exit code the module lists."""
    try:
        yield
    except TransferFailed as exc:
        fail(str(exc), EXIT_TRANSFER_FAILED)
    except S3Unavailable as exc:
        fail(str(exc), EXIT_S3_UNAVAILABLE)
    except S3Error as exc:
        fail(str(exc), EXIT_NOT_FOUND if exc.code == "NoSuchBucket" else EXIT_S3_REFUSED)
    except (TransferConflict, ConfigurationError) as exc:
        fail(str(exc), EXIT_USAGE)


def _metadata(metadata: str | None) -> dict[str, Any] | None:
    """``--metadata``: a JSON object, or a usage error."""
    if metadata is None:
        return None
    try:
        user_metadata = json.loads(metadata)
    except ValueError as exc:
        fail(f"--metadata is not JSON: {exc}", EXIT_USAGE)
    if not isinstance(user_metadata, dict):
        fail("--metadata must be a JSON object", EXIT_USAGE)
    return user_metadata


def _check_source(path: Path, *, follow: bool, load_app: Callable[[], App]) -> None:
    """A usage error for a directory, not found for a file that is not there."""
    if not path.exists() and not follow:
        # A transfer of a file that vanished is still resumed, to record the failure.
        app = load_app()
        if not any(
            t.source_path == str(path.absolute())
            for t in app.store.list_transfers(status=TransferStatus.ACTIVE)
        ):
            fail(f"no file {path}", EXIT_NOT_FOUND)
    if path.is_dir():
        fail(f"{path} is a directory; upload takes one file", EXIT_USAGE)


def _print_uploaded(transfer: Transfer, bar: _Bar) -> None:
    from ferryman.transfer.s3 import format_size

    resumed = bar.last.resumed_bytes if bar.last is not None else 0
    how = f", resumed from {format_size(resumed)}" if resumed else ""
    digest = f"sha256 {transfer.sha256}, " if transfer.sha256 else ""
    out.print(
        f"uploaded {escape(transfer.uri)}: {format_size(transfer.total_size or 0)} in "
        f"{transfer.parts_confirmed} parts{how}; {digest}"
        f"verified by {transfer.verified_by} (transfer {transfer.id})",
        highlight=False,
        soft_wrap=True,
    )


__all__ = ["parse_duration", "register"]
