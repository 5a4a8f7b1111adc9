"""A second SQS endpoint for the full-size storm and the bench: fauxqs, on loopback.

moto's server (tests/s3_fixtures.py) serves the suite, but it costs time in
proportion to its queue on every call (every message received computes all
the queue's attributes, each a scan of its messages), so 10,000 messages
published up front take hours to drain. fauxqs (an SQS/SNS/S3 emulator from
the npm registry, on Node.js) keeps a call's cost flat and speaks the same
API: the SQS tests of tests/brokers/test_sqs.py pass against it too.

``make fauxqs`` installs it under ``.fauxqs/`` (``make storms-brokers`` does
so first); :func:`fauxqs_server` runs it on a free port, for as long as the
block lasts, and fails loudly when it is not installed. fauxqs 1.9.2 (the last
release for Node.js 20) listens on every interface, not on loopback alone;
its queue URLs name 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
FAUXQS = REPO / ".fauxqs" / "node_modules" / "fauxqs" / "dist" / "cli.js"


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def fauxqs_server(log: Path) -> Iterator[str]:
    """Start fauxqs on a free port (its output into ``log``); its endpoint URL."""
    node = shutil.which("node")
    if node is None or not FAUXQS.exists():
        raise RuntimeError(f"fauxqs is not installed ({FAUXQS}, node {node}): run `make fauxqs`")
    port = free_port()
    env = dict(os.environ, FAUXQS_PORT=str(port), FAUXQS_HOST="127.0.0.1", FAUXQS_LOGGER="false")
    with log.open("ab") as output:
        process = subprocess.Popen(
            [node, str(FAUXQS)], env=env, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        wait_until(
            lambda: process.poll() is not None or _accepts(port), timeout=60, what="fauxqs up"
        )
        if process.poll() is not None:
            raise RuntimeError(f"fauxqs exited {process.returncode}; see {log}")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
