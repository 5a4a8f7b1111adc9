"""``ferryman download``: an S3 object to a local file, resumably.

:func:`register` adds the command to the main Typer app. Exit codes follow
:mod:`ferryman.cli.output`: 1 the object or bucket does not exist; 2 a usage
error (bad URL, destination, another download writing DEST); 6 S3 refused
the request; 7 S3 cannot be reached (run again to resume); 8 the download
failed and was recorded so (the object changed since it began, or its bytes
did not match its checksum), DEST untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from ferryman.cli.output import (
    EXIT_NOT_FOUND,
    EXIT_S3_REFUSED,
    EXIT_S3_UNAVAILABLE,
    EXIT_TRANSFER_FAILED,
    EXIT_USAGE,
    err,
    fail,
    out,
    print_json,
)
from ferryman.cli.transfers import _Bar as ProgressBar
from ferryman.errors import (
    ConfigurationError,
    S3Error,
    S3Unavailable,
    TransferConflict,
    TransferFailed,
)

if TYPE_CHECKING:  # ferryman.transfer is imported by the command (see cli/main.py)
    from ferryman.app import App

_MISSING = frozenset({"NoSuchBucket", "NoSuchKey"})


def register(cli: typer.Typer, load_app: Callable[[], App]) -> None:
    """Add ``download`` to ``cli``; ``load_app`` gives the App (its store) the options name."""

    @cli.command("download")
    def download_command(
        url: Annotated[str, typer.Argument(help="The object, s3://bucket/key.")],
        dest: Annotated[
            Path, typer.Argument(help="Local file to write (or a directory: named after the key).")
        ],
        concurrency: Annotated[int, typer.Option(min=1, help="Ranges fetched at once.")] = 4,
        part_size: Annotated[
            str | None,
            typer.Option(help="Range size, e.g. 16MiB (default: the object's part size, or 8MiB)."),
        ] = None,
        version_id: Annotated[
            str | None, typer.Option(help="A version of the object (versioned buckets).")
        ] = None,
        fsync: Annotated[
            bool,
            typer.Option(
                help="Sync the file to disk before renaming it to DEST (a power cut cannot "
                "leave DEST partial); a kill never does either way."
            ),
        ] = True,
        retries: Annotated[int, typer.Option(min=1, help="Attempts per S3 request.")] = 10,
        as_json: Annotated[
            bool, typer.Option("--json", help="Print the download as JSON.")
        ] = False,
    ) -> None:
        """Download s3://bucket/key to DEST, resumably: run it again after a crash to continue.

        The object is pinned by its ETag: if it changes before the download
        completes, the download is refused (exit 8) instead of mixing versions.
        DEST appears only once every byte is there and verified.
        """
        from ferryman.transfer import download, parse_size
        from ferryman.transfer.s3 import format_size

        try:
            size = parse_size(part_size) if part_size is not None else None
            app = load_app()
            bar = ProgressBar(dest.name or url, enabled=err.is_terminal and not as_json)
            with bar:
                done = download(
                    url,
                    dest,
                    concurrency=concurrency,
                    part_size=size,
                    version_id=version_id,
                    fsync=fsync,
                    store=app,
                    retries=retries,
                    progress=bar,
                )
        except TransferFailed as exc:
            fail(str(exc), EXIT_TRANSFER_FAILED)
        except S3Unavailable as exc:
            fail(str(exc), EXIT_S3_UNAVAILABLE)
        except S3Error as exc:
            fail(str(exc), EXIT_NOT_FOUND if exc.code in _MISSING else EXIT_S3_REFUSED)
        except (TransferConflict, ConfigurationError) as exc:
            fail(str(exc), EXIT_USAGE)
        if as_json:
            print_json(done)
            return
        resumed = bar.last.resumed_bytes if bar.last is not None else 0
        how = f", resumed from {format_size(resumed)}" if resumed else ""
        digest = f"sha256 {done.sha256}, " if done.sha256 else ""
        out.print(
            f"downloaded {escape(done.uri)} to {escape(done.dest_path)}: "
            f"{format_size(done.size)}{how}; {digest}verified by {done.verified_by} "
            f"(download {done.id})",
            highlight=False,
            soft_wrap=True,
        )


__all__ = ["register"]
