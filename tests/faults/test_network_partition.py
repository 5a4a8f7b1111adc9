"""A worker cut off from PostgreSQL by the network: fenced while away, back to work after.

Worker A runs in a network namespace of the test's own and reaches a private
PostgreSQL cluster over a veth pair (``tests/netns.py``; it needs root and is
skipped, saying so, otherwise). A claims runs whose jobs wait at a gate. The
test then cuts the link, at a moment when A has no transaction open on the
server, and keeps it cut past A's leases: worker B, on this host, takes the
runs over and completes them. The link comes back and A's jobs go on to
``ctx.transaction()``: their commits must be refused. Then A must work
normally again: it completes new runs on their first attempt.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

import ferryman as fm
from ferryman.store import upgrade
from tests.crash.support import (
    assert_taken_over,
    lease_expired,
    read_report,
    start_worker,
    stop,
)
from tests.crash.worker_main import build_app, effects, metadata
from tests.helpers import wait_until
from tests.netns import Link, unavailable, veth_namespace
from tests.private_pg import PrivateCluster, private_postgres

LEASE_SECONDS = 2.0
HELD = 4  # runs A holds, mid-job, when the link is cut
AFTER = 20  # runs A completes once the link is back


@pytest.fixture
def link() -> Iterator[Link]:
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    with veth_namespace() as joined:
        yield joined


@pytest.fixture
def cluster(link: Link) -> Iterator[PrivateCluster]:
    with private_postgres(listen=[link.host_address], trust=[link.network]) as cluster:
        cluster.start()
        yield cluster


def sessions_in_transaction(app: fm.App, client: str) -> int:
    """Server sessions of ``client`` inside a transaction (holding row locks, perhaps)."""
    with app.store.read("looking for open transactions") as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE client_addr = "
                    "CAST(:client AS inet) AND state <> 'idle'"
                ),
                {"client": client},
            ).scalar_one()
        )


def cut_past_the_leases(link: Link, app: fm.App, run_ids: list[int]) -> None:
    """Cut the link and keep it cut until A's leases expired, A holding no transaction.

    Cut inside a transaction, A would keep the rows it updated locked on the
    server for as long as the server believes the connection alive, and
    nobody could take them over. The check is made once the leases expired,
    long after anything sent before the cut has reached the server; if A was
    caught inside a transaction, the link comes back, A renews its leases,
    and the cut is tried again.
    """

    def cut_cleanly() -> bool:
        link.cut()
        wait_until(
            lambda: all(lease_expired(app, run_id) for run_id in run_ids),
            timeout=LEASE_SECONDS * 20,
            what="A's leases to expire",
        )
        if sessions_in_transaction(app, link.namespace_address) == 0:
            return True
        link.restore()
        wait_until(
            lambda: not any(lease_expired(app, run_id) for run_id in run_ids),
            timeout=LEASE_SECONDS * 20,
            what="A to renew its leases",
        )
        return False

    wait_until(cut_cleanly, timeout=120, what="a cut while A holds no transaction")


@pytest.mark.fault
@pytest.mark.timeout(150)
def test_a_worker_cut_off_from_postgres_is_fenced_then_resumes(
    link: Link, cluster: PrivateCluster, tmp_path: Path
) -> None:
    cluster.create_database("ferryman")
    here = cluster.url("ferryman")
    over_the_link = cluster.url("ferryman", host=link.host_address)
    upgrade(here)
    app = build_app(here, lease_seconds=LEASE_SECONDS)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        metadata.create_all(app.engine)
        held = app.submit("zombie", *(fm.RunRequest(f"held-{i}") for i in range(HELD))).run_ids
        common = ("--lease-seconds", str(LEASE_SECONDS), "--prefetch", "0")

        # -- A, in the namespace, claims the runs; their jobs wait at the gate -----
        a = start_worker(
            over_the_link,
            tmp_path / "a.log",
            *common,
            *("--concurrency", str(HELD), "--gate", str(tmp_path)),
            *("--report", str(tmp_path / "a.json")),
            prefix=link.command(),
        )
        processes.append(a)
        wait_until(
            lambda: all((tmp_path / f"held-{i}.started").exists() for i in range(HELD)),
            what="A's jobs to start",
        )

        # -- the link is cut past the leases; B takes the runs over ----------------
        cut_past_the_leases(link, app, held)
        b = start_worker(
            here,
            tmp_path / "b.log",
            *common,
            *("--concurrency", str(HELD), "--until-idle", "--report", str(tmp_path / "b.json")),
        )
        processes.append(b)
        assert b.wait(timeout=60) == 0, (tmp_path / "b.log").read_text()
        b_report = read_report(tmp_path / "b.json")
        assert (b_report["claimed"], b_report["succeeded"], b_report["lease_lost"]) == (
            HELD,
            HELD,
            0,
        )

        # -- the link comes back; A's jobs reach ctx.transaction() -----------------
        link.restore()
        for i in range(HELD):
            (tmp_path / f"held-{i}.go").touch()

        # -- A works normally again ------------------------------------------------
        after = app.submit("contention", *(fm.RunRequest(f"after-{i}") for i in range(AFTER)))
        wait_until(
            lambda: all(
                run.status is fm.RunStatus.SUCCEEDED for run in app.get_runs(job="contention")
            ),
            timeout=60,
            what="A to complete the runs submitted after the cut",
        )
        a.terminate()
        assert a.wait(timeout=60) == 0, (tmp_path / "a.log").read_text()
        a_report = read_report(tmp_path / "a.json")
        assert a_report["errors"] == []
        assert (a_report["claimed"], a_report["succeeded"], a_report["lease_lost"]) == (
            HELD + AFTER,
            AFTER,
            HELD,
        ), (tmp_path / "a.log").read_text()

        # -- every run succeeded once, and A committed nothing for the runs it lost --
        with app.store.read("reading effects") as conn:
            rows = conn.execute(
                sa.select(effects.c.run_key, effects.c.worker_id, effects.c.attempt)
                .add_columns(effects.c.lease_token)
                .order_by(effects.c.run_key)
            ).all()
        a_id, b_id = a_report["worker_id"], b_report["worker_id"]
        assert sorted(tuple(row) for row in rows) == sorted(
            [(f"held-{i}", b_id, 2, 2) for i in range(HELD)]
            + [(f"after-{i}", a_id, 1, 1) for i in range(AFTER)]
        )
        for run_id in held:
            assert_taken_over(app, run_id, a_id, b_id)
        for run_id in after.run_ids:
            kinds = [event.kind.value for event in app.get_run_events(run_id)]
            assert kinds == ["requested", "claimed", "succeeded"]
    finally:
        for process in processes:
            stop(process)
        app.close()
