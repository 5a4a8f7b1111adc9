"""Push ingest over real HTTP: many clients delivering one message at once."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
from starlette.testclient import TestClient

import ferryman as fm
from tests.helpers import incompressible
from tests.web.conftest import AUTH, LiveServer

CLIENTS = 20


def test_concurrent_deliveries_of_one_message_record_it_once(
    live_server: LiveServer, web_app: fm.App
) -> None:
    url = f"{live_server.url}/api/sensors/inbox/messages"
    body = {"message_id": "burst-1", "payload": {"n": 42}}
    start = threading.Barrier(CLIENTS)

    def deliver(_: int) -> httpx.Response:
        with httpx.Client(timeout=60) as client:
            start.wait()  # every client posts at the same moment
            return client.post(url, json=body, headers=AUTH)

    with ThreadPoolExecutor(CLIENTS) as pool:
        responses = list(pool.map(deliver, range(CLIENTS)))

    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * (CLIENTS - 1) + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    evaluations = web_app.get_evaluations("inbox")
    keyed = [e for e in evaluations if e.idempotency_key == "push:inbox:burst-1"]
    assert len(keyed) == 1 and keyed[0].runs_requested == 1
    assert [r.run_key for r in web_app.get_runs(job="load")].count("msg-burst-1") == 1


def test_long_and_unstorable_message_ids_over_http(client: TestClient, web_app: fm.App) -> None:
    url = "/api/sensors/inbox/messages"
    long_id = incompressible(64 * 1024)
    first = client.post(url, json={"message_id": long_id, "payload": {"n": 1}}, headers=AUTH)
    assert first.status_code == 201, first.text
    again = client.post(url, json={"message_id": long_id, "payload": {"n": 2}}, headers=AUTH)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert [r.run_key for r in web_app.get_runs(job="load")].count(f"msg-{long_id}") == 1

    # JSON can spell what no store holds in a key: refused, naming the field, never a 500.
    json_body = {**AUTH, "Content-Type": "application/json"}
    nul = client.post(url, content='{"message_id": "m-\\u0000"}', headers=json_body)
    assert nul.status_code == 400, nul.text
    assert "message_id of sensor 'inbox'" in nul.json()["detail"]
    surrogate = client.post(url, content='{"message_id": "m-\\ud800"}', headers=json_body)
    assert surrogate.status_code == 422, surrogate.text
    assert surrogate.json()["detail"][0]["loc"] == ["body", "message_id"]
    assert len(web_app.get_evaluations("inbox")) == 2  # populate's message and the long one
