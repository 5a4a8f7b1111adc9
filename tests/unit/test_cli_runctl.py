"""``ferryman cancel``, ``retry --since`` and chained runs in ``runs show``, as real processes."""

from __future__ import annotations

import json

import ferryman as fm
from tests.unit.test_cli import ferryman


def _app(store_url: str) -> fm.App:
    from tests.cli_app import app

    app.use_store(store_url)
    return app


def _close(app: fm.App) -> None:
    app.close()
    app.store_url = fm.app.DEFAULT_STORE


def test_bulk_cancel_and_retry_since(store_url: str) -> None:
    app = _app(store_url)
    try:
        app.submit("convert", *(fm.RunRequest(f"dead-{i}", {"kind": "flaky"}) for i in range(3)))
        app.work(until_idle=True, handle_signals=False)
        app.submit("convert", *(fm.RunRequest(f"q-{i}", {"kind": "good"}) for i in range(25)))
        app.submit("split", fm.RunRequest("s", {"n": 1}))
    finally:
        _close(app)

    usage = ferryman("cancel", store=store_url)
    assert usage.returncode == 2 and "name a run id, or --status" in usage.stderr
    cancelled = ferryman("cancel", "--job", "convert", "--status", "queued", store=store_url)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "cancelled 25 runs" in cancelled.stdout and "and 5 more" in cancelled.stdout
    again = ferryman("cancel", "--job", "convert", "--status", "queued", "--json", store=store_url)
    assert again.returncode == 1 and json.loads(again.stdout) == {"cancelled": 0, "run_ids": []}

    runs = {r["run_key"]: r for r in json.loads(ferryman("runs", "--json", store=store_url).stdout)}
    assert runs["s"]["status"] == "queued"  # another job: untouched
    assert {runs[f"q-{i}"]["status"] for i in range(25)} == {"cancelled"}
    one = ferryman("cancel", str(runs["s"]["id"]), store=store_url)
    assert one.returncode == 0 and "cancelled 1 runs" in one.stdout
    refused = ferryman("cancel", str(runs["s"]["id"]), store=store_url)
    assert refused.returncode == 1 and "is not queued or running" in refused.stderr

    bad = ferryman("retry", "--status", "dead", "--since", "soon", store=store_url)
    assert bad.returncode == 2 and "--since" in bad.stderr
    retried = ferryman(
        "retry", "--job", "convert", "--status", "dead", "--since", "1h", "--json", store=store_url
    )
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout)["requeued"] == 3
    none_left = ferryman("retry", "--job", "convert", "--status", "dead", store=store_url)
    assert none_left.returncode == 1 and "requeued 0 runs" in none_left.stdout


def test_runs_show_links_parent_and_children(store_url: str) -> None:
    app = _app(store_url)
    try:
        (parent_id,) = app.submit("split", fm.RunRequest("doc", {"n": 2})).run_ids
        app.work(until_idle=True, handle_signals=False)
        children = sorted(r.id for r in app.get_runs(job="convert"))
    finally:
        _close(app)
    assert len(children) == 2

    shown = json.loads(ferryman("runs", "show", str(parent_id), "--json", store=store_url).stdout)
    assert shown["child_run_ids"] == children and shown["parent_run_id"] is None
    child = json.loads(ferryman("runs", "show", str(children[0]), "--json", store=store_url).stdout)
    assert child["parent_run_id"] == parent_id
    human = ferryman("runs", "show", str(parent_id), store=store_url).stdout
    assert f"requested runs: {children[0]}, {children[1]}" in human
    assert "submitted" in human
