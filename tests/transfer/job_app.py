"""An app whose job uploads a file with ``fm.transfer.upload(ctx=ctx)``, for worker crash tests.

A short lease lets a second worker take the run over soon after the first
is SIGKILLed.
"""

from __future__ import annotations

import ferryman as fm

app = fm.App(lease_seconds=3)


@app.job(max_attempts=5)
def ship(ctx: fm.JobContext, payload: dict[str, str]) -> None:
    fm.transfer.upload(
        payload["path"], payload["url"], part_size=5 * 1024 * 1024, concurrency=2, ctx=ctx
    )
