"""A ``ferryman`` command loads only what it uses: the web server's stack is for serve and run."""

from __future__ import annotations

import subprocess
import sys

from ferryman.cli import serve as cli_serve
from ferryman.web import serving


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


def test_serve_defaults_are_the_server_s() -> None:
    assert (cli_serve.DEFAULT_HOST, cli_serve.DEFAULT_PORT) == (
        serving.DEFAULT_HOST,
        serving.DEFAULT_PORT,
    )
