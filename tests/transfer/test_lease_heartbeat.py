"""An upload whose lease can no longer be renewed stops, and says why.

The store database stops accepting connections while a followed upload
waits for its file to grow: renewals fail, and once they have failed for a
whole lease another upload may take the transfer over, so this one must stop
with the store's error instead of renewing in vain forever. PostgreSQL on
loopback (this test's own database), moto S3 server.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import ferryman as fm
from ferryman.store import Store
from tests.conftest import PG_ADMIN
from tests.helpers import wait_until
from tests.s3_fixtures import s3_bucket, s3_client, s3_endpoint, s3_server
from tests.transfer.support import MiB, transfer_row, write_random

__all__ = ["s3_bucket", "s3_client", "s3_endpoint", "s3_server"]  # fixtures used here


def allow_connections(pg_url: str, allowed: bool) -> None:
    """Open or close this test's database to new connections, dropping the current ones."""
    database = sa.make_url(pg_url).database
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(
                f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {str(allowed).lower()}'
            )
            if not allowed:
                conn.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :database AND pid <> pg_backend_pid()"
                    ),
                    {"database": database},
                )
    finally:
        admin.dispose()


def test_an_upload_stops_with_the_store_error_once_its_lease_lapses(
    tmp_path: Path, pg_url: str, s3_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    source = write_random(tmp_path / "growing.bin", 6 * MiB)
    outcome: list[object] = []

    def upload() -> None:
        try:
            outcome.append(
                fm.transfer.upload(
                    source,
                    f"s3://{s3_bucket}/growing.bin",
                    follow=True,
                    done_file=tmp_path / "never",
                    part_size=5 * MiB,
                    store=pg_url,
                    lease_seconds=1.5,
                )
            )
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=upload, daemon=True)
    with caplog.at_level(logging.WARNING, logger="ferryman.transfer"):
        thread.start()
        wait_until(
            lambda: (row := transfer_row(pg_url, source)) and row["parts_confirmed"] == 1,
            what="the first part, after which the upload waits for the file to grow",
        )
        allow_connections(pg_url, False)
        try:
            thread.join(timeout=30)
        finally:
            allow_connections(pg_url, True)
    assert not thread.is_alive(), "the upload went on without a lease"
    [error] = outcome
    assert isinstance(error, fm.StoreError), error
    assert any("could not be renewed" in r.getMessage() for r in caplog.records)
    row = transfer_row(pg_url, source)
    assert row is not None and row["status"] == "active"  # resumable by the next call


def test_follow_uploads_keep_their_lease_while_they_wait(
    tmp_path: Path, sqlite_url: str, s3_client: Any, s3_bucket: str
) -> None:
    Store(sqlite_url).close()  # created before the test reads it
    source = write_random(tmp_path / "growing.bin", 6 * MiB)
    done = tmp_path / "done"
    result: list[fm.Transfer] = []
    thread = threading.Thread(
        target=lambda: result.append(
            fm.transfer.upload(
                source,
                f"s3://{s3_bucket}/growing.bin",
                follow=True,
                done_file=done,
                part_size=5 * MiB,
                store=sqlite_url,
                lease_seconds=0.6,
            )
        ),
        daemon=True,
    )
    thread.start()

    def lease_once_one_part_is_confirmed() -> float:
        row = transfer_row(sqlite_url, source)
        if row is None or row["parts_confirmed"] < 1:
            return 0.0  # not yet
        return float(row["lease_expires_at"])

    first = wait_until(lease_once_one_part_is_confirmed, what="the first part")
    # Renewed several times over while the upload waits, never lapsing.
    wait_until(
        lambda: lease_once_one_part_is_confirmed() > first + 1.0,
        what="the lease renewed past its first expiry",
    )
    done.touch()
    thread.join(timeout=60)
    [transfer] = result
    assert transfer.status is fm.TransferStatus.SUCCEEDED and transfer.resumes == 0
