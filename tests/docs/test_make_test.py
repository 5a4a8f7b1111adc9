"""The README's `make test` prepares the machine itself: chromium and jq, then the services.

Running the suite from inside the suite proves nothing, so these read what
make would do (``make -n``) with chromium missing and with it present.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def plan(*args: str) -> list[str]:
    done = subprocess.run(
        ["make", "-n", "test", *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def position(lines: list[str], text: str) -> int:
    found = [index for index, line in enumerate(lines) if text in line]
    assert found, f"{text!r} is not in the plan:\n" + "\n".join(lines)
    return found[0]


def test_make_test_installs_chromium_when_missing_then_checks_services() -> None:
    lines = plan("CHROMIUM=/nonexistent/chromium", "JQ=/nonexistent/jq")
    pytest_at = position(lines, "/pytest")
    assert position(lines, "apt-get install -y -qq chromium") < pytest_at
    assert position(lines, "apt-get install -y -qq jq") < pytest_at
    assert position(lines, ".ci/services") < pytest_at


def test_make_test_leaves_an_installed_chromium_alone() -> None:
    present = sys.executable  # any file that exists
    lines = plan(f"CHROMIUM={present}", f"JQ={present}")
    assert not [line for line in lines if "apt-get" in line]
    assert position(lines, ".ci/services") < position(lines, "/pytest")
