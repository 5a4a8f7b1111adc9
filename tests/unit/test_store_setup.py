"""Opening a store: migrations, schema checks and clear errors for bad URLs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

import ferryman as fm
from ferryman.store import Store, migrate, upgrade
from ferryman.store.migrate import VERSION_TABLE
from tests.conftest import drop_database


def test_sqlite_store_is_created_on_first_use(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    app = fm.App(f"sqlite:///{path}")
    assert not path.exists()  # defining the app touches nothing

    @app.job
    def noop(ctx: fm.JobContext, payload: object) -> None: ...

    app.submit("noop", fm.RunRequest("a"))
    assert path.exists()
    with app.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    app.close()


def test_migrations_produce_exactly_the_declared_schema(store_url: str) -> None:
    store = Store(store_url, create=True)
    try:
        with store.engine.connect() as conn:
            assert migrate.differences(conn) == []
    finally:
        store.close()


def test_postgres_without_tables_asks_for_an_upgrade(pg_template: str) -> None:
    url = sa.make_url(str(pg_template_url(pg_template))).set(database="ferryman_empty_check")
    drop_database("ferryman_empty_check")
    admin = sa.create_engine(pg_template_url("postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql('CREATE DATABASE "ferryman_empty_check"')
    admin.dispose()
    try:
        with pytest.raises(fm.SchemaMismatch, match=r"has no ferryman tables.*ferryman db upgrade"):
            Store(url)
        before, after = upgrade(url)
        assert (before, after) == ((), "0014")
        Store(url).close()  # now it opens
        assert upgrade(url) == (("0014",), "0014")
    finally:
        drop_database("ferryman_empty_check")


def pg_template_url(database: str) -> str:
    from tests.conftest import _database_url

    return _database_url(database)


def test_a_newer_schema_is_refused(store_url: str) -> None:
    Store(store_url, create=True).close()
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = '0099'"))
    engine.dispose()
    with pytest.raises(fm.SchemaMismatch, match="revision 0099, newer than this version"):
        Store(store_url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://", "names no file"),
        ("sqlite:///:memory:", "names no file"),
        ("oracle://root@127.0.0.1/db", "unsupported store URL"),
        ("mysql+mysqldb://root@127.0.0.1/db", "ferryman uses PyMySQL"),
        ("postgresql+asyncpg://u@h/db", "ferryman uses psycopg 3"),
        ("not a url", "invalid store URL"),
        ("sqlite:////no/such/dir/x.db", "directory '/no/such/dir' does not exist"),
    ],
)
def test_bad_store_urls_are_clear_configuration_errors(url: str, message: str) -> None:
    with pytest.raises(fm.ConfigurationError, match=message):
        Store(url)


def test_unreachable_postgres_is_a_clear_error() -> None:
    with pytest.raises(fm.StoreUnavailable, match=r"cannot reach store .*:1/x.*refused") as info:
        Store("postgresql://ferryman:s3cret@127.0.0.1:1/x")
    assert "s3cret" not in str(info.value)  # passwords never reach messages


def test_missing_postgres_database_is_a_clear_error() -> None:
    with pytest.raises(
        fm.ConfigurationError, match='database "ferryman_no_such_db" does not exist'
    ):
        Store(pg_template_url("ferryman_no_such_db"))


@pytest.fixture
def unmigrated_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a PostgreSQL database made for this test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/old.db"
        return
    from tests.conftest import _admin, _database_url

    name = f"ferryman_old_{uuid.uuid4().hex[:12]}"
    with _admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _database_url(name)
    finally:
        drop_database(name)


def store_at_0004_with_history(url: str) -> None:
    """What ferryman 0004 wrote: runs with their log and a transfer, push and poll history."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            command.upgrade(migrate._config(conn), "0004")
            for statement in (
                "INSERT INTO ferryman_runs (id, job, run_key, payload, status, max_attempts,"
                " available_at, created_at, updated_at) VALUES"
                " (1, 'load', 'a', '{}', 'succeeded', 5, 1, 1, 1),"
                " (2, 'load', 'b', '{}', 'queued', 5, 1, 1, 1)",
                "INSERT INTO ferryman_run_events (run_id, kind, at, attempt) VALUES"
                " (1, 'requested', 1, 0), (1, 'succeeded', 2, 1), (2, 'requested', 1, 0)",
                "INSERT INTO ferryman_transfers (id, source_path, bucket, "
                f"{conn.dialect.identifier_preparer.quote('key')}, status, follow,"
                " part_size, run_id, created_at, updated_at) VALUES"
                " (1, '/x', 'b', 'k', 'succeeded', false, 5242880, 1, 1, 1)",
                "INSERT INTO ferryman_sensors (name, kind, updated_at) VALUES"
                " ('orders', 'push', 1), ('orders:eu', 'push', 1), ('poller', 'poll', 1)",
                "INSERT INTO ferryman_sensor_evaluations (id, sensor, idempotency_key, outcome,"
                " state_version_before, state_version_after, started_at, finished_at) VALUES"
                " (1, 'orders', 'push:orders:eu:42', 'ok', 0, 0, 1, 1),"
                " (2, 'orders:eu', 'push:orders:eu:7', 'ok', 0, 0, 1, 1),"
                " (3, 'orders', NULL, 'failed', 0, NULL, 1, 1),"
                " (4, 'poller', 'poll:poller:0', 'ok', 0, 1, 1, 1)",
            ):
                conn.execute(sa.text(statement))
            if conn.dialect.name == "postgresql":  # the ids above were given, not drawn
                for table in ("ferryman_runs", "ferryman_sensor_evaluations"):
                    conn.execute(
                        sa.text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), 10)")
                    )
    finally:
        engine.dispose()


