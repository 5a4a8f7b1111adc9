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
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from ferryman.app import App
from ferryman.logs import error_summary
from ferryman.model import RunStatus, TransferStatus, chain_links, redact
from ferryman.store.read_model import DEAD_LETTER_SAMPLE, MinuteCount
from ferryman.store.records import displayable
from ferryman.web import session
from ferryman.web.deps import (
    MAX_ID,
    AppDep,
    BeforeId,
    RecordId,
    RunCountsDep,
    SettingsDep,
    token_matches,
)
from ferryman.web.settings import WebSettings

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(include_in_schema=False, default_response_class=HTMLResponse)
static_files = StaticFiles(directory=HERE / "static")

PAGE = 50


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _when(moment: datetime | None) -> str:
    return "—" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _size(count: int | None) -> str:
    if count is None:
        return "?"
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count} B"


# Every value a page shows, escaped where UTF-8 cannot hold it (a lone surrogate
# from an undecodable file name): one bad name must not break the page.
templates.env.finalize = displayable
templates.env.filters["age"] = _age


def _when_epoch(seconds: float) -> str:
    return _when(datetime.fromtimestamp(seconds, UTC))


templates.env.filters["when"] = _when
templates.env.filters["when_epoch"] = _when_epoch
templates.env.filters["size"] = _size
templates.env.filters["error_summary"] = error_summary


def render(request: Request, name: str, settings: WebSettings, **context: Any) -> Response:
    signed_in = session.session_id(request, settings) is not None
    return templates.TemplateResponse(
        request,
        name,
        {
            "signed_in": signed_in,
            "read_only": settings.read_only,
            "can_change": signed_in and not settings.read_only,
            "csrf": session.csrf_token(request, settings),
            "notice": request.query_params.get("notice", "")[:300],
            "path": request.url.path,
            **context,
        },
    )


def _back(to: str, notice: str) -> RedirectResponse:
    separator = "&" if "?" in to else "?"
    target = f"{to}{separator}notice={urllib.parse.quote(notice)}"
    return RedirectResponse(target, status_code=status.HTTP_303_SEE_OTHER)


