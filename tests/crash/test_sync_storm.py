"""SIGKILL ``ferryman sync`` again and again over a tree that is still being written.

A tree of 200 files — most small, some large and sparse, some growing while
the sync runs — is synced to SeaweedFS by a ``ferryman sync`` that is killed
(SIGKILL) ten times at points where it has made progress, and restarted
each time. Afterwards S3 holds exactly the files (and their sidecars), each
object's SHA-256 equals its file's, no multipart upload is left open, no
file version was uploaded twice, and no confirmed part was sent again except
those in flight at a kill.

The suite runs a bounded tree (3 large files of 50-80 MB, growth for 8 s);
``make sync-storm`` runs the full one (10 large files of 50-300 MB, growth
for 30 s) through the FERRYMAN_STORM_SYNC_* settings.
"""

from __future__ import annotations

import hashlib
import random
import re
import subprocess
import threading
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ferryman.store import Store
from ferryman.store.schema import transfer_parts, transfers
from tests.crash.support import report_storm, storm_setting
from tests.helpers import wait_until
from tests.s3_servers import SeaweedServer, child_environment, seaweed, seaweed_bucket, seaweed_env
from tests.transfer.support import MiB, file_sha256, start_ferryman, write_random

__all__ = ["seaweed", "seaweed_bucket", "seaweed_env"]  # fixtures used here

FILES = 200
KILLS = 10
BIG = int(storm_setting("SYNC_BIG", 3))
BIG_MAX_MB = int(storm_setting("SYNC_BIG_MAX_MB", 80))
GROWING = 5
GROW_SECONDS = storm_setting("SYNC_GROW_SECONDS", 8)
FILE_CONCURRENCY = 4
PART_CONCURRENCY = 4  # upload's default, per file
TIMEOUT = int(storm_setting("SYNC_TIMEOUT", 600))


def sparse(path: Path, size: int, rng: random.Random) -> None:
    """A sparse file of ``size`` bytes with a random block every 16 MiB (parts differ)."""
    with path.open("wb") as out:
        out.truncate(size)
        for offset in range(0, size - 4096, 16 * MiB):
            out.seek(offset)
            out.write(rng.randbytes(4096))


def make_tree(root: Path, rng: random.Random) -> list[Path]:
    """The files that stay put; the growing ones are made by :class:`Writers`."""
    made = []
    for index in range(BIG):
        path = root / "big" / f"video-{index}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        sparse(path, rng.randint(50, BIG_MAX_MB) * 1_000_000 + rng.randint(0, 999), rng)
        made.append(path)
    for index in range(FILES - BIG - GROWING):
        path = root / f"d{index % 7}" / f"file-{index}.dat"
        path.parent.mkdir(parents=True, exist_ok=True)
        size = rng.choice([0, rng.randint(1, 4096), rng.randint(4096, 2 * MiB)])
        write_random(path, size, seed=index)
        made.append(path)
    return made


class Writers:
    """Appends to the growing files every 50 ms until told to stop, on a thread."""

    def __init__(self, root: Path, rng: random.Random) -> None:
        self.paths = [root / "growing" / f"log-{i}.txt" for i in range(GROWING)]
        self.paths[0].parent.mkdir(parents=True, exist_ok=True)
        for path in self.paths:
            path.write_bytes(b"")
        self.rng = rng
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._write, name="storm-writers", daemon=True)

    def _write(self) -> None:
        while not self.stop.wait(0.05):
            for path in self.paths:
                with path.open("ab") as out:
                    out.write(self.rng.randbytes(self.rng.randint(1, 64 * 1024)))


def progress(store_url: str) -> int:
    """Parts confirmed plus transfers finished: grows whenever the sync gets anywhere."""
    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as conn:
            parts = conn.execute(sa.select(sa.func.count()).select_from(transfer_parts)).scalar()
            done = conn.execute(
                sa.select(sa.func.count()).where(transfers.c.status != "active")
            ).scalar()
            return int(parts or 0) + int(done or 0)
    except sa.exc.OperationalError:  # the table is not there yet (first start)
        return 0
    finally:
        engine.dispose()


