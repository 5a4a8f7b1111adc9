"""Push ingest over real HTTP: many clients delivering one message at once."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx

import ferryman as fm
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
