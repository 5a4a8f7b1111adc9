"""Uploads against SeaweedFS (auth, part checksums, restarts) through real faults."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

import ferryman as fm
from ferryman.store import Store
from tests.helpers import wait_until
from tests.proxies import FaultProxy
from tests.s3_servers import SeaweedServer, child_environment, seaweed, seaweed_bucket, seaweed_env
from tests.transfer.support import (
    REPO,
    MiB,
    crc32_b64,
    file_sha256,
    object_sha256,
    start_upload,
    transfer_row,
    write_random,
)

__all__ = ["seaweed", "seaweed_bucket", "seaweed_env"]  # fixtures used here


@pytest.mark.parametrize(
    ("algorithm", "checksum"),
    [
        ("SHA256", {"ChecksumSHA256": "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="}),
        ("CRC32", {"ChecksumCRC32": crc32_b64(b"other bytes")}),
    ],
)
def test_a_corrupt_part_is_rejected_by_the_server_checksum(
    seaweed_env: SeaweedServer, seaweed_bucket: str, algorithm: str, checksum: dict[str, str]
) -> None:
    client = seaweed_env.client()
    full = {"ChecksumType": "FULL_OBJECT"} if algorithm == "CRC32" else {}
    upload = client.create_multipart_upload(
        Bucket=seaweed_bucket, Key="k", ChecksumAlgorithm=algorithm, **full
    )
    from botocore.exceptions import ClientError  # type: ignore[import-untyped]

    with pytest.raises(ClientError, match="BadDigest"):
        client.upload_part(
            Bucket=seaweed_bucket,
            Key="k",
            UploadId=upload["UploadId"],
            PartNumber=1,
            Body=b"the bytes",
            **checksum,
        )
    client.abort_multipart_upload(Bucket=seaweed_bucket, Key="k", UploadId=upload["UploadId"])


def test_an_upload_is_completed_with_the_full_object_crc32_the_server_checks(
    tmp_path: Path, seaweed_env: SeaweedServer, seaweed_bucket: str
) -> None:
    """The parts go up with their CRC32s; the object's CRC32, combined from
    them, is the one SeaweedFS computed over every byte it stores."""
    source = write_random(tmp_path / "f.bin", 17 * MiB + 3)
    transfer = fm.transfer.upload(
        source,
        f"s3://{seaweed_bucket}/f.bin",
        part_size=5 * MiB,
        store=f"sqlite:///{tmp_path}/s.db",
    )
    whole = crc32_b64(source.read_bytes())
    assert transfer.verified_by == "checksum" and transfer.checksum == whole
    assert transfer.checksum_algorithm == "CRC32"
    assert transfer.sha256 == file_sha256(source)
    client = seaweed_env.client()
    head = client.head_object(Bucket=seaweed_bucket, Key="f.bin", ChecksumMode="ENABLED")
    assert (head["ChecksumCRC32"], head.get("ChecksumType")) == (whole, "FULL_OBJECT")
    assert object_sha256(client, seaweed_bucket, "f.bin") == transfer.sha256


def test_uploads_finish_through_dropped_connections_and_5xx(
    tmp_path: Path,
    seaweed_env: SeaweedServer,
    seaweed_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = write_random(tmp_path / "f.bin", 41 * MiB + 7)
    upstream = urlparse(seaweed_env.endpoint)
    with FaultProxy((upstream.hostname or "", upstream.port or 0), seed=3) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        transfer = fm.transfer.upload(
            source,
            f"s3://{seaweed_bucket}/f.bin",
            part_size=5 * MiB,
            store=f"sqlite:///{tmp_path}/s.db",
            retries=12,
            backoff=fm.Backoff(base=0.05, factor=2.0, max=1.0),
        )
    assert proxy.counts["dropped"] >= 1, proxy.counts
    assert proxy.counts["injected_500"] + proxy.counts["injected_503"] >= 1, proxy.counts
    assert transfer.status is fm.TransferStatus.SUCCEEDED and transfer.verified_by == "checksum"
    client = seaweed_env.client()
    assert object_sha256(client, seaweed_bucket, "f.bin") == file_sha256(source)
    assert client.list_multipart_uploads(Bucket=seaweed_bucket).get("Uploads", []) == []


@pytest.mark.crash
def test_the_server_killed_mid_upload_and_restarted(
    tmp_path: Path, seaweed_env: SeaweedServer, seaweed_bucket: str
) -> None:
    source = write_random(tmp_path / "f.bin", 60 * MiB)
    store_url = f"sqlite:///{tmp_path}/s.db"
    Store(store_url).close()
    log = tmp_path / "upload.log"
    process = start_upload(
        store_url,
        log,
        child_environment(seaweed_env),
        str(source),
        f"s3://{seaweed_bucket}/f.bin",
        "--part-size",
        "5MiB",
        "--concurrency",
        "2",
        "--retries",
        "30",
    )
    try:
        wait_until(
            lambda: (row := transfer_row(store_url, source)) and row["bytes_confirmed"] >= 10 * MiB,
            timeout=60,
            what="some parts confirmed",
        )
        seaweed_env.kill()
        wait_until(lambda: "retrying" in log.read_text(), timeout=60, what="a retry")
        seaweed_env.start()
        assert process.wait(timeout=180) == 0, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    client = seaweed_env.client()
    assert object_sha256(client, seaweed_bucket, "f.bin") == file_sha256(source)
    assert client.list_multipart_uploads(Bucket=seaweed_bucket).get("Uploads", []) == []


WRITER = """
import os, sys, time
path, chunks = sys.argv[1], int(sys.argv[2])
with open(path, "ab", buffering=0) as f:
    for i in range(chunks):
        f.write(i.to_bytes(8, "big") + os.urandom(1024 * 1024 - 8))
        time.sleep(0.05)  # a producer writing at its own pace
