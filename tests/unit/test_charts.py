"""The dashboard's SVG charts and cursor descriptions, as markup and as text."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

from ferryman.model import Transfer, TransferPart, TransferStatus
from ferryman.store.read_model import AttemptBar, DurationSlot
from ferryman.web import charts, cursors, transfer_views

SVG = "{http://www.w3.org/2000/svg}"
T0 = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC


def bar(run_id: int, attempt: int, start: float, end: float | None, outcome: str) -> AttemptBar:
    return AttemptBar(
        run_id=run_id,
        job="load",
        run_key=f"<key {run_id}> & co",
        attempt=attempt,
        worker_id=f"host:{run_id}",
        start=T0 + start,
        end=None if end is None else T0 + end,
        outcome=outcome,
    )


def parsed(markup: str) -> ET.Element:
    """The chart as XML: it must be well-formed, every value escaped."""
    return ET.fromstring(markup)


def test_gantt_draws_one_bar_per_attempt_on_one_row_per_run() -> None:
    bars = [
        bar(1, 1, 0, 600, "retried"),
        bar(1, 2, 900, 1200, "succeeded"),
        bar(2, 1, 300, 1500, "taken over"),
        bar(2, 2, 1500, None, "running"),
    ]
    svg = parsed(charts.gantt(bars, charts.Window(T0, T0 + 3600), T0 + 1800, "attempts"))
    rects = svg.findall(f".//{SVG}rect")
    assert [r.get("class") for r in rects] == [
        "bar bar-retried",
        "bar bar-succeeded",
        "bar bar-taken-over",
        "bar bar-running",
    ]
    assert {r.get("y") for r in rects[:2]} == {"2"} and {r.get("y") for r in rects[2:]} == {"18"}
    width = charts.WIDTH - charts.LABEL - charts.RIGHT
    first = rects[0]
    assert float(first.get("x", "")) == charts.LABEL
    assert abs(float(first.get("width", "")) - width * 600 / 3600) < 0.2
    running = rects[3]  # drawn up to now: 1500 s to 1800 s
    assert abs(float(running.get("width", "")) - width * 300 / 3600) < 0.2
    titles = [r.find(f"{SVG}title").text for r in rects]  # type: ignore[union-attr]
    assert titles[0] == (
        "run 1 <key 1> & co · attempt 1: retried · worker host:1 · 08:00:00 → 08:10:00 (10.0 min)"
    )
    assert "still running" in (titles[3] or "")
    labels = [t.text for t in svg.findall(f".//{SVG}text") if t.get("class") == "row-label"]
    assert labels == ["<key 1> & co", "<key 2> & co"]
    links = {a.get("href") for a in svg.findall(f".//{SVG}a")}
    assert links == {"/runs/1", "/runs/2"}


def test_bars_outside_the_window_are_clipped_to_it() -> None:
    window = charts.Window(T0, T0 + 100)
    svg = parsed(charts.gantt([bar(1, 1, -50, 500, "dead")], window, T0, "clipped"))
    (rect,) = svg.findall(f".//{SVG}rect")
    assert float(rect.get("x", "")) == charts.LABEL
    assert float(rect.get("width", "")) == charts.WIDTH - charts.LABEL - charts.RIGHT


def test_the_time_axis_has_labels_as_precise_as_the_span_needs() -> None:
    assert charts.clock(T0, 300) == "08:00:00"
    assert charts.clock(T0, 86400) == "08:00"
    assert charts.clock(T0, 7 * 86400) == "01-15 08:00"
    svg = parsed(charts.stacked([], ["ok"], charts.Window(T0, T0 + 86400), "empty day"))
    ticks = [t.text for t in svg.findall(f".//{SVG}text") if t.get("class") == "tick-label"]
    assert ticks[-7:] == ["08:00", "12:00", "16:00", "20:00", "00:00", "04:00", "08:00"]


def test_stacked_bars_scale_to_the_busiest_slot_and_title_each_segment() -> None:
    slots = [(T0, {"succeeded": 6, "dead": 2}), (T0 + 60, {"succeeded": 4}), (T0 + 120, {})]
    svg = parsed(
        charts.stacked(slots, ["succeeded", "dead"], charts.Window(T0, T0 + 180), "finishes")
    )
    rects = svg.findall(f".//{SVG}rect")
    titles = [r.find(f"{SVG}title").text for r in rects]  # type: ignore[union-attr]
    assert titles == ["08:00:00: 6 succeeded", "08:00:00: 2 dead", "08:01:00: 4 succeeded"]
    heights = [float(r.get("height", "")) for r in rects]
    assert abs(heights[0] + heights[1] - (160 - charts.AXIS - 4)) < 0.2  # the peak fills it
    assert abs(heights[2] / heights[0] - 4 / 6) < 0.01
    assert svg.get("aria-label") == "finishes" and svg.get("role") == "img"


def test_percentile_lines_skip_empty_slots_and_title_each_point() -> None:
    slots = [
        DurationSlot(start=T0, runs=3, p50=0.2, p95=1.5, p99=2.0),
        DurationSlot(start=T0 + 60, runs=0, p50=None, p95=None, p99=None),
        DurationSlot(start=T0 + 120, runs=1, p50=0.05, p95=0.05, p99=0.05),
    ]
    svg = parsed(charts.percentiles(slots, charts.Window(T0, T0 + 180), "durations"))
    lines = svg.findall(f".//{SVG}polyline")
    assert [line.get("class") for line in lines] == ["line-p99", "line-p95", "line-p50"]
    assert all(len((line.get("points") or "").split()) == 2 for line in lines)
    dots = [c.find(f"{SVG}title").text for c in svg.findall(f".//{SVG}circle")]  # type: ignore[union-attr]
    assert "08:00:00: p95 1.5 s of 3 runs" in dots and "08:02:00: p50 50 ms of 1 runs" in dots
    assert len(dots) == 6
    values = [t.text for t in svg.findall(f".//{SVG}text") if t.get("x") == str(charts.LEFT - 4)]
    assert values == ["0 ms", "1.0 s", "2.0 s"]


def test_built_in_cursors_are_described_and_others_left_alone() -> None:
    digests = base64.b64encode(bytes(16)).decode()  # two 8-byte digests
    folder = json.dumps(
        {
            "v": 1,
            "kind": "folder",
            "w": int(T0 * 1e6) + 250_000,
            "f": int(T0 * 1e6),
            "e": [[int(T0 * 1e6), digests]],
        }
    )
    facts = dict(cursors.describe(folder) or [])
    assert facts["high-water mark"].startswith("2027-01-15 08:00:00.250 UTC")
    assert facts["remembered above the floor"] == "2 files"
    s3 = json.dumps({"v": 1, "kind": "s3", "w": int(T0), "f": None, "e": []})
    s3_facts = dict(cursors.describe(s3) or [])
    assert s3_facts["high-water mark"].startswith("2027-01-15 08:00:00 UTC (newest LastModified")
    assert s3_facts["floor"].startswith("—")
    sql = json.dumps(
        {"v": 1, "kind": "sql_cursor", "settled": 41, "recent": [[1, {"date": "2027-01-15"}, {}]]}
    )
    assert cursors.describe(sql) == [
        ("watermark", "41"),
        ("newest key read", "2027-01-15 (date)"),
        ("batches not yet settled", "1"),
    ]
    missing = json.dumps({"v": 1, "kind": "sql_missing", "after": None})
    assert cursors.describe(missing) == [("scan position", "start of the table")]
    for own in (None, "", "42", "{not json", '{"kind": "mine"}', "[1, 2]"):
        assert cursors.describe(own) is None
    assert re.fullmatch(r"\d+ ms", charts.seconds(0.012))


def transfer(**changes: object) -> Transfer:
    moment = datetime.fromtimestamp(T0, UTC)
    fields: dict[str, object] = {
        "id": 1, "source_path": "/data/a.bin", "bucket": "b", "key": "a.bin",
        "status": TransferStatus.ACTIVE, "follow": False, "part_size": 100, "upload_id": "u",
        "source_size": 1000, "source_mtime": 1.0, "bytes_confirmed": 300,
        "parts_confirmed": 3, "total_size": None, "sha256": None, "checksum": None,
        "etag": None, "verified_by": None, "reason": None, "error": None,
        "user_metadata": None, "sidecar_key": None, "run_id": None, "owner": "h:1",
        "owner_token": 1, "lease_expires_at": None, "resumes": 0, "created_at": moment,
        "updated_at": moment + timedelta(seconds=60), "finished_at": None,
    }  # fmt: skip
    fields.update(changes)
    return Transfer(**fields)  # type: ignore[arg-type]


def part(number: int, seconds: float, adopted: bool = False) -> TransferPart:
    return TransferPart(
        part_number=number,
        start=(number - 1) * 100,
        size=100,
        etag=f"e{number}",
        sha256="x",
        adopted=adopted,
        confirmed_at=datetime.fromtimestamp(T0 + seconds, UTC),
    )


def test_transfer_rate_time_left_and_parts_map() -> None:
    parts = [part(1, 10), part(2, 12, adopted=True), part(3, 14)]
    progress = transfer_views.recent_progress(transfer(), parts)
    assert progress.rate == 50.0  # parts 2 and 3 (200 bytes) in the 4 s after part 1
    assert progress.eta == 14.0  # 700 bytes left
    overall = transfer_views.lifetime_progress(transfer())
    assert overall.rate == 5.0 and overall.eta == 140.0  # 300 bytes in 60 s
    finished = transfer(status=TransferStatus.SUCCEEDED, bytes_confirmed=1000)
    assert transfer_views.lifetime_progress(finished).eta is None
    svg = parsed(transfer_views.parts_map(transfer(), parts) or "")
    kinds = [r.get("class") for r in svg.findall(f".//{SVG}rect")]
    assert kinds == ["part-confirmed", "part-adopted", "part-confirmed"] + ["part-missing"] * 7
    assert svg.get("aria-label") == "3 of 10 parts confirmed"
    assert transfer_views.parts_map(transfer(source_size=None), parts) is None


def test_upload_throughput_per_slot() -> None:
    parts = [dataclasses.replace(part(n, at), size=8192) for n, at in ((1, 0), (2, 2), (3, 200))]
    done = transfer(status=TransferStatus.SUCCEEDED)
    svg = parsed(transfer_views.throughput_chart(done, parts, T0 + 9999) or "")
    titles = [r.find(f"{SVG}title").text for r in svg.findall(f".//{SVG}rect")]  # type: ignore[union-attr]
    assert titles == ["08:00:00: 16 KiB", "08:03:20: 8 KiB"]  # slots of 4 s over 201 s
    assert transfer_views.throughput_chart(done, parts[:1], T0) is None


def test_lines_place_points_by_time_break_at_gaps_and_title_each_point() -> None:
    window = charts.Window(T0, T0 + 3600)
    points = [
        (T0, {"depth": 0.0, "age": None}),
        (T0 + 1800, {"depth": 1500.0, "age": 90.0}),
        (T0 + 2700, {"depth": None, "age": 300.0}),
        (T0 + 3600, {"depth": 3000.0, "age": 30.0}),
    ]
    svg = parsed(charts.lines(points, ["depth", "age"], window, "queue <all>", charts.count))
    assert svg.get("aria-label") == "queue <all>"
    depth = svg.findall(f"{SVG}circle[@class='dot-depth']")
    assert [c.findtext(f"{SVG}title") for c in depth] == [
        "08:00: depth 0",
        "08:30: depth 1,500",
        "09:00: depth 3,000",
    ]
    xs = [float(c.get("cx", "")) for c in depth]
    assert xs[0] == charts.LEFT and xs[2] == charts.WIDTH - charts.RIGHT
    assert xs[1] == (xs[0] + xs[2]) / 2  # by time, not by index
    # A missing value breaks the depth line in two: the single point after it has no line.
    assert len(svg.findall(f"{SVG}polyline[@class='line-depth']")) == 1
    assert len(svg.findall(f"{SVG}polyline[@class='line-age']")) == 1
    labels = [t.text for t in svg.findall(f"{SVG}text[@class='tick-label']")]
    assert "3,000" in labels and "1,500" in labels  # the value axis: peak and half
    assert charts.count(2.5) == "2.5"
