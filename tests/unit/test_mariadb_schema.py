"""The store's schema on MariaDB: migrations, their lock, and the test databases.

The store cannot open a MariaDB database yet; these tests drive the
migrations (:mod:`ferryman.store.migrate`) on the real server directly.
"""

from __future__ import annotations

import contextlib
import importlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

import ferryman as fm
from ferryman.store import keys, migrate, schema
from tests import mariadb_pool
from tests.mariadb_pool import DatabasePool, admin_connection, database_url, execute
from tests.unit.test_store_setup import store_at_0004_with_history

pytestmark = pytest.mark.mariadb

HEAD = "0014"  # the newest revision: every upgrade below ends there
MIGRATION_0005 = importlib.import_module(
    "ferryman.store.migrations.versions.0005_key_digests_and_deliveries"
)

# Everything information_schema says of the tables that a migration could get
# wrong; each query is for the ferryman tables of the connection's database.
OURS = "{table} LIKE 'ferryman\\_%%' AND {table} <> '" + migrate.VERSION_TABLE + "'"
SHAPE = {
    "tables": "SELECT TABLE_NAME, ENGINE, TABLE_COLLATION FROM information_schema.TABLES"
    " WHERE TABLE_SCHEMA = DATABASE() AND " + OURS.format(table="TABLE_NAME"),
    "columns": "SELECT TABLE_NAME, COLUMN_NAME, ORDINAL_POSITION, COLUMN_DEFAULT, IS_NULLABLE,"
    " COLUMN_TYPE, CHARACTER_SET_NAME, COLLATION_NAME, EXTRA, IS_GENERATED,"
    " GENERATION_EXPRESSION FROM information_schema.COLUMNS"
    " WHERE TABLE_SCHEMA = DATABASE() AND " + OURS.format(table="TABLE_NAME"),
    "indexes": "SELECT TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX, COLUMN_NAME, SUB_PART, NON_UNIQUE,"
    " INDEX_TYPE FROM information_schema.STATISTICS"
    " WHERE TABLE_SCHEMA = DATABASE() AND " + OURS.format(table="TABLE_NAME"),
    "checks": "SELECT TABLE_NAME, CONSTRAINT_NAME, CHECK_CLAUSE"
    " FROM information_schema.CHECK_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = DATABASE()",
    "foreign_keys": "SELECT r.TABLE_NAME, r.CONSTRAINT_NAME, r.REFERENCED_TABLE_NAME,"
    " r.UPDATE_RULE, r.DELETE_RULE, k.COLUMN_NAME, k.REFERENCED_COLUMN_NAME"
    " FROM information_schema.REFERENTIAL_CONSTRAINTS r"
    " JOIN information_schema.KEY_COLUMN_USAGE k ON k.CONSTRAINT_SCHEMA = r.CONSTRAINT_SCHEMA"
    " AND k.TABLE_NAME = r.TABLE_NAME AND k.CONSTRAINT_NAME = r.CONSTRAINT_NAME"
    " WHERE r.CONSTRAINT_SCHEMA = DATABASE()",
}


