"""What the dashboard says must be true: counts' age, overdue sensors, push failures,
confirmations; and the views that draw: the timeline, a job's page, run search.

On every store (sqlite, postgres, mariadb), through the pages a browser gets.
"""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

import ferryman as fm
from ferryman.store import read_views
from ferryman.store.read_model import RunCount
from tests.web.conftest import sign_in
from tests.web.test_pages import run_id, section
from tests.web.web_app import MIB, add_folder_sensor, add_transfer


class OldCount:
    """Run counts taken 90 s ago and not retaken (a recount that has not finished)."""

    def __init__(self, app: fm.App) -> None:
        self.counted = RunCount(counts={}, at=app.store.now() - 90)

    def current(self) -> RunCount:
        return self.counted

    def at_once(self) -> RunCount:
        return self.counted


def test_the_overview_says_how_old_its_counts_are_in_red_past_a_minute(
    client: TestClient, web_app: fm.App
) -> None:
    fresh = client.get("/").text
    assert re.search(r'<span class="" id="counted-ago">\d+ s ago</span>', fresh)
    assert "(stale:" not in fresh
    client.app.state.run_counts = OldCount(web_app)  # type: ignore[attr-defined]
    old = client.get("/").text
    assert re.search(r'<span class="stale" id="counted-ago">(89|90|91|92) s ago</span>', old)
    assert "(stale: a recount is under way" in old


def _set_next_evaluation(app: fm.App, name: str, seconds_from_now: float) -> None:
    """Move a sensor's next evaluation as a daemon that stopped ticking would leave it."""
    engine = sa.create_engine(app.store_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE ferryman_sensors SET next_evaluation_at = :at WHERE name = :name"),
                {"at": app.store.now() + seconds_from_now, "name": name},
            )
    finally:
        engine.dispose()


def test_a_next_evaluation_twenty_minutes_past_is_flagged_overdue(
    client: TestClient, web_app: fm.App
) -> None:
    assert "overdue" not in client.get("/sensors/numbers").text  # due in an hour
    _set_next_evaluation(web_app, "numbers", -1200)
    for path in ("/sensors/numbers", "/sensors", "/"):
        page = client.get(path).text
        assert re.search(r'<span class="overdue">overdue by 20 min</span>', page), path
    _set_next_evaluation(web_app, "numbers", -30)  # a tick a little late is not flagged
    assert "overdue by" not in client.get("/sensors/numbers").text


def test_a_failing_push_sensor_shows_its_failures_and_traceback_lines(
    client: TestClient, web_app: fm.App
) -> None:
    @web_app.push_sensor(job="load")
    def picky(ctx: fm.SensorContext, message: fm.Message) -> list[fm.RunRequest]:
        raise ValueError(f"cannot parse message {message.message_id}")

    for number in (1, 2, 3):
        failed = web_app.ingest("picky", f"p-{number}", {"n": number})
        assert failed.outcome is fm.EvaluationOutcome.FAILED
    page = client.get("/sensors/picky").text
    facts = page[: page.index("</dl>")]
    assert re.search(r"<dt>failures in a row</dt><dd>3</dd>", facts)
    last = re.search(r"<dt>last evaluated</dt><dd>([^<]+)</dd>", facts)
    assert last is not None and last.group(1) != "—"
    (traceback,) = re.findall(r'<pre class="traceback">(.*?)</pre>', page, re.DOTALL)[:1]
    assert "Traceback (most recent call last)" in traceback and "\n" in traceback.strip()
    assert "cannot parse message p-3" in html.unescape(traceback)
    listing = section(client.get("/").text, "Sensors")
    assert re.search(r'<tr class="failing">\s*<td><a href="/sensors/picky">', listing)
    outcomes = section(page, "Evaluations over time")
    assert re.search(r'class="bar bar-failed"[^>]*><title>[0-9:]+: 3 failed</title>', outcomes)
    web_app.ingest("picky", "p-1", {"n": 1})  # a redelivery of a failed one runs again
    assert "<dt>failures in a row</dt><dd>4</dd>" in client.get("/sensors/picky").text


