"""An app for tests that run ``ferryman work`` as a real process.

``hold`` blocks until a file named after its run key appears in
``FERRYMAN_TEST_GATE`` (a directory), so tests can catch a run mid-job
without guessing at timings; ``spin`` burns a little CPU; ``quits`` calls
``sys.exit()``, as some libraries do; ``stubborn`` ignores its timeout on its
first attempt (it sleeps through ``ctx.cancelled``, as a blocking call would).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import ferryman as fm

app = fm.App(lease_seconds=30)


@app.job
def hold(ctx: fm.JobContext, payload: object) -> None:
    gate = Path(os.environ["FERRYMAN_TEST_GATE"])
    (gate / f"{ctx.run_key}.started").write_text(str(os.getpid()))
    deadline = time.monotonic() + 60
    while not (gate / f"{ctx.run_key}.go").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the test never opened the gate")
        time.sleep(0.01)


@app.job
def spin(ctx: fm.JobContext, payload: dict[str, int]) -> None:
    digest = b""
    for _ in range(payload["rounds"]):
        digest = hashlib.sha256(digest).digest()


@app.job(max_attempts=2, backoff=fm.Backoff(base=0))
def quits(ctx: fm.JobContext, payload: object) -> None:
    sys.exit(3)


@app.job(timeout=0.5, max_attempts=3, backoff=fm.Backoff(base=0))
def stubborn(ctx: fm.JobContext, payload: object) -> None:
    if ctx.attempt == 1:
        time.sleep(120)  # a call that cannot be interrupted; only ending the process stops it
