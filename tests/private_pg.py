"""A PostgreSQL cluster of a test's own, for tests that restart, stop or misconfigure a server.

The shared server on 127.0.0.1:5432 serves every other test and must never be
restarted; a fault test starts its own cluster instead: ``initdb`` into a
fresh temporary directory, ``pg_ctl start`` on a free loopback port, and
``pg_ctl stop -m immediate`` plus removal of the directory at the end. The
binaries are found under ``/usr/lib/postgresql/<version>/bin`` (the newest),
in ``FERRYMAN_TEST_PG_BIN``, or on ``PATH``; without them the test fails, it
does not skip. ``initdb`` refuses to run as root, so when the tests do, the
cluster runs as the ``postgres`` system user.

The ``private_pg`` fixture (``tests/conftest.py`` offers it to every test)
gives a running cluster::

    def test_x(private_pg: PrivateCluster) -> None:
        url = private_pg.create_database("ferryman")
        ...
        private_pg.restart("immediate")

``private_postgres()`` gives one that is initialised but not started (a
database that comes up later), optionally with password authentication, or
listening on more addresses than loopback and trusting other networks (a
worker in a network namespace of the test's own).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import psycopg
import pytest

from tests.helpers import free_port

START_TIMEOUT_S = 60


def find_bindir() -> Path:
    """Where ``initdb`` and ``pg_ctl`` are: FERRYMAN_TEST_PG_BIN, the newest
    /usr/lib/postgresql/*/bin, or PATH."""
    configured = os.environ.get("FERRYMAN_TEST_PG_BIN")
    if configured:
        return Path(configured)
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


class PrivateCluster:
    """One cluster: its binaries, its directory, its port and the user it runs as."""

    def __init__(
        self,
        root: Path,
        *,
        password: str | None = None,
        listen: Sequence[str] = (),
        trust: Sequence[ipaddress.IPv4Network] = (),
    ) -> None:
        self.root = root  # holds the data directory, the socket and the log
        self.bindir = find_bindir()
        self.port = free_port()
        self.password = password
        self.addresses = ",".join(["127.0.0.1", *listen])
        self.user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        if self.user is not None:
            os.chown(root, self.user.pw_uid, self.user.pw_gid)
        auth = ["-A", "trust"]
        if password is not None:
            secret = root / "password"
            secret.write_text(password)
            if self.user is not None:
                os.chown(secret, self.user.pw_uid, self.user.pw_gid)
            auth = ["-A", "scram-sha-256", f"--pwfile={secret}"]
        self._run(
            "initdb",
            *("-D", str(self.datadir), "-U", "postgres", *auth),
            *("-E", "UTF8", "--no-locale", "--no-sync"),
        )
        if trust:
            with (self.datadir / "pg_hba.conf").open("a") as hba:
                hba.writelines(f"host all all {network} trust\n" for network in trust)

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def url(
        self,
        database: str = "postgres",
        *,
        user: str = "postgres",
        password: str = "",
        host: str = "127.0.0.1",
    ) -> str:
        secret = f":{password}" if password else ""
        return f"postgresql+psycopg://{user}{secret}@{host}:{self.port}/{database}"

    def start(self) -> None:
        """Start on ``port`` (another free one if it was taken meanwhile)."""
        for tries_left in (2, 1, 0):
            try:
                self._start()
                return
            except RuntimeError:
                if tries_left == 0:
                    raise
                self.port = free_port()  # the port may be taken between probe and start

    def _start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses={self.addresses} "
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

    @property
    def running(self) -> bool:
        status = subprocess.run(
            [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "status"],
            capture_output=True,
            check=False,
            **self._owner(),
        )
        return status.returncode == 0

    def create_database(self, name: str) -> str:
        """Create ``name`` (a plain identifier) and return its SQLAlchemy URL."""
        admin_url = self.url(password=self.password or "").replace("+psycopg", "")
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.url(name, password=self.password or "")

    def _owner(self) -> dict[str, int]:
        return {} if self.user is None else {"user": self.user.pw_uid, "group": self.user.pw_gid}

    def _run(self, program: str, *args: str) -> None:
        result = subprocess.run(
            [str(self.bindir / program), *args],
            capture_output=True,
            text=True,
            cwd=self.root,
            env={**os.environ, "LC_ALL": "C"},
            timeout=START_TIMEOUT_S + 10,
            check=False,
            **self._owner(),
        )
        if result.returncode != 0:
            server_log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(
                f"{program} {' '.join(args)} failed ({result.returncode}): "
                f"{result.stderr.strip()}\n{server_log[-2000:]}"
            )


@contextlib.contextmanager
def private_postgres(
    *,
    password: str | None = None,
    listen: Sequence[str] = (),
    trust: Sequence[ipaddress.IPv4Network] = (),
) -> Iterator[PrivateCluster]:
    """An initialised cluster, not started; stopped (if running) and deleted at the end."""
    root = Path(tempfile.mkdtemp(prefix="ferryman-pg-"))
    try:
        cluster = PrivateCluster(root, password=password, listen=listen, trust=trust)
        try:
            yield cluster
        finally:
            if cluster.running:
                cluster.stop("immediate")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def private_pg() -> Iterator[PrivateCluster]:
    """A running PostgreSQL cluster of this test's own; stopped and removed afterwards."""
    with private_postgres() as cluster:
        cluster.start()
        yield cluster
