"""The RabbitMQ source against the real server on 127.0.0.1:5672."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pika  # type: ignore[import-untyped]
import pytest

import ferryman as fm
from tests.brokers.support import (
    RABBITMQ_URL,
    build_app,
    consuming,
    failed_evaluations,
    ok_evaluation_count,
    run_keys,
    unique,
)
from tests.helpers import wait_until
from tests.proxies import DropProxy


@pytest.fixture
def queue() -> Iterator[str]:
    name = unique("orders")
    yield name
    with _channel() as channel:
        channel.queue_delete(name)
        channel.queue_delete(f"{name}.dead")


class _channel:
    def __enter__(self) -> Any:
        self.connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
        return self.connection.channel()

    def __exit__(self, *exc: object) -> None:
        self.connection.close()


def publish(queue: str, bodies: list[tuple[str | None, bytes]]) -> None:
    with _channel() as channel:
        channel.confirm_delivery()
        for message_id, body in bodies:
            channel.basic_publish(
                "",
                queue,
                body,
                pika.BasicProperties(message_id=message_id, delivery_mode=2),
            )


def ready(queue: str) -> int:
    """Messages ready in the queue (unacked ones come back once their consumer is gone)."""
    with _channel() as channel:
        return int(channel.queue_declare(queue, passive=True).method.message_count)


def declare(queue: str) -> None:
    """Declare the queue as the source does, so messages published before it starts stay."""
    source = fm.sources.rabbitmq(RABBITMQ_URL, queue=queue)
    source.connect("declare").close()


def order(n: int, **extra: Any) -> bytes:
    return json.dumps({"n": n, **extra}).encode()


def test_each_message_one_run_acked_after_commit(store_url: str, queue: str) -> None:
    app = build_app(store_url, fm.sources.rabbitmq(RABBITMQ_URL, queue=queue, batch_size=50))
    declare(queue)
    publish(queue, [(f"m-{n}", order(n)) for n in range(300)])
    with consuming(app) as consumer:
        wait_until(lambda: consumer.stats.acked == 300, what="300 messages acked")
    assert sorted(run_keys(app)) == sorted(f"m-{n}" for n in range(300))
    assert ready(queue) == 0  # and the consumer is gone: nothing was left unacked
    assert consumer.stats.consumed == 300 and consumer.stats.dead_lettered == 0
    assert ok_evaluation_count(app) == 300


def test_a_redelivery_of_a_committed_message_writes_nothing_and_is_acked(
    pg_url: str, queue: str
) -> None:
    app = build_app(pg_url, fm.sources.rabbitmq(RABBITMQ_URL, queue=queue))
    # The commit happened, the ack did not (the process died between them):
    first = app.ingest("orders", "m-1", {"n": 1})
    declare(queue)
    publish(queue, [("m-1", order(1)), ("m-2", order(2))])
    with consuming(app) as consumer:
        wait_until(lambda: consumer.stats.acked == 2, what="both acked")
    assert sorted(run_keys(app)) == ["m-1", "m-2"]
    assert consumer.stats.duplicates == 1
    assert ok_evaluation_count(app) == 2  # the redelivery added no evaluation
    assert app.get_evaluations("orders")[0].id == first.id
    assert ready(queue) == 0


def test_messages_the_sensor_cannot_handle_are_dead_lettered_with_the_reason(
    pg_url: str, queue: str
) -> None:
    app = build_app(pg_url, fm.sources.rabbitmq(RABBITMQ_URL, queue=queue))
    declare(queue)
    publish(
        queue,
        [
            ("good", order(1)),
            ("bad-json", b"{not json"),
            ("raises", order(2, kind="poison")),
            (None, order(3)),  # no message id: nothing to deduplicate by
        ],
    )
    with consuming(app) as consumer:
        wait_until(lambda: consumer.stats.acked + consumer.stats.dead_lettered == 4, what="settled")
    assert run_keys(app) == ["good"]
    assert consumer.stats.dead_lettered == 3
    assert ready(queue) == 0
    assert ready(f"{queue}.dead") == 3
    reasons = failed_evaluations(app)
    assert "the payload does not decode" in reasons["bad-json"]
    assert "cannot handle order 2" in reasons["raises"]
    (no_id,) = [reason for key, reason in reasons.items() if key.startswith("amqp-delivery:")]
    assert "no the broker's message id" in no_id or "message id" in no_id


def test_the_consumer_reconnects_after_the_connection_drops(pg_url: str, queue: str) -> None:
    with DropProxy(("127.0.0.1", 5672)) as proxy:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F"
        app = build_app(pg_url, fm.sources.rabbitmq(url, queue=queue))
        declare(queue)
        publish(queue, [(f"a-{n}", order(n)) for n in range(20)])
        with consuming(app) as consumer:
            wait_until(lambda: consumer.stats.acked == 20, what="first messages acked")
            proxy.down()
            wait_until(lambda: not consumer.stats.connected, what="the loss noticed")
            publish(queue, [(f"b-{n}", order(n)) for n in range(20)])
            proxy.up()
            wait_until(lambda: consumer.stats.acked == 40, timeout=60, what="all acked after")
        assert consumer.stats.reconnects >= 1
        assert len(run_keys(app)) == 40 and len(set(run_keys(app))) == 40
        assert ready(queue) == 0


def test_a_paused_sensor_leaves_its_messages_in_the_queue(pg_url: str, queue: str) -> None:
    app = build_app(pg_url, fm.sources.rabbitmq(RABBITMQ_URL, queue=queue))
    app.ingest("orders", "before", {"n": 0})
    app.pause_sensor("orders")
    declare(queue)
    publish(queue, [("m-1", order(1))])
    with consuming(app) as consumer:
        wait_until(lambda: consumer.stats.connected, what="connected")
        assert consumer.stats.consumed == 0
        assert run_keys(app) == ["before"]
        app.resume_sensor("orders")
        wait_until(lambda: consumer.stats.acked == 1, what="consumed once resumed")
    assert sorted(run_keys(app)) == ["before", "m-1"]