def test_cancel_asks_first_then_cancels(client: TestClient, web_app: fm.App) -> None:
    web_app.submit("load", fm.RunRequest("later-1", {"n": 9}))
    queued = run_id(web_app, "later-1")
    csrf = sign_in(client)
    asked = client.post(f"/runs/{queued}/cancel", data={"csrf": csrf})
    assert asked.status_code == 200 and f"Cancel run {queued}?" in asked.text
    assert f'action="/runs/{queued}/cancel"' in asked.text and 'value="yes"' in asked.text
    run = web_app.get_run(queued)
    assert run is not None and run.status is fm.RunStatus.QUEUED
    forged = client.post(f"/runs/{queued}/cancel", data={"csrf": "0" * 64, "confirmed": "yes"})
    assert forged.status_code == 403
    done = client.post(f"/runs/{queued}/cancel", data={"csrf": csrf, "confirmed": "yes"})
    assert done.status_code == 200 and "cancelled" in done.text
    run = web_app.get_run(queued)
    assert run is not None and run.status is fm.RunStatus.CANCELLED


def test_the_dead_letter_confirmation_names_the_error_and_the_runs(
    client: TestClient, web_app: fm.App
) -> None:
    csrf = sign_in(client)
    page = client.get("/dead-letters").text
    dead = run_id(web_app, "flaky-1")
    form = re.search(r'<form method="post" action="/dead-letters/retry".*?</form>', page, re.S)
    assert form is not None
    fields = dict(re.findall(r'name="(\w+)" value="([^"]*)"', form.group(0)))
    fields["csrf"] = csrf
    asked = client.post("/dead-letters/retry", data=fields)
    assert "Retry 1 runs?" in asked.text and f"runs {dead}" in asked.text
    assert "ended with: RuntimeError: upstream unavailable for N" in asked.text
    run = web_app.get_run(dead)
    assert run is not None and run.status is fm.RunStatus.DEAD


def test_workers_are_alive_as_in_the_cli(client: TestClient) -> None:
    for path in ("/", "/workers"):
        page = client.get(path).text
        assert "status-live" not in page and not re.search(r"\blive workers", page)
    assert "alive workers" in client.get("/").text
    # The worker populate() ran has stopped; the CLI's `workers` says so too.
    assert '<span class="status status-stopped">stopped</span>' in client.get("/workers").text


def test_the_timeline_draws_each_attempt_with_its_worker(
    client: TestClient, web_app: fm.App
) -> None:
    page = client.get("/timeline").text
    chart = page[page.index('<div class="chart-box" id="timeline">') :]
    titles = [html.unescape(t) for t in re.findall(r"<title>([^<]*)</title>", chart)]
    dead = run_id(web_app, "flaky-1")
    (flaky,) = [t for t in titles if t.startswith(f"run {dead} flaky-1")]
    assert "attempt 1: dead" in flaky and "worker " in flaky and "worker ?" not in flaky
    assert f'<a href="/runs/{dead}"><rect class="bar bar-dead"' in chart
    assert len([t for t in titles if ": succeeded" in t]) == 4
    only = client.get("/timeline", params={"job": "flaky"}).text
    assert only.count("<rect") == 1
    run_page = client.get(f"/runs/{dead}").text
    assert "attempt 1: dead" in html.unescape(section(run_page, "Attempts"))


