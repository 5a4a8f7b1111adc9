"""Request dependencies shared by the API, the pages and the metrics."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request, status

from ferryman.app import App
from ferryman.web.run_counts import RunCounts
from ferryman.web.settings import WebSettings

# Ids of runs, transfers and evaluations are 64-bit in the store, and none
# comes near this. A larger one is refused as input (422) before any query:
# SQLite's driver cannot even bind an integer above 2**63 - 1 (OverflowError,
# no database error: it would be a 500), and PostgreSQL's "out of range for
# bigint" would come back as a store error (a 503, "try again later").
MAX_ID = 2**62

RecordId = Annotated[int, Path(ge=1, le=MAX_ID)]
BeforeId = Annotated[int | None, Query(ge=1, le=MAX_ID, description="ids below this one")]


def get_app(request: Request) -> App:
    app: App = request.app.state.ferryman
    return app


def get_run_counts(request: Request) -> RunCounts:
    counts: RunCounts = request.app.state.run_counts
    return counts


def get_settings(request: Request) -> WebSettings:
    settings: WebSettings = request.app.state.settings
    return settings


def token_matches(settings: WebSettings, presented: str) -> bool:
    """Constant-time comparison, so the token cannot be guessed byte by byte."""
    return hmac.compare_digest(presented.encode(), settings.token.encode())


def require_token(
    request: Request, settings: Annotated[WebSettings, Depends(get_settings)]
) -> None:
    """Guard for mutating API requests: 401 without a bearer token, 403 with a
    wrong one or when the server is read-only."""
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="this request changes state: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not token_matches(settings, presented.strip()):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="wrong API token")
    if settings.read_only:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="this server is read-only")


AppDep = Annotated[App, Depends(get_app)]
SettingsDep = Annotated[WebSettings, Depends(get_settings)]
RunCountsDep = Annotated[RunCounts, Depends(get_run_counts)]
