"""A worker SIGKILLed mid-upload: the retried run resumes the transfer under its new lease."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import ferryman as fm
from tests.crash.support import report_storm, storm_setting, storm_store
from tests.helpers import wait_until
from tests.s3_servers import SeaweedServer, child_environment, seaweed, seaweed_bucket, seaweed_env
from tests.transfer.support import REPO, MiB, file_sha256, object_sha256, sends, write_random

__all__ = ["seaweed", "seaweed_bucket", "seaweed_env"]  # fixtures used here

# make soak sets FERRYMAN_STORM_ITERATIONS and _STORE to repeat the kill.
ITERATIONS = int(storm_setting("ITERATIONS", 1))
TIMEOUT = 300 * ITERATIONS  # the suite's default per kill
IN_FLIGHT = 2  # the job's upload concurrency: parts a kill may leave unconfirmed


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
@pytest.mark.timeout(TIMEOUT)
def test_a_killed_worker_s_upload_is_resumed_by_the_retried_run(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    seaweed_env: SeaweedServer,
    seaweed_bucket: str,
) -> None:
    store_url = storm_store(request, "postgres")
    app = fm.App(store_url, lease_seconds=3)
    app.job(name="ship")(lambda ctx, payload: None)
    kills = verified = 0
    resent_per_crash: list[int] = []
    try:
        for iteration in range(ITERATIONS):
            kills += 1  # each iteration kills one worker mid-upload
            resent = kill_one_upload(
                app, store_url, f"f-{iteration}.bin", tmp_path, seaweed_env, seaweed_bucket
            )
            verified += 1
            resent_per_crash.append(resent)
            assert resent <= IN_FLIGHT, f"{resent} parts sent again after the kill"
    finally:
        # An object not verified is lost; a part re-sent beyond those in flight
        # at the kill was sent twice.
        report_storm(
            "upload jobs",
            store_url,
            kills=kills,
            unit="objects",
            items=kills,
            lost=kills - verified,
            duplicated=sum(max(0, n - IN_FLIGHT) for n in resent_per_crash),
        )
        app.close()


def run_status(app: fm.App, run_id: int) -> fm.RunStatus | None:
    run = app.get_run(run_id)
    return None if run is None else run.status


def kill_one_upload(
    app: fm.App, store_url: str, name: str, tmp_path: Path, seaweed: SeaweedServer, bucket: str
) -> int:
    """A run uploads ``name``; its worker is killed after two parts, another finishes it.

    Returns how many parts were sent more than once.
    """
    source = write_random(tmp_path / name, 40 * MiB)
    (run_id,) = app.submit(
        "ship", fm.RunRequest(name, {"path": str(source), "url": f"s3://{bucket}/{name}"})
    ).run_ids
    env = child_environment(seaweed)
    log = tmp_path / f"{name}.log"
    workers = [start_worker(store_url, log, env)]
    try:

        def confirmed() -> int:
            found = app.store.list_transfers(run_id=run_id)
            return found[0].parts_confirmed if found else 0

        wait_until(lambda: confirmed() >= 2, timeout=60, what="two parts confirmed")
        workers[0].kill()
        workers[0].wait()
        before = Counter(sends(log.read_text()))
        workers.append(start_worker(store_url, log, env))
        wait_until(
            lambda: run_status(app, run_id) is fm.RunStatus.SUCCEEDED,
            timeout=120,
            what="the retried run to succeed",
        )
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.wait()
    run = app.get_run(run_id)
    (transfer,) = app.store.list_transfers(run_id=run_id)
    assert run is not None and run.attempt == 2
    assert transfer.status is fm.TransferStatus.SUCCEEDED
    assert transfer.resumes == 1 and transfer.owner_token == 2
    after = Counter(sends(log.read_text()))
    assert set(after) == set(range(1, 9)), (before, after)
    client = seaweed.client()
    assert object_sha256(client, bucket, name) == file_sha256(source)
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    return sum(count - 1 for count in after.values())
