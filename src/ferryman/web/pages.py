"""The dashboard: server-rendered pages over the same read model and App calls as the API.

Pages are open to read. Buttons post forms that need a signed-in session
and its CSRF token (see :mod:`ferryman.web.session`); on a read-only server
they are shown disabled. After a change the browser is sent back (303) with
a one-line notice.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup

from ferryman.app import App
from ferryman.model import Evaluation, Run, RunStatus, TransferStatus, chain_links, redact
from ferryman.store.read_model import DEAD_LETTER_SAMPLE, MinuteCount, RunFilter
from ferryman.store.read_queries import error_kind
from ferryman.store.read_workers import HOLDING_COUNTED
from ferryman.web import charts, cursors, insight, session, transfer_views
from ferryman.web.deps import (
    MAX_ID,
    AppDep,
    BeforeId,
    RecordId,
    RunCountsDep,
    SettingsDep,
    token_matches,
)
from ferryman.web.rendering import (
    PAGE,
    STALE_COUNT_SECONDS,
    back,
    confirm,
    guard,
    hidden,
    local,
    overdue_seconds,
    render,
    static_files,
)
from ferryman.web.settings import WebSettings

__all__ = ["page_error", "router", "static_files"]

router = APIRouter(include_in_schema=False, default_response_class=HTMLResponse)
router.include_router(insight.router)


# -- sign-in -------------------------------------------------------------------


@router.get("/login")
def login_form(request: Request, settings: SettingsDep, next: str = "/") -> Response:
    return render(request, "login.html", settings, next=local(next), failed=False)


@router.post("/login")
def login(
    request: Request,
    settings: SettingsDep,
    token: Annotated[str, Form(max_length=500)],
    next: Annotated[str, Form(max_length=2000)] = "/",
) -> Response:
    if not token_matches(settings, token):
        response = render(request, "login.html", settings, next=local(next), failed=True)
        response.status_code = status.HTTP_403_FORBIDDEN
        return response
    response = RedirectResponse(local(next), status_code=status.HTTP_303_SEE_OTHER)
    response.set_cookie(
        session.COOKIE,
        session.new_session(settings),
        max_age=session.MAX_AGE,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
def logout() -> Response:
    response = RedirectResponse("/", status_code=status.HTTP_303_SEE_OTHER)
    response.delete_cookie(session.COOKIE)
    return response


# -- overview ------------------------------------------------------------------


def _chart(throughput: list[MinuteCount]) -> dict[str, Any]:
    """Bars for the last hour, scaled to the busiest minute."""
    peak = max((m.succeeded + m.failed for m in throughput), default=0) or 1
    height = 80
    bars = []
    for index, minute in enumerate(throughput):
        ok = math.ceil(minute.succeeded / peak * height) if minute.succeeded else 0
        bad = math.ceil(minute.failed / peak * height) if minute.failed else 0
        label = datetime.fromtimestamp(minute.minute, UTC).strftime("%H:%M")
        bars.append(
            {
                "x": index * 10,
                "ok": ok,
                "bad": bad,
                "title": f"{label}: {minute.succeeded} succeeded, {minute.failed} failed",
            }
        )
    return {"bars": bars, "height": height, "peak": peak}


@router.get("/")
def overview(
    request: Request,
    app: AppDep,
    settings: SettingsDep,
    run_counts: RunCountsDep,
    chosen: insight.Range = "1h",
    since: insight.Moment = "",
    until: insight.Moment = "",
) -> Response:
    # A server just started may still be counting every run: the page does not
    # wait for it but shows the count saved last with its age, or says it is
    # counting, and its live updates fill the figures in.
    counted = run_counts.at_once()
    found = app.store.overview(alive_within=app.lease_seconds, counted=counted, count=False)
    counted_ago = None if found.counted_at is None else max(0.0, found.now - found.counted_at)
    picked = insight.pick_window(app, chosen, since, until)
    queue = insight.queue_charts(app, found, picked)
    return render(
        request,
        "overview.html",
        settings,
        overview=found,
        counted_ago=counted_ago,
        counts_stale=counted_ago is not None and counted_ago > STALE_COUNT_SECONDS,
        overdue={s.name: overdue_seconds(s.next_evaluation_at, found.now) for s in found.sensors},
        statuses=list(RunStatus),
        chart=_chart(found.throughput),
        finished_last_hour=sum(m.succeeded + m.failed for m in found.throughput),
        picked=picked,
        depth_chart=queue[0] if queue else None,
        oldest_chart=queue[1] if queue else None,
    )


# -- sensors -------------------------------------------------------------------


@router.get("/sensors")
def sensors_page(request: Request, app: AppDep, settings: SettingsDep) -> Response:
    found = app.store.sensors_failing_first()
    now = app.store.now()
    return render(
        request,
        "sensors.html",
        settings,
        sensors=[_shown(s) for s in found],
        outcomes=app.store.last_outcomes([s.name for s in found]),
        overdue={s.name: overdue_seconds(s.next_evaluation_at, now) for s in found},
    )


def _shown(state: Any) -> Any:
    from ferryman.sensors.engine import present_state

    return present_state(state)


@router.get("/sensors/{name}")
def sensor_page(
    request: Request,
    app: AppDep,
    settings: SettingsDep,
    name: str,
    before_id: BeforeId = None,
    chosen: insight.Range = "24h",
    since: insight.Moment = "",
    until: insight.Moment = "",
) -> Response:
    from ferryman.sensors.engine import present_evaluation

    detail = app.store.sensor_detail(name, before_id=before_id, limit=PAGE, history=20)
    if detail is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no sensor {name!r}")
    picked = insight.pick_window(app, chosen, since, until)
    return render(
        request,
        "sensor.html",
        settings,
        sensor=_shown(detail.state),
        cursor_facts=cursors.describe(_shown(detail.state).cursor),
        latest_items=_latest_items(app, detail.evaluations.items),
        outcomes_chart=insight.evaluations_chart(app, name, picked),
        lag=insight.lag_chart(app, name, picked),
        picked=picked,
        overdue=overdue_seconds(detail.state.next_evaluation_at, app.store.now()),
        evaluations=[present_evaluation(e) for e in detail.evaluations.items],
        next_before=detail.evaluations.next_before,
        history=[present_evaluation(e) for e in detail.cursor_history],
        source=app.source_stats().get(name),
        source_where=app.sources[name].describe() if name in app.sources else None,
    )


def _latest_items(app: App, evaluations: list[Evaluation]) -> list[Run]:
    """The runs the newest evaluation that requested any asked for (a few): for a folder
    sensor, the latest files it turned into runs (their run keys name them)."""
    for evaluation in evaluations:
        if evaluation.run_ids:
            return app.store.runs_by_id(list(evaluation.run_ids[:10]))
    return []


@router.post("/sensors/{name}/pause")
def pause(
    request: Request,
    app: AppDep,
    settings: SettingsDep,
    name: str,
    csrf: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    refused = guard(request, settings, csrf)
    if refused is not None:
        return refused
    app.pause_sensor(name)
    return back(f"/sensors/{urllib.parse.quote(name)}", f"sensor {name} paused")


@router.post("/sensors/{name}/resume")
def resume(
    request: Request,
    app: AppDep,
    settings: SettingsDep,
    name: str,
    csrf: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    refused = guard(request, settings, csrf)
    if refused is not None:
        return refused
    app.resume_sensor(name)
    return back(f"/sensors/{urllib.parse.quote(name)}", f"sensor {name} resumed")


@router.post("/sensors/{name}/cursor")
def set_cursor(
    request: Request,
    app: AppDep,
    settings: SettingsDep,
    name: str,
    cursor: Annotated[str, Form(max_length=10_000)] = "",
    csrf: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    refused = guard(request, settings, csrf)
    if refused is not None:
        return refused
    app.set_cursor(name, cursor or None, by="dashboard")
    return back(f"/sensors/{urllib.parse.quote(name)}", f"cursor of {name} set")


# -- runs ----------------------------------------------------------------------


Text = Annotated[str, Query(max_length=200)]


@router.get("/runs")
def runs_page(
    request: Request,
    app: AppDep,
    settings: SettingsDep,
    job: Text = "",
    status_filter: Annotated[RunStatus | Literal[""], Query(alias="status")] = "",
    since: Annotated[str, Query(max_length=40)] = "",
    until: Annotated[str, Query(max_length=40)] = "",
    run_key: Annotated[str, Query(max_length=2000)] = "",
    match: Annotated[str, Query(pattern="^(exact|prefix)$")] = "exact",
    worker: Text = "",
    error: Annotated[str, Query(max_length=1000)] = "",
    before_id: BeforeId = None,
    after_id: BeforeId = None,
) -> Response:
    found = RunFilter(
        job=job or None,
        status=status_filter or None,  # the form's "any" sends status=
        since=insight.parse_time(since),
        until=insight.parse_time(until),
        run_key=run_key if run_key and match == "exact" else None,
        run_key_prefix=run_key if run_key and match == "prefix" else None,
        worker=worker or None,
        error=error or None,
    )
    page = app.store.search_runs(found, before_id=before_id, after_id=after_id, limit=PAGE)
    filters = {"job": job, "status": status_filter.value if status_filter else ""}
    filters |= {"since": since, "until": until, "run_key": run_key, "worker": worker}
    filters |= {"error": error, "match": match if run_key else ""}
    kept = {k: v for k, v in filters.items() if v}
    return render(
        request,
        "runs.html",
        settings,
        runs=[(r, redact(r.payload, hidden(app, r.job))) for r in page.items],
        jobs=sorted(set(app.store.job_names()) | set(app.jobs)),
        statuses=list(RunStatus),
        filters=filters,
        next_query=urllib.parse.urlencode({**kept, "before_id": page.next_before})
        if page.next_before
        else None,
        previous_query=urllib.parse.urlencode({**kept, "after_id": page.previous_after})
        if page.previous_after
        else None,
    )


@router.get("/runs/{run_id}")
def run_page(request: Request, app: AppDep, settings: SettingsDep, run_id: RecordId) -> Response:
    detail = app.store.run_detail(run_id)
    if detail is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no run {run_id}")
    parent, children = chain_links(detail.events)
    return render(
        request,
        "run.html",
        settings,
        run=detail.run,
        payload=redact(detail.run.payload, hidden(app, detail.run.job)),
        events=detail.events,
        transfers=detail.transfers,
        parent=parent,
        children=children,
        attempts=_attempts_chart(app, detail.run),
        error_group=error_kind(detail.run.last_error)
        if detail.run.status in (RunStatus.FAILED, RunStatus.DEAD)
        else None,
    )


def _attempts_chart(app: App, run: Run) -> Markup | None:
    """The run's attempts on a time axis, claim to end (None before its first claim)."""
    bars = app.store.run_attempts(run.id)
    if not bars:
        return None
    now = app.store.now()
    start = min(bar.start for bar in bars)
    end = max(bar.end if bar.end is not None else now for bar in bars)
    margin = max(1.0, (end - start) * 0.05)
    window = charts.Window(start - margin, end + margin)
    return charts.gantt(bars, window, now, f"attempts of run {run.id}")


