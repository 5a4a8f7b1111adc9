"""The workers page reads at most HOLDING_COUNTED running runs: exact below, honest above."""

from __future__ import annotations

from typing import Any

from starlette.testclient import TestClient

import ferryman as fm
from ferryman.store.read_workers import HOLDING_COUNTED, WORKER_RUNS_SHOWN


def workers_by_id(client: TestClient) -> dict[str, dict[str, Any]]:
    return {w["id"]: w for w in client.get("/api/workers").json()}


def test_a_worker_holding_more_runs_than_the_page_reads_is_shown_as_at_least_that_many(
    client: TestClient, web_app: fm.App
) -> None:
    @web_app.job(name="hold")
    def hold(ctx: fm.JobContext, payload: object) -> None:
        raise AssertionError("claimed by the test, never run")

    store = web_app.store
    for worker in ("holder", "idle"):
        store.register_worker(worker_id=worker, host="test", pid=1, jobs=["hold"])
    requests = [fm.RunRequest(f"held-{n}", {}) for n in range(HOLDING_COUNTED + 2)]
    held = sorted(web_app.submit("hold", *requests).run_ids)
    claimed: list[int] = []
    while len(claimed) < len(held):
        batch = store.claim(worker_id="holder", jobs=["hold"], limit=500, lease_seconds=600)
        assert batch, "every run submitted is due"
        claimed += [c.id for c in batch]
    assert sorted(claimed) == held

    found = workers_by_id(client)
    holder, idle = found["holder"], found["idle"]
    assert holder["holding"] == HOLDING_COUNTED and holder["holding_exact"] is False
    assert holder["running"] == held[:WORKER_RUNS_SHOWN]  # the oldest: exact still
    assert idle["holding"] == 0 and idle["holding_exact"] is False
    page = client.get("/workers").text
    assert f"{HOLDING_COUNTED:,}+ in all" in page
    assert f"none among the oldest {HOLDING_COUNTED:,} running runs" in page

    # Two runs fewer running: every running run is read, and the count is exact again.
    for run_id in held[:2]:
        assert web_app.cancel(run_id) is not None
    found = workers_by_id(client)
    holder, idle = found["holder"], found["idle"]
    assert holder["holding"] == HOLDING_COUNTED and holder["holding_exact"] is True
    assert holder["running"] == held[2 : 2 + WORKER_RUNS_SHOWN]
    assert idle["holding"] == 0 and idle["holding_exact"] is True
    page = client.get("/workers").text
    assert f"{HOLDING_COUNTED} in all" in page and "+ in all" not in page
    assert "none among the oldest" not in page
