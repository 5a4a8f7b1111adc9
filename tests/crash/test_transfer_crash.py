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
from pathlib import Path
from typing import Any

import pytest

from ferryman.store import Store
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

ITERATIONS = 20
CONCURRENCY = 4
BUDGET_SECONDS = 240  # the storm stops early (and says so) rather than run away


@pytest.mark.crash
def test_killed_uploads_resume_to_the_exact_object(
    tmp_path: Path, seaweed_env: SeaweedServer, seaweed_bucket: str
) -> None:
    rng = random.Random(5)
    client = seaweed_env.client()
    store_url = f"sqlite:///{tmp_path}/store.db"
    Store(store_url).close()  # created (and migrated) before the first poll reads it
    env = child_environment(seaweed_env)
    started = time.monotonic()
    resent_per_crash: list[int] = []
    for iteration in range(ITERATIONS):
        assert time.monotonic() - started < BUDGET_SECONDS, f"storm too slow at {iteration}"
        size = rng.randint(30 * MiB, 60 * MiB)
        source = write_random(tmp_path / f"file-{iteration}.bin", size)
        key = f"storm/{iteration}.bin"
        parts = -(-size // (5 * MiB))
        args = (
            str(source),
            f"s3://{seaweed_bucket}/{key}",
            "--part-size",
            "5MiB",
            "--concurrency",
            str(CONCURRENCY),
        )
        log = tmp_path / f"upload-{iteration}.log"
        # Where to kill: before any part, at a random fraction, or once all parts are in.
        target = rng.choice([0.0, rng.random(), rng.random(), 1.0])
        first = start_upload(store_url, log, env, *args)

        def reached(
            target: float = target, source: Path = source, size: int = size, first: Any = first
        ) -> bool:
            if first.poll() is not None:
                return True
            row = transfer_row(store_url, source)
            if target == 0.0:
                return row is not None
            return row is not None and row["bytes_confirmed"] >= target * size

        try:
            wait_until(reached, timeout=60, what=f"iteration {iteration} to reach {target:.2f}")
        finally:
            first.kill()
            first.wait(timeout=30)
        sent_before = sends(log.read_text())

        second = start_upload(store_url, log, env, *args)
        assert second.wait(timeout=120) == 0, log.read_text()[-3000:]
        sent_all = sends(log.read_text())
        sent_after = sent_all[len(sent_before) :]
        counts = Counter(sent_all)
        resent = sum(count - 1 for count in counts.values())
        assert set(counts) == set(range(1, parts + 1))
        assert resent <= CONCURRENCY, (iteration, sent_before, sent_after)
        resent_per_crash.append(resent)

        assert object_sha256(client, seaweed_bucket, key) == file_sha256(source)
        row = transfer_row(store_url, source)
        assert row is not None and row["status"] == "succeeded"
        assert row["sha256"] == file_sha256(source)
        assert row["verified_by"] == "checksum"
        source.unlink()
    leftover = client.list_multipart_uploads(Bucket=seaweed_bucket).get("Uploads", [])
    assert leftover == []
    print(f"re-sent parts per crash: {resent_per_crash}")
