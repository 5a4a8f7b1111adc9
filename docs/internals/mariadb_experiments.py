"""The experiments behind docs/internals/mariadb.md, against a real MariaDB server.

Run: ``.venv/bin/python docs/internals/mariadb_experiments.py`` (the server
on 127.0.0.1:3306 as root without a password, or FERRYMAN_TEST_MARIADB). It
makes a database of its own, prints what each experiment found, and drops
the database again. Each experiment is one function; its docstring is the
question.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pymysql
import sqlalchemy as sa
from pymysql.constants import CLIENT

ADMIN = sa.make_url(os.environ.get("FERRYMAN_TEST_MARIADB", "mariadb://root@127.0.0.1:3306/test"))
DATABASE = "ferryman_experiments"


def connect(*, found_rows: bool = True, **kwargs: Any) -> pymysql.connections.Connection[Any]:
    return pymysql.connect(
        host=ADMIN.host or "127.0.0.1",
        port=ADMIN.port or 3306,
        user=ADMIN.username or "root",
        password=ADMIN.password or "",
        database=DATABASE,
        charset="utf8mb4",
        ssl_disabled=True,
        client_flag=CLIENT.FOUND_ROWS if found_rows else 0,
        **kwargs,
    )


def run(conn: pymysql.connections.Connection[Any], sql: str, *params: Any) -> Any:
    with conn.cursor() as cursor:
        cursor.execute(sql, params or None)
        return cursor.fetchall() if cursor.description else cursor.rowcount


def error_of(action: Callable[[], object]) -> str:
    try:
        action()
    except pymysql.err.MySQLError as exc:
        return f"{type(exc).__name__} {exc.args[0]}: {str(exc.args[1])[:90]}"
    return "no error"


def queue(conn: pymysql.connections.Connection[Any], rows: int = 10) -> None:
    run(conn, "DROP TABLE IF EXISTS q")
    run(
        conn,
        "CREATE TABLE q (id BIGINT AUTO_INCREMENT PRIMARY KEY, k VARCHAR(20) NOT NULL UNIQUE,"
        " status VARCHAR(32) NOT NULL, at DOUBLE NOT NULL, token BIGINT NOT NULL DEFAULT 0,"
        " name VARCHAR(10) NOT NULL DEFAULT '', CHECK (status IN ('queued', 'running')),"
        " KEY due (status, at, id)) ENGINE=InnoDB",
    )
    for i in range(rows):
        run(conn, "INSERT INTO q (k, status, at) VALUES (%s, 'queued', %s)", f"k{i}", float(i))
    conn.commit()


def returning() -> None:
    """Which statements take RETURNING?"""
    conn = connect(autocommit=True)
    queue(conn, 2)
    print(
        "  INSERT ... RETURNING:",
        run(
            conn,
            "INSERT INTO q (k, status, at) VALUES"
            " ('r1', 'queued', 1), ('r2', 'queued', 2) RETURNING id, k",
        ),
    )
    print("  DELETE ... RETURNING:", run(conn, "DELETE FROM q WHERE k = 'r2' RETURNING id"))
    print(
        "  UPDATE ... RETURNING:",
        error_of(
            lambda: run(conn, "UPDATE q SET token = token + 1 WHERE k = 'r1' RETURNING token")
        ),
    )
    print(
        "  INSERT ... ON DUPLICATE KEY UPDATE id = id RETURNING (k0 exists, n1 new):",
        run(
            conn,
            "INSERT INTO q (k, status, at) VALUES ('k0', 'queued', 9), ('n1', 'queued', 9)"
            " ON DUPLICATE KEY UPDATE id = id RETURNING id, k",
        ),
    )
    conn.close()


def insert_ignore() -> None:
    """What does INSERT IGNORE ignore besides duplicate keys?"""
    conn = connect(autocommit=True)
    queue(conn, 1)
    for label, sql in [
        ("duplicate key", "INSERT IGNORE INTO q (k, status, at) VALUES ('k0', 'queued', 1)"),
        (
            "too long for the column",
            "INSERT IGNORE INTO q (k, status, at, name)"
            " VALUES ('t1', 'queued', 1, 'abcdefghijKLMNOP')",
        ),
        (
            "NULL into NOT NULL",
            "INSERT IGNORE INTO q (k, status, at) VALUES ('t2', 'queued', NULL)",
        ),
        ("a failed CHECK", "INSERT IGNORE INTO q (k, status, at) VALUES ('t3', 'bogus', 1)"),
    ]:
        try:
            count = run(conn, sql)
        except pymysql.err.MySQLError as exc:
            print(f"  {label}: refused, {exc.args[0]}: {exc.args[1]}")
            continue
        warnings = run(conn, "SHOW WARNINGS")
        print(f"  {label}: {count} row(s) written; warnings {[w[1:] for w in warnings]}")
    print("  rows now:", run(conn, "SELECT k, status, at, name FROM q ORDER BY id"))
    print(
        "  ON DUPLICATE KEY UPDATE id = id, too long:",
        error_of(
            lambda: run(
                conn,
                "INSERT INTO q (k, status, at, name) VALUES ('t4', 'queued', 1, 'abcdefghijKLMNOP')"
                " ON DUPLICATE KEY UPDATE id = id",
            )
        ),
    )
    for flag in (True, False):
        other = connect(found_rows=flag, autocommit=True)
        counts = [
            run(
                other,
                "INSERT INTO q (k, status, at) VALUES (%s, 'queued', 1)"
                " ON DUPLICATE KEY UPDATE at = VALUES(at)",
                key,
            )
            for key in ("u1", "u1", "u1")
        ]
        changed = run(
            other,
            "INSERT INTO q (k, status, at) VALUES ('u1', 'queued', 2)"
            " ON DUPLICATE KEY UPDATE at = VALUES(at)",
        )
        print(
            f"  affected rows, FOUND_ROWS {'on ' if flag else 'off'}: new {counts[0]},"
            f" duplicate unchanged {counts[1]}, duplicate changed {changed}"
        )
        run(other, "DELETE FROM q WHERE k = 'u1'")
        other.close()
    conn.close()


def duplicate_in_a_transaction() -> None:
    """Does a duplicate-key error undo the transaction, or only its statement?"""
    conn = connect()
    queue(conn, 1)
    run(conn, "INSERT INTO q (k, status, at) VALUES ('mine', 'queued', 1)")
    print(
        "  duplicate:",
        error_of(lambda: run(conn, "INSERT INTO q (k, status, at) VALUES ('k0', 'queued', 1)")),
    )
    conn.commit()
    print("  committed after it:", run(conn, "SELECT k FROM q ORDER BY id"))
    run(
        conn,
        "INSERT INTO q (k, status, at) SELECT v.k, 'queued', 1 FROM"
        " (SELECT 'k0' AS k UNION ALL SELECT 'fresh') AS v"
        " WHERE NOT EXISTS (SELECT 1 FROM q WHERE q.k = v.k)",
    )
    print(
        "  INSERT ... SELECT ... WHERE NOT EXISTS (k0 exists, fresh new):",
        run(conn, "SELECT k FROM q ORDER BY id"),
    )
    conn.rollback()
    conn.close()


def found_rows() -> None:
    """What rowcount does a fenced UPDATE that changes nothing report?"""
    for flag in (True, False):
        conn = connect(found_rows=flag, autocommit=True)
        queue(conn, 1)
        same = run(conn, "UPDATE q SET at = 0 WHERE k = 'k0' AND token = 0")
        other = run(conn, "UPDATE q SET at = 5 WHERE k = 'k0' AND token = 0")
        fenced_off = run(conn, "UPDATE q SET at = 6 WHERE k = 'k0' AND token = 7")
        print(
            f"  FOUND_ROWS {'on ' if flag else 'off'}: same values {same},"
            f" new values {other}, token moved on {fenced_off}"
        )
        conn.close()
    engine = sa.create_engine(
        ADMIN.set(drivername="mariadb+pymysql", database=DATABASE), poolclass=sa.pool.NullPool
    )
    with engine.connect() as conn:
        flags = conn.connection.dbapi_connection.client_flag  # type: ignore[union-attr]
        print("  SQLAlchemy's mariadb+pymysql sets FOUND_ROWS:", bool(flags & CLIENT.FOUND_ROWS))
        print(
            "  its rowcount for an unchanged row:",
            conn.execute(sa.text("UPDATE q SET at = 0 WHERE k = 'k0'")).rowcount,
        )
    engine.dispose()


def skip_locked() -> None:
    """Does FOR UPDATE SKIP LOCKED pass over rows another claim holds, without waiting?"""
    a, b = connect(), connect()
    queue(a, 6)
    claim = (
        "SELECT id FROM q WHERE status = 'queued' AND at <= 100 ORDER BY at, id"
        " LIMIT 2 FOR UPDATE SKIP LOCKED"
    )
    started = time.perf_counter()
    first, second = run(a, claim), run(b, claim)
    print(f"  claim A {first}, claim B {second} in {1000 * (time.perf_counter() - started):.1f} ms")
    a.rollback()
    b.rollback()
    a.close()
    b.close()


def isolation() -> None:
    """Does a claim under REPEATABLE READ block an enqueue (gap locks)? Under READ COMMITTED?"""
    for level in ("REPEATABLE READ", "READ COMMITTED"):
        a, b = connect(), connect()
        queue(a, 3)
        for conn in (a, b):
            run(conn, f"SET SESSION TRANSACTION ISOLATION LEVEL {level}")
            run(conn, "SET SESSION innodb_lock_wait_timeout = 1")
        run(
            a,
            "SELECT id FROM q WHERE status = 'queued' AND at <= 100 ORDER BY at, id"
            " LIMIT 10 FOR UPDATE SKIP LOCKED",
        )
        started = time.perf_counter()
        outcome = error_of(
            lambda conn=b: run(conn, "INSERT INTO q (k, status, at) VALUES ('new', 'queued', 50)")
        )
        print(
            f"  {level}: enqueue while a claim holds the due rows -> {outcome}"
            f" after {time.perf_counter() - started:.2f} s"
        )
        a.rollback()
        b.rollback()
        # A plain read sees rows committed after the transaction's first read?
        run(a, "SELECT COUNT(*) FROM q")
        run(b, "INSERT INTO q (k, status, at) VALUES ('later', 'queued', 1)")
        b.commit()
        seen = run(a, "SELECT COUNT(*) FROM q WHERE k = 'later'")[0][0]
        locked = run(a, "SELECT COUNT(*) FROM q WHERE k = 'later' LOCK IN SHARE MODE")[0][0]
        print(
            f"  {level}: a row committed meanwhile: plain read sees {seen},"
            f" locking read sees {locked}"
        )
        a.rollback()
        a.close()
        b.close()


def clock() -> None:
    """Which clock moves within one statement: NOW(6) or SYSDATE(6)? Within a transaction?"""
    conn = connect()
    row = run(
        conn,
        "SELECT UNIX_TIMESTAMP(NOW(6)), SLEEP(0.2), UNIX_TIMESTAMP(NOW(6)),"
        " UNIX_TIMESTAMP(SYSDATE(6)), SLEEP(0.2), UNIX_TIMESTAMP(SYSDATE(6))",
    )[0]
    print(
        f"  NOW(6) across a 0.2 s sleep in one statement: +{float(row[2] - row[0]):.6f} s;"
        f" SYSDATE(6): +{float(row[5] - row[3]):.6f} s"
    )
    first = run(conn, "SELECT UNIX_TIMESTAMP(NOW(6))")[0][0]
    run(conn, "DO SLEEP(0.1)")
    second = run(conn, "SELECT UNIX_TIMESTAMP(NOW(6))")[0][0]
    print(f"  NOW(6) in two statements of one transaction: +{float(second - first):.3f} s")
    for zone in ("+00:00", "+05:30"):
        run(conn, f"SET time_zone = '{zone}'")
        value = run(conn, "SELECT UNIX_TIMESTAMP(SYSDATE(6))")[0][0]
        print(
            f"  time_zone {zone}: UNIX_TIMESTAMP(SYSDATE(6)) - time.time() ="
            f" {float(value) - time.time():+.4f} s ({type(value).__name__})"
        )
    conn.rollback()
    conn.close()


def lock_errors() -> None:
    """Which errors do a lock wait timeout and a deadlock raise, and what do they undo?"""
    a, b = connect(), connect()
    queue(a, 2)
    run(b, "SET SESSION innodb_lock_wait_timeout = 1")
    run(b, "UPDATE q SET token = 1 WHERE k = 'k1'")  # b's own earlier write
    run(a, "UPDATE q SET token = 2 WHERE k = 'k0'")
    print("  wait:", error_of(lambda: run(b, "UPDATE q SET token = 3 WHERE k = 'k0'")))
    a.rollback()
    print(
        "  after it, b's earlier write is still in b's transaction:",
        run(b, "SELECT token FROM q WHERE k = 'k1'")[0][0],
    )
    b.rollback()
    outcome: dict[str, str] = {}
    run(a, "UPDATE q SET token = 4 WHERE k = 'k0'")
    run(b, "UPDATE q SET token = 5 WHERE k = 'k1'")
    waiter = threading.Thread(
        target=lambda: outcome.update(
            a=error_of(lambda: run(a, "UPDATE q SET token = 6 WHERE k = 'k1'"))
        )
    )
    waiter.start()
    time.sleep(0.2)  # let a wait for b's row: the deadlock needs both waiting
    outcome["b"] = error_of(lambda: run(b, "UPDATE q SET token = 7 WHERE k = 'k0'"))
    waiter.join()
    victim = "a" if outcome["a"] != "no error" else "b"
    survivor = b if victim == "a" else a
    print("  deadlock:", outcome)
    print(
        f"  the victim's ({victim}) first write was undone too; the other's goes on:",
        run(survivor, "SELECT k, token FROM q ORDER BY id"),
    )
    a.rollback()
    b.rollback()
    a.close()
    b.close()


def lost_connections() -> None:
    """Which errors does a client see when its connection is cut?"""
    admin = connect(autocommit=True)
    victim = connect(autocommit=True)
    session = run(victim, "SELECT CONNECTION_ID()")[0][0]
    run(admin, f"KILL {session}")
    print("  idle connection killed, then used:", error_of(lambda: run(victim, "SELECT 1")))
    victim = connect(autocommit=True)
    session = run(victim, "SELECT CONNECTION_ID()")[0][0]
    killer = threading.Timer(0.3, lambda: run(connect(autocommit=True), f"KILL {session}"))
    killer.start()
    print("  killed during a query:", error_of(lambda: run(victim, "SELECT SLEEP(5)")))
    killer.join()
    victim = connect(autocommit=True)
    run(victim, "SET SESSION wait_timeout = 1")
    time.sleep(2)  # the server's inactivity timeout is what is being observed
    print("  idle past wait_timeout:", error_of(lambda: run(victim, "SELECT 1")))
    print(
        "  nothing listening:",
        error_of(lambda: pymysql.connect(host="127.0.0.1", port=1, user="root", connect_timeout=2)),
    )
    started = time.perf_counter()
    pymysql.connect(host=ADMIN.host, user=ADMIN.username or "root", password="").close()
    tls = time.perf_counter() - started
    started = time.perf_counter()
    connect().close()
    plain = time.perf_counter() - started
    print(
        f"  connecting: {1000 * tls:.1f} ms with PyMySQL's default (TLS preferred),"
        f" {1000 * plain:.1f} ms with ssl_disabled"
    )
    admin.close()


def refusals() -> None:
    """Which errors say that the URL is wrong (no retry cures them)?"""
    print(
        "  wrong password:",
        error_of(
            lambda: pymysql.connect(
                host=ADMIN.host, user="root", password=f"not {ADMIN.password}", ssl_disabled=True
            )
        ),
    )
    print(
        "  no such database:",
        error_of(
            lambda: pymysql.connect(
                host=ADMIN.host, user="root", database="ferryman_no_such_db", ssl_disabled=True
            )
        ),
    )


def named_locks() -> None:
    """How do GET_LOCK's names and timeouts behave?"""
    a, b = connect(autocommit=True), connect(autocommit=True)
    print(
        "  192 characters:",
        run(a, "SELECT GET_LOCK(REPEAT('x', 192), 0)")[0][0],
        "| 193:",
        error_of(lambda: run(a, "SELECT GET_LOCK(REPEAT('x', 193), 0)")),
    )
    print("  timeout -1:", run(a, "SELECT GET_LOCK('t', -1)")[0][0], run(a, "SHOW WARNINGS"))
    run(a, "SELECT GET_LOCK('held', 0)")
    started = time.perf_counter()
    print(
        "  another session, 1 s timeout:",
        run(b, "SELECT GET_LOCK('held', 1)")[0][0],
        f"after {time.perf_counter() - started:.2f} s; holder",
        run(b, "SELECT IS_USED_LOCK('held') = %s", run(a, "SELECT CONNECTION_ID()")[0][0]),
    )
    a.begin()
    run(a, "DO 1")
    a.commit()
    print(
        "  still held after the holder's COMMIT:", run(b, "SELECT IS_FREE_LOCK('held')")[0][0] == 0
    )
    a.close()
    deadline = time.monotonic() + 5  # the server ends the session just after the socket closes
    while run(b, "SELECT IS_FREE_LOCK('held')")[0][0] != 1 and time.monotonic() < deadline:
        pass
    print("  free once the holder disconnects:", run(b, "SELECT IS_FREE_LOCK('held')")[0][0] == 1)
    b.close()


