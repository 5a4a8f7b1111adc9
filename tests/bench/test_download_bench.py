"""bench/download.py in a tiny configuration: it runs, every variant's file checks out."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "download.py"


@pytest.mark.timeout(300)
def test_download_bench_runs_in_a_tiny_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("download_bench", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    best = bench.main(["--size-mib", "24", "--rounds", "1", "--concurrency", "2"])
    assert set(best) == {
        "ferryman",
        "ferryman, no fsync",
        "boto3 default",
        "boto3 matched",
        "boto3 default, fsync",
        "boto3 matched, fsync",
    }
    assert all(rate > 0 for rate in best.values())
    printed = capsys.readouterr().out
    assert "x boto3's best with the same durability" in printed
    assert "in the same round; median" in printed
