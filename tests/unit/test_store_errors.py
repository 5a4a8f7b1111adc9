"""Errors that name their cause: a wrong setup is not an outage, a full disk says so and where."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import ferryman as fm
from ferryman.store import Store
from tests.conftest import PG_ADMIN
from tests.private_pg import PrivateCluster, private_postgres

REPO = Path(__file__).resolve().parents[2]


def shared_server_url(*, database: str = "postgres", user: str = "postgres") -> str:
    import sqlalchemy as sa

    url = sa.make_url(PG_ADMIN).set(drivername="postgresql+psycopg", database=database)
    return url.set(username=user).render_as_string(hide_password=False)


def ferryman(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMAN_")}
    env["COLUMNS"] = "500"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "ferryman", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done, time.monotonic() - started


def test_an_unknown_role_is_a_configuration_error_that_names_it() -> None:
    url = shared_server_url(user="ferryman_no_such_role")
    with pytest.raises(fm.ConfigurationError, match='role "ferryman_no_such_role" does not exist'):
        Store(url)


@pytest.fixture(scope="module")
def password_cluster() -> Iterator[PrivateCluster]:
    with private_postgres(password="right-password") as cluster:
        cluster.start()
        yield cluster


def test_a_refused_password_is_a_configuration_error(password_cluster: PrivateCluster) -> None:
    with pytest.raises(fm.ConfigurationError) as info:
        Store(password_cluster.url(password="wrong-password"))
    message = str(info.value)
    assert 'password authentication failed for user "postgres"' in message
    assert "wrong-password" not in message


@pytest.mark.parametrize("command", [["status"], ["--app", "tests.cli_app:app", "work"]])
def test_the_cli_reports_a_missing_database_at_once_with_exit_2(command: list[str]) -> None:
    # `work` waits for an unreachable store forever; a missing database is no outage.
    done, elapsed = ferryman("--store", shared_server_url(database="ferryman_no_such_db"), *command)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert 'database "ferryman_no_such_db" does not exist' in lines[0]
    assert elapsed < 8


@pytest.fixture
def full_disk() -> Iterator[Path]:
    """A 512 KiB tmpfs (mounted here, as root) holding a store, then filled to the last byte."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem to fill needs root")
    mount = Path(tempfile.mkdtemp(prefix="ferryman-full-disk-"))
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], check=True)
        try:
            app = fm.App(f"sqlite:///{mount}/store.db")
            app.job(name="noop")(lambda ctx, payload: None)
            app.submit("noop", fm.RunRequest("before the disk filled up"))
            app.close()
            fill(mount / "filler")
            yield mount
        finally:
            # Lazily: a descriptor left open by a failing store must not leave it mounted.
            subprocess.run(["umount", "--lazy", str(mount)], check=True)
    finally:
        mount.rmdir()


def fill(path: Path) -> None:
    with path.open("wb", buffering=0) as filler, contextlib.suppress(OSError):  # ENOSPC
        while True:
            filler.write(b"\0" * 4096)


def test_a_full_disk_at_open_is_reported_as_a_full_disk_and_where(full_disk: Path) -> None:
    with pytest.raises(fm.StoreError) as info:
        Store(f"sqlite:///{full_disk}/store.db")
    message = str(info.value)
    assert f"the disk holding {full_disk} is full" in message
    assert "disk I/O error" in message  # what SQLite said, kept after the cause
