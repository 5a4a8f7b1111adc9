"""Crash storms, one per broker: ``ferryman run`` SIGKILLed while it consumes.

Afterwards every message made exactly one run, none was dead-lettered or
failed, and the broker holds nothing unacked. The suite runs a small storm
(500 messages, 5 kills); ``make storms-brokers`` runs the full one (10,000
messages, 50 kills) through ``FERRYMAN_STORM_BROKER_MESSAGES`` and
``FERRYMAN_STORM_BROKER_KILLS``; ``make soak`` runs it too, on both stores
(``FERRYMAN_STORM_STORE``; PostgreSQL by default). SQS runs on moto's server,
its messages published while the storm goes on (moto scans the whole queue on
every call: :class:`tests.brokers.storm.SqsBroker`), or, with
``FERRYMAN_STORM_SQS_SERVER=fauxqs`` (``make storms-brokers``), on fauxqs
(tests/brokers/sqs_server.py), every message published up front.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.brokers.sqs_server import fauxqs_server
from tests.brokers.storm import BROKERS, Broker, SqsBroker, run_storm
from tests.crash.support import report_storm, storm_setting, storm_store
from tests.s3_fixtures import S3_ENVIRONMENT, s3_endpoint, s3_server

__all__ = ["s3_endpoint", "s3_server"]  # fixtures

pytestmark = pytest.mark.crash


@pytest.fixture(params=sorted(BROKERS))
def broker(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Broker]:
    with contextlib.ExitStack() as stack:
        if request.param != "sqs":
            made: Broker = BROKERS[request.param]()
        elif os.environ.get("FERRYMAN_STORM_SQS_SERVER", "moto") == "fauxqs":
            endpoint = stack.enter_context(fauxqs_server(tmp_path / "fauxqs.log"))
            monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # the daemons inherit these
            for name, value in S3_ENVIRONMENT.items():
                monkeypatch.setenv(name, value)
            monkeypatch.delenv("AWS_PROFILE", raising=False)
            made = SqsBroker(backlog=None)  # every message published before the storm
        else:  # moto's server, its address in the AWS variables
            request.getfixturevalue("s3_endpoint")
            made = SqsBroker()
        yield made
        made.remove()


def test_sigkilled_consumers_make_exactly_one_run_per_message(
    broker: Broker, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    messages = int(storm_setting("BROKER_MESSAGES", 500))
    kills = int(storm_setting("BROKER_KILLS", 5))
    store_url = storm_store(request, "postgres")
    result = run_storm(broker, store_url, tmp_path, messages=messages, kills=kills)
    print(f"broker {broker.kind}: {result}")  # shown with -s (make storms-brokers)
    report_storm(
        f"broker {broker.kind}",
        store_url,
        kills=result.kills,
        unit="messages",
        items=messages,
        lost=result.missing,
        duplicated=result.runs - result.distinct,
    )
    assert result.kills == kills
    assert result.missing == 0, f"{result.missing} messages have no run"
    assert result.runs == result.distinct == messages, result
    assert result.failed_evaluations == 0 and result.dead_lettered == 0, result
    assert result.left == 0, f"{result.left} messages left unacked"
