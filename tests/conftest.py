"""Shared fixtures: real SQLite files, real PostgreSQL and MariaDB databases.

PostgreSQL tests use the server on 127.0.0.1:5432 (override with
``FERRYMAN_TEST_PG``). A template database is migrated once per session and
each test gets its own copy with ``CREATE DATABASE ... TEMPLATE``, which takes
milliseconds. MariaDB tests use the server on 127.0.0.1:3306 (override with
``FERRYMAN_TEST_MARIADB``); each test gets a migrated database of its own,
emptied of an earlier test's rows (:mod:`tests.mariadb_pool`). The tests fail,
rather than skip, when a server is missing: a run that skipped them proves
nothing.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import sqlalchemy as sa

import ferryman as fm
from ferryman.store import upgrade
from tests.mariadb_pool import DatabasePool, database_url, pool_fixture
from tests.private_pg import private_pg as private_pg  # a cluster a test may restart

# pytest-xdist's workers export COLUMNS=80 and LINES=24. The CLI's consoles read
# COLUMNS once, when imported, and would keep 80 for good; the tests give each
# CLI call the width it reads at (CliRunner(env={"COLUMNS": ...}), a child's env).
for _size in ("COLUMNS", "LINES"):
    os.environ.pop(_size, None)

PG_ADMIN = os.environ.get("FERRYMAN_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
TEMPLATE = f"ferryman_template_{os.getpid()}"


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(PG_ADMIN, autocommit=True)


def _database_url(name: str) -> str:
    url = sa.make_url(PG_ADMIN).set(database=name, drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False)


def drop_database(name: str) -> None:
    with _admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    try:
        with _admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{TEMPLATE}"')
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {PG_ADMIN} is required for these tests: {exc}")
    upgrade(_database_url(TEMPLATE))
    yield TEMPLATE
    drop_database(TEMPLATE)


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for one test."""
    name = f"ferryman_test_{uuid.uuid4().hex[:12]}"
    with _admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    yield _database_url(name)
    drop_database(name)


@pytest.fixture
def sqlite_url(tmp_path: object) -> str:
    return f"sqlite:///{tmp_path}/store.db"  # type: ignore[str-bytes-safe]


@pytest.fixture(scope="session")
def mariadb_databases() -> Iterator[DatabasePool]:
    yield from pool_fixture(f"ferryman_test_{os.getpid()}")


@pytest.fixture
def mariadb_url(mariadb_databases: DatabasePool) -> Iterator[str]:
    """A migrated MariaDB database of this test's own, holding no rows."""
    name = mariadb_databases.take()
    yield database_url(name)
    mariadb_databases.give_back(name)


def _sendable(text: str) -> str:
    """``text`` with any lone surrogate written as its escape (UTF-8 refuses them)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Keep a test's report sendable from a pytest-xdist worker.

    The property and fuzz tests feed lone surrogates through sensors and logs
    on purpose; the log lines a test captured then hold them, and the worker
    cannot send its report (UTF-8) to the controller, which stops the run.
    """
    report.sections = [(title, _sendable(text)) for title, text in report.sections]
    if report.failed and report.longrepr is not None:
        shown = str(report.longrepr)
        if _sendable(shown) != shown:
            report.longrepr = _sendable(shown)


# The stores every contract test runs on (``store_url``), each by its fixture.
STORE_FIXTURES = {"sqlite": "sqlite_url", "postgres": "pg_url", "mariadb": "mariadb_url"}
STORES = ("sqlite", "postgres", "mariadb")


@pytest.fixture(params=STORES)
def store_url(request: pytest.FixtureRequest) -> str:
    """The same test on a real SQLite file and on real PostgreSQL and MariaDB databases."""
    return str(request.getfixturevalue(STORE_FIXTURES[request.param]))


@pytest.fixture
def make_app(store_url: str) -> Iterator[type[fm.App]]:
    """Build Apps on this test's store; they are closed after the test."""
    apps: list[fm.App] = []

    class TestApp(fm.App):
        def __init__(self, store: str | None = None, **kwargs: object) -> None:
            super().__init__(store or store_url, **kwargs)  # type: ignore[arg-type]
            apps.append(self)

    yield TestApp
    for app in apps:
        app.close()