@pytest.mark.parametrize("unmigrated_url", ["sqlite", "postgres"], indirect=True)
@pytest.mark.parametrize("via", ["db upgrade", "opening with create=True"])
def test_upgrading_to_0005_keeps_runs_logs_and_deliveries(unmigrated_url: str, via: str) -> None:
    store_at_0004_with_history(unmigrated_url)
    if via == "db upgrade":
        assert upgrade(unmigrated_url) == (("0004",), "0014")
    else:
        Store(unmigrated_url, create=True).close()
    app = fm.App(unmigrated_url)
    try:

        @app.job
        def load(ctx: fm.JobContext, payload: object) -> None: ...

        def hook(ctx: fm.SensorContext, message: fm.Message) -> None: ...

        app.push_sensor(job="load", name="orders")(hook)
        app.push_sensor(job="load", name="orders:eu")(hook)

        # Nothing referring to the runs was lost while their table was rebuilt.
        assert [len(app.get_run_events(run_id)) for run_id in (1, 2)] == [2, 1]
        transfer = app.store.get_transfer(1)
        assert transfer is not None and transfer.run_id == 1
        # Existing run keys still deduplicate, new ones do not.
        again = app.submit("load", fm.RunRequest("a"), fm.RunRequest("b"), fm.RunRequest("c"))
        assert (again.run_ids[:2], again.created) == ((1, 2), 1)
        # Delivered messages moved to their own table, read by (sensor, message_id).
        first = app.get_evaluations("orders")[0]
        assert (first.message_id, first.idempotency_key) == ("eu:42", "push:orders:eu:42")
        assert app.deliver("orders", "eu:42") == (first, False)
        assert app.deliver("orders:eu", "7")[1] is False
        assert app.deliver("orders:eu", "42")[1] is True  # never delivered: no longer mistaken
        assert app.get_evaluations("poller")[0].message_id is None
        with app.engine.connect() as conn:
            assert migrate.differences(conn) == []
            if conn.dialect.name == "sqlite":
                assert conn.exec_driver_sql("PRAGMA foreign_key_check").all() == []
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        app.close()


