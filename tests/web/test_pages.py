"""Dashboard pages on both stores: what they show, and the rules for changing anything."""

from __future__ import annotations

import re

import pytest
from starlette.testclient import TestClient

import ferryman as fm
from tests.web.conftest import TOKEN

PAGES = ["/", "/sensors", "/sensors/numbers", "/runs", "/dead-letters", "/transfers", "/workers"]


def sign_in(client: TestClient) -> str:
    """Sign in through the form; return the CSRF token the pages now carry."""
    response = client.post("/login", data={"token": TOKEN, "next": "/"}, follow_redirects=False)
    assert response.status_code == 303 and "ferryman_session" in response.cookies
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
    page = client.get("/sensors/numbers").text
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found is not None
    return found.group(1)


def run_id(app: fm.App, key: str) -> int:
    (run,) = [r for r in app.get_runs() if r.run_key == key]
    return run.id


@pytest.mark.parametrize("path", PAGES)
def test_every_page_renders(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<nav>" in response.text


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
    group = client.post("/dead-letters/retry", data={"csrf": csrf, "run_ids": str(rejected)})
    assert group.status_code == 200 and "1 runs queued again" in group.text


def test_a_read_only_server_disables_every_button(web_app: fm.App) -> None:
    from ferryman.web import WebSettings, create_app

    with TestClient(create_app(web_app, WebSettings(token=TOKEN, read_only=True))) as client:
        csrf = sign_in(client)
        page = client.get(f"/runs/{run_id(web_app, 'flaky-1')}").text
        assert 'disabled title="this server is read-only"' in page
        refused = client.post("/sensors/numbers/pause", data={"csrf": csrf})
        assert refused.status_code == 403 and "read-only" in refused.text
    assert web_app.get_sensor("numbers").status == "running"