def packets() -> None:
    """How big may a statement be? A 64 KiB key, a 10 MiB payload, 20 MiB?"""
    conn = connect(autocommit=True)
    run(conn, "DROP TABLE IF EXISTS big")
    run(
        conn,
        "CREATE TABLE big (id INT AUTO_INCREMENT PRIMARY KEY, v LONGTEXT NOT NULL,"
        " KEY v_prefix (v(255)))",
    )
    print("  max_allowed_packet:", run(conn, "SELECT @@max_allowed_packet")[0][0])
    for size in (64 * 1024, 10 << 20, 20 << 20):
        print(
            f"  insert {size:>9,} bytes:",
            error_of(lambda size=size: run(conn, "INSERT INTO big (v) VALUES (%s)", "x" * size)),
        )
    conn.close()


def implicit_commit() -> None:
    """Does DDL commit the transaction around it?"""
    conn = connect()
    queue(conn, 0)
    run(conn, "INSERT INTO q (k, status, at) VALUES ('before-ddl', 'queued', 1)")
    run(conn, "CREATE TABLE IF NOT EXISTS other (id INT PRIMARY KEY)")
    conn.rollback()
    print("  row inserted before CREATE TABLE, after ROLLBACK:", run(conn, "SELECT k FROM q"))
    conn.close()