def _index_definitions(url: str) -> dict[str, str]:
    """Every index of the store's tables as the database holds it, predicate included."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                rows = conn.execute(
                    sa.text(
                        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
                    )
                )
            else:
                rows = conn.execute(
                    sa.text(
                        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql != ''"
                    )
                )
            return {
                name: " ".join(ddl.replace('"', "").split())
                for name, ddl in rows
                if VERSION_TABLE not in ddl  # Alembic's own table, not declared
            }
    finally:
        engine.dispose()


@pytest.mark.parametrize("unmigrated_url", ["sqlite", "postgres"], indirect=True)
def test_migrations_make_each_index_over_the_declared_rows(
    unmigrated_url: str, request: pytest.FixtureRequest
) -> None:
    """Alembic compares an index's columns, not its predicate: a partial index
    (migration 0010's) is compared here with the one the declaration creates."""
    from ferryman.store.schema import metadata

    on_sqlite = unmigrated_url.startswith("sqlite")
    migrated = str(request.getfixturevalue("sqlite_url" if on_sqlite else "pg_url"))
    Store(migrated, create=True).close()
    declared = sa.create_engine(unmigrated_url)
    try:
        metadata.create_all(declared)
    finally:
        declared.dispose()
    wanted = _index_definitions(unmigrated_url)
    _, predicate = wanted["ix_ferryman_runs_finished_at"].split(" WHERE ")
    assert "finished_at IS NOT NULL" in predicate
    assert _index_definitions(migrated) == wanted


def test_0010_downgrades_and_upgrades_again(store_url: str) -> None:
    """Down to 0009 brings back the whole indexes and the run_key index; up again
    makes exactly the declared ones. (MariaDB has no partial indexes: 0010 changes
    nothing there.)"""
    Store(store_url, create=True).close()
    partial_indexes = "mariadb" not in store_url
    at_head = _index_definitions(store_url) if partial_indexes else {}
    engine = sa.create_engine(store_url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            command.downgrade(migrate._config(conn), "0009")
        if partial_indexes:
            at_0009 = _index_definitions(store_url)
            assert " WHERE " not in at_0009["ix_ferryman_runs_finished_at"]
            assert " WHERE " not in at_0009["ix_ferryman_runs_status_id"]
            assert "ix_ferryman_runs_run_key" in at_0009
        assert _run_events_refer_to_runs(engine)
        _upgrade_to_the_declared_schema(engine)
    finally:
        engine.dispose()
    if partial_indexes:
        assert _index_definitions(store_url) == at_head
    # PostgreSQL's check of each log row's run is left out (a fifth of an enqueue).
    assert _run_events_refer_to_runs(engine) == ("postgresql" not in store_url)


def test_0012_downgrades_and_upgrades_again(store_url: str) -> None:
    """Down to 0011 drops the log's index by worker; up again makes it as declared:
    the claims alone where the store has partial indexes."""
    Store(store_url, create=True).close()
    engine = sa.create_engine(store_url, poolclass=sa.pool.NullPool)
    by_worker = "ix_ferryman_run_events_worker_id"
    try:
        with engine.begin() as conn:
            command.downgrade(migrate._config(conn), "0011")
        with engine.connect() as conn:
            indexes = sa.inspect(conn).get_indexes("ferryman_run_events")
        assert by_worker not in {index["name"] for index in indexes}
        _upgrade_to_the_declared_schema(engine)
    finally:
        engine.dispose()
    if "mariadb" not in store_url:
        _, predicate = _index_definitions(store_url)[by_worker].split(" WHERE ")
        assert "kind = 'claimed'" in predicate


def _running_keys_columns(engine: sa.Engine) -> list[str] | None:
    with engine.connect() as conn:
        indexes = sa.inspect(conn).get_indexes("ferryman_runs")
    named = [ix["column_names"] for ix in indexes if ix["name"] == "ix_ferryman_runs_running_keys"]
    return named[0] if named else None


def test_0013_downgrades_and_upgrades_again(store_url: str) -> None:
    """Down to 0012 brings back the index of running keys by key; 0013 makes it
    by run, over the same rows. (MariaDB has no partial indexes: 0013 changes
    nothing there.)"""
    Store(store_url, create=True).close()
    engine = sa.create_engine(store_url, poolclass=sa.pool.NullPool)
    try:
        at_head = _running_keys_columns(engine)
        with engine.begin() as conn:
            command.downgrade(migrate._config(conn), "0012")
        at_0012 = _running_keys_columns(engine)
        with engine.begin() as conn:
            command.upgrade(migrate._config(conn), "0013")
        at_0013 = _running_keys_columns(engine)
        _upgrade_to_the_declared_schema(engine)
        assert _running_keys_columns(engine) == at_head
    finally:
        engine.dispose()
    if "mariadb" in store_url:
        assert at_0012 == at_0013 == at_head == ["status", "job", "concurrency_digest"]
        return
    assert at_0012 == ["job", "concurrency_digest"]
    assert at_0013 == ["job", "status", "id", "concurrency_digest"]
    if store_url.startswith("sqlite"):  # none since 0014
        assert at_head is None
        return
    assert at_head == at_0013
    _, predicate = _index_definitions(store_url)["ix_ferryman_runs_running_keys"].split(" WHERE ")
    assert "running" in predicate and "concurrency_digest IS NOT NULL" in predicate


def test_0014_drops_the_index_of_running_keys_on_sqlite_alone(store_url: str) -> None:
    Store(store_url, create=True).close()
    engine = sa.create_engine(store_url, poolclass=sa.pool.NullPool)
    try:
        at_head = _running_keys_columns(engine)
        with engine.begin() as conn:
            command.downgrade(migrate._config(conn), "0013")
        at_0013 = _running_keys_columns(engine)
        _upgrade_to_the_declared_schema(engine)
        assert _running_keys_columns(engine) == at_head
    finally:
        engine.dispose()
    assert at_0013 is not None
    assert (at_head is None) == store_url.startswith("sqlite")


def _upgrade_to_the_declared_schema(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        command.upgrade(migrate._config(conn), "head")
    with engine.connect() as conn:
        assert migrate.differences(conn) == []


def _run_events_refer_to_runs(engine: sa.Engine) -> bool:
    with engine.connect() as conn:
        keys = sa.inspect(conn).get_foreign_keys("ferryman_run_events")
    return [(key["referred_table"], key["options"].get("ondelete")) for key in keys] == [
        ("ferryman_runs", "CASCADE")
    ]
