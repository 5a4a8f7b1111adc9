"""``ferryman run`` picks up a standalone upload that a SIGKILLed ``ferryman upload`` left."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ferryman.store import Store
from tests.helpers import wait_until
from tests.proxies import SlowProxy
from tests.s3_servers import SeaweedServer, child_environment, seaweed, seaweed_bucket, seaweed_env
from tests.transfer.support import (
    REPO,
    MiB,
    file_sha256,
    object_sha256,
    sends,
    start_upload,
    transfer_row,
    write_random,
)

__all__ = ["seaweed", "seaweed_bucket", "seaweed_env"]  # fixtures used here


def test_the_daemon_resumes_a_killed_upload_to_the_exact_object(
    tmp_path: Path, seaweed_env: SeaweedServer, seaweed_bucket: str
) -> None:
    client = seaweed_env.client()
    store_url = f"sqlite:///{tmp_path}/store.db"
    Store(store_url).close()  # created (and migrated) before the first poll reads it
    env = child_environment(seaweed_env)
    source = write_random(tmp_path / "recording.bin", 40 * MiB)
    url = f"s3://{seaweed_bucket}/recordings/recording.bin"
    log = tmp_path / "upload.log"

    # Through a slow link (two parts in flight at 4 MiB/s each): the kill lands
    # seconds before the last part could, however slowly this test polls.
    with SlowProxy(seaweed_env.endpoint, rate=64 * MiB, upload_rate=4 * MiB) as proxy:
        slow = child_environment(seaweed_env, AWS_ENDPOINT_URL=proxy.endpoint)
        upload = start_upload(
            store_url, log, slow, str(source), url, "--part-size", "5MiB", "--concurrency", "2"
        )
        try:
            wait_until(
                lambda: (
                    (row := transfer_row(store_url, source)) is not None
                    and row["bytes_confirmed"] >= 10 * MiB
                ),
                timeout=60,
                what="two parts to be confirmed",
            )
        finally:
            upload.kill()  # SIGKILL: the transfer stays active, its upload half done
            upload.wait(timeout=30)
    killed = transfer_row(store_url, source)
    assert killed is not None and killed["status"] == "active"
    assert killed["parts_confirmed"] >= 2

    daemon_log = tmp_path / "daemon.log"
    with daemon_log.open("ab") as output:
        daemon = subprocess.Popen(
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
                "run",
                "--no-serve",
            ],
            cwd=REPO,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: (
                (row := transfer_row(store_url, source)) is not None and row["status"] != "active"
            ),
            timeout=120,
            what="the daemon to finish the transfer",
        )
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)

    done = transfer_row(store_url, source)
    assert done is not None and done["status"] == "succeeded", daemon_log.read_text()[-3000:]
    assert done["resumes"] >= 1
    assert done["sha256"] == file_sha256(source)
    assert object_sha256(client, seaweed_bucket, "recordings/recording.bin") == file_sha256(source)
    assert client.list_multipart_uploads(Bucket=seaweed_bucket).get("Uploads", []) == []
    # The daemon sent at most what the killed run had not confirmed (8 parts in all).
    assert len(sends(daemon_log.read_text())) <= 8 - killed["parts_confirmed"]