@router.post("/runs/{run_id}/retry")
def retry_run(
    request: Request,
    app: AppDep,
    settings: SettingsDep,
    run_id: RecordId,
    csrf: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    refused = guard(request, settings, csrf)
    if refused is not None:
        return refused
    retried = app.retry([run_id], by="dashboard")
    notice = f"run {run_id} queued again" if retried else f"run {run_id} is not failed or dead"
    return back(f"/runs/{run_id}", notice)


@router.post("/runs/{run_id}/cancel")
def cancel_run(
    request: Request,
    app: AppDep,
    settings: SettingsDep,
    run_id: RecordId,
    csrf: Annotated[str, Form(max_length=200)] = "",
    confirmed: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    refused = guard(request, settings, csrf)
    if refused is not None:
        return refused
    if not confirmed:
        return confirm(
            request,
            settings,
            question=f"Cancel run {run_id}?",
            action=f"/runs/{run_id}/cancel",
            fields={},
            button=f"Cancel run {run_id}",
            back_to=f"/runs/{run_id}",
            details=["It will not be run (again); a running attempt is told to stop."],
        )
    cancelled = app.cancel(run_id, by="dashboard")
    notice = "cancelled" if cancelled else f"run {run_id} was not queued or running: not cancelled"
    return back(f"/runs/{run_id}", notice)


@router.get("/dead-letters")
def dead_letters_page(
    request: Request,
    app: AppDep,
    settings: SettingsDep,
    job: Annotated[str, Query(max_length=200)] = "",
    error: Annotated[str, Query(max_length=1000)] = "",
) -> Response:
    groups = app.store.dead_letters(job=job or None)
    if error:  # one group, as linked from a run that ended with its error
        groups = [group for group in groups if group.error == error]
    return render(
        request,
        "dead_letters.html",
        settings,
        groups=groups,
        sample=DEAD_LETTER_SAMPLE,
        one_group=bool(error),
    )


def _run_ids(listed: str) -> list[int]:
    """The ids of a comma-separated list, each checked like an id in a path."""
    ids = []
    for part in (part.strip() for part in listed.split(",")):
        if not part:
            continue
        # Digits only: int() would also take "1_000", "+5" and non-ASCII digits.
        if re.fullmatch(r"[0-9]{1,19}", part) is None or not 1 <= int(part) <= MAX_ID:
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST, f"not a run id: {part[:30]!r} (ids are 1 to 2**62)"
            )
        ids.append(int(part))
    return ids


@router.post("/dead-letters/retry")
def retry_group(
    request: Request,
    app: AppDep,
    settings: SettingsDep,
    run_ids: Annotated[str, Form(max_length=20_000)] = "",
    csrf: Annotated[str, Form(max_length=200)] = "",
    confirmed: Annotated[str, Form(max_length=10)] = "",
    error: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    refused = guard(request, settings, csrf)
    if refused is not None:
        return refused
    ids = _run_ids(run_ids)
    if not ids:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "no runs to retry")
    if not confirmed:
        shown = ", ".join(str(i) for i in ids[:20]) + (" …" if len(ids) > 20 else "")
        return confirm(
            request,
            settings,
            question=f"Retry {len(ids)} runs?",
            action="/dead-letters/retry",
            fields={"run_ids": ",".join(str(i) for i in ids)},
            button=f"Retry {len(ids)} runs",
            back_to="/dead-letters",
            details=[f"ended with: {error}" if error else "", f"runs {shown}"],
        )
    retried = app.retry(ids, by="dashboard")
    return back("/dead-letters", f"{len(retried)} runs queued again")


# -- transfers and workers -----------------------------------------------------


@router.get("/transfers")
def transfers_page(
    request: Request,
    app: AppDep,
    settings: SettingsDep,
    status_filter: Annotated[TransferStatus | Literal[""], Query(alias="status")] = "",
    before_id: BeforeId = None,
) -> Response:
    page = app.store.transfer_page(status=status_filter or None, before_id=before_id, limit=PAGE)
    return render(
        request,
        "transfers.html",
        settings,
        transfers=[(t, transfer_views.lifetime_progress(t)) for t in page.items],
        next_before=page.next_before,
        statuses=list(TransferStatus),
        status_filter=status_filter.value if status_filter else "",
    )


@router.get("/transfers/{transfer_id}")
def transfer_page(
    request: Request, app: AppDep, settings: SettingsDep, transfer_id: RecordId
) -> Response:
    found = app.store.transfer_detail(transfer_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no transfer {transfer_id}")
    return render(
        request,
        "transfer.html",
        settings,
        transfer=found.transfer,
        parts=found.parts,
        progress=transfer_views.recent_progress(found.transfer, found.parts),
        parts_map=transfer_views.parts_map(found.transfer, found.parts),
        throughput=transfer_views.throughput_chart(found.transfer, found.parts, app.store.now()),
    )


@router.get("/workers")
def workers_page(request: Request, app: AppDep, settings: SettingsDep) -> Response:
    found = app.store.worker_views(alive_within=app.lease_seconds)
    return render(request, "workers.html", settings, workers=found, counted=HOLDING_COUNTED)


def page_error(request: Request, code: int, message: str) -> Response:
    """An error as a page of its own, in the dashboard's layout."""
    settings: WebSettings = request.app.state.settings
    response = render(request, "error.html", settings, code=code, message=message)
    response.status_code = code
    return response
