"""The dashboard in a real browser: Playwright driving Debian's chromium.

A real uvicorn server on a loopback port serves a SQLite store with a dead
run and two sensors. The user opens the overview, drills into the dead run,
signs in, presses Retry, a worker runs it, and the page shows it succeeded;
then pauses a sensor from its page. Screenshots of each step, and of the
page at the moment a step fails, are kept for a human to look at: in
artifacts/screenshots/ at the repository root, or in $FERRYMAN_ARTIFACTS
(see conftest.py; each path is printed).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

import ferryman as fm
from ferryman.web import WebSettings
from tests.browser.conftest import shot
from tests.web.conftest import TOKEN, LiveServer, start_server, stop_server
from tests.web.web_app import FLAKY_FIXED, make_app, populate


@pytest.fixture
def served(sqlite_url: str) -> Iterator[tuple[fm.App, LiveServer]]:
    app = make_app(sqlite_url)
    populate(app)
    live = start_server(app, WebSettings(token=TOKEN))
    yield app, live
    stop_server(live)
    app.close()


def test_drill_into_a_dead_run_retry_it_and_see_it_succeed(
    served: tuple[fm.App, LiveServer],
    page: Page,
    screenshots: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app, live = served
    page.goto(f"{live.url}/")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    shot(page, screenshots, "1-overview")

    page.get_by_role("link", name="Dead letters").click()
    expect(page.get_by_text("RuntimeError: upstream unavailable for N")).to_be_visible()
    page.get_by_role("link", name="newest").first.click()
    expect(page.locator("#run-status")).to_have_text("dead")
    expect(page.locator("pre.traceback")).to_contain_text("Traceback (most recent call last)")
    shot(page, screenshots, "2-dead-run")

    page.get_by_role("button", name="Retry").click()  # not signed in: asked for the token
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("API token").fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#run-status")).to_have_text("dead")
    page.get_by_role("button", name="Retry").click()
    expect(page.get_by_role("status")).to_contain_text("queued again")
    expect(page.locator("#run-status")).to_have_text("queued")

    fixed = tmp_path / "fixed"
    fixed.touch()
    monkeypatch.setenv(FLAKY_FIXED, str(fixed))
    report = app.work(until_idle=True, concurrency=1, handle_signals=False)
    assert report.succeeded == 1
    page.reload()
    expect(page.locator("#run-status")).to_have_text("succeeded")
    expect(page.locator(".timeline")).to_contain_text("requeued")
    shot(page, screenshots, "3-retried-run")


def test_pause_a_sensor_from_its_page(
    served: tuple[fm.App, LiveServer], page: Page, screenshots: Path
) -> None:
    app, live = served
    page.goto(f"{live.url}/login?next=/sensors")
    page.get_by_label("API token").fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Sensors")).to_be_visible()
    page.get_by_role("link", name="numbers").click()
    expect(page.locator("#cursor")).to_have_text("2")
    page.get_by_role("button", name="Pause").click()
    expect(page.get_by_role("status")).to_contain_text("sensor numbers paused")
    expect(page.get_by_role("button", name="Resume")).to_be_visible()
    assert app.get_sensor("numbers").status == "paused"
    shot(page, screenshots, "4-paused-sensor")