def polling() -> None:
    """What does an idle poll for due runs cost in ferryman's tables, and which index serves it?"""
    from ferryman.store.schema import metadata  # the tables as a store has them

    engine = sa.create_engine(
        ADMIN.set(drivername="mariadb+pymysql", database=DATABASE), poolclass=sa.pool.NullPool
    )
    metadata.create_all(engine)
    engine.dispose()
    conn = connect(autocommit=True)
    insert = (
        "INSERT INTO ferryman_runs (job, run_key, key_digest, payload, status, max_attempts,"
        " available_at, created_at, updated_at) SELECT IF(seq %% 2, 'load', 'send'),"
        " CONCAT(%s, seq), UNHEX(SHA2(CONCAT(%s, seq), 256)), '{}', %s, 1, seq, seq, seq"
        " FROM seq_1_to_{rows}"
    )
    run(conn, insert.replace("{rows}", "20000"), "done", "done", "succeeded")
    run(conn, insert.replace("{rows}", "50"), "due", "due", "queued")
    run(conn, "ANALYZE TABLE ferryman_runs")
    for jobs in ("'load'", "'load', 'send'"):
        poll = (
            f"SELECT id FROM ferryman_runs WHERE status = 'queued' AND job IN ({jobs})"
            " AND available_at <= UNIX_TIMESTAMP(SYSDATE(6)) ORDER BY available_at, id LIMIT 10"
        )
        plan = run(conn, "EXPLAIN " + poll)[0]
        started = time.perf_counter()
        for _ in range(200):
            run(conn, poll + " FOR UPDATE SKIP LOCKED")
        each = (time.perf_counter() - started) / 200
        print(
            f"  jobs {jobs}: key {plan[5]}, rows {plan[8]} of 20,050, {plan[9]};"
            f" {1000 * each:.2f} ms a claim's SELECT"
        )
    conn.close()


