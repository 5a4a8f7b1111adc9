"""SIGTERM while ``ferryman run`` is in the middle of a batch: what it had not committed stays
unacknowledged in the broker, and the next daemon makes exactly one run of each message."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

import ferryman as fm
from tests.brokers.storm import BROKERS, RabbitBroker, RedisBroker, count_runs, start_daemon
from tests.helpers import wait_until

MESSAGES = 600  # two batches of 250 and some


def taken(broker: RabbitBroker | RedisBroker) -> int:
    """Messages the broker has handed to a consumer (acknowledged or not)."""
    if isinstance(broker, RabbitBroker):
        return MESSAGES - broker.left()  # left: the queue's ready messages
    groups = broker.client.xinfo_groups(broker.queue) if broker.client.exists(broker.queue) else []
    return sum(int(g["entries-read"] or 0) for g in groups)


@pytest.mark.parametrize("kind", ["rabbitmq", "redis"])
def test_sigterm_during_a_batch_leaves_its_messages_unacked_then_each_runs_once(
    kind: str, pg_url: str, tmp_path: Path
) -> None:
    broker = BROKERS[kind]()
    assert isinstance(broker, RabbitBroker | RedisBroker)
    app = fm.App(pg_url)
    log = tmp_path / "daemon.log"
    try:
        ids = broker.publish(MESSAGES)
        # The sensor spends 40 ms on each message: a batch of 250 is in work for 10 s.
        daemon = start_daemon(broker, pg_url, log, work_ms=40)
        try:
            wait_until(lambda: taken(broker) > 0, timeout=120, what="a batch taken")
        finally:
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(timeout=90)
        assert code == 0, log.read_text()[-3000:]
        committed = count_runs(app)[1]
        # Stopped cleanly: whatever committed was acked, nothing else was.
        assert len(committed) < MESSAGES
        assert broker.left() == MESSAGES - len(committed)
        assert broker.dead() == 0

        daemon = start_daemon(broker, pg_url, log)
        try:
            wait_until(
                lambda: count_runs(app)[0] >= MESSAGES and broker.left() == 0,
                timeout=120,
                what="a run for each message, nothing left in the broker",
            )
        finally:
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(timeout=90)
        assert code == 0, log.read_text()[-3000:]
        total, keys = count_runs(app)
        assert total == MESSAGES and keys == set(ids)
        assert broker.left() == 0 and broker.dead() == 0
    finally:
        app.close()
        broker.remove()
