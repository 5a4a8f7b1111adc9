"""The server counts runs and folds the processing log as it starts, without waiting.

Counting every run and folding the whole log grow with the store; begun at
start-up (``ferryman.web.serving.warm_up``, on a thread of its own while the
server answers), the first overview and the first ``/metrics`` cost what
later ones do, and a request that comes while the first count runs waits for
it rather than counting again. Checked on every store, and on a store that
cannot be reached (logged; the first request tries again).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

import ferryman as fm
from ferryman.store import run_tally
from ferryman.web import WebSettings, create_app
from ferryman.web.serving import Token, make_server, warm_up
from tests.web.conftest import TOKEN
from tests.web.test_pages import section


def with_three_runs(make_app: type[fm.App]) -> fm.App:
    """An app with a job ``load`` and three runs of it queued."""
    app = make_app()

    @app.job()
    def load(ctx: fm.JobContext, payload: Any) -> None:
        pass

    app.submit("load", *[fm.RunRequest(f"k-{n}") for n in range(3)])
    return app


def test_warm_up_takes_the_first_count_before_any_request(make_app: type[fm.App]) -> None:
    app = with_three_runs(make_app)
    web = create_app(app, WebSettings(token=TOKEN))
    assert web.state.run_counts.latest is None

    warm_up(web)

    counted = web.state.run_counts.latest
    assert counted is not None
    assert counted.counts["load"][fm.RunStatus.QUEUED] == 3


def test_the_server_warms_up_when_it_starts(make_app: type[fm.App]) -> None:
    app = make_app()
    server = make_server(
        app, host="127.0.0.1", port=1, token=Token(value=TOKEN, generated=False), read_only=False
    )
    server.config.load()
    server.lifespan = server.config.lifespan_class(server.config)

    async def start_and_stop() -> None:
        await server.startup(sockets=[])
        await server.shutdown()

    asyncio.run(start_and_stop())
    assert server.warming is not None
    server.warming.join(timeout=60)
    assert server.web.state.run_counts.latest is not None


def test_a_count_asked_for_while_one_runs_waits_for_it_instead_of_counting_again(
    make_app: type[fm.App],
) -> None:
    app = with_three_runs(make_app)
    web = create_app(app, WebSettings(token=TOKEN))
    counting_began, go_on = threading.Event(), threading.Event()
    counted_from: list[object] = []
    count_runs = app.store.count_runs

    def firstcount_held_open(previous: Any) -> Any:
        counted_from.append(previous)
        counting_began.set()
        go_on.wait(timeout=60)
        return count_runs(previous)

    app.store.count_runs = firstcount_held_open  # type: ignore[method-assign]
    warming = threading.Thread(target=warm_up, args=(web,))
    warming.start()
    assert counting_began.wait(timeout=60)
    answers: list[Any] = []
    asking = threading.Thread(target=lambda: answers.append(web.state.run_counts.current()))
    asking.start()
    go_on.set()
    asking.join(timeout=60)
    warming.join(timeout=60)
    # Every run counted once, by the warm-up; later counts carry it forward.
    assert counted_from.count(None) == 1
    assert answers[0].counts["load"][fm.RunStatus.QUEUED] == 3


def test_a_store_that_cannot_be_reached_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = fm.App("postgresql+psycopg://nobody@127.0.0.1:1/none", create=False)
    web = create_app(app, WebSettings(token=TOKEN))
    with caplog.at_level(logging.WARNING, logger="ferryman.web"):
        warm_up(web)
    assert "first request retries" in caplog.text
    assert web.state.run_counts.latest is None


def test_a_server_that_starts_carries_the_saved_count_and_totals_forward(
    make_app: type[fm.App], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first server counts every run and folds the whole log, and saves both; the
    next one starts from them and reads only what the log gained since."""
    app = with_three_runs(make_app)
    app.work(until_idle=True)
    warm_up(create_app(app, WebSettings(token=TOKEN)))  # counts, folds and saves

    def counting(*_args: Any) -> Any:
        raise AssertionError("counted every run although a saved count was there")

    monkeypatch.setattr(run_tally, "count", counting)
    app.submit("load", fm.RunRequest("after-the-save"))
    web = create_app(app, WebSettings(token=TOKEN))
    warm_up(web)

    counted = web.state.run_counts.latest
    assert counted is not None
    assert counted.counts["load"] == {fm.RunStatus.SUCCEEDED: 3, fm.RunStatus.QUEUED: 1}
    saved = app.store.saved_folded()
    assert saved is not None  # what was folded (on PostgreSQL and MariaDB, rows 5 s old)
    if app.store.ids_in_commit_order:
        assert saved.events[("load", "succeeded")] == 3


