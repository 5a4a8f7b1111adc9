"""The JSON API on both stores, with real runs, sensors and evaluations behind it."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

import ferryman as fm
from tests.web.conftest import AUTH


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
    seen: list[int] = []
    before: int | None = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if before is not None:
            params["before_id"] = before
        page = client.get("/api/runs", params=params).json()
        seen += [r["id"] for r in page["items"]]
        before = page["next_before"]
        if before is None:
            break
    assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen)) == 6
    future = client.get("/api/runs", params={"since": "2999-01-01T00:00:00Z"}).json()
    assert future["items"] == []


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


def test_cancel_a_queued_run_only(client: TestClient, web_app: fm.App) -> None:
    (run_id,) = web_app.submit("load", fm.RunRequest("later", {"n": 9})).run_ids
    cancelled = client.post(f"/api/runs/{run_id}/cancel", headers=AUTH)
    assert cancelled.status_code == 200 and cancelled.json()["run"]["status"] == "cancelled"
    again = client.post(f"/api/runs/{run_id}/cancel", headers=AUTH)
    assert again.status_code == 409 and "cancelled, not queued" in again.json()["detail"]
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
