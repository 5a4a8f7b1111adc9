"""Migrated MariaDB databases for tests, one per test, ready in milliseconds.

MariaDB has no ``CREATE DATABASE ... TEMPLATE``, and each table it creates is
a file of its own, made and synced on disk. A copy of the template made
table by table (``SHOW CREATE TABLE``, which keeps the foreign keys that
``CREATE TABLE ... LIKE`` drops) took 20-25 ms here on a quiet machine and
300-450 ms on a busy one, and dropping it 10-300 ms more; migrating from
scratch takes 0.3-1 s. So a session migrates one template database, copies
it only when no copy is free, and hands each test a copy emptied of the
last test's rows: ``DELETE`` from every table, the template's revision row
back, and the ids restarted where the last test drew any (3-12 ms in all;
ids then start at 1 as in a PostgreSQL copy). A copy whose tables a test
changed is dropped and made again, and the connections a test left open are
killed when it ends, as ``DROP DATABASE ... WITH (FORCE)`` does on PostgreSQL.

The server is 127.0.0.1:3306 as root without a password, or
``FERRYMAN_TEST_MARIADB`` (a SQLAlchemy URL whose database the admin
connection uses). The tests fail, rather than skip, when it cannot be reached.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest
import sqlalchemy as sa

from ferryman.store import migrate

MARIADB_ADMIN = os.environ.get(
    "FERRYMAN_TEST_MARIADB", "mariadb+pymysql://root@127.0.0.1:3306/test"
)
_AUTO_INCREMENT = re.compile(r" AUTO_INCREMENT=\d+")


def database_url(name: str) -> str:
    """A SQLAlchemy URL of database ``name`` on the test server."""
    url = sa.make_url(MARIADB_ADMIN).set(database=name, drivername="mariadb+pymysql")
    url = url.update_query_dict({"charset": "utf8mb4"})
    return url.render_as_string(hide_password=False)


def admin_connection(database: str | None = None) -> pymysql.connections.Connection[Any]:
    """An autocommit connection to ``database``, or to the test server's admin database."""
    url = sa.make_url(MARIADB_ADMIN)
    return pymysql.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 3306,
        user=url.username or "root",
        password=url.password or "",
        database=database or url.database,
        charset="utf8mb4",
        autocommit=True,
        # PyMySQL otherwise loads the system's CA certificates for each connection
        # (about 30 ms) to offer TLS, which the local test server does not speak.
        ssl_disabled=True,
    )


def execute(connection: pymysql.connections.Connection[Any], *statements: str) -> None:
    with connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)


def rows(connection: pymysql.connections.Connection[Any], query: str, *params: object) -> Any:
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        return cursor.fetchall()


def drop_database(name: str) -> None:
    with admin_connection() as admin:
        kill_connections(admin, name)
        execute(admin, f"DROP DATABASE IF EXISTS `{name}`")


def kill_connections(admin: pymysql.connections.Connection[Any], database: str) -> None:
    """End every session using ``database`` (a test's leftover workers, say)."""
    sessions = rows(
        admin,
        "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s AND ID <> CONNECTION_ID()",
        database,
    )
    for (session,) in sessions:
        try:
            execute(admin, f"KILL {int(session)}")
        except pymysql.err.OperationalError as exc:
            if exc.args[0] != 1094:  # "Unknown thread id": it ended meanwhile
                raise