def count_held_open(app: fm.App) -> tuple[threading.Event, threading.Event]:
    """The store's counts of every run held open (a store that counts every run: seconds
    at ten million): ``began`` is set when one starts, which then waits for ``go_on``."""
    began, go_on = threading.Event(), threading.Event()
    count_runs = app.store.count_runs

    def held(previous: Any) -> Any:
        began.set()
        go_on.wait(timeout=60)
        return count_runs(previous)

    app.store.count_runs = held  # type: ignore[method-assign]
    return began, go_on


@contextlib.contextmanager
def first_count_held_open(app: fm.App, web: FastAPI) -> Iterator[None]:
    """The server's warm-up under way, its first count of every run held open until the
    block ends."""
    began, go_on = count_held_open(app)
    warming = threading.Thread(target=warm_up, args=(web,))
    warming.start()
    try:
        assert began.wait(timeout=60)
        yield
    finally:
        go_on.set()
        warming.join(timeout=60)


def test_the_first_overview_says_it_is_counting_instead_of_waiting_for_the_count(
    make_app: type[fm.App],
) -> None:
    """A server just started on a store that never saved a count: the overview answers
    while the first count runs, says so, and is filled in once the count is done."""
    app = with_three_runs(make_app)
    web = create_app(app, WebSettings(token=TOKEN))
    with first_count_held_open(app, web), TestClient(web) as client:
        page = client.get("/").text  # answered with the count still held open
        assert "Counting runs…" in page
        assert "data-live-pending" in page
        assert 'id="counted-ago"' not in page
        assert '<span class="figure">…</span>' in page
        assert "counting…" in section(page, "Queue over time")
    with TestClient(web) as client:
        page = client.get("/").text
    assert "Counting runs…" not in page and "data-live-pending" not in page
    assert re.search(r'<span class="" id="counted-ago">\d+ s ago</span>', page)
    assert 'href="/runs?job=load&status=queued">3<' in page


def test_the_first_overview_shows_the_saved_count_with_its_age_while_counting(
    make_app: type[fm.App],
) -> None:
    """With a count saved by an earlier server, the first overview shows it at once, with
    how old it is (in red past a minute), rather than wait for it to be carried forward."""
    app = with_three_runs(make_app)
    counted = app.store.count_runs()
    app.store.save_run_count(dataclasses.replace(counted, at=counted.at - 90))
    web = create_app(app, WebSettings(token=TOKEN))
    with first_count_held_open(app, web), TestClient(web) as client:
        page = client.get("/").text
    assert re.search(r'<span class="stale" id="counted-ago">(89|90|91|92) s ago</span>', page)
    assert 'href="/runs?job=load&status=queued">3<' in page
    assert "Counting runs…" not in page


def test_a_scrape_during_the_first_count_gets_the_other_gauges_at_once(
    make_app: type[fm.App],
) -> None:
    """``/metrics`` while the server's first count of every run is under way: the gauges
    that need no count, at once; ``ferryman_runs`` once the count is done."""
    app = with_three_runs(make_app)
    web = create_app(app, WebSettings(token=TOKEN))
    with first_count_held_open(app, web), TestClient(web) as client:
        early = client.get("/metrics").text  # answered with the count still held open
    assert "ferryman_workers_live 0.0" in early
    assert "ferryman_runs{" not in early
    with TestClient(web) as client:
        later = client.get("/metrics").text
    assert 'ferryman_runs{job="load",status="queued"} 3.0' in later


def test_a_first_count_running_longer_than_the_wait_is_not_waited_for_again(
    make_app: type[fm.App],
) -> None:
    """The server's first count has run longer than a page would wait (a big store's):
    the page shows what it has at once instead of waiting again for it."""
    app = with_three_runs(make_app)
    web = create_app(app, WebSettings(token=TOKEN))
    wait = 2.0
    with first_count_held_open(app, web):
        began = time.monotonic()
        threading.Event().wait(wait)  # the count, held open, has now run ``wait`` seconds
        asked = time.monotonic()
        assert web.state.run_counts.at_once(wait=wait) is None  # no count saved
        answered = time.monotonic()
    assert asked - began >= wait
    assert answered - asked < wait / 2
