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
from tests.web.test_warm_up import count_held_open
from tests.web.web_app import FLAKY_FIXED, add_folder_sensor, make_app, populate


@pytest.fixture
def served(sqlite_url: str) -> Iterator[tuple[fm.App, LiveServer]]:
    app = make_app(sqlite_url)
    populate(app)
    live = start_server(app, WebSettings(token=TOKEN))
    yield app, live
    stop_server(live)
    app.close()


def test_find_a_run_by_key_see_its_attempts_retry_its_group_and_watch_it_succeed(
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

    page.get_by_role("link", name="Runs", exact=True).click()
    page.get_by_label("run key").fill("flaky-1")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("tbody tr")).to_have_count(1)
    shot(page, screenshots, "2-runs-search")
    page.locator("tbody tr").first.get_by_role("link").first.click()
    expect(page.locator("#run-status")).to_have_text("dead")
    expect(page.locator("pre.traceback")).to_contain_text("Traceback (most recent call last)")
    bar = page.locator("#attempts rect.bar-dead")
    expect(bar).to_have_count(1)
    expect(bar.locator("title")).to_contain_text("attempt 1: dead · worker ")
    shot(page, screenshots, "3-dead-run")

    page.get_by_role("link", name="Timeline of flaky").click()
    expect(page.locator("#timeline rect.bar-dead")).to_have_count(1)
    shot(page, screenshots, "4-timeline")
    page.go_back()

    page.get_by_role("link", name="its dead-letter group").click()
    expect(page.get_by_text("One group shown")).to_be_visible()
    expect(page.get_by_text("RuntimeError: upstream unavailable for N")).to_be_visible()
    page.get_by_role("button", name="Retry 1").click()  # not signed in: asked for the token
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("API token").fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text("One group shown")).to_be_visible()
    page.get_by_role("button", name="Retry 1").click()
    expect(page.get_by_role("heading", name="Retry 1 runs?")).to_be_visible()
    dead = app.get_runs(job="flaky")[0]
    assert dead.status is fm.RunStatus.DEAD  # asked, not done
    shot(page, screenshots, "5-confirm-retry")
    page.get_by_role("button", name="Retry 1 runs").click()
    expect(page.get_by_role("status")).to_contain_text("1 runs queued again")

    page.goto(f"{live.url}/runs/{dead.id}")
    expect(page.locator("#run-status")).to_have_text("queued")
    page.evaluate("window.sameDocument = true")  # gone if the page reloads
    fixed = tmp_path / "fixed"
    fixed.touch()
    monkeypatch.setenv(FLAKY_FIXED, str(fixed))
    report = app.work(until_idle=True, concurrency=1, handle_signals=False)
    assert report.succeeded == 1
    expect(page.locator("#run-status")).to_have_text("succeeded", timeout=15_000)
    assert page.evaluate("window.sameDocument") is True
    expect(page.locator(".timeline")).to_contain_text("requeued")
    expect(page.locator("#attempts rect.bar-succeeded")).to_have_count(1)
    shot(page, screenshots, "6-retried-run-live")


def test_read_a_folder_sensor_cursor_and_a_job_duration_chart(
    served: tuple[fm.App, LiveServer], page: Page, screenshots: Path, tmp_path: Path
) -> None:
    app, live = served
    add_folder_sensor(app, tmp_path / "in", files=3)
    page.goto(f"{live.url}/sensors")
    page.get_by_role("link", name="incoming").click()
    expect(page.locator("dd.cursor-fact").first).to_contain_text("newest file modification time")
    expect(page.locator("#latest-items")).to_contain_text("export-002.csv")
    expect(page.locator("#cursor")).to_be_hidden()
    page.get_by_text("raw JSON").click()
    expect(page.locator("#cursor")).to_contain_text('"kind":"folder"')
    shot(page, screenshots, "7-folder-sensor")

    page.goto(f"{live.url}/jobs/load")
    expect(page.get_by_role("heading", name="Job load")).to_be_visible()
    page.get_by_label("24h").check()
    page.get_by_role("button", name="Show").click()
    expect(page.locator("#durations circle.dot-p50")).to_have_count(1)
    expect(page.locator("#durations circle.dot-p50 title")).to_contain_text("p50")
    point = page.locator("#durations circle.dot-p50 title")
    expect(point).to_contain_text("of 4 runs")  # the runs that succeeded
    shot(page, screenshots, "8-job-durations")


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
    shot(page, screenshots, "9-paused-sensor")


def test_read_the_queue_over_a_day_and_a_sensor_lag(
    served: tuple[fm.App, LiveServer], page: Page, screenshots: Path
) -> None:
    app, live = served
    app.submit("load", *[fm.RunRequest(f"later-{n}", {"n": n}) for n in range(5)])
    # The server counted as it started, just before: carried forward to now, as a
    # page does itself once the count is two seconds old.
    live.server.config.app.state.run_counts.fresh()
    page.goto(f"{live.url}/")
    queue = page.locator("#queue")
    queue.get_by_label("24h").check()
    queue.get_by_role("button", name="Show").click()
    expect(page).to_have_url(f"{live.url}/?range=24h&since=&until=")
    newest = page.locator("#depth circle.dot-queued-or-running title").last
    expect(newest).to_contain_text("queued or running 5")  # the five waiting now
    expect(page.locator("#oldest-due circle.dot-oldest-due title").last).to_contain_text(
        "oldest due"
    )
    page.locator("#queue").screenshot(path=str(screenshots / "10-overview-queue.png"))
    print(f"screenshot: {screenshots / '10-overview-queue.png'}")

    page.goto(f"{live.url}/sensors/numbers?range=1h")
    expect(page.get_by_role("heading", name="Evaluation lag")).to_be_visible()
    expect(page.locator("#lag svg")).to_have_attribute("aria-label", "evaluation lag of numbers")
    shot(page, screenshots, "13-sensor-lag")


def test_the_first_overview_says_it_is_counting_and_fills_in_live(
    sqlite_url: str, page: Page, screenshots: Path
) -> None:
    """A server just started, its first count of every run still under way: the overview
    answers at once, says it is counting, and shows the figures without a reload."""
    app = make_app(sqlite_url)
    populate(app)
    began, go_on = count_held_open(app)
    live = start_server(app, WebSettings(token=TOKEN), counted=False)
    try:
        page.goto(f"{live.url}/")
        assert began.wait(timeout=30)
        expect(page.locator("#counting")).to_have_text("Counting runs…")
        expect(page.locator(".cards .figure").first).to_have_text("…")
        shot(page, screenshots, "15-overview-counting")
        go_on.set()
        expect(page.locator("#counted-ago")).to_be_visible(timeout=15_000)
        expect(page.locator("#counting")).to_have_count(0)
        expect(page.locator('a[href="/runs?job=flaky&status=dead"]')).to_have_text("1")
    finally:
        go_on.set()
        stop_server(live)
        app.close()
