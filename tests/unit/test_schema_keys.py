"""What the schema's keys refuse and accept, the same on SQLite, PostgreSQL and MariaDB.

MariaDB holds the unique partial indexes differently (a unique generated
column) and compares text by its collation: these tests write rows with SQL
directly and check that each database keeps the same meaning.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from ferryman.store import keys, upgrade
from ferryman.store.schema import runs, sensor_evaluations, sensors, transfers
from tests.helpers import incompressible


@pytest.fixture(params=["sqlite", "postgres", "mariadb"])
def schema_url(request: pytest.FixtureRequest) -> str:
    """A database migrated to the newest revision, on each of the three."""
    if request.param == "sqlite":
        url = str(request.getfixturevalue("sqlite_url"))
        upgrade(url)
        return url
    return str(request.getfixturevalue("pg_url" if request.param == "postgres" else "mariadb_url"))


@pytest.fixture
def database(schema_url: str) -> Any:
    engine = sa.create_engine(schema_url, poolclass=sa.pool.NullPool)
    yield engine
    engine.dispose()


def writes(engine: sa.Engine) -> Callable[[sa.Executable], bool]:
    """A function that runs one statement in a transaction: True if committed,
    False if a unique key refused it."""

    def write(statement: sa.Executable) -> bool:
        try:
            with engine.begin() as conn:
                conn.execute(statement)
        except sa.exc.IntegrityError:
            return False
        return True

    return write


def transfer(bucket: str, key: str, status: str = "active") -> sa.Insert:
    return transfers.insert().values(
        source_path="/data/x",
        bucket=bucket,
        key=key,
        status=status,
        follow=False,
        part_size=5 << 20,
        created_at=1.0,
        updated_at=1.0,
    )


def test_one_active_transfer_per_object(database: sa.Engine) -> None:
    write = writes(database)
    long_key = incompressible(1000)  # S3 keys are at most 1024 bytes
    assert write(transfer("b", "k"))
    assert not write(transfer("b", "k"))  # a second writer of the object
    assert write(transfer("b", "k", "succeeded"))  # finished ones do not count
    assert write(transfer("b", "k", "failed"))
    assert write(transfer("b", "k", "succeeded"))
    assert write(transfer("b", "k2")) and write(transfer("b2", "k"))
    assert write(transfer("b", "K"))  # another object
    assert write(transfer("b", long_key + "x")) and write(transfer("b", long_key + "y"))
    assert not write(transfer("b", long_key + "x"))
    # Once the active transfer finishes, the object can be written again.
    with database.begin() as conn:
        conn.execute(
            transfers.update()
            .where(
                transfers.c.key == "k", transfers.c.bucket == "b", transfers.c.status == "active"
            )
            .values(status="succeeded")
        )
    assert write(transfer("b", "k"))


def evaluation(key: str | None, message_id: str | None = None) -> sa.Insert:
    return sensor_evaluations.insert().values(
        sensor="s",
        idempotency_key=key,
        message_id=message_id,
        outcome="ok",
        state_version_before=0,
        started_at=1.0,
        finished_at=1.0,
    )


def test_one_poll_evaluation_per_key(database: sa.Engine) -> None:
    write = writes(database)
    assert write(sensors.insert().values(name="s", kind="poll", updated_at=1.0))
    assert write(evaluation("poll:s:1"))
    assert not write(evaluation("poll:s:1"))
    assert write(evaluation("poll:s:2"))
    # Push evaluations are unique by their delivery, not by this key.
    assert write(evaluation("poll:s:1", message_id="m")) and write(evaluation("poll:s:1", "m"))
    assert write(evaluation(None)) and write(evaluation(None))  # no key, no constraint


# Distinct in PostgreSQL's comparison: case, accents, a trailing space, and the
# two spellings of é (one code point, or e and a combining accent).
LOOKALIKES = ["a", "A", "a ", "e", "é", "e\u0301"]


def test_keys_that_differ_in_case_accent_or_trailing_space_stay_distinct(
    database: sa.Engine,
) -> None:
    write = writes(database)
    for name in LOOKALIKES:
        assert write(sensors.insert().values(name=name, kind="poll", updated_at=1.0)), name
        assert write(run(job=name, run_key=name)), name
    with database.connect() as conn:
        for name in LOOKALIKES:
            found = conn.execute(sa.select(sensors.c.name).where(sensors.c.name == name))
            assert found.scalars().all() == [name]
            found = conn.execute(
                sa.select(runs.c.job).where(runs.c.job == name, runs.c.run_key == name)
            )
            assert found.scalars().all() == [name]


def run(*, job: str, run_key: str, payload: str = "{}") -> sa.Insert:
    return runs.insert().values(
        job=job,
        run_key=run_key,
        key_digest=keys.run_key_digest(job, run_key),
        payload=payload,
        status="queued",
        max_attempts=1,
        available_at=1.0,
        created_at=1.0,
        updated_at=1.0,
    )


def test_run_keys_and_payloads_of_any_length(database: sa.Engine) -> None:
    """Past MariaDB's 64 KiB TEXT and past any index entry; found by the key itself."""
    run_key = incompressible(100_000)
    payload = '{"x": "' + "x" * 100_000 + '"}'  # MariaDB's TEXT stops at 65,535 bytes
    assert writes(database)(run(job="load", run_key=run_key, payload=payload))
    assert writes(database)(run(job="load", run_key=run_key[:-1]))
    with database.connect() as conn:
        found = conn.execute(sa.select(runs.c.payload).where(runs.c.run_key == run_key)).all()
    assert found == [(payload,)]


@pytest.mark.parametrize("schema_url", ["mariadb"], indirect=True)
def test_mariadb_active_object_digest_is_the_sha256_of_bucket_nul_key(
    database: sa.Engine,
) -> None:
    """What a MariaDB store looks an active transfer up by: computed in Python alike."""
    key = "dossier/été/" + incompressible(1000)
    assert writes(database)(transfer("bucket", key))
    with database.connect() as conn:
        digest = conn.execute(sa.text("SELECT active_object_digest FROM ferryman_transfers"))
        assert bytes(digest.scalar_one()) == hashlib.sha256(b"bucket\0" + key.encode()).digest()
