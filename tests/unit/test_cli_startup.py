"""A ``ferryman`` command loads only what it uses: the web server's stack is for serve and run."""

from __future__ import annotations

import subprocess
import sys


def test_defining_the_commands_does_not_import_the_web_server() -> None:
    # A fresh interpreter: this one has long imported FastAPI for other tests.
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, ferryman.cli.main; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'fastapi', 'uvicorn'}))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert loaded == "[]"
