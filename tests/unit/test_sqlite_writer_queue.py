"""SQLite writers queue on a lock file; a writer killed while holding it frees it."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import ferryman as fm

HOLD_THE_QUEUE = """
import sys, time
import ferryman as fm
app = fm.App(sys.argv[1])
with app.store.transaction():
    print("holding", flush=True)
    time.sleep(600)
"""


def test_a_writer_killed_while_holding_the_queue_does_not_block_the_others(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    app = fm.App(url)
    app.job(name="noop")(lambda ctx, payload: None)
    try:
        app.submit("noop", fm.RunRequest("before", {}))  # creates the store and the lock file
        assert (tmp_path / "store.db-writer.lock").exists()
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_THE_QUEUE, url], stdout=subprocess.PIPE, text=True
        )
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline() == "holding\n"
            # While the other process holds the queue, a write here waits its turn.
            submitted = threading.Event()
            writer = threading.Thread(
                target=lambda: (app.submit("noop", fm.RunRequest("after", {})), submitted.set())
            )
            writer.start()
            assert not submitted.wait(0.5)
        finally:
            holder.kill()  # SIGKILL: no chance to unlock
            holder.wait(timeout=30)
            assert holder.stdout is not None
            holder.stdout.close()
        writer.join(timeout=30)
        assert submitted.is_set()
        assert {run.run_key for run in app.get_runs()} == {"before", "after"}
    finally:
        app.close()
