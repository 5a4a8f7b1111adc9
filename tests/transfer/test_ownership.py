"""Who may write a transfer: one upload call at a time, per run attempt, not per process.

Two runs of one worker process that upload to the same key (a file changed
while its previous version was still uploading) must not take each other's
transfer: the second gets :class:`~ferryman.TransferConflict`, an ordinary
retryable failure, and the first carries on with its lease and transfer
untouched. Against a moto S3 server on loopback, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import ferryman as fm
from tests.helpers import wait_until
from tests.s3_fixtures import s3_bucket, s3_client, s3_endpoint, s3_server
from tests.transfer.support import MiB, file_sha256, object_sha256, write_random

__all__ = ["s3_bucket", "s3_client", "s3_endpoint", "s3_server"]  # fixtures used here

TERMINAL = {fm.RunStatus.SUCCEEDED, fm.RunStatus.FAILED, fm.RunStatus.DEAD}


def work_until_settled(app: fm.App, timeout: float = 120.0) -> list[Any]:
    """Run the worker (two job threads) until every run is terminal; its reports."""
    reports = []
    deadline = datetime.now(UTC).timestamp() + timeout

    def settled_or_due() -> bool:
        runs = app.get_runs()
        now = datetime.now(UTC)
        return all(r.status in TERMINAL for r in runs) or any(
            (r.status is fm.RunStatus.QUEUED and r.available_at <= now)
            or (r.lease_expires_at is not None and r.lease_expires_at <= now)
            for r in runs
            if r.status not in TERMINAL
        )

    while not all(r.status in TERMINAL for r in app.get_runs()):
        assert datetime.now(UTC).timestamp() < deadline, app.get_runs()
        reports.append(app.work(until_idle=True, concurrency=2, handle_signals=False))
        wait_until(settled_or_due, timeout=timeout, what="a run due again")
    return reports


def test_two_runs_of_one_worker_uploading_one_key_do_not_take_each_other_s_transfer(
    tmp_path: Path,
    make_app: type[fm.App],
    s3_client: Any,
    s3_bucket: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = write_random(tmp_path / "readings.bin", 12 * MiB, seed=1)
    url = f"s3://{s3_bucket}/outbox/readings.bin"
    app = make_app(lease_seconds=5)
    first_version_sent = threading.Event()
    second_version_tried = threading.Event()

    def hold_the_first_version(update: fm.transfer.TransferProgress) -> None:
        # Called as the last part's row commits: every part of the first version
        # is confirmed, the object not yet completed; the transfer is active,
        # held by this run's upload.
        if update.parts_confirmed == 3 and not first_version_sent.is_set():
            first_version_sent.set()
            assert second_version_tried.wait(60)

    @app.job(max_attempts=20, backoff=fm.Backoff(base=0.2, factor=2.0, max=1.0))
    def ship(ctx: fm.JobContext, payload: dict[str, int]) -> None:
        first_try = ctx.attempt == 1
        version = payload["version"]
        if version == 2 and first_try:
            assert first_version_sent.wait(60)
            write_random(source, 11 * MiB, seed=2)  # a new version lands while the old uploads
        try:
            fm.transfer.upload(
                source,
                url,
                part_size=5 * MiB,
                concurrency=1,
                ctx=ctx,
                progress=hold_the_first_version if version == 1 and first_try else None,
            )
        finally:
            if version == 2 and first_try:
                second_version_tried.set()

    app.submit("ship", *[fm.RunRequest(f"v{n}", {"version": n}) for n in (1, 2)])
    with caplog.at_level(logging.WARNING):
        reports = work_until_settled(app)

    assert [r.lease_lost for r in reports] == [0] * len(reports)
    assert not [r for r in caplog.records if "lease lost" in r.getMessage()]
    first, second = sorted(app.get_runs(), key=lambda r: r.run_key)
    assert (first.status, second.status) == (fm.RunStatus.SUCCEEDED,) * 2
    first_events = app.get_run_events(first.id)
    assert fm.RunEventKind.LEASE_EXPIRED not in [e.kind for e in first_events]
    # The first version's attempt ended on its own terms: the file changed under it.
    [first_retry, *_] = [e for e in first_events if e.kind is fm.RunEventKind.RETRY_SCHEDULED]
    assert "source_changed" in first_retry.detail["error"]
    # The second version was refused the object while the first held it.
    second_events = app.get_run_events(second.id)
    [second_retry, *_] = [e for e in second_events if e.kind is fm.RunEventKind.RETRY_SCHEDULED]
    assert "TransferConflict" in second_retry.detail["error"]
    assert fm.RunEventKind.LEASE_EXPIRED not in [e.kind for e in second_events]

    transfers = app.store.list_transfers()
    assert [t.status for t in transfers if t.status is fm.TransferStatus.ACTIVE] == []
    newest = transfers[0]
    assert newest.status is fm.TransferStatus.SUCCEEDED and newest.verified_by
    assert newest.sha256 == file_sha256(source)
    assert object_sha256(s3_client, s3_bucket, "outbox/readings.bin") == file_sha256(source)
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