def start_sync(
    store_url: str, log: Path, env: dict[str, str], *args: str
) -> subprocess.Popen[bytes]:
    return start_ferryman(store_url, log, env, "sync", *args)


def moved_on(sync: subprocess.Popen[bytes], store_url: str, goal: int) -> bool:
    return sync.poll() is not None or progress(store_url) >= goal


def stream_sha256(client: Any, bucket: str, key: str) -> str:
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    digest = hashlib.sha256()
    for chunk in iter(lambda: body.read(8 * MiB), b""):
        digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.crash
@pytest.mark.timeout(TIMEOUT)
def test_a_killed_sync_leaves_exactly_the_files_in_s3(
    seaweed_env: SeaweedServer, seaweed_bucket: str, tmp_path: Path
) -> None:
    rng = random.Random(16)
    store_url = f"sqlite:///{tmp_path}/store.db"
    Store(store_url).close()
    root = tmp_path / "tree"
    root.mkdir()
    make_tree(root, rng)
    writers = Writers(root, random.Random(17))
    env = child_environment(seaweed_env)
    client = seaweed_env.client()
    log = tmp_path / "sync.log"
    args = (
        str(root),
        f"s3://{seaweed_bucket}/tree",
        "--stable-for",
        "1",
        "--concurrency",
        str(FILE_CONCURRENCY),
        "--lease-seconds",
        "3",
    )
    kills = 0
    writers.thread.start()
    growth_ends = time.monotonic() + GROW_SECONDS
    try:
        for kill in range(KILLS):
            if time.monotonic() > growth_ends:
                writers.stop.set()
            before = progress(store_url)
            step = rng.randint(1, 12)
            sync = start_sync(store_url, log, env, *args)
            try:
                wait_until(
                    partial(moved_on, sync, store_url, before + step),
                    timeout=120,
                    what=f"kill {kill}: {step} more parts or transfers",
                )
            finally:
                if sync.poll() is None:
                    sync.kill()
                    kills += 1
                sync.wait(timeout=30)
        writers.stop.set()
        writers.thread.join(timeout=30)
        final = start_sync(store_url, log, env, *args)
        assert final.wait(timeout=TIMEOUT - 60) == 0, log.read_text()[-5000:]
    finally:
        writers.stop.set()

    files = {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}
    assert len(files) == FILES
    keys = {
        item["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=seaweed_bucket)
        for item in page.get("Contents", [])
    }
    expected = {f"tree/{relpath}" for relpath in files}
    missing = expected - keys
    report_storm(
        "sync",
        store_url,
        kills=kills,
        unit="files",
        items=len(files),
        lost=len(missing),
        duplicated=uploaded_twice(store_url),
    )
    assert kills >= KILLS - 2, f"only {kills} kills landed mid-sync"
    assert keys == expected | {f"{key}.meta.json" for key in expected}
    for relpath, path in files.items():
        assert stream_sha256(client, seaweed_bucket, f"tree/{relpath}") == file_sha256(path), (
            relpath
        )
    assert client.list_multipart_uploads(Bucket=seaweed_bucket).get("Uploads", []) == []
    assert uploaded_twice(store_url) == 0
    resent = resent_parts(log.read_text())
    assert resent <= kills * FILE_CONCURRENCY * PART_CONCURRENCY, resent


def uploaded_twice(store_url: str) -> int:
    """File versions (path, size, mtime) with more than one succeeded transfer."""
    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as conn:
            versions = Counter(
                conn.execute(
                    sa.select(
                        transfers.c.source_path, transfers.c.total_size, transfers.c.source_mtime
                    ).where(transfers.c.status == "succeeded")
                ).all()
            )
    finally:
        engine.dispose()
    return sum(count - 1 for count in versions.values())


def resent_parts(log_text: str) -> int:
    """Parts sent more than once for the same transfer (only those in flight at a kill may be)."""
    sent = Counter(re.findall(r"sending part (\d+) \(\d+ B\).*?transfer_id=(\d+)", log_text))
    return sum(count - 1 for count in sent.values())
