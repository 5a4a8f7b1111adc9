"""``POST /api/runs`` and ``GET /api/runs?run_key=``: submitting and finding runs over HTTP."""

from __future__ import annotations

import threading

from starlette.testclient import TestClient

import ferryman as fm
from tests.web.conftest import AUTH


def test_post_creates_once_then_returns_the_existing_run(
    client: TestClient, web_app: fm.App
) -> None:
    body = {"job": "load", "run_key": "order-77", "payload": {"n": 77, "password": "pw"}}
    created = client.post("/api/runs", json=body, headers=AUTH)
    assert created.status_code == 201, created.text
    run = created.json()["run"]
    assert created.json()["created"] is True
    assert (run["job"], run["run_key"], run["status"]) == ("load", "order-77", "queued")
    assert run["payload"] == {"n": 77, "password": "***"}  # the job marks it sensitive

    again = client.post(
        "/api/runs", json={**body, "payload": {"n": 78}}, headers=AUTH
    )  # same key, another payload
    assert again.status_code == 200, again.text
    assert again.json() == {"created": False, "run": run}
    stored = web_app.get_run_by_key("load", "order-77")
    assert stored is not None and stored.id == run["id"]
    assert stored.payload == {"n": 77, "password": "pw"}  # the first one stands

    web_app.work(until_idle=True, concurrency=1, handle_signals=False)
    done = client.post("/api/runs", json=body, headers=AUTH)
    assert (done.status_code, done.json()["run"]["status"]) == (200, "succeeded")


def test_concurrent_posts_of_one_key_make_one_run(client: TestClient, web_app: fm.App) -> None:
    codes: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def post() -> None:
        start.wait()
        response = client.post("/api/runs", json={"job": "load", "run_key": "race"}, headers=AUTH)
        with lock:
            codes.append(response.status_code)

    threads = [threading.Thread(target=post) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(codes) == [200] * 7 + [201]
    assert [r.run_key for r in web_app.get_runs(job="load")].count("race") == 1


def test_find_a_run_by_key(client: TestClient, web_app: fm.App) -> None:
    found = client.get("/api/runs", params={"job": "load", "run_key": "secret-1"}).json()
    (run,) = found["items"]
    assert (run["run_key"], run["status"], found["next_before"]) == ("secret-1", "succeeded", None)
    assert run["payload"]["password"] == "***"
    any_job = client.get("/api/runs", params={"run_key": "flaky-1"}).json()["items"]
    assert [(r["job"], r["status"]) for r in any_job] == [("flaky", "dead")]
    wrong_status = client.get("/api/runs", params={"run_key": "flaky-1", "status": "queued"})
    assert wrong_status.json()["items"] == []
    assert client.get("/api/runs", params={"run_key": "nope"}).json()["items"] == []
    assert client.get("/api/runs", params={"run_key": ""}).status_code == 422
    long_key = "k" * 5000  # found by its digest like any other
    web_app.submit("load", fm.RunRequest(long_key))
    (long_run,) = client.get("/api/runs", params={"run_key": long_key}).json()["items"]
    assert long_run["run_key"] == long_key


def test_bad_bodies_are_422_naming_what_is_wrong(client: TestClient, web_app: fm.App) -> None:
    before = len(web_app.get_runs())

    def refused(body: object) -> str:
        response = client.post("/api/runs", json=body, headers=AUTH)
        assert response.status_code == 422, (body, response.text)
        return str(response.json()["detail"])

    assert "run_key" in refused({"job": "load"})
    assert "job" in refused({"run_key": "k"})
    assert "run_key" in refused({"job": "load", "run_key": ""})
    assert "run_key" in refused({"job": "load", "run_key": 7})
    assert "unknown field 'colour'" in refused({"job": "load", "run_key": "k", "colour": "red"})
    assert "NUL" in refused({"job": "load", "run_key": "a\x00b"})
    assert "object" in refused(["load", "k"])
    unknown = client.post("/api/runs", json={"job": "nope", "run_key": "k"}, headers=AUTH)
    assert unknown.status_code == 404 and "nope" in unknown.json()["detail"]
    assert len(web_app.get_runs()) == before
