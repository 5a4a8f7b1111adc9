"""``ferryman sync`` against SeaweedFS, as a user runs it: once, again, and as a daemon."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from tests.helpers import free_port, wait_until
from tests.s3_servers import SeaweedServer, child_environment, seaweed, seaweed_bucket, seaweed_env
from tests.transfer.support import REPO, MiB, write_random

__all__ = ["seaweed", "seaweed_bucket", "seaweed_env"]  # fixtures used here


def sync(
    store: str, env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferryman", "--store", store, "sync", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def objects(client: Any, bucket: str) -> dict[str, str]:
    """Every object's key and SHA-256."""
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            found[item["Key"]] = hashlib.sha256(body).hexdigest()
    return found


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sync_uploads_each_file_once_with_its_sidecar_and_reports_what_it_did(
    seaweed_env: SeaweedServer, seaweed_bucket: str, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path}/store.db"
    env = child_environment(seaweed_env)
    client = seaweed_env.client()
    root = tmp_path / "recordings"
    (root / "cam1").mkdir(parents=True)
    write_random(root / "cam1" / "a.mp4", 12 * MiB + 1)
    write_random(root / "b.mp4", 1000)
    (root / "empty.mp4").write_bytes(b"")
    (root / "c.tmp").write_text("partial")
    (root / "notes.txt").write_text("not a recording")
    url = f"s3://{seaweed_bucket}/landing"
    options = ("--include", "*.mp4", "--exclude", "*.tmp", "--stable-for", "0")

    dry = sync(store, env, str(root), url, *options, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would upload cam1/a.mp4 (12.0 MiB) to {url}/cam1/a.mp4" in dry.stdout
    assert "would upload 3 files" in dry.stdout
    assert objects(client, seaweed_bucket) == {}  # a dry run uploads nothing

    first = sync(store, env, str(root), url, *options)
    assert first.returncode == 0, first.stderr
    assert "3 uploaded" in first.stdout
    stored = objects(client, seaweed_bucket)
    files = {"cam1/a.mp4", "b.mp4", "empty.mp4"}
    assert set(stored) == {f"landing/{f}" for f in files} | {
        f"landing/{f}.meta.json" for f in files
    }
    for relpath in files:
        assert stored[f"landing/{relpath}"] == sha(root / relpath)
        sidecar = json.loads(
            client.get_object(Bucket=seaweed_bucket, Key=f"landing/{relpath}.meta.json")[
                "Body"
            ].read()
        )
        assert sidecar["sha256"] == sha(root / relpath)
        assert sidecar["source_path"] == str(root / relpath)
        assert sidecar["size"] == (root / relpath).stat().st_size
        assert sidecar["metadata"]["mtime_ns"] == (root / relpath).stat().st_mtime_ns

    again = sync(store, env, str(root), url, *options)
    assert again.returncode == 0 and "0 uploaded" in again.stdout, again.stdout

    write_random(root / "b.mp4", 2000)  # a new version of one file
    third = sync(store, env, str(root), url, *options, "--json")
    assert third.returncode == 0, third.stderr
    assert json.loads(third.stdout)["uploaded"] == 1
    assert objects(client, seaweed_bucket)["landing/b.mp4"] == sha(root / "b.mp4")


def test_a_file_waits_for_its_done_marker(
    seaweed_env: SeaweedServer, seaweed_bucket: str, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path}/store.db"
    env = child_environment(seaweed_env)
    root = tmp_path / "out"
    root.mkdir()
    (root / "ready.csv").write_text("1,2\n")
    (root / "ready.csv.done").write_text("")
    (root / "pending.csv").write_text("3,4\n")
    url = f"s3://{seaweed_bucket}/csv"
    first = sync(store, env, str(root), url, "--done-suffix", ".done")
    assert first.returncode == 0, first.stderr
    assert "1 uploaded" in first.stdout and "1 waiting for their marker" in first.stdout
    assert set(objects(seaweed_env.client(), seaweed_bucket)) == {
        "csv/ready.csv",
        "csv/ready.csv.meta.json",
    }
    (root / "pending.csv.done").write_text("")
    second = sync(store, env, str(root), url, "--done-suffix", ".done")
    assert second.returncode == 0 and "1 uploaded" in second.stdout, second.stdout
    assert "csv/pending.csv" in objects(seaweed_env.client(), seaweed_bucket)


def test_bad_arguments_are_one_line_errors(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/store.db"
    missing = sync(store, child_environment(), str(tmp_path / "nope"), "s3://bucket/x")
    assert missing.returncode == 2 and "is not a directory" in missing.stderr
    bad_url = sync(store, child_environment(), str(tmp_path), "https://bucket/x")
    assert bad_url.returncode == 2 and "bad S3 URL" in bad_url.stderr


def test_watch_is_the_daemon_with_its_dashboard(
    seaweed_env: SeaweedServer, seaweed_bucket: str, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path}/store.db"
    client = seaweed_env.client()
    root = tmp_path / "inbox"
    root.mkdir()
    write_random(root / "first.bin", 3 * MiB)
    port = free_port()
    log = tmp_path / "watch.log"
    with log.open("wb") as output:
        daemon = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ferryman",
                "--store",
                store,
                "sync",
                str(root),
                f"s3://{seaweed_bucket}/in",
                "--watch",
                "--stable-for",
                "0.5",
                "--port",
                str(port),
            ],
            cwd=REPO,
            env=child_environment(seaweed_env),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: "in/first.bin" in objects(client, seaweed_bucket),
            timeout=60,
            what="the first file uploaded",
        )
        (root / "later").mkdir()
        write_random(root / "later" / "second.bin", 1 * MiB)
        wait_until(
            lambda: "in/later/second.bin" in objects(client, seaweed_bucket),
            timeout=60,
            what="a file added later uploaded",
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
            assert page.status == 200 and "sync_inbox_" in page.read().decode()
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert objects(client, seaweed_bucket)["in/later/second.bin"] == sha(
        root / "later" / "second.bin"
    )
