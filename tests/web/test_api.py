"""The JSON API on both stores, with real runs, sensors and evaluations behind it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from starlette.testclient import TestClient

import ferryman as fm
from ferryman.store import Outcome, OutcomeKind
from ferryman.store.schema import runs as runs_table
from tests.helpers import wait_until
from tests.web.conftest import AUTH
from tests.web.web_app import MIB, add_transfer


def run_by_key(client: TestClient, key: str) -> dict[str, Any]:
    runs = client.get("/api/runs", params={"limit": 500}).json()["items"]
    (run,) = [r for r in runs if r["run_key"] == key]
    return run


def test_summary_counts_every_run_and_the_last_hour(client: TestClient) -> None:
    summary = client.get("/api/summary").json()
    by_job = {j["job"]: j["counts"] for j in summary["jobs"]}
    assert by_job == {"load": {"succeeded": 4, "failed": 1}, "flaky": {"dead": 1}}
    assert summary["totals"] == {"succeeded": 4, "failed": 1, "dead": 1}
    assert len(summary["throughput"]) == 60
    assert sum(m["succeeded"] for m in summary["throughput"]) == 4
    assert sum(m["failed"] for m in summary["throughput"]) == 2
    assert {s["name"] for s in summary["sensors"]} == {"numbers", "inbox"}


def test_runs_filter_and_page_by_keyset(client: TestClient) -> None:
    dead = client.get("/api/runs", params={"status": "dead"}).json()
    assert [r["run_key"] for r in dead["items"]] == ["flaky-1"]
    assert "upstream unavailable for 3" in dead["items"][0]["last_error"]
    load = client.get("/api/runs", params={"job": "load", "status": "succeeded"}).json()
    assert len(load["items"]) == 4
    seen = all_run_ids(client, limit=2)
    assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen)) == 6
    future = client.get("/api/runs", params={"since": "2999-01-01T00:00:00Z"}).json()
    assert future["items"] == []


def all_run_ids(client: TestClient, **params: Any) -> list[int]:
    """The ids of every run ``/api/runs`` lists with ``params``, page after page."""
    seen: list[int] = []
    before: int | None = None
    while True:
        paging = {} if before is None else {"before_id": before}
        page = client.get("/api/runs", params={**params, **paging}).json()
        seen += [item["id"] for item in page["items"]]
        before = page["next_before"]
        if before is None:
            return seen


def test_a_run_shows_its_processing_log_and_hides_sensitive_fields(client: TestClient) -> None:
    secret = run_by_key(client, "secret-1")
    assert secret["payload"] == {"n": 1, "password": "***"}
    detail = client.get(f"/api/runs/{secret['id']}").json()
    assert [e["kind"] for e in detail["events"]] == ["requested", "claimed", "succeeded"]
    assert "hunter2" not in client.get(f"/api/runs/{secret['id']}").text
    assert "hunter2" not in client.get("/api/runs").text
    dead = run_by_key(client, "flaky-1")
    detail = client.get(f"/api/runs/{dead['id']}").json()
    assert detail["run"]["status"] == "dead"
    assert "Traceback" in detail["run"]["last_error"]
    assert client.get("/api/runs/999999").status_code == 404


def test_dead_letters_group_failed_and_dead_runs_by_error(client: TestClient) -> None:
    groups = client.get("/api/dead-letters").json()
    assert {(g["job"], g["status"], g["count"]) for g in groups} == {
        ("load", "failed", 1),
        ("flaky", "dead", 1),
    }
    (flaky,) = [g for g in groups if g["job"] == "flaky"]
    assert flaky["error"] == "RuntimeError: upstream unavailable for N"


def test_sensors_and_their_evaluations(client: TestClient) -> None:
    numbers = client.get("/api/sensors/numbers").json()
    assert numbers["cursor"] == "2" and numbers["status"] == "running"
    page = client.get("/api/sensors/numbers/evaluations", params={"limit": 1}).json()
    assert [e["cursor_after"] for e in page["items"]] == ["2"]
    older = client.get(
        "/api/sensors/numbers/evaluations", params={"before_id": page["next_before"]}
    ).json()
    assert [e["cursor_after"] for e in older["items"]] == ["1"]
    assert older["next_before"] is None
    assert client.get("/api/sensors/nope").status_code == 404
    assert client.get("/api/sensors/nope/evaluations").status_code == 404


def test_workers_and_transfers_lists(client: TestClient) -> None:
    workers = client.get("/api/workers").json()
    assert workers and all(not w["alive"] and w["running"] == [] for w in workers)
    assert client.get("/api/transfers").json() == {"items": [], "next_before": None}
    assert client.get("/api/transfers/1").status_code == 404


def test_retry_then_a_worker_runs_it_again(
    client: TestClient, web_app: fm.App, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = run_by_key(client, "flaky-1")
    response = client.post("/api/runs/retry", json={"run_ids": [dead["id"]]}, headers=AUTH)
    assert response.status_code == 200 and response.json() == {"retried": [dead["id"]]}
    assert client.get(f"/api/runs/{dead['id']}").json()["run"]["status"] == "queued"
    fixed = tmp_path / "fixed"
    fixed.touch()
    monkeypatch.setenv("FERRYMAN_TEST_FLAKY_FIXED", str(fixed))
    web_app.work(until_idle=True, concurrency=1, handle_signals=False)
    assert client.get(f"/api/runs/{dead['id']}").json()["run"]["status"] == "succeeded"
    nothing = client.post("/api/runs/retry", json={"job": "flaky"}, headers=AUTH)
    assert nothing.json() == {"retried": []}
    assert client.post("/api/runs/retry", json={}, headers=AUTH).status_code == 400
    wrong = client.post("/api/runs/retry", json={"status": "succeeded"}, headers=AUTH)
    assert wrong.status_code == 422


def test_cancel_a_running_run_revokes_its_lease(client: TestClient, web_app: fm.App) -> None:
    (run_id,) = web_app.submit("load", fm.RunRequest("busy", {"n": 1})).run_ids
    (claimed,) = web_app.store.claim(worker_id="w", jobs=["load"], limit=1, lease_seconds=30)
    assert claimed.id == run_id
    cancelled = client.post(f"/api/runs/{run_id}/cancel", headers=AUTH)
    assert cancelled.status_code == 200 and cancelled.json()["run"]["status"] == "cancelled"
    success = Outcome(kind=OutcomeKind.SUCCEEDED, lease=claimed.lease, attempt=claimed.attempt)
    assert web_app.store.finish([success], worker_id="w") == [False]  # the lease is gone
    detail = client.get(f"/api/runs/{run_id}").json()
    assert detail["run"]["status"] == "cancelled"
    assert detail["events"][-1]["detail"] == {"by": "api", "was": "running"}


def test_cancel_a_queued_run_only(client: TestClient, web_app: fm.App) -> None:
    (run_id,) = web_app.submit("load", fm.RunRequest("later", {"n": 9})).run_ids
    cancelled = client.post(f"/api/runs/{run_id}/cancel", headers=AUTH)
    assert cancelled.status_code == 200 and cancelled.json()["run"]["status"] == "cancelled"
    again = client.post(f"/api/runs/{run_id}/cancel", headers=AUTH)
    assert again.status_code == 409
    assert "cancelled, not queued or running" in again.json()["detail"]
    assert client.post("/api/runs/424242/cancel", headers=AUTH).status_code == 404


def test_pause_resume_and_set_cursor(client: TestClient, web_app: fm.App) -> None:
    paused = client.post("/api/sensors/numbers/pause", headers=AUTH)
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    assert web_app.get_sensor("numbers").status == "paused"
    assert web_app.tick(["numbers"], force=True) == []
    resumed = client.post("/api/sensors/numbers/resume", headers=AUTH).json()
    assert resumed["status"] == "running"
    moved = client.put(
        "/api/sensors/numbers/cursor", json={"cursor": "100", "by": "alice"}, headers=AUTH
    )
    assert moved.status_code == 200
    assert moved.json()["outcome"] == "manual" and moved.json()["evaluator"] == "alice"
    assert web_app.get_sensor("numbers").cursor == "100"
    (latest,) = web_app.get_evaluations("numbers", limit=1)
    assert (latest.cursor_before, latest.cursor_after) == ("2", "100")
    missing = client.post("/api/sensors/nope/pause", headers=AUTH)
    assert missing.status_code == 404 and "unknown sensor 'nope'" in missing.json()["detail"]


def test_ingest_is_idempotent_201_then_200(client: TestClient, web_app: fm.App) -> None:
    body = {"message_id": "order-7", "payload": {"n": 7}}
    first = client.post("/api/sensors/inbox/messages", json=body, headers=AUTH)
    again = client.post("/api/sensors/inbox/messages", json=body, headers=AUTH)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"] and first.json()["runs_requested"] == 1
    assert [r.run_key for r in web_app.get_runs(job="load") if r.run_key == "msg-order-7"] == [
        "msg-order-7"
    ]
    empty = client.post("/api/sensors/inbox/messages", json={"message_id": ""}, headers=AUTH)
    assert empty.status_code == 422
    web_app.pause_sensor("inbox")
    paused = client.post(
        "/api/sensors/inbox/messages", json={"message_id": "order-8"}, headers=AUTH
    )
    assert paused.status_code == 422 and paused.json()["outcome"] == "failed"
    assert "paused" in paused.json()["error"]
    unknown = client.post("/api/sensors/nope/messages", json=body, headers=AUTH)
    assert unknown.status_code == 404


def test_openapi_schema_lists_every_endpoint(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/api/summary",
        "/api/sensors",
        "/api/sensors/{name}",
        "/api/sensors/{name}/evaluations",
        "/api/sensors/{name}/pause",
        "/api/sensors/{name}/resume",
        "/api/sensors/{name}/cursor",
        "/api/sensors/{name}/messages",
        "/api/runs",
        "/api/runs/{run_id}",
        "/api/runs/retry",
        "/api/runs/{run_id}/cancel",
        "/api/dead-letters",
        "/api/transfers",
        "/api/transfers/{transfer_id}",
        "/api/workers",
    } <= set(paths)


def test_a_live_worker_is_listed_with_the_run_it_holds(client: TestClient, web_app: fm.App) -> None:
    release = threading.Event()

    @web_app.job(name="hold")
    def hold(ctx: fm.JobContext, payload: object) -> None:
        release.wait(timeout=60)

    (held,) = web_app.submit("hold", fm.RunRequest("held-1", {})).run_ids
    worker = threading.Thread(
        target=web_app.work,
        kwargs={"until_idle": True, "concurrency": 1, "jobs": ["hold"], "handle_signals": False},
    )
    worker.start()
    try:

        def holding() -> list[dict[str, Any]]:
            return [w for w in client.get("/api/workers").json() if w["running"] == [held]]

        (live,) = wait_until(holding, what="a worker holding the run")
        assert live["alive"] is True and live["stopped_at"] is None
        others = [w for w in client.get("/api/workers").json() if w["id"] != live["id"]]
        assert others and all(not w["alive"] and w["running"] == [] for w in others)
        run = client.get(f"/api/runs/{held}").json()["run"]
        assert run["status"] == "running" and run["lease_owner"] == live["id"]
        page = client.get("/workers").text
        assert f'<a href="/runs/{held}">{held}</a>' in page
    finally:
        release.set()
        worker.join(timeout=60)
    (stopped,) = [w for w in client.get("/api/workers").json() if w["id"] == live["id"]]
    assert stopped["alive"] is False and stopped["running"] == []
    assert stopped["stopped_at"] is not None


def test_a_worker_holding_many_runs_lists_the_oldest_twenty_and_counts_them_all(
    client: TestClient, web_app: fm.App
) -> None:
    release = threading.Event()

    @web_app.job(name="hold")
    def hold(ctx: fm.JobContext, payload: object) -> None:
        release.wait(timeout=60)

    held = web_app.submit("hold", *[fm.RunRequest(f"held-{n}", {}) for n in range(25)]).run_ids
    worker = threading.Thread(
        target=web_app.work,
        kwargs={"until_idle": True, "concurrency": 25, "jobs": ["hold"], "handle_signals": False},
    )
    worker.start()
    try:
        (busy,) = wait_until(
            lambda: [w for w in client.get("/api/workers").json() if w["holding"] == 25],
            what="a worker holding all 25 runs",
        )
        assert busy["running"] == sorted(held)[:20]
        assert "25 in all" in client.get("/workers").text
    finally:
        release.set()
        worker.join(timeout=60)


def test_the_summary_says_when_it_counted_and_recounts_in_the_background(
    client: TestClient, web_app: fm.App
) -> None:
    first = client.get("/api/summary").json()
    assert first["totals"] == {"succeeded": 4, "failed": 1, "dead": 1}
    counted_at = datetime.fromisoformat(first["counts_as_of"])
    assert abs(counted_at.timestamp() - time.time()) < 60
    web_app.submit("load", fm.RunRequest("queued-later", {}))
    # The count is at most a few seconds old; the next ones see the new run.
    later = wait_until(
        lambda: (s := client.get("/api/summary").json())["totals"].get("queued") == 1 and s,
        what="the summary to count the new run",
    )
    assert datetime.fromisoformat(later["counts_as_of"]) > counted_at


def test_a_transfer_shows_its_bytes_and_parts(client: TestClient, web_app: fm.App) -> None:
    transfer_id = add_transfer(web_app, parts=2, source_size=12 * MIB)
    detail = client.get(f"/api/transfers/{transfer_id}").json()
    transfer = detail["transfer"]
    assert transfer["uri"] == "s3://bucket/a.bin" and transfer["status"] == "active"
    assert (transfer["bytes_confirmed"], transfer["parts_confirmed"]) == (10 * MIB, 2)
    assert transfer["source_size"] == 12 * MIB and transfer["part_size"] == 5 * MIB
    assert [(p["part_number"], p["start"], p["size"]) for p in detail["parts"]] == [
        (1, 0, 5 * MIB),
        (2, 5 * MIB, 5 * MIB),
    ]
    listed = client.get("/api/transfers", params={"status": "active"}).json()["items"]
    assert [t["id"] for t in listed] == [transfer_id]


def test_a_transfer_with_crc32_parts_shows_their_checksums(
    client: TestClient, web_app: fm.App
) -> None:
    transfer_id = add_transfer(web_app, parts=2, crc32=True)
    detail = client.get(f"/api/transfers/{transfer_id}").json()
    assert detail["transfer"]["checksum_algorithm"] == "CRC32"
    assert [(p["crc32"], p["sha256"]) for p in detail["parts"]] == [
        ("crc-of-part-1", None),
        ("crc-of-part-2", None),
    ]
    page = client.get(f"/transfers/{transfer_id}")
    assert page.status_code == 200 and "CRC32 crc-of-part-2" in page.text


@pytest.fixture
def server_far_from_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The server's local time is UTC-5: a naive time read as local time would be 5 h off."""
    monkeypatch.setenv("TZ", "EST+5")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def runs_created_apart(app: fm.App, keys: list[str]) -> list[float]:
    """Submit a run per key, each created after the database clock moved on; their times."""
    created = []
    for key in keys:
        (run_id,) = app.submit("load", fm.RunRequest(key, {"n": 0})).run_ids
        run = app.get_run(run_id)
        assert run is not None
        created.append(run.created_at.timestamp())

        def clock_moved_on() -> bool:
            return app.store.now() > created[-1] + 0.01

        wait_until(clock_moved_on, what="the database clock to move on")
    return created


