"""The runnable examples the docs point at keep running."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "command",
    [
        ["examples.demo.run_demo"],
        ["examples.sensors.check_examples"],
        ["examples.xml_to_tables", "--apps", "300"],
        ["examples.folder_to_s3.check_example"],
        ["examples.brokers.check_examples"],
    ],
)
def test_example_runs(command: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMAN_")}
    result = subprocess.run(
        [sys.executable, "-m", *command],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
