"""A PostgreSQL cluster of a test's own, for tests that restart or stop the database.

The shared server on 127.0.0.1:5432 serves every other test and must never be
restarted; a fault test starts its own cluster instead: ``initdb`` into a
fresh temporary directory, ``pg_ctl start`` on a free loopback port, and
``pg_ctl stop -m immediate`` plus removal of the directory at the end. The
binaries are found under ``/usr/lib/postgresql/<version>/bin`` (the newest) or
on ``PATH``; without them the fixture fails, it does not skip. ``initdb``
refuses to run as root, so when the tests do, the cluster runs as the
``postgres`` system user.

Use the ``private_pg`` fixture (``tests/conftest.py`` offers it to every test)::

    def test_x(private_pg: PrivateCluster) -> None:
        url = private_pg.create_database("ferryman")
        ...
        private_pg.restart("immediate")
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.helpers import free_port

START_TIMEOUT_S = 60


def find_bindir() -> Path:
    """Where ``initdb`` and ``pg_ctl`` are: the newest /usr/lib/postgresql/*/bin, or PATH."""
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda path: int(path.parts[-3]) if path.parts[-3].isdigit() else 0,
    )
    if versions:
        return versions[-1].parent
    on_path = shutil.which("pg_ctl")
    if on_path is None:
        pytest.fail("a private PostgreSQL cluster needs initdb and pg_ctl (PostgreSQL server)")
    return Path(on_path).parent


@dataclass
class PrivateCluster:
    """One cluster: its binaries, its directory, its port and the user it runs as."""

    bindir: Path
    root: Path  # holds the data directory, the socket and the log
    port: int
    user: pwd.struct_passwd | None  # None: the current user

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, program: str, *args: str) -> None:
        owner = {} if self.user is None else {"user": self.user.pw_uid, "group": self.user.pw_gid}
        result = subprocess.run(
            [str(self.bindir / program), *args],
            capture_output=True,
            text=True,
            cwd=self.root,
            env={**os.environ, "LC_ALL": "C"},
            timeout=START_TIMEOUT_S + 10,
            **owner,
        )
        if result.returncode != 0:
            server_log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(
                f"{program} {' '.join(args)} failed ({result.returncode}): "
                f"{result.stderr.strip()}\n{server_log[-2000:]}"
            )

    def init(self) -> None:
        self._run(
            "initdb",
            *("-D", str(self.datadir), "-U", "postgres", "-A", "trust"),
            *("-E", "UTF8", "--no-locale", "--no-sync"),
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            # Durability against an OS crash is not under test: a restart, fast
            # or immediate, keeps what the OS page cache holds.
            "-c fsync=off -c full_page_writes=off -c shared_buffers=16MB -c max_connections=60"
        )
        self._run(
            "pg_ctl",
            *("-D", str(self.datadir), "-l", str(self.log), "-o", options),
            *("-w", "-t", str(START_TIMEOUT_S), "start"),
        )

    def restart(self, mode: str = "fast") -> None:
        """``pg_ctl restart -m fast|immediate``: returns once the server accepts connections."""
        self._run(
            "pg_ctl",
            *("-D", str(self.datadir), "-l", str(self.log), "-m", mode),
            *("-w", "-t", str(START_TIMEOUT_S), "restart"),
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop")

    def create_database(self, name: str) -> str:
        """Create ``name`` (a plain identifier) and return its SQLAlchemy URL."""
        admin_url = self.url().replace("+psycopg", "")
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def start_private_cluster() -> PrivateCluster:
    user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="ferryman-pg-"))
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    cluster = PrivateCluster(bindir=find_bindir(), root=root, port=free_port(), user=user)
    try:
        cluster.init()
        for _ in range(3):  # the free port may be taken between probe and start
            try:
                cluster.start()
                return cluster
            except RuntimeError:
                cluster.port = free_port()
        cluster.start()
        return cluster
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


@pytest.fixture
def private_pg() -> Iterator[PrivateCluster]:
    """A running PostgreSQL cluster of this test's own; stopped and removed afterwards."""
    cluster = start_private_cluster()
    try:
        yield cluster
    finally:
        with contextlib.suppress(RuntimeError):  # the test may have stopped it already
            cluster.stop("immediate")
        shutil.rmtree(cluster.root, ignore_errors=True)
