"""Two uploads of one object started at the same moment: one uploads, the other is refused.

On PostgreSQL both openers can find no active transfer and both insert one;
the partial unique index lets one through. The test forces that race every
time: it holds a SHARE lock on the transfers table, which lets both openers'
``SELECT ... FOR UPDATE`` pass and stops both ``INSERT``\\ s, waits until the
database shows both waiting, then lets them go. SQLite serialises writers, so
there the second opener simply finds the first one's row. Either way the
loser must get :class:`~ferryman.TransferConflict` — from the CLI, exit code
2 and one line — and the winner must finish a verified object.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import ferryman as fm
from ferryman.store import Store
from tests.helpers import wait_until
from tests.s3_fixtures import S3_ENVIRONMENT, s3_bucket, s3_client, s3_endpoint, s3_server
from tests.s3_servers import child_environment
from tests.transfer.support import MiB, file_sha256, object_sha256, start_upload, write_random

__all__ = ["s3_bucket", "s3_client", "s3_endpoint", "s3_server"]  # fixtures used here

WAITING_INSERTS = sa.text(
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND wait_event_type = 'Lock' AND query ILIKE 'INSERT INTO ferryman_transfers%'"
)


@contextlib.contextmanager
def inserts_held_back(store_url: str, openers: int) -> Iterator[None]:
    """On PostgreSQL, let the block start ``openers`` transfers that all reach their
    INSERT before any of them commits; elsewhere, just run the block."""
    if not store_url.startswith("postgresql"):
        yield
        return
    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as holder, engine.connect() as watcher:
            holder.exec_driver_sql("BEGIN")
            holder.exec_driver_sql("LOCK TABLE ferryman_transfers IN SHARE MODE")
            yield
            watcher.execution_options(isolation_level="AUTOCOMMIT")
            wait_until(
                lambda: watcher.execute(WAITING_INSERTS).scalar_one() == openers,
                timeout=60,
                what=f"{openers} transfers waiting to be inserted",
            )
            holder.exec_driver_sql("COMMIT")
    finally:
        engine.dispose()


def test_two_cli_uploads_of_one_key_at_once_the_loser_exits_2_with_one_line(
    tmp_path: Path, store_url: str, s3_endpoint: str, s3_client: Any, s3_bucket: str
) -> None:
    Store(store_url, create=True).close()
    source = write_random(tmp_path / "dump.bin", 6 * MiB)
    done = tmp_path / "dump.done"  # the winner holds the object until this exists
    url = f"s3://{s3_bucket}/dumps/dump.bin"
    env = {**child_environment(), **S3_ENVIRONMENT, "AWS_ENDPOINT_URL": s3_endpoint}
    args = (str(source), url, "--follow", "--done-file", str(done), "--part-size", "5MiB")
    uploads: list[subprocess.Popen[bytes]] = []
    try:
        with inserts_held_back(store_url, openers=2):
            for n in (1, 2):
                uploads.append(start_upload(store_url, tmp_path / f"upload-{n}.log", env, *args))
        [loser] = wait_until(
            lambda: [u for u in uploads if u.poll() is not None], timeout=60, what="a loser"
        )
        [winner] = [u for u in uploads if u is not loser]
        assert winner.poll() is None
        output = (tmp_path / f"upload-{uploads.index(loser) + 1}.log").read_text()
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        assert loser.returncode == 2, output
        assert len(errors) == 1 and "is being uploaded by" in errors[0], output
        assert "Traceback" not in output and "unique" not in output.lower(), output
        done.touch()
        assert winner.wait(timeout=60) == 0
    finally:
        for upload in uploads:
            upload.kill()
            upload.wait(timeout=30)
    assert object_sha256(s3_client, s3_bucket, "dumps/dump.bin") == file_sha256(source)
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def race_two_calls(store_url: str, source: Path, url: str, done: Path) -> list[object]:
    """Two ``upload`` calls, each with an App of its own as in two programs, started at
    once; the loser's outcome, then (once it is known, ``done`` created) the winner's."""
    outcomes: list[object] = []

    def upload() -> None:
        app = fm.App(store_url)
        try:
            outcomes.append(
                fm.transfer.upload(
                    source, url, follow=True, done_file=done, part_size=5 * MiB, store=app
                )
            )
        except Exception as exc:
            outcomes.append(exc)
        finally:
            app.close()

    threads = [threading.Thread(target=upload) for _ in range(2)]
    with inserts_held_back(store_url, openers=2):
        for thread in threads:
            thread.start()
    wait_until(lambda: outcomes, timeout=60, what="a loser")
    done.touch()
    for thread in threads:
        thread.join(timeout=60)
    return outcomes


def test_two_upload_calls_of_one_key_at_once_the_loser_gets_transfer_conflict(
    tmp_path: Path, store_url: str, s3_client: Any, s3_bucket: str
) -> None:
    Store(store_url, create=True).close()
    source = write_random(tmp_path / "dump.bin", 6 * MiB)
    url = f"s3://{s3_bucket}/dumps/dump.bin"
    for attempt in range(3):
        loser, winner = race_two_calls(store_url, source, url, tmp_path / f"{attempt}.done")
        assert isinstance(loser, fm.TransferConflict), loser
        assert isinstance(winner, fm.Transfer), winner
        assert winner.status is fm.TransferStatus.SUCCEEDED
        assert winner.sha256 == file_sha256(source)
        write_random(source, 6 * MiB)  # a new version for the next try: uploaded afresh
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