def _local(target: str) -> str:
    """Only paths on this server: ``next`` and ``back`` never lead elsewhere."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


def _guard(request: Request, settings: WebSettings, csrf: str) -> Response | None:
    """A response refusing the change, or None when it may go ahead."""
    if session.session_id(request, settings) is None:
        # Back to the page the button was on, once signed in (its path only).
        referer = urllib.parse.urlsplit(request.headers.get("referer", ""))
        page = referer.path + (f"?{referer.query}" if referer.query else "")
        back = urllib.parse.quote(_local(page or "/"))
        return RedirectResponse(f"/login?next={back}", status_code=status.HTTP_303_SEE_OTHER)
    if not session.csrf_matches(request, settings, csrf):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the form is stale or forged: reload it")
    if settings.read_only:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this server is read-only")
    return None


def _hidden(app: App, job: str) -> frozenset[str]:
    definition = app.jobs.get(job)
    return definition.sensitive if definition is not None else frozenset()


# -- sign-in -------------------------------------------------------------------


@router.get("/login")
def login_form(request: Request, settings: SettingsDep, next: str = "/") -> Response:
    return render(request, "login.html", settings, next=_local(next), failed=False)


@router.post("/login")
def login(
    request: Request,
    settings: SettingsDep,
    token: Annotated[str, Form(max_length=500)],
    next: Annotated[str, Form(max_length=2000)] = "/",
) -> Response:
    if not token_matches(settings, token):
        response = render(request, "login.html", settings, next=_local(next), failed=True)
        response.status_code = status.HTTP_403_FORBIDDEN
        return response
    response = RedirectResponse(_local(next), status_code=status.HTTP_303_SEE_OTHER)
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
    request: Request, app: AppDep, settings: SettingsDep, run_counts: RunCountsDep
) -> Response:
    found = app.store.overview(alive_within=app.lease_seconds, counted=run_counts.current())
    return render(
        request,
        "overview.html",
        settings,
        overview=found,
        statuses=list(RunStatus),
        chart=_chart(found.throughput),
        finished_last_hour=sum(m.succeeded + m.failed for m in found.throughput),
    )


# -- sensors -------------------------------------------------------------------


@router.get("/sensors")
def sensors_page(request: Request, app: AppDep, settings: SettingsDep) -> Response:
    found = app.store.sensors_failing_first()
    return render(request, "sensors.html", settings, sensors=[_shown(s) for s in found])


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
) -> Response:
    from ferryman.sensors.engine import present_evaluation

    detail = app.store.sensor_detail(name, before_id=before_id, limit=PAGE, history=20)
    if detail is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no sensor {name!r}")
    return render(
        request,
        "sensor.html",
        settings,
        sensor=_shown(detail.state),
        evaluations=[present_evaluation(e) for e in detail.evaluations.items],
        next_before=detail.evaluations.next_before,
        history=[present_evaluation(e) for e in detail.cursor_history],
        source=app.source_stats().get(name),
        source_where=app.sources[name].describe() if name in app.sources else None,
    )


@router.post("/sensors/{name}/pause")
def pause(
    request: Request,
    app: AppDep,
    settings: SettingsDep,
    name: str,
    csrf: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    refused = _guard(request, settings, csrf)
    if refused is not None:
        return refused
    app.pause_sensor(name)
    return _back(f"/sensors/{urllib.parse.quote(name)}", f"sensor {name} paused")


@router.post("/sensors/{name}/resume")
def resume(
    request: Request,
    app: AppDep,
    settings: SettingsDep,
    name: str,
    csrf: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    refused = _guard(request, settings, csrf)
    if refused is not None:
        return refused
    app.resume_sensor(name)
    return _back(f"/sensors/{urllib.parse.quote(name)}", f"sensor {name} resumed")


@router.post("/sensors/{name}/cursor")
def set_cursor(
    request: Request,
    app: AppDep,
    settings: SettingsDep,
    name: str,
    cursor: Annotated[str, Form(max_length=10_000)] = "",
    csrf: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    refused = _guard(request, settings, csrf)
    if refused is not None:
        return refused
    app.set_cursor(name, cursor or None, by="dashboard")
    return _back(f"/sensors/{urllib.parse.quote(name)}", f"cursor of {name} set")


# -- runs ----------------------------------------------------------------------


def _parse_time(value: str) -> float | None:
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


@router.get("/runs")
def runs_page(
    request: Request,
    app: AppDep,
    settings: SettingsDep,
    job: Annotated[str, Query(max_length=200)] = "",
    status_filter: Annotated[RunStatus | None, Query(alias="status")] = None,
    since: Annotated[str, Query(max_length=40)] = "",
    until: Annotated[str, Query(max_length=40)] = "",
    before_id: BeforeId = None,
) -> Response:
    page = app.store.run_page(
        job=job or None,
        status=status_filter,
        since=_parse_time(since),
        until=_parse_time(until),
        before_id=before_id,
        limit=PAGE,
    )
    jobs = sorted(set(app.store.job_names()) | set(app.jobs))
    filters = {"job": job, "status": status_filter.value if status_filter else "", "since": since}
    filters["until"] = until
    next_query = urllib.parse.urlencode(
        {**{k: v for k, v in filters.items() if v}, "before_id": page.next_before or ""}
    )
    return render(
        request,
        "runs.html",
        settings,
        runs=[(r, redact(r.payload, _hidden(app, r.job))) for r in page.items],
        jobs=jobs,
        statuses=list(RunStatus),
        filters=filters,
        next_query=next_query if page.next_before else None,
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
        payload=redact(detail.run.payload, _hidden(app, detail.run.job)),
        events=detail.events,
        transfers=detail.transfers,
        parent=parent,
        children=children,
    )


@router.post("/runs/{run_id}/retry")
def retry_run(
    request: Request,
    app: AppDep,
    settings: SettingsDep,
    run_id: RecordId,
    csrf: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    refused = _guard(request, settings, csrf)
    if refused is not None:
        return refused
    retried = app.retry([run_id], by="dashboard")
    notice = f"run {run_id} queued again" if retried else f"run {run_id} is not failed or dead"
    return _back(f"/runs/{run_id}", notice)


@router.post("/runs/{run_id}/cancel")
def cancel_run(
    request: Request,
    app: AppDep,
    settings: SettingsDep,
    run_id: RecordId,
    csrf: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    refused = _guard(request, settings, csrf)
    if refused is not None:
        return refused
    cancelled = app.cancel(run_id, by="dashboard")
    message = "cancelled" if cancelled else "only a queued or running run is cancelled"
    return _back(f"/runs/{run_id}", message)


@router.get("/dead-letters")
def dead_letters_page(
    request: Request,
    app: AppDep,
    settings: SettingsDep,
    job: Annotated[str, Query(max_length=200)] = "",
) -> Response:
    groups = app.store.dead_letters(job=job or None)
    return render(request, "dead_letters.html", settings, groups=groups, sample=DEAD_LETTER_SAMPLE)


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
) -> Response:
    refused = _guard(request, settings, csrf)
    if refused is not None:
        return refused
    ids = _run_ids(run_ids)
    if not ids:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "no runs to retry")
    retried = app.retry(ids, by="dashboard")
    return _back("/dead-letters", f"{len(retried)} runs queued again")


# -- transfers and workers -----------------------------------------------------


@router.get("/transfers")
def transfers_page(
    request: Request,
    app: AppDep,
    settings: SettingsDep,
    status_filter: Annotated[TransferStatus | None, Query(alias="status")] = None,
    before_id: BeforeId = None,
) -> Response:
    page = app.store.transfer_page(status=status_filter, before_id=before_id, limit=PAGE)
    return render(
        request, "transfers.html", settings, transfers=page.items, next_before=page.next_before
    )


@router.get("/transfers/{transfer_id}")
def transfer_page(
    request: Request, app: AppDep, settings: SettingsDep, transfer_id: RecordId
) -> Response:
    found = app.store.transfer_detail(transfer_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no transfer {transfer_id}")
    return render(request, "transfer.html", settings, transfer=found.transfer, parts=found.parts)


@router.get("/workers")
def workers_page(request: Request, app: AppDep, settings: SettingsDep) -> Response:
    found = app.store.worker_views(alive_within=app.lease_seconds)
    return render(request, "workers.html", settings, workers=found)


def page_error(request: Request, code: int, message: str) -> Response:
    """An error as a page of its own, in the dashboard's layout."""
    settings: WebSettings = request.app.state.settings
    response = render(request, "error.html", settings, code=code, message=message)
    response.status_code = code
    return response
