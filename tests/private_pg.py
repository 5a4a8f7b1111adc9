"""A PostgreSQL cluster of a test's own, for tests that stop, start or misconfigure a server.

``private_postgres()`` runs ``initdb`` in a temporary directory and yields a
:class:`PrivatePostgres` on a free loopback port, stopped until the test
calls ``start()``; it is stopped and deleted afterwards. The shared server
on 5432 is never touched. The binaries come from ``/usr/lib/postgresql/*/bin``
(or ``FERRYMAN_TEST_PG_BIN``); as root, the cluster runs as the ``postgres``
user, since PostgreSQL refuses to run as root.

In a test module::

    @pytest.fixture
    def cluster() -> Iterator[PrivatePostgres]:
        with private_postgres() as pg:
            yield pg
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _binaries() -> Path:
    configured = os.environ.get("FERRYMAN_TEST_PG_BIN")
    if configured:
        return Path(configured)
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: p.parts)
    if not found:
        raise RuntimeError("no PostgreSQL binaries under /usr/lib/postgresql/*/bin")
    return found[-1].parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PrivatePostgres:
    """One cluster: ``start()``, ``stop()``, and ``url()`` for its databases."""

    def __init__(self, directory: Path, *, password: str | None = None) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.port = _free_port()
        self.password = password
        self._bin = _binaries()
        # PostgreSQL refuses to run as root; its files must then be the postgres user's.
        self._as: dict[str, Any] = (
            {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}
        )
        if self._as:
            shutil.chown(directory, "postgres", "postgres")
        auth = ["--auth=trust"]
        if password is not None:
            secret = directory / "password"
            secret.write_text(password)
            if self._as:
                shutil.chown(secret, "postgres", "postgres")
            auth = ["--auth=scram-sha-256", f"--pwfile={secret}"]
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--no-sync", *auth)

    def url(self, database: str = "postgres", *, user: str = "postgres", password: str = "") -> str:
        secret = f":{password}" if password else ""
        return f"postgresql+psycopg://{user}{secret}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.directory} -c fsync=off"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.directory / "log"),
            "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    @property
    def running(self) -> bool:
        status = subprocess.run(
            [str(self._bin / "pg_ctl"), "-D", str(self.data), "status"],
            capture_output=True,
            check=False,
            **self._as,
        )
        return status.returncode == 0

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run(
            [str(self._bin / program), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
            **self._as,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr.strip()}")


@contextlib.contextmanager
def private_postgres(*, password: str | None = None) -> Iterator[PrivatePostgres]:
    """A stopped private cluster; stopped (if running) and deleted at the end."""
    directory = Path(tempfile.mkdtemp(prefix="ferryman-pg-"))
    try:
        cluster = PrivatePostgres(directory, password=password)
        try:
            yield cluster
        finally:
            if cluster.running:
                cluster.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
