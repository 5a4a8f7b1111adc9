"""``ferryman prune``: empty old finished runs, keeping their run keys.

See :mod:`ferryman.store.prune` for what a pruned run keeps and how the
batches leave workers running; ``ferryman run`` does the same daily when the
App sets ``prune_finished_after``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer

from ferryman.cli.output import EXIT_USAGE, fail, out, print_json
from ferryman.cli.transfers import parse_duration
from ferryman.errors import ConfigurationError

if TYPE_CHECKING:
    from ferryman.app import App

DEFAULT_BATCH = 500  # ferryman.store.prune.DEFAULT_BATCH, without importing the store for --help


def register(cli: typer.Typer, load_app: Callable[[], App]) -> None:
    """Add ``prune`` to ``cli``; ``load_app`` gives the App (its store) the options name."""

    @cli.command("prune")
    def prune(
        finished_before: Annotated[
            str,
            typer.Option(
                "--finished-before",
                help="Prune runs that finished longer ago than this: 90s, 15m, 12h, 30d, 2w.",
            ),
        ],
        batch: Annotated[
            int, typer.Option(min=1, max=10_000, help="Runs per transaction.")
        ] = DEFAULT_BATCH,
        dry_run: Annotated[bool, typer.Option(help="Count, change nothing.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the counts as JSON.")] = False,
    ) -> None:
        """Delete old finished runs' payloads, checkpoints and processing logs.

        Each run's row stays with its job, run_key, status and times, so
        submitting the same run_key again still creates nothing; a pruned
        run cannot be retried. Done in small transactions: workers keep
        claiming while it runs.
        """
        try:
            older_than = parse_duration(finished_before).total_seconds()
        except ConfigurationError as exc:
            fail(f"--finished-before: {exc}", EXIT_USAGE)
        result = load_app().store.prune_runs(older_than, batch=batch, dry_run=dry_run)
        if as_json:
            print_json(
                {
                    "runs": result.runs,
                    "events": result.events,
                    "payloads": result.payloads,
                    "finished_before": datetime.fromtimestamp(result.finished_before, UTC),
                    "dry_run": dry_run,
                }
            )
            return
        cutoff = datetime.fromtimestamp(result.finished_before, UTC).isoformat(timespec="seconds")
        verb = "would prune" if dry_run else "pruned"
        out.print(
            f"{verb} {result.runs} runs finished before {cutoff}: {result.events} processing "
            f"log rows, {result.payloads} payloads",
            highlight=False,
            soft_wrap=True,
        )


__all__ = ["register"]
