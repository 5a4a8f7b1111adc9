"""Builds the FastAPI application from its three parts.

``api`` (JSON under ``/api``), ``pages`` (the dashboard) and ``metrics``
(``/metrics``) each own one router; this module only wires them to the
:class:`~ferryman.App` and the settings they share.
"""

from __future__ import annotations

from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ferryman.app import App
from ferryman.errors import (
    ConfigurationError,
    FerrymanError,
    PayloadError,
    StoreError,
    UnknownJob,
    UnknownSensor,
)
from ferryman.store.records import displayable
from ferryman.web.settings import WebSettings


def create_app(app: App, settings: WebSettings) -> FastAPI:
    """The ASGI application for ``app``'s store."""
    # Imported here so that `import ferryman.web` stays cheap for the CLI.
    from ferryman.web import api, metrics, pages
    from ferryman.web.run_counts import RunCounts

    web = FastAPI(
        title="ferryman",
        summary="Sensors, runs and transfers of one ferryman store.",
        version=_version(),
        # FastAPI's docs pages load their scripts from a CDN: none served here.
        docs_url=None,
        redoc_url=None,
    )
    web.state.ferryman = app
    web.state.settings = settings
    web.state.run_counts = RunCounts(app)
    web.state.metrics = metrics.registry_for(app, web.state.run_counts)
    web.include_router(api.router, prefix="/api")
    web.include_router(metrics.router)
    web.include_router(pages.router)
    web.mount("/static", pages.static_files, name="static")
    web.add_exception_handler(FerrymanError, _ferryman_error)
    web.add_exception_handler(StarletteHTTPException, _http_error)
    web.add_exception_handler(RequestValidationError, _invalid_request)
    return web


def _is_api(request: Request) -> bool:
    return request.url.path.startswith(("/api", "/metrics", "/openapi.json"))


async def _http_error(request: Request, exc: Exception) -> Response:
    """JSON for the API, a page in the dashboard's layout for everything else."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED:
        exc.headers = {**(exc.headers or {}), "Allow": _allowed(request)}
    if _is_api(request) or request.url.path.startswith("/static"):
        return await http_exception_handler(request, exc)
    from ferryman.web.pages import page_error

    return page_error(request, exc.status_code, str(exc.detail))


def _allowed(request: Request) -> str:
    """Every method some route of the path takes (``GET /api/runs`` and ``POST`` are two
    routes, and the router's own 405 names only the first one's)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(request.url.path):
            methods |= set(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


async def _invalid_request(request: Request, exc: Exception) -> Response:
    """422: FastAPI's JSON for the API, a page saying what was wrong for everything else."""
    assert isinstance(exc, RequestValidationError)
    if _is_api(request) or request.url.path.startswith("/static"):
        # FastAPI's own answer, with the echoed input made displayable: a lone
        # surrogate sent as a JSON escape would otherwise make it a 500.
        return JSONResponse(
            {"detail": displayable(jsonable_encoder(exc.errors()))},
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )
    from ferryman.web.pages import page_error

    return page_error(request, 422, _what_was_wrong(exc))


def _what_was_wrong(exc: RequestValidationError) -> str:
    """One line per problem, named by the parameter: "run_id: Input should be ..."."""
    problems = []
    for error in exc.errors():
        location = [str(part) for part in error.get("loc", ())]
        where = ".".join(location[1:]) or ".".join(location) or "request"
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(problems)[:500] or "the request is not valid"


def _status_of(exc: FerrymanError) -> int:
    if isinstance(exc, UnknownSensor | UnknownJob):
        return 404
    if isinstance(exc, ConfigurationError | PayloadError):
        return 400
    if isinstance(exc, StoreError):
        return 503  # the store is down or refused: worth trying again later
    return 400


async def _ferryman_error(request: Request, exc: Exception) -> Response:
    """ferryman's own errors as a 4xx/503 with their one-line message, never a 500."""
    assert isinstance(exc, FerrymanError)
    code = _status_of(exc)
    if _is_api(request):
        return JSONResponse({"detail": str(exc)}, status_code=code)
    from ferryman.web.pages import page_error

    return page_error(request, code, str(exc))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ferryman")
    except PackageNotFoundError:
        return "0"
