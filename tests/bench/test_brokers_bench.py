"""bench/brokers.py keeps running: a tiny configuration of it, on every broker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_broker_bench_measures_ferryman_and_the_bare_consumer(tmp_path: Path) -> None:
    figures = tmp_path / "brokers.json"
    done = subprocess.run(
        [sys.executable, "bench/brokers.py", "--messages", "200", "--json", str(figures)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads(figures.read_text())["rows"]
    assert [row["broker"] for row in rows] == ["rabbitmq", "redis", "nats", "sqs"]
    for row in rows:
        assert row["ferryman"] > 0 and row["bare"] > 0, row
    assert "| broker | ferryman msg/s | bare consumer msg/s | ratio |" in done.stdout
