"""Starting worker processes and reading the store, for tests that kill workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import ferryman as fm
from ferryman.store.schema import run_events, runs

REPO = Path(__file__).resolve().parents[2]


def storm_setting(name: str, default: float) -> float:
    """A storm's size or pace: ``FERRYMAN_STORM_<NAME>`` if set, else ``default``.

    The suite runs the storms at their defaults; ``make soak`` (tests/crash/soak.py)
    sets these to run longer ones.
    """
    return float(os.environ.get(f"FERRYMAN_STORM_{name}", default))


def small_storm(store_url: str) -> bool:
    """Whether a big storm runs its small variant: in the suite, on MariaDB.

    The suite runs the big storms (workers, XML pipeline) at full size on
    SQLite and PostgreSQL and smaller on the third store: MariaDB goes through
    the same kills, takeovers and checks, on fewer items, and the storm ends
    once it has struck enough. ``make soak`` (``FERRYMAN_STORM_FULL=1``) runs
    every store at full size and beyond.
    """
    return store_kind(store_url) == "mariadb" and not os.environ.get("FERRYMAN_STORM_FULL")


def storm_size(name: str, store_url: str, *, full: float, small: float) -> float:
    """``FERRYMAN_STORM_<NAME>`` if set, else ``small`` for a :func:`small_storm`, else ``full``."""
    raw = os.environ.get(f"FERRYMAN_STORM_{name}")
    if raw is not None:
        return float(raw)
    return small if small_storm(store_url) else full


def store_kind(store_url: str) -> str:
    """``sqlite``, ``postgres`` or ``mariadb``: which store ``store_url`` names."""
    if store_url.startswith("sqlite"):
        return "sqlite"
    return "postgres" if store_url.startswith("postgresql") else "mariadb"


def storm_range(name: str, default: tuple[float, float]) -> tuple[float, float]:
    """``(low, high)`` from ``FERRYMAN_STORM_<NAME>=low,high`` if set, else ``default``."""
    raw = os.environ.get(f"FERRYMAN_STORM_{name}")
    if raw is None:
        return default
    low, high = (float(part) for part in raw.split(","))
    return (low, high)


def storm_store(request: pytest.FixtureRequest, default: str) -> str:
    """The store URL of a storm that runs on one store: ``FERRYMAN_STORM_STORE``
    (``sqlite`` or ``postgres``) if set, else ``default``."""
    kind = os.environ.get("FERRYMAN_STORM_STORE", default)
    if kind not in ("sqlite", "postgres"):
        raise ValueError(f"FERRYMAN_STORM_STORE={kind!r}: expected sqlite or postgres")
    return str(request.getfixturevalue("sqlite_url" if kind == "sqlite" else "pg_url"))


def report_storm(
    storm: str, store_url: str, *, kills: int, unit: str, items: int, lost: int, duplicated: int
) -> None:
    """Append what a storm did as one JSON line to ``FERRYMAN_STORM_REPORT``, when set.

    Written before the storm's assertions, so a failing storm still says what
    it lost or doubled; ``make soak`` collects the lines into its table.
    """
    path = os.environ.get("FERRYMAN_STORM_REPORT")
    if not path:
        return
    line = {
        "storm": storm,
        "store": store_kind(store_url),
        "kills": kills,
        "unit": unit,
        "items": items,
        "lost": lost,
        "duplicated": duplicated,
    }
    with Path(path).open("a") as out:
        out.write(json.dumps(line) + "\n")


def start_worker(
    store_url: str,
    log: Path,
    *args: str,
    prefix: Sequence[str] = (),
    main: str = "tests.crash.worker_main",
) -> subprocess.Popen[bytes]:
    """``python -m MAIN STORE ARGS``, its output appended to ``log``.

    ``main`` is the worker's module (``tests.crash.async_worker_main`` for
    async jobs); ``prefix`` goes before the command, e.g. ``ip netns exec
    NAME`` to start the worker in a network namespace.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMAN_")}
    with log.open("ab") as output:
        return subprocess.Popen(
            [*prefix, sys.executable, "-m", main, store_url, *args],
            cwd=REPO,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a worker (if it still runs) and reap it."""
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)


def read_report(path: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(path.read_text())
    return report


def status_counts(app: fm.App) -> dict[str, int]:
    with app.store.read("counting runs") as conn:
        rows = conn.execute(sa.select(runs.c.status, sa.func.count()).group_by(runs.c.status))
        return {status: count for status, count in rows}


def live_leases(app: fm.App) -> int:
    """Running runs whose lease has not yet expired, by the store's own clock."""
    with app.store.read("counting live leases") as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).where(
                    runs.c.status == fm.RunStatus.RUNNING.value,
                    runs.c.lease_expires_at >= app.store.backend.now,
                )
            ).scalar_one()
        )


def count_lease_expiries(app: fm.App) -> int:
    """``lease_expired`` rows in the processing log: runs taken over from a dead holder."""
    with app.store.read("counting lease expiries") as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).where(
                    run_events.c.kind == fm.RunEventKind.LEASE_EXPIRED.value
                )
            ).scalar_one()
        )


def lease_holders(app: fm.App) -> set[int]:
    """Pids of the workers that hold a lease on a running run right now."""
    with app.store.read("reading lease owners") as conn:
        owners = conn.execute(
            sa.select(runs.c.lease_owner).where(runs.c.status == fm.RunStatus.RUNNING.value)
        ).scalars()
        return {int(owner.split(":")[1]) for owner in owners if owner}


def lease_expired(app: fm.App, run_id: int) -> bool:
    """The run is running and its lease expired, by the store's own clock."""
    with app.store.read("reading a lease") as conn:
        expired = conn.execute(
            sa.select(runs.c.lease_expires_at < app.store.backend.now).where(
                runs.c.id == run_id, runs.c.status == fm.RunStatus.RUNNING.value
            )
        ).scalar_one_or_none()
        return bool(expired)


def processing_log(app: fm.App) -> dict[str, list[dict[str, Any]]]:
    """Every run's events, oldest first, keyed by run_key."""
    query = (
        sa.select(
            runs.c.run_key,
            run_events.c.kind,
            run_events.c.attempt,
            run_events.c.worker_id,
            run_events.c.lease_token,
        )
        .join(runs, runs.c.id == run_events.c.run_id)
        .order_by(run_events.c.id)
    )
    log: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with app.store.read("reading the processing log") as conn:
        for row in conn.execute(query).mappings():
            log[row["run_key"]].append(dict(row))
    return dict(log)


def assert_taken_over(app: fm.App, run_id: int, first: str, second: str) -> None:
    """The run's log: claimed by worker ``first``, its lease expired, then ``second``
    claimed it and succeeded; nothing else, ``first`` least of all."""
    events = app.get_run_events(run_id)
    assert [(e.kind.value, e.worker_id, e.lease_token, e.attempt) for e in events] == [
        ("requested", None, None, 0),
        ("claimed", first, 1, 1),
        ("lease_expired", None, None, 1),
        ("claimed", second, 2, 2),
        ("succeeded", second, 2, 2),
    ], (run_id, events)
    assert events[2].detail == {"previous_owner": first}
