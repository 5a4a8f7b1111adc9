"""A worker SIGKILLed mid-upload: the retried run resumes the transfer under its new lease."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import ferryman as fm
from tests.helpers import wait_until
from tests.s3_servers import SeaweedServer, child_environment, seaweed, seaweed_bucket, seaweed_env
from tests.transfer.support import REPO, MiB, file_sha256, object_sha256, sends, write_random

__all__ = ["seaweed", "seaweed_bucket", "seaweed_env"]  # fixtures used here


def start_worker(store_url: str, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("ab") as output:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ferryman",
                "--app",
                "tests.transfer.job_app:app",
                "--store",
                store_url,
                "--log-level",
                "DEBUG",
                "work",
                "--concurrency",
                "1",
            ],
            cwd=REPO,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


@pytest.mark.crash
def test_a_killed_worker_s_upload_is_resumed_by_the_retried_run(
    tmp_path: Path, pg_url: str, seaweed_env: SeaweedServer, seaweed_bucket: str
) -> None:
    source = write_random(tmp_path / "f.bin", 40 * MiB)
    app = fm.App(pg_url, lease_seconds=3)
    app.job(name="ship")(lambda ctx, payload: None)
    app.submit(
        "ship", fm.RunRequest("f.bin", {"path": str(source), "url": f"s3://{seaweed_bucket}/f.bin"})
    )
    env = child_environment(seaweed_env)
    log = tmp_path / "workers.log"
    workers = [start_worker(pg_url, log, env)]
    try:

        def confirmed() -> int:
            found = app.store.list_transfers()
            return found[0].parts_confirmed if found else 0

        wait_until(lambda: confirmed() >= 2, timeout=60, what="two parts confirmed")
        workers[0].kill()
        workers[0].wait()
        before = Counter(sends(log.read_text()))
        workers.append(start_worker(pg_url, log, env))
        wait_until(
            lambda: app.get_runs()[0].status is fm.RunStatus.SUCCEEDED,
            timeout=120,
            what="the retried run to succeed",
        )
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.wait()
    (run,) = app.get_runs()
    (transfer,) = app.store.list_transfers()
    assert run.attempt == 2
    assert transfer.status is fm.TransferStatus.SUCCEEDED and transfer.run_id == run.id
    assert transfer.resumes == 1 and transfer.owner_token == 2
    after = Counter(sends(log.read_text()))
    resent = sum(count - 1 for count in after.values())
    assert set(after) == set(range(1, 9)) and resent <= 2, (before, after)
    client = seaweed_env.client()
    assert object_sha256(client, seaweed_bucket, "f.bin") == file_sha256(source)
    assert client.list_multipart_uploads(Bucket=seaweed_bucket).get("Uploads", []) == []
    app.close()