def test_runs_in_a_since_until_window(
    client: TestClient, web_app: fm.App, server_far_from_utc: None
) -> None:
    first, second, third = runs_created_apart(web_app, ["w-1", "w-2", "w-3"])
    since = datetime.fromtimestamp((first + second) / 2, UTC)
    until = datetime.fromtimestamp((second + third) / 2, UTC)

    def keys(**window: str) -> list[str]:
        page = client.get("/api/runs", params={"limit": 500, **window}).json()
        return [r["run_key"] for r in page["items"]]

    assert keys(since=since.isoformat(), until=until.isoformat()) == ["w-2"]
    assert keys(since=since.isoformat()) == ["w-3", "w-2"]
    earlier = keys(until=since.isoformat())
    assert earlier[0] == "w-1" and len(earlier) == 7  # the six of populate() too
    # The same instants in another offset, and without one: read as UTC.
    east = timezone(timedelta(hours=2))
    assert keys(since=since.astimezone(east).isoformat(), until=until.isoformat()) == ["w-2"]
    naive = {"since": since.replace(tzinfo=None).isoformat()}
    naive["until"] = until.replace(tzinfo=None).isoformat()
    assert keys(**naive) == ["w-2"]
    page = client.get("/runs", params=naive).text  # the pages read it the same way
    assert "<code>w-2</code>" in page
    assert "<code>w-1</code>" not in page and "<code>w-3</code>" not in page


