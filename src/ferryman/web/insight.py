"""Dashboard pages that draw: the run timeline and a page per job, with their charts.

Every chart covers a window chosen with the range picker (1 h, 24 h, 7 d or
custom ``since``/``until``), kept in the query string so a link survives a
reload. The window ends at the store's clock, the one every lease is
measured by. The SVG is drawn by :mod:`ferryman.web.charts`.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, Response
from markupsafe import Markup

from ferryman.app import App
from ferryman.model import RunStatus, SensorKind
from ferryman.store.read_model import Overview
from ferryman.store.read_views import SLOT_SAMPLE
from ferryman.web import charts
from ferryman.web.deps import AppDep, RunCountsDep, SettingsDep
from ferryman.web.rendering import render

router = APIRouter(include_in_schema=False, default_response_class=HTMLResponse)

RANGES = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}
FINISH_SERIES = ["finished", "estimated"]  # a slot is counted or, past a sample, estimated
JOB_DEAD_LETTER_SAMPLE = 200  # the job page groups its newest failures; /dead-letters more
# Job settings not worth a line on its page: the function and its name (in the title).
HIDDEN_SETTINGS = frozenset({"fn", "name"})

Range = Annotated[str, Query(alias="range", pattern="^(1h|24h|7d|custom)$")]
Moment = Annotated[str, Query(max_length=40)]


def parse_time(value: str) -> float | None:
    """An ISO 8601 date and time (UTC unless it says otherwise) as seconds; None if empty."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, f"not a date and time: {value!r} (use 2026-11-24T10:00)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@dataclasses.dataclass(frozen=True, slots=True)
class Picked:
    """The window a page shows and how it was asked for (to draw the picker)."""

    window: charts.Window
    range: str
    since: str
    until: str


def pick_window(app: App, chosen: str, since: str, until: str) -> Picked:
    now = app.store.now()
    if chosen == "custom":
        start, end = parse_time(since), parse_time(until)
        end = end if end is not None else now
        start = start if start is not None else end - RANGES["24h"]
        if start >= end:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "the window must start before it ends")
        return Picked(charts.Window(start, end), chosen, since, until)
    return Picked(charts.Window(now - RANGES[chosen], now), chosen, "", "")


@router.get("/timeline")
def timeline_page(
    request: Request,
    app: AppDep,
    settings: SettingsDep,
    job: Annotated[str, Query(max_length=200)] = "",
    chosen: Range = "1h",
    since: Moment = "",
    until: Moment = "",
) -> Response:
    picked = pick_window(app, chosen, since, until)
    window = picked.window
    found = app.store.timeline(since=window.since, until=window.until, job=job or None)
    label = f"run attempts {'of ' + job if job else 'of every job'}"
    if found.aggregated:
        slots = [(slot.start, slot.counts) for slot in found.slots]
        chart = charts.stacked(slots, FINISH_SERIES, window, f"runs finished, {label}")
    else:
        chart = charts.gantt(found.bars, window, app.store.now(), label)
    return render(
        request,
        "timeline.html",
        settings,
        chart=chart,
        found=found,
        picked=picked,
        job=job,
        jobs=sorted(set(app.store.job_names()) | set(app.jobs)),
        runs=len({bar.run_id for bar in found.bars}),
        estimated=any("estimated" in slot.counts for slot in found.slots),
        slot_sample=SLOT_SAMPLE,
    )


OUTCOMES = ["ok", "conflict", "manual", "failed"]


def evaluations_chart(app: App, sensor: str, picked: Picked) -> Markup:
    """A sensor's evaluations per slot of the picked window, stacked by outcome."""
    window = picked.window
    slots = app.store.evaluation_slots(sensor, since=window.since, until=window.until)
    drawn = [(slot.start, slot.counts) for slot in slots]
    return charts.stacked(drawn, OUTCOMES, window, f"evaluations of {sensor} by outcome")


