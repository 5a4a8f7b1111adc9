"""Every bench in bench/ still runs, in a tiny configuration.

A benchmark that cannot run measures nothing, and benches are run by hand,
rarely: these tests keep each one working as the code under it changes. The
sizes are far too small for the figures to mean anything; what is checked is
that each bench finishes, prints its table and that ferryman's rows hold
numbers. The peers (PgQueuer, Procrastinate, DBOS, Dagster) are installed only
by ``make bench``, so the queue bench runs ferryman and the bare baseline here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg

from tests.conftest import PG_ADMIN
from tests.mariadb_pool import MARIADB_ADMIN

REPO = Path(__file__).resolve().parents[2]
NUMBER = r"[\d,]+(?:\.\d+)?"


def run_bench(script: str, *arguments: str, timeout: float = 600) -> str:
    """Run ``bench/<script>`` with the test's interpreter; its output, or a failure naming it."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMAN_")}
    environment["FERRYMAN_BENCH_PG"] = PG_ADMIN
    completed = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *arguments],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, f"bench/{script} exited {completed.returncode}:\n{output}"
    return output


def test_queue_bench_measures_ferryman_on_every_store() -> None:
    output = run_bench(
        "queue.py",
        *("--runs", "200", "--one-by-one", "50", "--only", "ferryman,ferryman-controls"),
        *("--store", "all"),
        *("--pg", PG_ADMIN, "--mariadb", MARIADB_ADMIN),
    )
    for store in ("postgres", "sqlite", "mariadb"):
        row = re.search(
            rf"ferryman\s*│\s*{store}\s*│\s*({NUMBER})\s*│\s*({NUMBER})\s*│\s*({NUMBER})", output
        )
        assert row, f"no ferryman row with three figures for {store}:\n{output}"
    assert re.search(rf"PostgreSQL single-row commits/s: {NUMBER}", output), output
    assert re.search(rf"SQLite single-row commits/s: {NUMBER}", output), output
    assert re.search(rf"MariaDB single-row commits/s: {NUMBER}", output), output
    cpu = rf"CPU per run while processing: this process {NUMBER} us"
    assert re.search(rf"{cpu}, PostgreSQL {NUMBER} us", output), output
    for store in ("postgres", "sqlite", "mariadb"):
        in_turns = (
            rf"{store} processing with queue controls {NUMBER} within 10 % of the same job "
            rf"without them {NUMBER}, timed in turns \(ratio {NUMBER}\)"
        )
        assert re.search(in_turns, output), output
    assert "FAILED" not in output, output


def test_sensors_bench_finds_every_new_item() -> None:
    output = run_bench(
        "sensors.py",
        "--files",
        "200",
        "--new",
        "10",
        "--s3-keys",
        "200",
        "--tick-seconds",
        "0.5",
        "--skip-dagster",
    )
    assert re.search(r"folder\s*\|\s*ferryman\s*\|\s*200\s*\|.*\|\s*10/10\s*\|", output), output
    assert re.search(r"s3 \(moto\)\s*\|\s*ferryman\s*\|\s*200\s*\|.*\|\s*10/10\s*\|", output), (
        output
    )
    for store in ("sqlite", "postgresql"):
        assert re.search(rf"^{store}\s*\|\s*{NUMBER}\s*\|", output, re.MULTILINE), output


def test_upload_bench_compares_ferryman_with_boto3() -> None:
    output = run_bench("upload.py", "--size-mib", "16", "--rounds", "1", "--small-files", "8")
    for variant in (
        "ferryman",
        "boto3 default",
        "boto3 matched, SHA-256",
        "boto3 matched, SHA-256, unsigned body",
    ):
        assert re.search(rf"^{re.escape(variant)}\s+{NUMBER}\s", output, re.MULTILINE), output
    assert re.search(
        rf"ferryman = {NUMBER}x boto3 with SHA-256 part checksums .* {NUMBER}x boto3's best; "
        rf"client CPU {NUMBER} s/GiB, boto3 with SHA-256 {NUMBER} s/GiB",
        output,
    ), output
    assert re.search(rf"mix: ferryman = {NUMBER}x boto3 with SHA-256 part checksums", output)


