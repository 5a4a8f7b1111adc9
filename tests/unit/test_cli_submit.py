"""``ferryman submit`` and ``ferryman runs --key``, run as a user runs them, on real stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import ferryman as fm
from tests.unit.test_cli import REPO, assert_one_line_error

APP = ("--app", "tests.cli_app:app")


def ferryman(*args: str, store: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMAN_")}
    return subprocess.run(
        [sys.executable, "-m", "ferryman", "--store", store, *APP, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        input=stdin,
        timeout=120,
    )


def runs_of(store_url: str) -> dict[str, fm.Run]:
    app = fm.App(store_url)
    try:
        return {run.run_key: run for run in app.get_runs(job="convert")}
    finally:
        app.close()


def test_submit_one_run_then_again_then_find_it_by_key(store_url: str) -> None:
    first = ferryman("submit", "convert", "doc-9", "--payload", '{"kind": "good"}', store=store_url)
    assert first.returncode == 0, first.stderr
    (run,) = runs_of(store_url).values()
    assert first.stdout.strip() == f"created run {run.id}: convert 'doc-9'"
    assert (run.run_key, run.payload, run.status) == ("doc-9", {"kind": "good"}, "queued")

    again = ferryman("submit", "convert", "doc-9", "--payload", '{"kind": "bad"}', store=store_url)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == (
        f"run {run.id} already exists: convert 'doc-9' is queued; nothing submitted"
    )
    assert runs_of(store_url)["doc-9"].payload == {"kind": "good"}  # the first one stands

    found = ferryman("runs", "--key", "doc-9", "--json", store=store_url)
    assert found.returncode == 0, found.stderr
    (shown,) = json.loads(found.stdout)
    assert (shown["id"], shown["job"], shown["run_key"]) == (run.id, "convert", "doc-9")
    of_job = ferryman("runs", "--key", "doc-9", "--job", "convert", store=store_url)
    assert of_job.returncode == 0 and "doc-9" in of_job.stdout, of_job.stderr

    missing = ferryman("runs", "--key", "doc-404", store=store_url)
    assert_one_line_error(missing, 1, "no run with run_key 'doc-404'")


def test_submit_many_from_a_file_in_batches_reporting_what_existed(
    store_url: str, tmp_path: Path
) -> None:
    before = ferryman("submit", "convert", "doc-0003", store=store_url)
    assert before.returncode == 0, before.stderr
    lines = [json.dumps({"run_key": f"doc-{i:04d}", "payload": {"n": i}}) for i in range(2500)]
    lines.insert(100, "")  # blank lines are skipped
    source = tmp_path / "runs.jsonl"
    source.write_text("\n".join(lines) + "\n")

    result = ferryman(
        "submit", "convert", "--jsonl", str(source), "--batch", "1000", "--json", store=store_url
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"job": "convert", "created": 2499, "existing": 1}
    runs = runs_of(store_url)
    assert len(runs) == 2500
    assert runs["doc-0003"].payload is None  # submitted first, kept
    assert runs["doc-2499"].payload == {"n": 2499}

    # The same file again creates nothing: every key exists.
    again = ferryman("submit", "convert", "--jsonl", str(source), store=store_url)
    assert again.returncode == 0, again.stderr
    assert "submitted 2500 run requests to convert: 0 created, 2500 already existed" in (
        again.stdout
    )


def test_submit_many_from_stdin(sqlite_url: str) -> None:
    stdin = "\n".join(json.dumps({"run_key": f"in-{i}", "payload": [i]}) for i in range(3))
    result = ferryman("submit", "convert", "--jsonl", "-", store=sqlite_url, stdin=stdin)
    assert result.returncode == 0, result.stderr
    assert "3 created, 0 already existed" in result.stdout
    assert {key: run.payload for key, run in runs_of(sqlite_url).items()} == {
        "in-0": [0],
        "in-1": [1],
        "in-2": [2],
    }


def test_a_bad_line_stops_the_stream_naming_it(sqlite_url: str, tmp_path: Path) -> None:
    source = tmp_path / "runs.jsonl"
    source.write_text('{"run_key": "a"}\n{"run_key": "b"}\n{"run_key": "c",\n{"run_key": "d"}\n')
    result = ferryman("submit", "convert", "--jsonl", str(source), "--batch", "2", store=sqlite_url)
    assert_one_line_error(result, 2, "line 3 is not JSON")
    assert "the 2 requests before it were submitted" in result.stderr
    assert sorted(runs_of(sqlite_url)) == ["a", "b"]

    source.write_text('{"run_key": "e", "payload": 1, "colour": "red"}\n')
    unknown = ferryman("submit", "convert", "--jsonl", str(source), store=sqlite_url)
    assert_one_line_error(unknown, 2, "line 1: unknown field 'colour'")
    source.write_text('{"payload": 1}\n')
    no_key = ferryman("submit", "convert", "--jsonl", str(source), store=sqlite_url)
    assert_one_line_error(no_key, 2, "line 1: run_key is missing")
    source.write_text('["f"]\n')
    not_object = ferryman("submit", "convert", "--jsonl", str(source), store=sqlite_url)
    assert_one_line_error(not_object, 2, "line 1: expected a JSON object, got list")
    assert sorted(runs_of(sqlite_url)) == ["a", "b"]


def test_submit_refuses_what_it_cannot_do(sqlite_url: str) -> None:
    unknown_job = ferryman("submit", "nope", "k", store=sqlite_url)
    assert unknown_job.returncode != 0
    assert "nope" in unknown_job.stderr and "convert" in unknown_job.stderr
    both = ferryman("submit", "convert", "k", "--jsonl", "-", store=sqlite_url)
    assert_one_line_error(both, 2, "give either RUN_KEY (with --payload) or --jsonl FILE|-")
    bad_payload = ferryman("submit", "convert", "k", "--payload", "{oops", store=sqlite_url)
    assert_one_line_error(bad_payload, 2, "--payload is not JSON")
    assert runs_of(sqlite_url) == {}