def queue_charts(app: App, overview: Overview, picked: Picked) -> tuple[Markup, Markup] | None:
    """The queue's depth (runs queued or running) and its oldest due run's age over the
    picked window, derived from the runs' own times (see :mod:`ferryman.store.history`);
    None while the runs are not counted yet (the depth is derived from the count)."""
    window = picked.window
    if overview.counted_at is None:
        return None
    depth_now = sum(
        counts.get(status, 0)
        for counts in overview.counts.values()
        for status in (RunStatus.QUEUED, RunStatus.RUNNING)
    )
    ages = overview.oldest_due_age
    found = app.store.queue_history(
        since=window.since,
        until=window.until,
        depth_at_count=depth_now,
        counted_at=overview.counted_at,
        oldest_due_at=overview.now - max(ages.values()) if ages else None,
    )
    depth = [(p.at, {"queued-or-running": float(p.depth)}) for p in found]
    oldest = [(p.at, {"oldest-due": p.oldest_due_age}) for p in found]
    return (
        charts.lines(depth, ["queued-or-running"], window, "runs queued or running", charts.count),
        charts.lines(oldest, ["oldest-due"], window, "age of the oldest due run", charts.seconds),
    )


def lag_chart(app: App, sensor: str, picked: Picked) -> tuple[Markup, bool]:
    """How late the sensor's evaluations started (p50 and max per slot), and True; for a push
    sensor, or one this server does not register, how long each took instead, and False."""
    window = picked.window
    definition = app.sensor_definitions.get(sensor)
    interval = None
    if definition is not None and definition.kind != SensorKind.PUSH:
        interval = definition.interval
    slots = app.store.sensor_lag(sensor, interval=interval, since=window.since, until=window.until)
    half = (slots[1].start - slots[0].start) / 2 if len(slots) > 1 else 0.0
    points = [(s.start + half, {"lag-p50": s.p50, "lag-max": s.max}) for s in slots]
    if interval is None:
        points = [(at, {"took-p50": v["lag-p50"], "took-max": v["lag-max"]}) for at, v in points]
    series = ["lag-p50", "lag-max"] if interval is not None else ["took-p50", "took-max"]
    what = "lag" if interval is not None else "duration"
    label = f"evaluation {what} of {sensor}"
    return charts.lines(points, series, window, label, charts.seconds), interval is not None


def job_settings(app: App, name: str) -> list[tuple[str, str]]:
    """Every setting of a registered job, named as in ``@app.job(...)``."""
    definition = app.jobs.get(name)
    if definition is None:
        return []
    shown = []
    for field in dataclasses.fields(definition):
        if field.name in HIDDEN_SETTINGS:
            continue
        value = getattr(definition, field.name)
        if isinstance(value, frozenset | set | tuple | list):
            value = ", ".join(sorted(str(v) for v in value)) or "—"
        shown.append((field.name, "—" if value is None else str(value)))
    return shown


@router.get("/jobs/{name}")
def job_page(
    request: Request,
    app: AppDep,
    settings: SettingsDep,
    run_counts: RunCountsDep,
    name: str,
    chosen: Range = "24h",
    since: Moment = "",
    until: Moment = "",
) -> Response:
    counted = run_counts.current()
    if name not in app.jobs and name not in counted.counts:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {name!r}")
    picked = pick_window(app, chosen, since, until)
    window = picked.window
    slots = app.store.durations(job=name, since=window.since, until=window.until)
    sensors = [
        definition
        for definition in app.sensor_definitions.values()
        if name in definition.jobs or definition.job == name
    ]
    return render(
        request,
        "job.html",
        settings,
        job=name,
        registered=name in app.jobs,
        job_settings=job_settings(app, name),
        counts=counted.counts.get(name, {}),
        counted_at=counted.at,
        statuses=list(RunStatus),
        duration_chart=charts.percentiles(slots, window, f"run durations of {name}"),
        finished=sum(slot.runs for slot in slots),
        picked=picked,
        dead_letters=app.store.dead_letters(job=name, sample=JOB_DEAD_LETTER_SAMPLE),
        dead_letter_sample=JOB_DEAD_LETTER_SAMPLE,
        sensors=sensors,
    )