def test_a_time_window_pages_in_creation_order_even_when_ids_are_not(
    client: TestClient, web_app: fm.App
) -> None:
    # Producers committing concurrently can give a later run an earlier id;
    # the window's pages follow creation times, each run on exactly one page.
    run_ids = web_app.submit(
        "load", *(fm.RunRequest(f"t-{i}", {"n": i}) for i in range(12))
    ).run_ids
    base = 1_000_000_000.0  # 2001: before every other run of the store
    created = {run_id: base + (7 * index) % 12 for index, run_id in enumerate(run_ids)}
    created[run_ids[5]] = created[run_ids[6]]  # a tie, broken by id
    with web_app.engine.begin() as conn:
        for run_id, at in created.items():
            conn.execute(runs_table.update().where(runs_table.c.id == run_id).values(created_at=at))
    window = {
        "since": datetime.fromtimestamp(base, UTC).isoformat(),
        "until": datetime.fromtimestamp(base + 12, UTC).isoformat(),
    }
    seen = all_run_ids(client, limit=5, **window)
    assert seen == sorted(run_ids, key=lambda run_id: (created[run_id], run_id), reverse=True)
    assert seen != sorted(run_ids, reverse=True)  # not simply id order
    inner = {"since": window["since"], "until": datetime.fromtimestamp(base + 3, UTC).isoformat()}
    listed = client.get("/api/runs", params={"limit": 50, **inner}).json()["items"]
    assert {item["id"] for item in listed} == {r for r, at in created.items() if at < base + 3}
