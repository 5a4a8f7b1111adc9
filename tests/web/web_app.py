"""The app the web tests serve: a job that fails until told not to, sensors of both kinds.

``add_transfer`` records an upload under way, through the store's own
transfer calls (the ones an upload makes), without S3.

Importable as ``tests.web.web_app:make_app(store)``; ``FLAKY_FIXED`` names a
file whose existence makes the ``flaky`` job succeed (the browser test
creates it before pressing retry).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import ferryman as fm
from ferryman.store import ConfirmedPart, NewTransfer

FLAKY_FIXED = "FERRYMAN_TEST_FLAKY_FIXED"


def make_app(store: str) -> fm.App:
    app = fm.App(store, lease_seconds=5.0)

    @app.job(sensitive=("password",))
    def load(ctx: fm.JobContext, payload: dict[str, object]) -> None:
        if payload.get("reject"):
            raise fm.Reject(f"record {payload.get('n')}: bad input")

    @app.job(max_attempts=1)
    def flaky(ctx: fm.JobContext, payload: dict[str, object]) -> None:
        marker = os.environ.get(FLAKY_FIXED)
        if marker is None or not Path(marker).exists():
            raise RuntimeError(f"upstream unavailable for {payload.get('n')}")

    @app.poll_sensor(job="load", interval=3600, backoff=fm.Backoff(base=1.0))
    def numbers(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
        n = int(cursor or 0) + 1
        return fm.SensorResult(run_requests=[fm.RunRequest(f"n-{n}", {"n": n})], cursor=str(n))

    @app.push_sensor(job="load")
    def inbox(ctx: fm.SensorContext, message: fm.Message) -> list[fm.RunRequest]:
        return [fm.RunRequest(f"msg-{message.message_id}", message.payload)]

    return app


def populate(app: fm.App) -> None:
    """Some history: succeeded, rejected and dead runs, evaluations of both sensors."""
    app.tick(force=True)
    app.tick(force=True)
    app.submit("load", fm.RunRequest("secret-1", {"n": 1, "password": "hunter2"}))
    app.submit("load", fm.RunRequest("bad-1", {"n": 2, "reject": True}))
    app.submit("flaky", fm.RunRequest("flaky-1", {"n": 3}))
    app.ingest("inbox", "m-1", {"n": 4})
    app.work(until_idle=True, concurrency=1, handle_signals=False)


MIB = 1024 * 1024


def add_folder_sensor(app: fm.App, folder: Path, files: int = 3) -> None:
    """A built-in folder sensor ``incoming`` over ``folder``, evaluated once on ``files`` files.

    Its clock runs 5 s ahead so that files just written count as stable.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(files):
        (folder / f"export-{number:03}.csv").write_text(f"row {number}\n")
    sensor = fm.sensors.folder(folder, "*.csv", clock=lambda: time.time() + 5)
    app.poll_sensor(job="load", interval=3600, name="incoming")(sensor)
    app.tick(["incoming"], force=True)


def add_transfer(
    app: fm.App, *, parts: int, source_size: int = 12 * MIB, crc32: bool = False
) -> int:
    """An active upload of ``source_size`` bytes with ``parts`` parts of 5 MiB confirmed
    (with SHA-256 checksums, as before 0.11, or ``crc32``)."""
    store = app.store
    opened = store.open_transfer(
        NewTransfer(
            source_path="/data/a.bin",
            bucket="bucket",
            key="a.bin",
            part_size=5 * MIB,
            follow=False,
            source_size=source_size,
            source_mtime=1.0,
            user_metadata_json=None,
            sidecar_key=None,
            run_id=None,
            checksum_algorithm="CRC32" if crc32 else "SHA256",
        ),
        owner="test:1",
        lease_seconds=30,
        run_lease=None,
        may_take_over=lambda transfer, now: False,
    )
    store.set_transfer_upload(opened.fence, "upload-1", 5 * MIB)
    for number in range(1, parts + 1):
        store.confirm_part(
            opened.fence,
            ConfirmedPart(
                part_number=number,
                start=(number - 1) * 5 * MIB,
                size=5 * MIB,
                etag=f"etag-{number}",
                sha256=None if crc32 else f"sha-of-part-{number}",
                crc32=f"crc-of-part-{number}" if crc32 else None,
            ),
            30,
        )
    return opened.transfer.id
