"""A job's sensitive payload fields never reach the worker's log lines, on both stores.

The worker's own log lines carry the run's id, job and attempt and the error
the job raised, never its payload. What the job itself writes into an error
message is logged as written: docs/how-to/dashboard.md says so.
"""

from __future__ import annotations

import logging

import pytest

import ferryman as fm
from ferryman.logs import JsonFormatter, KeyValueFormatter

SECRET = "hunter2-never-logged"


def rendered(records: list[logging.LogRecord]) -> str:
    """The records as ``ferryman --log-format text`` and ``json`` would print them."""
    formatters = (KeyValueFormatter(), JsonFormatter())
    return "\n".join(formatter.format(record) for record in records for formatter in formatters)


def test_failed_rejected_and_dead_runs_log_no_sensitive_field(
    make_app: type[fm.App], caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()

    @app.job(sensitive=("password", "token"), max_attempts=2, backoff=fm.Backoff(base=0.0))
    def sign_in(ctx: fm.JobContext, payload: dict[str, object]) -> None:
        user = payload["user"]
        if payload["mode"] == "reject":
            raise fm.Reject(f"user {user}: account locked")
        raise RuntimeError(f"login service refused user {user}")

    credentials = {"password": SECRET, "profile": {"token": SECRET}}
    app.submit("sign_in", fm.RunRequest("ann", {"mode": "reject", "user": "ann", **credentials}))
    app.submit("sign_in", fm.RunRequest("bob", {"mode": "fail", "user": "bob", **credentials}))
    caplog.set_level(logging.DEBUG)
    report = app.work(until_idle=True, concurrency=1, handle_signals=False)

    assert (report.failed, report.retried, report.dead) == (1, 1, 1)
    lines = rendered(caplog.records)
    # The failures are in the log, with their run fields...
    assert "run rejected: user ann: account locked" in lines
    assert "run failed, retry in" in lines and "login service refused user bob" in lines
    assert "run dead after 2 attempts" in lines
    assert "job='sign_in'" in lines and '"job": "sign_in"' in lines
    # ...and the sensitive values nowhere, nor the payload's other fields.
    assert SECRET not in lines
    assert "profile" not in lines