def shape(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """The ferryman tables of the database at ``url``, as information_schema describes them."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return {
                part: sorted(tuple(row) for row in conn.exec_driver_sql(query))
                for part, query in SHAPE.items()
            }
    finally:
        engine.dispose()


@contextlib.contextmanager
def new_database() -> Iterator[str]:
    """The URL of a MariaDB database without tables, dropped afterwards."""
    name = f"ferryman_empty_{uuid.uuid4().hex[:12]}"
    with admin_connection() as admin:
        execute(admin, f"CREATE DATABASE `{name}`")
    try:
        yield database_url(name)
    finally:
        mariadb_pool.drop_database(name)


@pytest.fixture
def empty_mariadb(mariadb_databases: DatabasePool) -> Iterator[str]:
    """A MariaDB database without tables, for this test alone."""
    del mariadb_databases  # for its check that the server answers
    with new_database() as url:
        yield url


def declared_tables(url: str) -> None:
    """The tables as ferryman.store.schema declares them, made directly."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        schema.metadata.create_all(engine)
    finally:
        engine.dispose()


def test_migrations_produce_exactly_the_declared_schema_on_mariadb(empty_mariadb: str) -> None:
    assert mariadb_pool.upgrade(empty_mariadb).current == (HEAD,)
    engine = sa.create_engine(empty_mariadb, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        assert migrate.differences(conn) == []
    engine.dispose()
    # What Alembic does not compare (collations, generated columns, prefix
    # lengths, checks, column order) is as in tables made from the declaration.
    migrated = shape(empty_mariadb)
    assert all(migrated.values())  # every query found the tables' parts
    with new_database() as declared:
        declared_tables(declared)
        assert migrated == shape(declared)


def test_every_text_column_compares_byte_for_byte(mariadb_url: str) -> None:
    tables = shape(mariadb_url)
    assert {(table, engine, collation) for table, engine, collation in tables["tables"]} == {
        (table.name, "InnoDB", "utf8mb4_nopad_bin") for table in schema.metadata.sorted_tables
    }
    collations = {row[7] for row in tables["columns"] if row[6] is not None}
    assert collations == {"utf8mb4_nopad_bin"}


def test_each_test_gets_a_migrated_database_without_rows(
    mariadb_databases: DatabasePool,
) -> None:
    name = mariadb_databases.take()
    url = database_url(name)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(schema.sensors.insert().values(name="s", kind="poll", updated_at=1.0))
            conn.execute(
                sa.text(
                    "INSERT INTO ferryman_workers (id, host, pid, jobs, started_at, last_seen_at)"
                    " VALUES ('w', 'h', 1, '[]', 1, 1)"
                )
            )
            run_id = _insert_run(conn, "job", "key")
        assert run_id == 1
        mariadb_databases.give_back(name)
        again = mariadb_databases.take()
        assert again == name  # reused, not copied again
        with engine.begin() as conn:
            assert migrate.differences(conn) == []
            assert migrate.revisions(conn).current == (HEAD,)
            assert conn.execute(sa.text("SELECT COUNT(*) FROM ferryman_sensors")).scalar() == 0
            assert _insert_run(conn, "job", "key") == 1  # ids start again
    finally:
        engine.dispose()
        mariadb_databases.give_back(name)


def test_a_database_whose_tables_a_test_changed_is_made_again(
    mariadb_databases: DatabasePool,
) -> None:
    name = mariadb_databases.take()
    with admin_connection(database=name) as conn:
        execute(conn, "ALTER TABLE ferryman_workers ADD COLUMN extra INT")
    mariadb_databases.give_back(name)
    fresh = mariadb_databases.take()
    try:
        engine = sa.create_engine(database_url(fresh), poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            assert migrate.differences(conn) == []
        engine.dispose()
    finally:
        mariadb_databases.give_back(fresh)


def _insert_run(conn: sa.Connection, job: str, run_key: str, status: str = "queued") -> int:
    result = conn.execute(
        schema.runs.insert().values(
            job=job,
            run_key=run_key,
            key_digest=keys.run_key_digest(job, run_key),
            payload="{}",
            status=status,
            max_attempts=1,
            available_at=1.0,
            created_at=1.0,
            updated_at=1.0,
        )
    )
    return int(result.inserted_primary_key[0])


def history_with_non_ascii_keys(url: str) -> None:
    """ferryman 0004's history, and keys whose characters are not all one byte long."""
    store_at_0004_with_history(url)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        for statement in (
            "INSERT INTO ferryman_runs (id, job, run_key, payload, status, max_attempts,"
            " available_at, created_at, updated_at) VALUES"
            " (3, 'chargé', 'clé-ü', '{}', 'queued', 5, 1, 1, 1)",
            "INSERT INTO ferryman_sensors (name, kind, updated_at) VALUES ('café', 'push', 1)",
            "INSERT INTO ferryman_sensor_evaluations (id, sensor, idempotency_key, outcome,"
            " state_version_before, state_version_after, started_at, finished_at) VALUES"
            " (5, 'café', 'push:café:ñ-1', 'ok', 0, 0, 1, 1)",
        ):
            conn.execute(sa.text(statement))
    engine.dispose()


def assert_upgraded_history(url: str) -> None:
    """What the upgrade to 0005 must leave of history_with_non_ascii_keys."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            assert migrate.revisions(conn).current == (HEAD,)
            assert migrate.differences(conn) == []
            runs = conn.execute(sa.text("SELECT job, run_key, key_digest FROM ferryman_runs"))
            for job, run_key, digest in runs:
                assert bytes(digest) == keys.run_key_digest(job, run_key), (job, run_key)
            messages = conn.execute(
                sa.text("SELECT id, message_id FROM ferryman_sensor_evaluations ORDER BY id")
            ).all()
            assert messages == [(1, "eu:42"), (2, "7"), (3, None), (4, None), (5, "ñ-1")]
            deliveries = conn.execute(
                sa.text(
                    "SELECT sensor, message_id, message_digest, evaluation_id"
                    " FROM ferryman_push_deliveries ORDER BY evaluation_id"
                )
            ).all()
            assert [(row[0], row[1], row[3]) for row in deliveries] == [
                ("orders", "eu:42", 1),
                ("orders:eu", "7", 2),
                ("café", "ñ-1", 5),
            ]
            for row in deliveries:
                assert bytes(row[2]) == keys.message_digest(row[1])
            events = conn.execute(sa.text("SELECT COUNT(*) FROM ferryman_run_events")).scalar()
            transfer_run = conn.execute(sa.text("SELECT run_id FROM ferryman_transfers")).scalar()
            assert (events, transfer_run) == (3, 1)
    finally:
        engine.dispose()


def test_upgrading_a_mariadb_store_from_0004_keeps_rows_and_computes_digests(
    empty_mariadb: str,
) -> None:
    history_with_non_ascii_keys(empty_mariadb)
    assert mariadb_pool.upgrade(empty_mariadb).current == (HEAD,)
    assert_upgraded_history(empty_mariadb)


@pytest.mark.parametrize("steps_done", [2, 5, 8, len(MIGRATION_0005.MARIADB_STEPS)])
def test_an_upgrade_cut_short_completes_when_run_again(empty_mariadb: str, steps_done: int) -> None:
    history_with_non_ascii_keys(empty_mariadb)
    engine = sa.create_engine(empty_mariadb, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:  # what 0005 committed before the process died
        for step in MIGRATION_0005.MARIADB_STEPS[:steps_done]:
            conn.exec_driver_sql(step)
    with engine.connect() as conn:
        assert migrate.revisions(conn).current == ("0004",)  # refused as the old revision
    engine.dispose()
    assert mariadb_pool.upgrade(empty_mariadb).current == (HEAD,)
    assert_upgraded_history(empty_mariadb)


# One process's upgrade: it says it is ready, and starts when its input closes
# (Alembic keeps global state: its upgrades cannot run in threads of one process).
UPGRADE_WHEN_TOLD = """
import sys
from tests.mariadb_pool import upgrade
print("ready", flush=True)
sys.stdin.read()
print(",".join(upgrade(sys.argv[1]).current))
"""


def test_concurrent_upgrades_of_one_mariadb_database_run_once(empty_mariadb: str) -> None:
    with contextlib.ExitStack() as processes:
        upgrades = [
            processes.enter_context(
                subprocess.Popen(
                    [sys.executable, "-c", UPGRADE_WHEN_TOLD, empty_mariadb],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
            for _ in range(4)
        ]
        for upgrade in upgrades:
            assert upgrade.stdout is not None and upgrade.stdout.readline() == "ready\n"
        for upgrade in upgrades:  # all at once
            assert upgrade.stdin is not None
            upgrade.stdin.close()
        outcomes = []
        for upgrade in upgrades:
            assert upgrade.stdout is not None and upgrade.stderr is not None
            code = upgrade.wait(timeout=120)
            outcomes.append((code, upgrade.stdout.read(), upgrade.stderr.read()))
    assert [(code, out) for code, out, _ in outcomes] == [(0, f"{HEAD}\n")] * 4, outcomes
    engine = sa.create_engine(empty_mariadb, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        assert migrate.differences(conn) == []
        versions = conn.execute(sa.text(f"SELECT version_num FROM {migrate.VERSION_TABLE}"))
        assert versions.all() == [(HEAD,)]
    engine.dispose()


def test_an_upgrade_waiting_too_long_for_the_lock_names_its_holder(
    empty_mariadb: str, mariadb_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(migrate, "MARIADB_LOCK_TIMEOUT_S", 1)
    holder = sa.create_engine(empty_mariadb, poolclass=sa.pool.NullPool)
    with holder.connect() as conn, migrate.upgrade_lock(conn, "holder"):
        session = conn.execute(sa.select(sa.func.connection_id())).scalar()
        with pytest.raises(fm.StoreUnavailable, match=rf"MariaDB connection {session}\)"):
            mariadb_pool.upgrade(empty_mariadb)
        # The lock is the database's: another database's upgrade goes ahead.
        assert mariadb_pool.upgrade(mariadb_url).current == (HEAD,)
    holder.dispose()
    assert mariadb_pool.upgrade(empty_mariadb).current == (HEAD,)  # released


def test_the_schema_is_checked_under_the_lock_only(mariadb_url: str) -> None:
    engine = sa.create_engine(mariadb_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn, pytest.raises(RuntimeError, match="upgrade_lock"):
        migrate.check(conn, "here", auto_upgrade=True)
    engine.dispose()


def test_mariadb_downgrades_stop_at_0005(mariadb_url: str) -> None:
    engine = sa.create_engine(mariadb_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn, pytest.raises(NotImplementedError, match="restore a backup"):
        command.downgrade(migrate._config(conn), "0004")
    engine.dispose()


def test_names_longer_than_a_mariadb_store_holds_are_refused_by_the_server(
    mariadb_url: str,
) -> None:
    """Job, sensor and worker names are index keys there: NAME_LENGTH characters at most."""
    engine = sa.create_engine(mariadb_url, poolclass=sa.pool.NullPool)
    longest = ["s" * schema.NAME_LENGTH, "é" * schema.NAME_LENGTH]  # characters, not bytes
    with engine.begin() as conn:
        for name in longest:
            conn.execute(schema.sensors.insert().values(name=name, kind="poll", updated_at=1.0))
    too_long = schema.sensors.insert().values(
        name="s" * (schema.NAME_LENGTH + 1), kind="poll", updated_at=1.0
    )
    with (
        pytest.raises(sa.exc.DataError, match="Data too long for column 'name'"),
        engine.begin() as conn,
    ):
        conn.execute(too_long)
    engine.dispose()
