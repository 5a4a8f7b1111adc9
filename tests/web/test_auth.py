"""Every API request that changes state is refused without the right token, and changes nothing.

In-process on both stores: each mutation is sent without a token (401), with
a wrong one (403) and, to a read-only server, with the right one (403); then
the whole store, as the API shows it, must read exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from starlette.testclient import TestClient

import ferryman as fm
from ferryman.web import WebSettings, create_app
from tests.web.conftest import AUTH, TOKEN

WRONG = {"Authorization": "Bearer not-the-token-0123456789"}


@dataclass(frozen=True)
class Mutation:
    method: str
    route: str  # as /openapi.json names it
    path: str
    body: dict[str, Any] | None = None


def mutations(dead_run: int, queued_run: int) -> list[Mutation]:
    """Every mutating endpoint, each aimed where it would act."""
    return [
        Mutation(
            "POST",
            "/api/sensors/{name}/messages",
            "/api/sensors/inbox/messages",
            {"message_id": "m-2", "payload": {"n": 5}},
        ),
        Mutation("POST", "/api/sensors/{name}/pause", "/api/sensors/inbox/pause"),
        # numbers is paused by the test first
        Mutation("POST", "/api/sensors/{name}/resume", "/api/sensors/numbers/resume"),
        Mutation(
            "PUT",
            "/api/sensors/{name}/cursor",
            "/api/sensors/numbers/cursor",
            {"cursor": "99", "by": "mallory"},
        ),
        Mutation("POST", "/api/runs/retry", "/api/runs/retry", {"run_ids": [dead_run]}),
        Mutation("POST", "/api/runs/retry", "/api/runs/retry", {"job": "flaky", "status": "dead"}),
        Mutation("POST", "/api/runs/{run_id}/cancel", f"/api/runs/{queued_run}/cancel"),
        Mutation("POST", "/api/runs", "/api/runs", {"job": "load", "run_key": "from-outside"}),
    ]


def store_as_shown(client: TestClient) -> dict[str, Any]:
    """Everything the API can read: runs, sensors, evaluations, dead letters, summary."""
    return {
        "runs": client.get("/api/runs", params={"limit": 500}).json(),
        "sensors": client.get("/api/sensors").json(),
        "evaluations": {
            name: client.get(f"/api/sensors/{name}/evaluations", params={"limit": 500}).json()
            for name in ("numbers", "inbox")
        },
        "dead_letters": client.get("/api/dead-letters").json(),
        "counts": {j["job"]: j["counts"] for j in client.get("/api/summary").json()["jobs"]},
    }


@pytest.fixture
def targets(web_app: fm.App) -> tuple[int, int]:
    """A dead run to retry, a queued run to cancel, a paused sensor to resume."""
    (dead,) = [r.id for r in web_app.get_runs() if r.run_key == "flaky-1"]
    (queued,) = web_app.submit("load", fm.RunRequest("later", {"n": 9})).run_ids
    web_app.pause_sensor("numbers")
    return dead, queued


def test_the_mutation_list_covers_every_mutating_endpoint(
    client: TestClient, targets: tuple[int, int]
) -> None:
    # A new endpoint that changes state must join the matrix.
    schema = client.get("/openapi.json").json()["paths"]
    in_schema = {
        (method.upper(), route)
        for route, operations in schema.items()
        for method in operations
        if method != "get"
    }
    assert in_schema == {(m.method, m.route) for m in mutations(*targets)}


def test_no_token_is_401_and_a_wrong_token_403_and_nothing_changes(
    client: TestClient, targets: tuple[int, int]
) -> None:
    before = store_as_shown(client)
    for m in mutations(*targets):
        anonymous = client.request(m.method, m.path, json=m.body)
        assert anonymous.status_code == 401, (m, anonymous.text)
        assert anonymous.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer" in anonymous.json()["detail"]
        not_bearer = client.request(m.method, m.path, json=m.body, headers={"Authorization": TOKEN})
        assert not_bearer.status_code == 401, (m, not_bearer.text)
        wrong = client.request(m.method, m.path, json=m.body, headers=WRONG)
        assert wrong.status_code == 403, (m, wrong.text)
        assert wrong.json()["detail"] == "wrong API token"
    assert store_as_shown(client) == before


def test_a_read_only_server_refuses_the_right_token_too(
    web_app: fm.App, targets: tuple[int, int]
) -> None:
    settings = WebSettings(token=TOKEN, read_only=True)
    with TestClient(create_app(web_app, settings)) as client:
        before = store_as_shown(client)
        for m in mutations(*targets):
            refused = client.request(m.method, m.path, json=m.body, headers=AUTH)
            assert refused.status_code == 403, (m, refused.text)
            assert refused.json()["detail"] == "this server is read-only"
        assert store_as_shown(client) == before


def test_the_right_token_changes_the_store(client: TestClient, targets: tuple[int, int]) -> None:
    # The other side of the matrix: the same requests, with the token, do act.
    answers = [
        client.request(m.method, m.path, json=m.body, headers=AUTH).status_code
        for m in mutations(*targets)
    ]
    assert answers == [201, 200, 200, 200, 200, 200, 200, 201]
    sensors = {s["name"]: s for s in client.get("/api/sensors").json()}
    assert sensors["inbox"]["status"] == "paused"
    assert sensors["numbers"]["status"] == "running" and sensors["numbers"]["cursor"] == "99"
    statuses = {r["run_key"]: r["status"] for r in client.get("/api/runs").json()["items"]}
    assert statuses["flaky-1"] == "queued" and statuses["later"] == "cancelled"
    assert statuses["msg-m-2"] == "queued"
    assert statuses["from-outside"] == "queued"
