"""SIGKILL ``ferryman upload`` at random points against SeaweedFS; every re-run finishes.

Each iteration uploads a 30-60 MiB file in 5 MiB parts, kills the upload once
(at a random amount of confirmed bytes, sometimes before the first part,
sometimes during completion), re-runs the same command and checks: the
object's SHA-256 equals the file's, no multipart upload is left over, and the
re-run re-sent at most ``concurrency`` parts (counted from the parts each run
logged sending).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ferryman.store import Store
from tests.crash.support import report_storm, storm_setting, storm_store
from tests.helpers import wait_until
from tests.s3_servers import SeaweedServer, child_environment, seaweed, seaweed_bucket, seaweed_env
from tests.transfer.support import (
    MiB,
    file_sha256,
    object_sha256,
    sends,
    start_upload,
    transfer_row,
    write_random,
)

__all__ = ["seaweed", "seaweed_bucket", "seaweed_env"]  # fixtures used here

# make soak sets FERRYMAN_STORM_ITERATIONS, _SECONDS and _STORE for longer storms.
ITERATIONS = int(storm_setting("ITERATIONS", 20))
CONCURRENCY = 4
BUDGET_SECONDS = storm_setting("SECONDS", 240)  # the storm stops early (and says so)
TIMEOUT = 300 + (BUDGET_SECONDS - 240)  # the suite's default, plus what a longer storm adds


@dataclass
class Storm:
    """Where the uploads go, and what the storm has done so far."""

    tmp_path: Path
    store_url: str
    env: dict[str, str]
    client: Any
    bucket: str
    uploads: int = 0
    kills: int = 0
    verified: int = 0  # objects checked equal to their file after the re-run
    resent_per_crash: list[int] = field(default_factory=list)


@pytest.mark.crash
@pytest.mark.timeout(TIMEOUT)
def test_killed_uploads_resume_to_the_exact_object(
    request: pytest.FixtureRequest, seaweed_env: SeaweedServer, seaweed_bucket: str, tmp_path: Path
) -> None:
    rng = random.Random(5)
    store_url = storm_store(request, "sqlite")
    Store(store_url).close()  # created (and migrated) before the first poll reads it
    storm = Storm(
        tmp_path=tmp_path,
        store_url=store_url,
        env=child_environment(seaweed_env),
        client=seaweed_env.client(),
        bucket=seaweed_bucket,
    )
    started = time.monotonic()
    try:
        for iteration in range(ITERATIONS):
            assert time.monotonic() - started < BUDGET_SECONDS, f"storm too slow at {iteration}"
            upload_killed_once(storm, iteration, rng)
    finally:
        # An object the re-run did not verify is lost; a part re-sent beyond
        # those in flight at the kill was sent twice.
        report_storm(
            "uploads",
            store_url,
            kills=storm.kills,
            unit="objects",
            items=storm.uploads,
            lost=storm.uploads - storm.verified,
            duplicated=sum(max(0, n - CONCURRENCY) for n in storm.resent_per_crash),
        )
    leftover = storm.client.list_multipart_uploads(Bucket=seaweed_bucket).get("Uploads", [])
    assert leftover == []
    print(f"re-sent parts per crash: {storm.resent_per_crash}")


def upload_killed_once(storm: Storm, iteration: int, rng: random.Random) -> None:
    """Upload a file, SIGKILL the upload, upload again, and check the object."""
    storm.uploads += 1
    size = rng.randint(30 * MiB, 60 * MiB)
    source = write_random(storm.tmp_path / f"file-{iteration}.bin", size)
    key = f"storm/{iteration}.bin"
    parts = -(-size // (5 * MiB))
    args = (
        str(source),
        f"s3://{storm.bucket}/{key}",
        "--part-size",
        "5MiB",
        "--concurrency",
        str(CONCURRENCY),
    )
    log = storm.tmp_path / f"upload-{iteration}.log"
    # Where to kill: before any part, at a random fraction, or once all parts are in.
    target = rng.choice([0.0, rng.random(), rng.random(), 1.0])
    first = start_upload(storm.store_url, log, storm.env, *args)

    def reached() -> bool:
        if first.poll() is not None:
            return True
        row = transfer_row(storm.store_url, source)
        if target == 0.0:
            return row is not None
        return row is not None and row["bytes_confirmed"] >= target * size

    try:
        wait_until(reached, timeout=60, what=f"iteration {iteration} to reach {target:.2f}")
    finally:
        if first.poll() is None:
            first.kill()
            storm.kills += 1
        first.wait(timeout=30)
    sent_before = sends(log.read_text())

    second = start_upload(storm.store_url, log, storm.env, *args)
    assert second.wait(timeout=120) == 0, log.read_text()[-3000:]
    sent_all = sends(log.read_text())
    sent_after = sent_all[len(sent_before) :]
    counts = Counter(sent_all)
    resent = sum(count - 1 for count in counts.values())
    storm.resent_per_crash.append(resent)
    assert set(counts) == set(range(1, parts + 1))
    assert resent <= CONCURRENCY, (iteration, sent_before, sent_after)

    assert object_sha256(storm.client, storm.bucket, key) == file_sha256(source)
    row = transfer_row(storm.store_url, source)
    assert row is not None and row["status"] == "succeeded"
    assert row["sha256"] == file_sha256(source)
    assert row["verified_by"] == "checksum"
    storm.verified += 1
    source.unlink()
