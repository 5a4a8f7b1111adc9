"""Fuzzed names and keys through the built-in sensors, from real sources, on both stores.

* Folder: real files whose names are arbitrary bytes (``os.fsencode`` names:
  invalid UTF-8, control characters, backslashes, ``@``, kilobytes of
  path). Every file is requested once; its run_key gives the name's bytes
  back (``relpath_of``) and the job opens the payload's ``path`` and reads
  the file's own content.
* SQL table: rows of a real table whose key and text columns hold generated
  text (what the database accepts: PostgreSQL refuses NUL, neither driver
  sends a lone surrogate) and whose float column holds NaN and infinities.
* S3 prefix: objects on the moto server under generated keys (what S3
  accepts), NUL included.

Each item is requested with its key and payload read back exactly, or
skipped with the reason named in the evaluation's error (a run_key the
store cannot hold, a payload JSON cannot hold); the other items of the same
evaluation are requested, the evaluation is ``ok`` and the next one does
not request them again.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from botocore.exceptions import ClientError  # type: ignore[import-untyped]  # no type hints shipped
from hypothesis import given
from hypothesis import strategies as st

import ferryman as fm
from ferryman.sensors.builtin.folder import relpath_of
from tests.properties.profiles import bounded
from tests.properties.texts import (
    STORED,
    expected_document,
    long_texts,
    same_document,
    short_texts,
    storable,
)
from tests.s3_fixtures import s3_bucket, s3_client, s3_endpoint, s3_server

__all__ = ["s3_bucket", "s3_client", "s3_endpoint", "s3_server"]  # fixtures used here

STABLE = 5.0  # the sensors' clock runs this far ahead, so fresh files count as stable


def ahead() -> float:
    return time.time() + STABLE


def evaluate_once(app: fm.App, name: str) -> fm.Evaluation:
    evaluations = app.tick([name], force=True)
    assert len(evaluations) == 1
    return evaluations[0]


def check_skipped(evaluation: fm.Evaluation, skipped: list[str]) -> None:
    """Items that could not be stored are skipped, each with its reason, the rest go on.

    ``skipped`` names the field each item must be refused for ("run_key",
    "payload", or "run_key|payload" when both are bad and either may be named).
    """
    assert evaluation.outcome is fm.EvaluationOutcome.OK, evaluation.error
    assert evaluation.items_skipped == len(skipped)
    for fields in skipped:
        named = [
            f"{field} of job 'load'" in (evaluation.error or "") for field in fields.split("|")
        ]
        assert any(named), f"no reason names the {fields}: {(evaluation.error or '')[:300]}"


# -- folder ----------------------------------------------------------------------------


def _file_name(raw: bytes) -> bytes:
    name = raw.replace(b"/", b"_").replace(b"\x00", b"_")[:250]
    return b"_" + name if name.startswith(b".") else name  # hidden files are not matched


names = st.one_of(
    st.binary(min_size=1, max_size=255),
    short_texts(min_size=1, storable_only=True).map(os.fsencode),
).map(_file_name)
layouts = st.tuples(
    st.lists(names, max_size=2),  # directories between the folder and the files
    st.lists(names, min_size=1, max_size=4, unique=True),  # the files
    st.booleans(),  # below twelve directories of 250 bytes: kilobytes of run_key
)


def test_any_file_name_is_requested_once_and_opened_by_its_job(
    make_app: type[fm.App], tmp_path: Path
) -> None:
    app, inbox = make_app(), tmp_path / "in"
    inbox.mkdir()
    contents: dict[str, bytes] = {}
    paths: dict[str, Any] = {}

    @app.job
    def load(ctx: fm.JobContext, payload: dict[str, Any]) -> None:
        with open(payload["path"], "rb") as handle:  # the path the payload holds opens it
            contents[ctx.run_key] = handle.read()
        paths[ctx.run_key] = payload

    app.poll_sensor(job="load", interval=3600, name="files")(
        fm.sensors.folder(inbox, recursive=True, stable_for=1.0, clock=ahead)
    )
    examples = itertools.count()

    @bounded(15)
    @given(layout=layouts)
    def arrive(layout: tuple[list[bytes], list[bytes], bool]) -> None:
        directories, files, deep = layout
        base = [f"e{next(examples)}".encode(), *([b"d" * 250] * 12 if deep else []), *directories]
        folder = os.path.join(os.fsencode(inbox), *base)
        os.makedirs(folder)
        written: dict[bytes, bytes] = {}
        for n, name in enumerate(files):
            relpath = b"/".join([*base, name])
            written[relpath] = b"content of %d: %s" % (n, relpath)
            with open(os.path.join(folder, name), "wb") as handle:
                handle.write(written[relpath])
        evaluation = evaluate_once(app, "files")
        check_skipped(evaluation, [])
        assert evaluation.runs_requested == len(files)
        app.work(until_idle=True, concurrency=2, handle_signals=False)
        runs = [app.get_run(run_id) for run_id in evaluation.run_ids]
        for run in runs:
            assert run is not None and run.status is fm.RunStatus.SUCCEEDED
            relpath = relpath_of(run.run_key)  # the run_key gives the name's bytes back
            assert contents[run.run_key] == written[relpath]
            assert os.fsencode(run.payload["relpath"]) == relpath
            assert same_document(paths[run.run_key], run.payload)
        assert sorted(relpath_of(run.run_key) for run in runs if run) == sorted(written)
        assert evaluate_once(app, "files").runs_requested == 0  # each file once

    arrive()


# -- SQL table ----------------------------------------------------------------------------

rows_table = sa.Table(
    "fuzz_rows",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("note", sa.Text),
    sa.Column("amount", sa.Double),
)
row_texts = st.one_of(short_texts(), long_texts())
amounts = st.one_of(st.floats(), st.sampled_from([float("nan"), float("inf"), -float("inf")]))
rows = st.lists(st.tuples(row_texts, row_texts, amounts), min_size=1, max_size=4)


def insert_what_the_database_takes(
    app: fm.App, prefix: str, generated: list[tuple[str, str, float]]
) -> list[dict[str, Any]]:
    """The generated rows the database accepts, each as the database gives it back."""
    stored = []
    for n, (key, note, amount) in enumerate(generated):
        try:
            with app.engine.begin() as conn:
                row_id = conn.execute(
                    rows_table.insert()
                    .values(key=f"{prefix}{n}:{key}", note=note, amount=amount)
                    .returning(rows_table.c.id)
                ).scalar_one()
        except (sa.exc.StatementError, UnicodeEncodeError):
            continue  # NUL on PostgreSQL, lone surrogates anywhere: no such row can exist
        with app.engine.begin() as conn:
            row = conn.execute(sa.select(rows_table).where(rows_table.c.id == row_id)).one()
        stored.append(dict(row._mapping))
    return stored


def test_any_text_in_a_table_is_requested_exactly_or_skipped_by_name(
    make_app: type[fm.App],
) -> None:
    app = make_app()

    @app.job
    def load(ctx: fm.JobContext, payload: Any) -> None: ...

    rows_table.create(app.engine)
    app.poll_sensor(job="load", interval=3600, name="rows")(
        fm.sensors.sql_table(app, "fuzz_rows", "key", commit_lag=0)
    )
    examples = itertools.count()

    @bounded(30)
    @given(generated=rows)
    def arrive(generated: list[tuple[str, str, float]]) -> None:
        # Keys rise from one example to the next, as the cursor mode assumes.
        prefix = f"{next(examples):06d}:"
        stored = insert_what_the_database_takes(app, prefix, generated)
        evaluation = evaluate_once(app, "rows")
        skipped, requested = [], {}
        for row in stored:
            run_key = f"fuzz_rows:{row['key']}"
            verdict, readback = expected_document(row)
            if not storable(run_key):
                skipped.append("run_key" if verdict == STORED else "run_key|payload")
            elif verdict != STORED:
                skipped.append("payload")
            else:
                requested[run_key] = readback
        check_skipped(evaluation, skipped)
        runs = {run.run_key: run for run in app.get_runs(job="load")}
        assert evaluation.runs_requested == len(requested)
        for run_key, payload in requested.items():
            assert same_document(runs[run_key].payload, payload)
        assert evaluate_once(app, "rows").runs_requested == 0  # the cursor moved past them

    arrive()


# -- S3 prefix ----------------------------------------------------------------------------

object_keys = st.lists(
    st.one_of(short_texts(min_size=1, storable_only=True), short_texts(min_size=1)),
    min_size=1,
    max_size=3,
    unique=True,
)


def listing(client: Any, bucket: str) -> dict[str, str]:
    """Every object under ``in/`` and its ETag."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="in/")
    return {
        item["Key"]: item["ETag"].strip('"') for page in pages for item in page.get("Contents", [])
    }


