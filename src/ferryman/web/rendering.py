"""What every dashboard page shares: the templates and their filters, rendering, the change guard.

Every page is sent with a strict Content-Security-Policy: scripts, styles and
images from this server only, no inline script or style, no framing. The
charts are SVG drawn on the server (:mod:`ferryman.web.charts`), so nothing
is loaded from elsewhere and the dashboard works offline.
"""

from __future__ import annotations

import urllib.parse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request, status
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from ferryman.app import App
from ferryman.logs import error_summary
from ferryman.store.records import displayable
from ferryman.web import charts, session
from ferryman.web.settings import WebSettings

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
# A sensor whose next evaluation is this far in the past is flagged overdue:
# a daemon ticks every second or so, so a minute late means nothing evaluates it.
OVERDUE_AFTER_SECONDS = 60.0
# Run counts older than this are shown as stale (red) on the overview.
STALE_COUNT_SECONDS = 60.0

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
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
templates.env.filters["duration"] = charts.seconds
templates.env.filters["error_summary"] = error_summary


def render(request: Request, name: str, settings: WebSettings, **context: Any) -> Response:
    signed_in = session.session_id(request, settings) is not None
    response = templates.TemplateResponse(
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
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return response


def confirm(
    request: Request,
    settings: WebSettings,
    *,
    question: str,
    action: str,
    fields: dict[str, str],
    button: str,
    back_to: str,
    details: list[str] | None = None,
) -> Response:
    """A page asking to confirm a change, with the same form posted again and ``confirmed``.

    Plain HTML, so it works without JavaScript; the form carries the CSRF token
    like every other.
    """
    return render(
        request,
        "confirm.html",
        settings,
        question=question,
        action=action,
        fields=fields,
        button=button,
        back_to=local(back_to),
        details=details or [],
    )


def overdue_seconds(moment: datetime | None, now: float) -> float | None:
    """How late a sensor's next evaluation is, when it is late enough to flag; else None."""
    if moment is None:
        return None
    late = now - moment.timestamp()
    return late if late > OVERDUE_AFTER_SECONDS else None


def back(to: str, notice: str) -> RedirectResponse:
    separator = "&" if "?" in to else "?"
    target = f"{to}{separator}notice={urllib.parse.quote(notice)}"
    return RedirectResponse(target, status_code=status.HTTP_303_SEE_OTHER)


def local(target: str) -> str:
    """Only paths on this server: ``next`` and ``back`` never lead elsewhere."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


def guard(request: Request, settings: WebSettings, csrf: str) -> Response | None:
    """A response refusing the change, or None when it may go ahead."""
    if session.session_id(request, settings) is None:
        # Back to the page the button was on, once signed in (its path only).
        referer = urllib.parse.urlsplit(request.headers.get("referer", ""))
        page = referer.path + (f"?{referer.query}" if referer.query else "")
        back = urllib.parse.quote(local(page or "/"))
        return RedirectResponse(f"/login?next={back}", status_code=status.HTTP_303_SEE_OTHER)
    if not session.csrf_matches(request, settings, csrf):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the form is stale or forged: reload it")
    if settings.read_only:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this server is read-only")
    return None


def hidden(app: App, job: str) -> frozenset[str]:
    definition = app.jobs.get(job)
    return definition.sensitive if definition is not None else frozenset()