def test_the_timeline_counts_per_slot_when_too_many_runs_finished(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(read_views, "MAX_BARS", 2)
    page = client.get("/timeline", params={"range": "24h"}).text
    assert "Too many runs finished in this window" in page
    titles = [html.unescape(t) for t in re.findall(r"<title>([^<]*)</title>", page)]
    counted = sum(int(m.group(1)) for t in titles if (m := re.search(r": (\d+) \w+$", t)))
    assert counted == 6  # every finished run, in some slot


def _finish_all_at(app: fm.App, first: float, apart: float) -> int:
    """Move the finish of every finished run to ``first``, ``first + apart``, ... (id order)."""
    engine = sa.create_engine(app.store_url)
    try:
        with engine.begin() as conn:
            finished = "SELECT id FROM ferryman_runs WHERE finished_at IS NOT NULL ORDER BY id"
            ids = list(conn.scalars(sa.text(finished)))
            for n, run_id in enumerate(ids):
                conn.execute(
                    sa.text("UPDATE ferryman_runs SET finished_at = :at WHERE id = :id"),
                    {"at": first + n * apart, "id": run_id},
                )
    finally:
        engine.dispose()
    return len(ids)


def test_a_full_slot_of_the_timeline_is_estimated_from_its_two_ends_and_said_so(
    client: TestClient, web_app: fm.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``2 * SLOT_SAMPLE`` finishes a slot reads only its first and last few; the ones
    between are estimated at the pace of both ends, and the page says so. (SQLite counts
    every finish when no job is chosen: its index walk costs less than the sample.)"""
    monkeypatch.setattr(read_views, "MAX_BARS", 2)
    monkeypatch.setattr(read_views, "SLOT_SAMPLE", 2)
    sqlite = web_app.store_url.startswith("sqlite")
    now = web_app.store.now()
    since = now - 86400
    width = 86400 / read_views.SLOTS
    # Mid-slot, one second apart: the first two and the last two are read, the
    # two between are estimated at one a second.
    finished = _finish_all_at(web_app, since + 10.5 * width, 1.0)
    assert finished == 6
    found = web_app.store.timeline(since=since, until=now)
    assert found.aggregated
    assert found.slots[10].counts == ({"finished": 6} if sqlite else {"estimated": 6})
    assert all(not slot.counts for i, slot in enumerate(found.slots) if i != 10)
    by_job = web_app.store.timeline(since=since, until=now, job="load").slots[10].counts
    assert list(by_job) == ["estimated"] and 1 <= by_job["estimated"] <= 6
    # A burst at a slot's start, then quiet: the burst's pace is not carried over the quiet.
    _finish_all_at(web_app, since + 20 * width + 1, 0.01)
    burst = web_app.store.timeline(since=since, until=now).slots[20].counts
    assert burst == ({"finished": 6} if sqlite else {"estimated": 6})
    page = client.get("/timeline", params={"range": "24h", "job": "load"}).text
    assert "<strong>estimated</strong> where it holds more" in page
    assert 'class="sw bar-estimated"' in page
    titles = [html.unescape(t) for t in re.findall(r"<title>([^<]*)</title>", page)]
    assert any(re.search(r": \d estimated$", t) for t in titles)


def test_sqlite_counts_a_timeline_slot_only_while_the_window_holds_few_finishes(
    web_app: fm.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``COUNTED_FINISHES`` in the window, SQLite samples each slot's ends as the other
    stores do (counting every finish grows with the store); up to it, it counts them all."""
    monkeypatch.setattr(read_views, "MAX_BARS", 2)
    monkeypatch.setattr(read_views, "SLOT_SAMPLE", 2)
    now = web_app.store.now()
    since = now - 86400
    width = 86400 / read_views.SLOTS
    assert _finish_all_at(web_app, since + 10.5 * width, 1.0) == 6
    counted = web_app.store.timeline(since=since, until=now).slots
    monkeypatch.setattr(read_views, "COUNTED_FINISHES", 6)
    assert web_app.store.timeline(since=since, until=now).slots == counted
    monkeypatch.setattr(read_views, "COUNTED_FINISHES", 5)
    sampled = web_app.store.timeline(since=since, until=now).slots
    assert sampled[10].counts == {"estimated": 6}
    assert [s.start for s in sampled] == [s.start for s in counted]
    assert all(not slot.counts for i, slot in enumerate(sampled) if i != 10)


def test_a_job_page_shows_settings_counts_durations_and_dead_letters(
    client: TestClient,
) -> None:
    page = client.get("/jobs/flaky").text
    settings = section(page, "Settings")
    assert "<dt>max_attempts</dt><dd><code>1</code></dd>" in settings
    assert "<dt>backoff</dt>" in settings
    assert 'href="/runs?job=flaky&status=dead">1<' in section(page, "Runs")
    assert "<circle" not in section(page, "Run durations")  # none of its runs succeeded
    assert "RuntimeError: upstream unavailable for N" in section(page, "Dead letters")
    load = client.get("/jobs/load").text
    assert re.search(
        r"<title>[0-9:]+: p50 \d+ ms of 4 runs</title>", section(load, "Run durations")
    )
    assert 'href="/sensors/numbers"' in section(load, "Sensors")
    assert client.get("/jobs/nope").status_code == 404
    assert client.get("/jobs/load", params={"range": "fortnight"}).status_code == 422
    custom = client.get(
        "/jobs/load", params={"range": "custom", "since": "2026-01-02T00:00", "until": "2026-01-01"}
    )
    assert custom.status_code == 400 and "must start before it ends" in custom.text


def _listed(page: str) -> list[str]:
    """The run keys of a runs page, in the order shown."""
    return re.findall(r"<code>([^<]*)</code></a></td>\s*<td><span class=\"status", page)


def test_find_runs_by_key_exact_and_prefix_and_page_both_ways(
    client: TestClient, web_app: fm.App
) -> None:
    web_app.submit("load", *[fm.RunRequest(f"batch-{n:02}", {"n": n}) for n in range(7)])
    exact = client.get("/runs", params={"run_key": "batch-03"}).text
    assert _listed(exact) == ["batch-03"]
    assert _listed(client.get("/runs", params={"run_key": "batch-0"}).text) == []  # exact
    newest = client.get("/runs", params={"run_key": "batch-", "match": "prefix"}).text
    assert _listed(newest) == [f"batch-{n:02}" for n in range(6, -1, -1)]
    assert 'value="prefix" selected' in newest

    from ferryman.web import pages

    original = pages.PAGE
    try:
        pages.PAGE = 3
        first = client.get("/runs", params={"run_key": "batch-", "match": "prefix"}).text
        assert _listed(first) == ["batch-06", "batch-05", "batch-04"]
        assert "newer runs" not in first
        older = re.search(r'href="/runs\?([^"]+)" rel="next"', first)
        assert older is not None and "run_key=batch-" in older.group(1)
        second = client.get("/runs?" + html.unescape(older.group(1))).text
        assert _listed(second) == ["batch-03", "batch-02", "batch-01"]
        newer = re.search(r'href="/runs\?([^"]+)" rel="prev"', second)
        assert newer is not None
        back = client.get("/runs?" + html.unescape(newer.group(1))).text
        assert _listed(back) == ["batch-06", "batch-05", "batch-04"]
    finally:
        pages.PAGE = original


def test_filter_runs_by_worker_and_error_group_with_durations(
    client: TestClient, web_app: fm.App
) -> None:
    dead = web_app.get_run(run_id(web_app, "flaky-1"))
    assert dead is not None
    detail = web_app.store.run_detail(dead.id)
    assert detail is not None
    (claimed,) = [e for e in detail.events if e.kind == "claimed"]
    assert claimed.worker_id
    by_worker = client.get("/runs", params={"worker": claimed.worker_id}).text
    assert len(_listed(by_worker)) == 6  # the one worker of populate() ran them all
    assert _listed(client.get("/runs", params={"worker": "nobody:1"}).text) == []
    group = "RuntimeError: upstream unavailable for N"
    by_error = client.get("/runs", params={"error": group}).text
    assert _listed(by_error) == ["flaky-1"]
    narrowed = {"error": group, "job": "flaky", "status": "dead"}
    assert _listed(client.get("/runs", params=narrowed).text) == ["flaky-1"]
    assert _listed(client.get("/runs", params={**narrowed, "status": "queued"}).text) == []
    assert re.search(r'<td class="num">\d+ ms</td>', by_error)  # its duration
    run_page = client.get(f"/runs/{dead.id}").text
    link = re.search(r'<a href="([^"]+)" id="error-group">', run_page)
    assert link is not None
    one = client.get(html.unescape(link.group(1))).text
    assert "One group shown" in one and one.count("Retry 1</button>") == 1


def test_a_folder_sensor_cursor_is_decoded_with_the_raw_json_one_click_away(
    client: TestClient, web_app: fm.App, tmp_path: Path
) -> None:
    add_folder_sensor(web_app, tmp_path / "in", files=3)
    page = client.get("/sensors/incoming").text
    facts = dict(re.findall(r'<dt>([^<]+)</dt><dd class="cursor-fact">([^<]+)</dd>', page))
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} UTC \(newest file modification time decided\)",
        facts["high-water mark"],
    )
    assert facts["remembered above the floor"] == "3 files"
    shown = datetime.strptime(facts["high-water mark"][:19], "%Y-%m-%d %H:%M:%S")
    written = max(path.stat().st_mtime for path in (tmp_path / "in").iterdir())
    assert abs(shown.replace(tzinfo=UTC).timestamp() - written) < 2  # the newest file's time
    raw = re.search(r"<summary>raw JSON</summary><code id=\"cursor\">([^<]+)</code>", page)
    assert raw is not None and '"kind":"folder"' in html.unescape(raw.group(1))
    latest = page[page.index('id="latest-items"') :].split("</dd>")[0]
    keys = re.findall(r"<code>([^<]+)</code>", latest)  # path@mtime_ns:size
    assert [key.split("@")[0] for key in keys] == [f"export-00{n}.csv" for n in range(3)]
    listing = client.get("/sensors").text
    row = listing[listing.index('href="/sensors/incoming"') :].split("</tr>")[0]
    assert '<span class="status status-ok">ok</span>' in row  # its last outcome