def test_any_object_key_is_requested_exactly_or_skipped_by_name(
    make_app: type[fm.App], s3_client: Any, s3_bucket: str
) -> None:
    app = make_app()

    @app.job
    def load(ctx: fm.JobContext, payload: Any) -> None: ...

    app.poll_sensor(job="load", interval=3600, name="objects")(
        fm.sensors.s3_prefix(s3_bucket, "in/", page_size=2, client=s3_client)
    )
    examples = itertools.count()

    @bounded(12)
    @given(generated=object_keys)
    def arrive(generated: list[str]) -> None:
        prefix = f"in/{next(examples)}/"
        before = listing(s3_client, s3_bucket)
        for key in generated:
            # A key S3 (or its client) refuses cannot be in the prefix.
            with contextlib.suppress(UnicodeEncodeError, ClientError):
                s3_client.put_object(Bucket=s3_bucket, Key=prefix + key, Body=b"x")
        # What S3 lists now that it did not before is what the sensor must request.
        put = dict(listing(s3_client, s3_bucket).items() - before.items())
        evaluation = evaluate_once(app, "objects")
        run_keys = {f"s3://{s3_bucket}/{key}@{etag}": key for key, etag in put.items()}
        check_skipped(evaluation, ["run_key" for run_key in run_keys if not storable(run_key)])
        runs = {run.run_key: run for run in app.get_runs(job="load")}
        stored = {run_key: key for run_key, key in run_keys.items() if storable(run_key)}
        assert evaluation.runs_requested == len(stored)
        for run_key, key in stored.items():
            assert runs[run_key].payload["key"] == key
            assert runs[run_key].payload["uri"] == f"s3://{s3_bucket}/{key}"
        assert evaluate_once(app, "objects").runs_requested == 0

    arrive()
