"""Opening a store: migrations, schema checks and clear errors for bad URLs."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

import ferryman as fm
from ferryman.store import Store, upgrade
from ferryman.store.migrate import VERSION_TABLE
from ferryman.store.schema import metadata
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
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            diff = compare_metadata(context, metadata)
        assert diff == []
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
        assert (before, after) == ((), "0004")
        Store(url).close()  # now it opens
        assert upgrade(url) == (("0004",), "0004")
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
        ("mysql://root@127.0.0.1/db", "unsupported store URL"),
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
