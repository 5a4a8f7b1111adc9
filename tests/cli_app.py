"""A small app the CLI tests load with ``--app tests.cli_app:app``."""

from __future__ import annotations

import ferryman as fm

app = fm.App()  # the tests point it at their store with --store


@app.job(max_attempts=2, backoff=fm.Backoff(base=0))
def convert(ctx: fm.JobContext, payload: dict[str, str]) -> None:
    if payload.get("kind") == "bad":
        raise fm.Reject(f"{ctx.run_key}: unsupported format {payload.get('format')!r}")
    if payload.get("kind") == "flaky" and ctx.attempt < 3:
        raise RuntimeError("converter crashed")


@app.job
def split(ctx: fm.JobContext, payload: dict[str, int]) -> None:
    """Ask for one ``convert`` run per part; they exist once this run has succeeded."""
    parts = [fm.RunRequest(f"{ctx.run_key}-{i}", {"kind": "good"}) for i in range(payload["n"])]
    ctx.submit("convert", *parts)
