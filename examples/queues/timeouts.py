"""Timeouts: a job that gives each attempt two seconds and stops when told.

``fetch_rates`` works in small steps and looks at ``ctx.cancelled`` between
them: past ``ctx.deadline`` (two seconds after the claim, on the database's
clock), or once an operator cancels the run (``ferryman cancel``), the worker
ends the attempt and the job stops. A timed-out attempt fails with "timed out
after 2s" and is retried after the job's backoff; nothing it commits after
its deadline counts. ``steps`` in the payload says how long an attempt takes.

The store is ``FERRYMAN_STORE`` (default ``sqlite:///queues.db`` in the
current directory). From the repository root::

    python -m examples.queues.timeouts            # submit a quick run and a slow one
    ferryman --app examples.queues.timeouts:app work --until-idle

See docs/how-to/queues.md.
"""

from __future__ import annotations

import os
import time
from typing import Any

import ferryman as fm

app = fm.App(os.environ.get("FERRYMAN_STORE", "sqlite:///queues.db"))

STEP = 0.1  # seconds per step of work


@app.job(timeout=2.0, max_attempts=2, backoff=fm.Backoff(base=0.5))
def fetch_rates(ctx: fm.JobContext, payload: dict[str, Any]) -> None:
    for _ in range(payload["steps"]):
        if ctx.cancelled:  # past ctx.deadline, or cancelled: stop, nothing more commits
            return
        time.sleep(STEP)  # one step of the work
    ctx.logger.info("done before %s", ctx.deadline)


if __name__ == "__main__":
    app.submit(
        "fetch_rates",
        fm.RunRequest("quick", {"steps": 3}),
        fm.RunRequest("slow", {"steps": 100}),  # 10 s: more than its 2 s
    )
