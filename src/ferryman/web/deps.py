"""Request dependencies shared by the API, the pages and the metrics."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from ferryman.app import App
from ferryman.web.server import WebSettings


def get_app(request: Request) -> App:
    app: App = request.app.state.ferryman
    return app


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
