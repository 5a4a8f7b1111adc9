"""Dashboard pages on both stores: what they show, and the rules for changing anything."""

from __future__ import annotations

import html
import re

import pytest
from starlette.testclient import TestClient

import ferryman as fm
from tests.web.conftest import AUTH, TOKEN, counted_app, sign_in
from tests.web.web_app import MIB, add_transfer

PAGES = [
    "/",
    "/sensors",
    "/sensors/numbers",
    "/sensors/inbox",
    "/runs",
    "/runs?run_key=n-1",
    "/dead-letters",
    "/transfers",
    "/workers",
    "/timeline",
    "/timeline?job=flaky&range=7d",
    "/jobs/load",
    "/jobs/flaky?range=1h",
]


def run_id(app: fm.App, key: str) -> int:
    (run,) = [r for r in app.get_runs() if r.run_key == key]
    return run.id


@pytest.mark.parametrize("path", PAGES)
def test_every_page_renders(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<nav>" in response.text
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "<script>" not in response.text and " style=" not in response.text


def test_overview_shows_counts_per_job_and_the_last_hour(client: TestClient) -> None:
    page = client.get("/").text
    assert 'href="/runs?job=flaky&status=dead">1<' in page
    assert 'href="/runs?job=load&status=succeeded">4<' in page
    assert "Finished in the last hour: 6" in page
    assert page.count("<rect") == 120  # 60 minutes, two bars each


def test_a_dead_run_shows_its_traceback_and_a_retry_button(
    client: TestClient, web_app: fm.App
) -> None:
    page = client.get(f"/runs/{run_id(web_app, 'flaky-1')}").text
    assert "Traceback (most recent call last)" in page
    assert "RuntimeError: upstream unavailable for 3" in page
    assert ">Retry</button>" in page
    assert "dead" in page and "claimed" in page


def test_sensitive_fields_never_reach_a_page(client: TestClient, web_app: fm.App) -> None:
    secret = run_id(web_app, "secret-1")
    for path in (f"/runs/{secret}", "/runs", "/"):
        assert "hunter2" not in client.get(path).text
    assert '"password": "***"' in client.get(f"/runs/{secret}").text


def test_unknown_things_are_404_pages_and_bad_filters_400(client: TestClient) -> None:
    assert client.get("/runs/987654").status_code == 404
    missing = client.get("/sensors/nope")
    assert missing.status_code == 404 and "no sensor &#39;nope&#39;" in missing.text
    bad = client.get("/runs", params={"since": "yesterday"})
    assert bad.status_code == 400 and "not a date and time" in bad.text


def test_changes_need_a_session_then_a_matching_csrf_token(
    client: TestClient, web_app: fm.App
) -> None:
    anonymous = client.post("/sensors/numbers/pause", data={"csrf": ""}, follow_redirects=False)
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login")
    assert web_app.get_sensor("numbers").status == "running"
    wrong = client.post("/login", data={"token": "not-it", "next": "/"}, follow_redirects=False)
    assert wrong.status_code == 403 and "ferryman_session" not in wrong.cookies
    csrf = sign_in(client)
    forged = client.post("/sensors/numbers/pause", data={"csrf": "0" * 64})
    assert forged.status_code == 403
    assert web_app.get_sensor("numbers").status == "running"
    done = client.post("/sensors/numbers/pause", data={"csrf": csrf}, follow_redirects=False)
    assert done.status_code == 303 and "notice=" in done.headers["location"]
    assert web_app.get_sensor("numbers").status == "paused"


def test_retry_and_set_cursor_from_the_pages(client: TestClient, web_app: fm.App) -> None:
    csrf = sign_in(client)
    dead = run_id(web_app, "flaky-1")
    retried = client.post(f"/runs/{dead}/retry", data={"csrf": csrf})
    assert retried.status_code == 200 and "queued again" in retried.text
    run = web_app.get_run(dead)
    assert run is not None and run.status is fm.RunStatus.QUEUED
    moved = client.post("/sensors/numbers/cursor", data={"csrf": csrf, "cursor": "40"})
    assert moved.status_code == 200 and web_app.get_sensor("numbers").cursor == "40"
    (latest,) = web_app.get_evaluations("numbers", limit=1)
    assert latest.evaluator == "dashboard"
    rejected = run_id(web_app, "bad-1")
    asked = client.post("/dead-letters/retry", data={"csrf": csrf, "run_ids": str(rejected)})
    assert asked.status_code == 200 and "Retry 1 runs?" in asked.text
    assert 'name="confirmed" value="yes"' in asked.text
    still = web_app.get_run(rejected)
    assert still is not None and still.status is fm.RunStatus.FAILED  # nothing done yet
    group = client.post(
        "/dead-letters/retry", data={"csrf": csrf, "run_ids": str(rejected), "confirmed": "yes"}
    )
    assert group.status_code == 200 and "1 runs queued again" in group.text


def test_a_read_only_server_disables_every_button(web_app: fm.App) -> None:
    from ferryman.web import WebSettings

    with TestClient(counted_app(web_app, WebSettings(token=TOKEN, read_only=True))) as client:
        csrf = sign_in(client)
        page = client.get(f"/runs/{run_id(web_app, 'flaky-1')}").text
        assert 'disabled title="this server is read-only"' in page
        refused = client.post("/sensors/numbers/pause", data={"csrf": csrf})
        assert refused.status_code == 403 and "read-only" in refused.text
    assert web_app.get_sensor("numbers").status == "running"


def section(page: str, heading: str) -> str:
    """The part of a page under an ``<h2>`` heading, up to the next one."""
    start = page.index(f"<h2>{heading}</h2>")
    end = page.find("<h2>", start + 1)
    return page[start : end if end != -1 else len(page)]


def test_the_overview_lists_failing_sensors_first(client: TestClient, web_app: fm.App) -> None:
    # "weather" sorts last by name: only its failures can put it first.
    @web_app.poll_sensor(job="load", interval=3600, backoff=fm.Backoff(base=1.0))
    def weather(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
        raise RuntimeError("weather service down")

    web_app.tick(["weather"], force=True)
    web_app.tick(["weather"], force=True)
    sensors = section(client.get("/").text, "Sensors")
    rows = re.findall(r'<tr class="(\w*)">\s*<td><a href="/sensors/(\w+)">', sensors)
    assert rows == [("failing", "weather"), ("", "inbox"), ("", "numbers")]
    assert "<td>2</td>" in sensors  # failures in a row
    summary = client.get("/api/summary").json()["sensors"]
    assert [(s["name"], s["consecutive_failures"]) for s in summary] == [
        ("weather", 2),
        ("inbox", 0),
        ("numbers", 0),
    ]


def test_the_sensor_page_shows_the_cursor_history(client: TestClient) -> None:
    moved = client.put(
        "/api/sensors/numbers/cursor", json={"cursor": "40", "by": "alice"}, headers=AUTH
    )
    assert moved.status_code == 200
    history = section(client.get("/sensors/numbers").text, "Cursor history")
    items = re.findall(r"<li>(.*?)</li>", history, flags=re.DOTALL)
    moves = [
        re.search(r"<code>([^<]*)</code> → <code>([^<]*)</code>\s*<span[^>]*>(\w+)</span>", item)
        for item in items
    ]
    assert [m.groups() if m else None for m in moves] == [
        ("2", "40", "manual"),
        ("1", "2", "ok"),
        ("—", "1", "ok"),
    ]
    assert items[0].rstrip().endswith("by alice")
    assert client.get("/sensors/inbox").status_code == 200


def test_a_transfer_page_shows_its_progress_and_parts(client: TestClient, web_app: fm.App) -> None:
    transfer_id = add_transfer(web_app, parts=2, source_size=12 * MIB)
    page = client.get(f"/transfers/{transfer_id}").text
    assert f'<progress max="{12 * MIB}" value="{10 * MIB}"></progress>' in page
    assert "10.0 MiB of 12.0 MiB in 2 parts" in page
    assert "<code>s3://bucket/a.bin</code>" in page
    parts = section(page, "Parts")
    assert "sha-of-part-1" in parts and "sha-of-part-2" in parts
    listing = client.get("/transfers", params={"status": "active"}).text
    assert f'<a href="/transfers/{transfer_id}">{transfer_id}</a>' in listing
    assert "10.0 MiB of 12.0 MiB" in listing


def test_job_names_are_read_from_the_index(web_app: fm.App) -> None:
    other = fm.App(web_app.store_url)  # a job this app does not register: a renamed one, say

    @other.job
    def archive(ctx: fm.JobContext, payload: object) -> None: ...

    other.submit("archive", fm.RunRequest("a-1", {}))
    other.close()
    assert web_app.store.job_names() == ["archive", "flaky", "load"]


def test_job_names_of_an_empty_store(store_url: str) -> None:
    app = fm.App(store_url)
    try:
        assert app.store.job_names() == []
    finally:
        app.close()


def test_the_runs_page_offers_every_job_with_runs_and_every_registered_one(
    client: TestClient, web_app: fm.App
) -> None:
    @web_app.job
    def idle(ctx: fm.JobContext, payload: object) -> None: ...

    page = client.get("/runs").text
    jobs = page.split('name="job"')[1].split('name="status"')[0]
    offered = re.findall(r'<option value="([^"]+)"', jobs)
    assert offered == ["flaky", "idle", "load"]
    chosen = client.get("/runs", params={"job": "flaky"}).text
    assert '<option value="flaky" selected>' in chosen
    assert html.escape("upstream unavailable for 3") in chosen


def test_a_run_page_links_the_runs_its_success_requested(
    client: TestClient, web_app: fm.App
) -> None:
    from ferryman.store import NewRun, Outcome, OutcomeKind

    (parent,) = web_app.submit("load", fm.RunRequest("parent-1", {"n": 5})).run_ids
    (claimed,) = web_app.store.claim(worker_id="w", jobs=["load"], limit=1, lease_seconds=30)
    page = client.get(f"/runs/{parent}").text
    assert ">Cancel</button>" in page  # a running run can be cancelled too
    child = NewRun(job="load", run_key="child-1", payload_json='{"n": 6}', max_attempts=5)
    success = Outcome(
        kind=OutcomeKind.SUCCEEDED, lease=claimed.lease, attempt=claimed.attempt, children=(child,)
    )
    assert web_app.store.finish([success], worker_id="w") == [True]
    child_id = run_id(web_app, "child-1")
    assert f'<a href="/runs/{child_id}">run {child_id}</a>' in client.get(f"/runs/{parent}").text
    assert f'<a href="/runs/{parent}">run {parent}</a>' in client.get(f"/runs/{child_id}").text
    api = client.get(f"/api/runs/{parent}").json()
    assert (api["parent_run_id"], api["child_run_ids"]) == (None, [child_id])
    assert client.get(f"/api/runs/{child_id}").json()["parent_run_id"] == parent


def test_a_run_page_shows_its_priority_due_time_and_concurrency_key(
    client: TestClient, web_app: fm.App
) -> None:
    from datetime import timedelta

    request = fm.RunRequest(
        "later-1", {"n": 7}, priority=7, not_before=timedelta(hours=2), concurrency_key="cust-42"
    )
    (queued,) = web_app.submit("load", request).run_ids
    facts = re.sub(r"\s+", " ", client.get(f"/runs/{queued}").text)
    assert "<dt>priority</dt><dd>7</dd>" in facts
    assert "<dt>concurrency key</dt><dd><code>cust-42</code></dd>" in facts
    (run,) = [r for r in web_app.get_runs() if r.id == queued]
    assert run.available_at > run.created_at + timedelta(seconds=7000)  # by the store's clock
    assert re.search(r"<dt>due</dt><dd>[^<]*\b(in|20\d\d-)", facts), "the due time is shown"