def upgrade(url: str) -> migrate.Revisions:
    """Migrate the MariaDB database at ``url`` to this code's head revision."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn, migrate.upgrade_lock(conn, url), conn.begin():
            return migrate.check(conn, url, auto_upgrade=True)
    finally:
        engine.dispose()


class DatabasePool:
    """Copies of a migrated template database, handed out one per test."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.template = f"{prefix}_template"
        self.free: list[str] = []
        self.made: list[str] = []
        self._numbers = itertools.count()
        # Filled by start(): the template's tables, children before parents,
        # each table's CREATE TABLE, and its revision row.
        self.tables: list[str] = []
        self.creates: dict[str, str] = {}
        self.revision = ""

    def start(self) -> None:
        drop_database(self.template)
        with admin_connection() as admin:
            execute(admin, f"CREATE DATABASE `{self.template}`")
        self.revision = upgrade(database_url(self.template)).head
        with admin_connection(database=self.template) as conn:
            self.tables = _children_first(conn, self.template)
            self.creates = {table: _create_statement(conn, table) for table in self.tables}

    def take(self) -> str:
        """A migrated database holding no rows: a free copy emptied, or a new copy."""
        while self.free:
            name = self.free.pop()
            if self._empty(name):
                return name
            drop_database(name)  # a test changed its tables
            self.made.remove(name)
        name = f"{self.prefix}_{next(self._numbers)}"
        self._copy(name)
        self.made.append(name)
        return name

    def give_back(self, name: str) -> None:
        with admin_connection() as admin:
            kill_connections(admin, name)
        self.free.append(name)

    def close(self) -> None:
        for name in [*self.made, self.template]:
            drop_database(name)

    def _copy(self, name: str) -> None:
        with admin_connection() as admin:
            execute(
                admin,
                f"DROP DATABASE IF EXISTS `{name}`",
                f"CREATE DATABASE `{name}`",
                f"USE `{name}`",
                "SET SESSION foreign_key_checks = 0",  # parents may come after children
                *(self.creates[table] for table in reversed(self.tables)),
                f"INSERT INTO {migrate.VERSION_TABLE} VALUES ('{self.revision}')",
            )

    def _empty(self, name: str) -> bool:
        """Empty the copy for the next test; False if its tables are not the template's."""
        with admin_connection(database=name) as conn:
            try:
                if _children_first(conn, name) != self.tables or any(
                    _create_statement(conn, table) != self.creates[table] for table in self.tables
                ):
                    return False
            except pymysql.err.ProgrammingError:
                return False  # a table was dropped
            execute(
                conn,
                "SET SESSION foreign_key_checks = 0",
                *(f"DELETE FROM `{table}`" for table in self.tables),
                f"INSERT INTO {migrate.VERSION_TABLE} VALUES ('{self.revision}')",
            )
            drawn = rows(
                conn,
                "SELECT TABLE_NAME FROM information_schema.TABLES"
                " WHERE TABLE_SCHEMA = %s AND AUTO_INCREMENT > 1",
                name,
            )
            # DDL, about 50 ms a table: only where the last test drew ids.
            execute(conn, *(f"ALTER TABLE `{table}` AUTO_INCREMENT = 1" for (table,) in drawn))
        return True


def _children_first(conn: pymysql.connections.Connection[Any], database: str) -> list[str]:
    """The database's tables, each before the tables its foreign keys refer to."""
    tables = rows(
        conn, "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", database
    )
    parents: dict[str, set[str]] = {table: set() for (table,) in tables}
    references = rows(
        conn,
        "SELECT TABLE_NAME, REFERENCED_TABLE_NAME"
        " FROM information_schema.REFERENTIAL_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = %s",
        database,
    )
    for child, parent in references:
        if child != parent:
            parents[child].add(parent)
    ordered: list[str] = []
    while parents:  # a table goes once no table left refers to it
        referred = set().union(*parents.values())
        ready = sorted(table for table in parents if table not in referred)
        if not ready:
            raise AssertionError(f"foreign keys in a cycle among {sorted(parents)}")
        ordered.extend(ready)
        for table in ready:
            del parents[table]
    return ordered


def _create_statement(conn: pymysql.connections.Connection[Any], table: str) -> str:
    ((_, statement),) = rows(conn, f"SHOW CREATE TABLE `{table}`")
    return _AUTO_INCREMENT.sub("", str(statement))


def pool_fixture(prefix: str) -> Iterator[DatabasePool]:
    pool = DatabasePool(prefix)
    try:
        pool.start()
    except (pymysql.err.OperationalError, sa.exc.OperationalError) as exc:
        pytest.fail(f"MariaDB at {sa.make_url(MARIADB_ADMIN)!r} is required for these tests: {exc}")
    except BaseException:
        pool.close()  # the template, made before what failed
        raise
    try:
        yield pool
    finally:
        pool.close()