"""


@pytest.mark.crash
def test_follow_mode_killed_and_resumed_while_the_file_grows(
    tmp_path: Path, seaweed_env: SeaweedServer, seaweed_bucket: str
) -> None:
    source = tmp_path / "growing.log"
    source.write_bytes(b"")
    store_url = f"sqlite:///{tmp_path}/s.db"
    Store(store_url).close()
    env = child_environment(seaweed_env)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(source), "36"], cwd=REPO)
    args = (
        str(source),
        f"s3://{seaweed_bucket}/growing.log",
        "--follow",
        "--stable-for",
        "2",
        "--part-size",
        "5MiB",
    )
    log = tmp_path / "upload.log"
    first = start_upload(store_url, log, env, *args)
    try:
        wait_until(
            lambda: (row := transfer_row(store_url, source)) and row["parts_confirmed"] >= 2,
            timeout=60,
            what="two parts of the growing file",
        )
        first.kill()
        first.wait()
        second = start_upload(store_url, log, env, *args)
        assert writer.wait(timeout=60) == 0
        assert second.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        for process in (first, writer):
            if process.poll() is None:
                process.kill()
                process.wait()
    assert source.stat().st_size == 36 * MiB
    client = seaweed_env.client()
    assert object_sha256(client, seaweed_bucket, "growing.log") == file_sha256(source)
    row = transfer_row(store_url, source)
    assert row is not None and row["status"] == "succeeded" and row["resumes"] == 1


def run_cli(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferryman", "--store", f"sqlite:///{tmp_path}/cli.db", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_errors_are_one_line_with_exit_codes(
    tmp_path: Path, seaweed_env: SeaweedServer, seaweed_bucket: str
) -> None:
    source = write_random(tmp_path / "f.bin", 1000)
    env = child_environment(seaweed_env)
    closed = child_environment(seaweed_env, AWS_ENDPOINT_URL="http://127.0.0.1:9")
    denied = child_environment(seaweed_env, AWS_SECRET_ACCESS_KEY="wrong-secret")
    cases: list[tuple[dict[str, str], tuple[str, ...], int, str]] = [
        (env, (str(tmp_path / "nope"), f"s3://{seaweed_bucket}/k"), 1, "no file"),
        (env, (str(source), "s3:/bucket"), 2, "bad S3 URL"),
        (env, (str(source), "s3://no-such-bucket-here/k"), 1, "does not exist"),
        (denied, (str(source), f"s3://{seaweed_bucket}/k"), 6, "access denied"),
        (closed, (str(source), f"s3://{seaweed_bucket}/k", "--retries", "2"), 7, "cannot reach S3"),
        (
            env,
            (str(source), f"s3://{seaweed_bucket}/k", "--part-size", "1MiB"),
            2,
            "outside S3's limits",
        ),
    ]
    for environment, args, code, message in cases:
        result = run_cli(tmp_path, environment, "upload", *args)
        assert result.returncode == code, (args, result.stderr)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert "wrong-secret" not in result.stderr and "ferryman-test-secret" not in result.stderr

    ok = run_cli(tmp_path, env, "upload", str(source), f"s3://{seaweed_bucket}/k")
    assert ok.returncode == 0, ok.stderr
    assert "uploaded s3://" in ok.stdout and "verified by checksum" in ok.stdout
    listed = run_cli(tmp_path, env, "transfers", "--json")
    assert listed.returncode == 0 and '"status": "succeeded"' in listed.stdout


def test_gc_aborts_only_orphaned_uploads(
    tmp_path: Path, seaweed_env: SeaweedServer, seaweed_bucket: str
) -> None:
    client: Any = seaweed_env.client()
    store_url = f"sqlite:///{tmp_path}/s.db"
    orphan = client.create_multipart_upload(Bucket=seaweed_bucket, Key="in/orphan")["UploadId"]
    elsewhere = client.create_multipart_upload(Bucket=seaweed_bucket, Key="out/x")["UploadId"]
    source = write_random(tmp_path / "f.bin", 12 * MiB)

    def stop(update: fm.transfer.TransferProgress) -> None:
        raise RuntimeError("stop with the transfer active")

    with pytest.raises(RuntimeError):
        fm.transfer.upload(
            source,
            f"s3://{seaweed_bucket}/in/owned",
            part_size=5 * MiB,
            store=store_url,
            progress=stop,
        )
    env = child_environment(seaweed_env)
    result = run_cli(
        tmp_path.parent / tmp_path.name,
        env,
        "--store",
        store_url,
        "transfers",
        "gc",
        "--older-than",
        "0s",
        "--prefix",
        f"s3://{seaweed_bucket}/in/",
    )
    assert result.returncode == 0, result.stderr
    assert "aborted 1 orphaned uploads" in result.stdout
    left = {u["UploadId"] for u in client.list_multipart_uploads(Bucket=seaweed_bucket)["Uploads"]}
    assert orphan not in left and elsewhere in left and len(left) == 2
    # The owned one resumes and finishes.
    done = fm.transfer.upload(source, f"s3://{seaweed_bucket}/in/owned", store=store_url)
    assert done.status is fm.TransferStatus.SUCCEEDED and done.resumes == 1
