"""The live view of ``ferryman sync``: files and bytes done, rate, ETA, files in flight.

Imported by the command when it runs (Rich's progress bars and the transfer
package are not needed by ``ferryman --help``).
"""

from __future__ import annotations

import contextlib
import threading
import time

from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from ferryman.cli.output import err
from ferryman.model import RunStatus
from ferryman.supervise import supervised
from ferryman.transfer.s3 import format_size, log
from ferryman.transfer.sync import Sync

LIVE_INTERVAL = 0.5  # seconds between refreshes of the live view
LOG_INTERVAL = 10.0  # seconds between progress lines when not on a terminal


class SyncView:
    """Files done of total, bytes, rate, ETA and the files in flight, from the sync's tally.

    A live Rich view on a terminal; otherwise a progress line every
    :data:`LOG_INTERVAL` seconds. Polls on ``ferryman-sync-progress``; a
    failure to read the store is logged and the next poll tries again.
    """

    def __init__(self, sync: Sync, *, live: bool) -> None:
        self.sync = sync
        self.live = live
        self._stop = threading.Event()
        # Not restarted: after a crash (logged) the sync goes on without its display.
        self._thread = supervised("ferryman-sync-progress", self._poll, start=False)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[files]}"),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err,
            auto_refresh=False,
            disable=not live,
        )
        self._total = self._progress.add_task("sync", total=None, files="")
        self._files: dict[str, TaskID] = {}
        self._started = time.monotonic()

    def __enter__(self) -> SyncView:
        if self.live:
            self._progress.start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(Exception):  # a last refresh; the summary follows anyway
            self._update()
        if self.live:
            self._progress.stop()

    def _poll(self) -> None:
        interval = LIVE_INTERVAL if self.live else LOG_INTERVAL
        while not self._stop.wait(interval):
            try:
                line = self._update()
            except Exception as exc:  # a store hiccup must not stop the uploads
                log.warning("sync progress: could not read the store: %s", exc)
                continue
            if not self.live:
                log.info("%s", line)

    def _update(self) -> str:
        done, done_bytes, current = self.sync.tally.snapshot()
        queued_files, queued_bytes = self._queued()
        waiting = self.sync.sensor.last_report.waiting if self.sync.sensor.last_report else 0
        moving = sum(d for d, _ in current.values())
        total_files = done + len(current) + queued_files
        total_bytes = done_bytes + sum(size for _, size in current.values()) + queued_bytes
        files = f"{done}/{total_files} files" + (f", {waiting} waiting" if waiting else "")
        self._progress.update(
            self._total, completed=done_bytes + moving, total=total_bytes or None, files=files
        )
        for relpath in list(self._files):
            if relpath not in current:
                self._progress.remove_task(self._files.pop(relpath))
        for relpath, (sent, size) in current.items():
            if relpath not in self._files:
                self._files[relpath] = self._progress.add_task(
                    f"  {escape(relpath)}", total=size or None, files=""
                )
            self._progress.update(self._files[relpath], completed=sent, total=size or None)
        if self.live:
            self._progress.refresh()
        elapsed = max(time.monotonic() - self._started, 1e-9)
        rate = (done_bytes + moving) / elapsed
        left = max(total_bytes - done_bytes - moving, 0)
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        return (
            f"sync: {files}, {format_size(done_bytes + moving)} of {format_size(total_bytes)}, "
            f"{format_size(rate)}/s, ETA {eta}, uploading {len(current)}"
        )

    def _queued(self) -> tuple[int, int]:
        runs = self.sync.app.get_runs(job=self.sync.target.name, status=RunStatus.QUEUED)
        return len(runs), sum(int((run.payload or {}).get("size", 0)) for run in runs)


__all__ = ["SyncView"]