def active_transfer_lookup() -> None:
    """Which index finds an object's active transfer: by bucket and key, or by the digest?"""
    conn = connect(autocommit=True)  # the tables polling() made
    run(
        conn,
        "INSERT INTO ferryman_transfers (source_path, bucket, `key`, status, follow, part_size,"
        " created_at, updated_at) SELECT '/x', 'b', CONCAT('k', seq),"
        " IF(seq % 100 = 0, 'active', 'succeeded'), 0, 5, 1, 1 FROM seq_1_to_20000",
    )
    run(conn, "ANALYZE TABLE ferryman_transfers")
    for label, where in (
        ("bucket, key, status", "bucket = 'b' AND `key` = 'k500' AND status = 'active'"),
        ("digest", "active_object_digest = UNHEX(SHA2(CONCAT('b', CHAR(0), 'k500'), 256))"),
        ("bucket, key", "bucket = 'b' AND `key` = 'k500'"),
    ):
        plan = run(conn, f"EXPLAIN SELECT id FROM ferryman_transfers WHERE {where}")[0]
        print(f"  by {label}: key {plan[5]}, rows {plan[8]} of 20,000 (200 active)")
    conn.close()


def main() -> None:
    admin = pymysql.connect(
        host=ADMIN.host,
        port=ADMIN.port or 3306,
        user=ADMIN.username or "root",
        password=ADMIN.password or "",
        autocommit=True,
        ssl_disabled=True,
    )
    run(admin, f"DROP DATABASE IF EXISTS {DATABASE}")
    run(admin, f"CREATE DATABASE {DATABASE} CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin")
    print("server", run(admin, "SELECT VERSION()")[0][0])
    try:
        for experiment in (
            returning,
            insert_ignore,
            duplicate_in_a_transaction,
            found_rows,
            skip_locked,
            isolation,
            clock,
            lock_errors,
            lost_connections,
            refusals,
            named_locks,
            packets,
            implicit_commit,
            polling,
            active_transfer_lookup,
        ):
            print(f"{experiment.__name__}: {experiment.__doc__}")
            experiment()
    finally:
        run(admin, f"DROP DATABASE IF EXISTS {DATABASE}")
        admin.close()


if __name__ == "__main__":
    main()