def test_push_evaluations_show_their_message_id_and_link_their_runs(
    client: TestClient, web_app: fm.App
) -> None:
    page = client.get("/sensors/inbox").text
    evaluations = section(page, "Evaluations")
    assert "<th>message id</th>" in evaluations and "<code>m-1</code>" in evaluations
    msg = run_id(web_app, "msg-m-1")
    assert f'<a href="/runs/{msg}">{msg}</a>' in evaluations
    assert '<th class="num">skipped</th>' in evaluations


def test_a_transfer_shows_its_rate_time_left_and_parts_map(
    client: TestClient, web_app: fm.App
) -> None:
    transfer_id = add_transfer(web_app, parts=2, source_size=22 * MIB)  # 5 parts in all
    page = client.get(f"/transfers/{transfer_id}").text
    squares = re.findall(r'<rect class="(part-\w+)"[^>]*><title>([^<]*)</title>', page)
    assert [kind for kind, _ in squares] == ["part-confirmed"] * 2 + ["part-missing"] * 3
    assert squares[0][1].startswith(f"part 1: {5 * MIB} bytes from 0, confirmed ")
    assert 'aria-label="2 of 5 parts confirmed"' in page
    rate = re.search(r'<dd id="rate">([^<]+)</dd>', page)
    assert rate is not None and (rate.group(1) == "—" or rate.group(1).endswith("/s"))
    listing = client.get("/transfers", params={"status": "active"}).text
    assert f'<a href="/transfers/{transfer_id}">{transfer_id}</a>' in listing
    assert '<option value="active" selected>' in listing
    done = client.get("/transfers", params={"status": "succeeded"}).text
    assert f'<a href="/transfers/{transfer_id}">' not in done
    assert client.get("/transfers", params={"status": ""}).status_code == 200


def test_a_duration_chart_reads_a_bounded_sample_spread_over_the_window(
    make_app: type[fm.App], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A few runs from each of the window's id ranges, however many ran in it: all of
    them while they are fewer than the sample, one per range past that."""
    app = make_app()

    @app.job()
    def steady(ctx: fm.JobContext, payload: object) -> None:
        pass

    app.submit("steady", *[fm.RunRequest(f"k-{n}") for n in range(240)])
    app.work(until_idle=True)
    now = app.store.now()

    def sampled() -> int:
        slots = app.store.durations(job="steady", since=now - 600, until=now + 60)
        return sum(slot.runs for slot in slots)

    assert sampled() == 240
    monkeypatch.setattr(read_views, "DURATION_SAMPLE", read_views.SLOTS)  # one per id range
    assert sampled() == read_views.SLOTS