def test_web_bench_times_every_page_on_both_stores() -> None:
    name = f"ferryman_bench_web_test_{os.getpid()}"
    try:
        output = run_bench(
            "web.py",
            "--runs",
            "2000",
            "--evaluations",
            "200",
            "--requests",
            "3",
            "--reseed",
            "--name",
            name,
        )
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(Path(tempfile.gettempdir()) / name, ignore_errors=True)
    summary = output.rsplit("milliseconds per request", 1)[-1]
    for store in ("sqlite", "postgres"):
        for page in (
            "overview page /",
            "run page /runs/{id}",
            "dead letters page",
            "/metrics",
            "runs page, run_key exact",
            "timeline, 24 h",
            "job page, 24 h durations",
        ):
            line = rf"^{store}\s+{re.escape(page)}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}"
            assert re.search(line, summary, re.MULTILINE), f"{store} {page}:\n{output}"
        assert re.search(rf"{store}: server start until it answers {NUMBER} ms", output), output
        assert re.search(rf"{store}: first overview after start {NUMBER} ms", output), output


def test_xml_pipeline_bench_compares_ferryman_with_the_bare_loop() -> None:
    output = run_bench("xml_pipeline.py", "--apps", "100", "--rounds", "1")
    for store in ("sqlite", "postgres"):
        for system in ("bare loop", "ferryman"):
            row = rf"^\| {store} \| {system} \| 1 \| {NUMBER} \|"
            assert re.search(row, output, re.MULTILINE), f"{store} {system}:\n{output}"
        assert re.search(rf"^{store}: ferryman with 1 process = {NUMBER}%", output, re.M), output


def test_async_bench_runs_ferryman_async_and_threads() -> None:
    output = run_bench(
        "async_jobs.py", *("--runs", "40", "--concurrency", "20", "--sleep", "0.05", "--no-peers")
    )
    for system in ("ferryman async", "ferryman threads"):
        for store in ("sqlite", "postgres"):
            row = re.search(rf"{system}\s+{store}\s+({NUMBER})\s+({NUMBER})\s+(\d+)", output)
            assert row, f"no {system} row on {store}:\n{output}"
            assert 1 <= int(row.group(3)) <= 20, output  # the peak never passes concurrency


def test_scale_bench_compares_two_sizes_and_prunes() -> None:
    try:
        output = run_bench(
            "scale.py",
            *("--sizes", "1000,3000", "--stores", "postgres,sqlite", "--reseed"),
            *("--requests", "3", "--submits", "5", "--claims", "5", "--no-restart"),
        )
    finally:
        for size in (1000, 3000):
            name = f"ferryman_bench_scale_{size}"
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            shutil.rmtree(Path(tempfile.gettempdir()) / name, ignore_errors=True)
    for store in ("postgres", "sqlite"):
        assert re.search(rf"{store}: p95 in ms at 1,000, 3,000 runs", output), (
            f"no table for {store}:\n{output}"
        )
        for size in ("1,000", "3,000"):
            assert re.search(
                rf"{store} {size}: {NUMBER} bytes per run, {NUMBER} after .*prune", output
            ), output
    assert re.search(rf"submit \(one run\)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}", output), output
    assert re.search(rf"claim \(one run\)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}", output), output
    assert re.search(rf"first overview after start\s+{NUMBER}\s+{NUMBER}", output), output


def test_startup_bench_times_the_three_commands() -> None:
    output = run_bench("startup.py", "--runs", "1")
    for command in ("import ferryman", r"ferryman --help", r"ferryman tick \(no-op sensor\)"):
        assert re.search(rf"{command}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}", output), output
