"""What starting ferryman imports: nothing it does not use.

``import ferryman`` and ``ferryman --help`` must not load the S3 client, the
web server, the migrations or the database drivers, and a tick of a SQLite
store must not load PostgreSQL's driver or Alembic: cron runs ``ferryman
tick`` every minute, and each of those costs more to import than the tick
itself. Nothing here is timed (bench/startup.py measures); each test names the
modules a fresh interpreter loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from ferryman.store import migrate, upgrade

# Top-level packages that the commands below must leave unimported.
HEAVY_FOR_IMPORT = {
    "alembic",
    "boto3",
    "botocore",
    "fastapi",
    "psycopg",
    "pydantic",
    "sqlalchemy",
    "starlette",
    "uvicorn",
}
HEAVY_FOR_HELP = HEAVY_FOR_IMPORT - {"pydantic"}  # Typer parses options with pydantic
HEAVY_FOR_TICK = {"alembic", "boto3", "botocore", "fastapi", "psycopg", "starlette", "uvicorn"}

# Runs ``code`` (after the command's own work) and prints the top-level
# packages then loaded, as JSON on the last line of stdout.
REPORT = (
    "import atexit, json, sys\n"
    "atexit.register(lambda: print(json.dumps(sorted({m.split('.')[0] for m in sys.modules}))))\n"
)


def loaded_by(code: str, *, cwd: Path | None = None) -> set[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMAN_")}
    completed = subprocess.run(
        [sys.executable, "-c", REPORT + code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=environment,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return set(json.loads(completed.stdout.strip().splitlines()[-1]))


def test_import_ferryman_loads_no_database_web_or_s3_library() -> None:
    assert loaded_by("import ferryman") & HEAVY_FOR_IMPORT == set()


def test_the_public_names_still_resolve_on_first_use() -> None:
    loaded = loaded_by(
        "import ferryman as fm\n"
        "assert all(getattr(fm, name) is not None for name in fm.__all__)\n"
        "assert set(fm.__all__) <= set(dir(fm))\n"
        "assert callable(fm.sensors.sql_table) and callable(fm.transfer.upload)\n"
    )
    assert "sqlalchemy" in loaded  # App and the SQL table sensor need it, once asked for


def test_ferryman_help_loads_no_database_web_or_s3_library() -> None:
    loaded = loaded_by(
        "import sys\n"
        "from ferryman.cli import main\n"
        "sys.argv = ['ferryman', '--help']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exit:\n"
        "    assert exit.code in (0, None), exit.code\n"
    )
    assert loaded & HEAVY_FOR_HELP == set()


def test_a_tick_of_a_sqlite_store_loads_no_migrations_driver_or_server(tmp_path: Path) -> None:
    (tmp_path / "tick_app.py").write_text(
        "import ferryman as fm\n"
        "app = fm.App('sqlite:///tick.db')\n"
        "@app.job()\n"
        "def load(ctx, payload):\n"
        "    pass\n"
        "@app.poll_sensor(job='load', interval=0.0)\n"
        "def nothing(ctx, cursor):\n"
        "    return fm.SensorResult(run_requests=[], cursor=cursor)\n"
    )
    tick = (
        "import sys\n"
        "from ferryman.cli import main\n"
        "sys.argv = ['ferryman', '--app', 'tick_app:app', 'tick', '--json']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exit:\n"
        "    assert exit.code in (0, None), exit.code\n"
    )
    loaded_by(tick, cwd=tmp_path)  # the first tick creates the store (Alembic may load)
    loaded = loaded_by(tick, cwd=tmp_path)
    assert loaded & HEAVY_FOR_TICK == set()
    assert "sqlalchemy" in loaded


def test_the_head_read_from_the_migration_files_is_alembics(store_url: str) -> None:
    """The start-up check without Alembic agrees with Alembic, on every store."""
    upgrade(store_url)
    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as conn:
            found = migrate.revisions(conn)
            assert migrate.code_head() == found.head
            assert migrate.up_to_date(conn) is found.up_to_date is True
    finally:
        engine.dispose()


def test_a_store_behind_the_code_is_not_up_to_date(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE ferryman_alembic_version SET version_num = '0006'"))
        with engine.connect() as conn:
            assert migrate.up_to_date(conn) is False
            assert migrate.revisions(conn).up_to_date is False
    finally:
        engine.dispose()
