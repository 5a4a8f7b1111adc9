"""Fixtures for the web tests: the app on both stores, a client in-process, a real server."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import uvicorn
from fastapi import FastAPI
from starlette.testclient import TestClient

import ferryman as fm
from ferryman.web import WebSettings, create_app
from tests.helpers import free_port, wait_until
from tests.web.web_app import make_app, populate

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def web_app(store_url: str) -> Iterator[fm.App]:
    """The test app with some history, on SQLite and on PostgreSQL."""
    app = make_app(store_url)
    populate(app)
    yield app
    app.close()


def counted_app(app: fm.App, settings: WebSettings) -> FastAPI:
    """The web app with its first count of runs taken, as ``ferryman serve`` takes it as
    it starts (``serving.warm_up``): a first overview does not wait for that count but
    says it is counting (``tests/web/test_warm_up.py``)."""
    web = create_app(app, settings)
    web.state.run_counts.current()
    return web


@pytest.fixture
def client(web_app: fm.App) -> Iterator[TestClient]:
    with TestClient(counted_app(web_app, WebSettings(token=TOKEN))) as test_client:
        yield test_client


def sign_in(client: TestClient) -> str:
    """Sign in through the form; return the CSRF token the pages now carry."""
    response = client.post("/login", data={"token": TOKEN, "next": "/"}, follow_redirects=False)
    assert response.status_code == 303 and "ferryman_session" in response.cookies
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
    page = client.get("/sensors/numbers").text
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found is not None
    return found.group(1)


@dataclass
class LiveServer:
    url: str
    server: uvicorn.Server
    thread: threading.Thread


def start_server(app: fm.App, settings: WebSettings, *, counted: bool = True) -> LiveServer:
    """uvicorn on a free loopback port, on a thread; stop with :func:`stop_server`.
    ``counted``: its first count of runs taken before it starts (see :func:`counted_app`)."""
    port = free_port()
    web = counted_app(app, settings) if counted else create_app(app, settings)
    config = uvicorn.Config(web, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-web-server", daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=20, what="the web server to start")
    return LiveServer(url=f"http://127.0.0.1:{port}", server=server, thread=thread)


def stop_server(live: LiveServer) -> None:
    live.server.should_exit = True
    live.thread.join(timeout=10)


@pytest.fixture
def live_server(web_app: fm.App) -> Iterator[LiveServer]:
    live = start_server(web_app, WebSettings(token=TOKEN))
    yield live
    stop_server(live)
