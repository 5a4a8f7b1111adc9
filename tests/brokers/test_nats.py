"""The NATS JetStream source against the real server on 127.0.0.1:4222."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import nats as nats_client
import pytest
from nats.js.api import StreamConfig

import ferryman as fm
from tests.brokers.support import (
    NATS_URL,
    build_app,
    consuming,
    failed_evaluations,
    ok_evaluation_count,
    run_keys,
    unique,
)
from tests.helpers import wait_until
from tests.proxies import DropProxy


async def _with_jetstream(action: Any) -> Any:
    client = await nats_client.connect(NATS_URL)
    try:
        return await action(client.jetstream())
    finally:
        await client.close()


def jetstream(action: Any) -> Any:
    return asyncio.run(_with_jetstream(action))


@pytest.fixture
def stream() -> Iterator[str]:
    name = unique("orders").replace("-", "_")

    async def create(js: Any) -> None:
        await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.new"]))

    jetstream(create)
    yield name

    async def delete(js: Any) -> None:
        await js.delete_stream(name)

    jetstream(delete)


def publish(stream: str, orders: list[tuple[str | None, bytes]]) -> None:
    async def send(js: Any) -> None:
        for message_id, body in orders:
            headers = {"Nats-Msg-Id": message_id} if message_id else None
            await js.publish(f"{stream}.new", body, headers=headers)

    jetstream(send)


def consumer_backlog(stream: str, durable: str = "ferryman") -> tuple[int, int]:
    """(not yet delivered, delivered and not acked) of the durable consumer."""

    async def info(js: Any) -> tuple[int, int]:
        found = await js.consumer_info(stream, durable)
        return int(found.num_pending), int(found.num_ack_pending)

    result: tuple[int, int] = jetstream(info)
    return result


def order(n: int, **extra: Any) -> bytes:
    return json.dumps({"n": n, **extra}).encode()


def source(stream: str, url: str = NATS_URL, **options: Any) -> fm.sources.Source:
    return fm.sources.nats(url, stream=stream, **options)


def test_each_message_one_run_acked_after_commit(store_url: str, stream: str) -> None:
    app = build_app(store_url, source(stream, batch_size=64))
    publish(stream, [(f"m-{n}", order(n)) for n in range(300)])
    with consuming(app) as consumer:
        wait_until(lambda: consumer.stats.acked == 300, what="300 messages acked")
    assert sorted(run_keys(app)) == sorted(f"m-{n}" for n in range(300))
    assert consumer_backlog(stream) == (0, 0)
    assert ok_evaluation_count(app) == 300


def test_unacked_messages_come_back_and_a_committed_one_writes_nothing(
    pg_url: str, stream: str
) -> None:
    app = build_app(pg_url, source(stream, ack_wait=2.0))
    publish(stream, [(f"m-{n}", order(n)) for n in range(5)])
    app.ingest("orders", "m-0", {"n": 0})  # committed, and then its consumer died unacked

    async def take_and_die(js: Any) -> None:  # a consumer that fetched and never acked
        subscription = await js.pull_subscribe(f"{stream}.new", durable="ferryman", stream=stream)
        await subscription.fetch(5, timeout=5)

    # The source creates the durable consumer (with its ack_wait) on its first session.
    with consuming(app) as consumer:
        wait_until(lambda: consumer.stats.acked == 5, what="all five acked")
    assert consumer.stats.duplicates == 1  # m-0: acked, nothing written
    publish(stream, [(f"late-{n}", order(n)) for n in range(3)])
    jetstream(take_and_die)
    with consuming(app) as consumer:
        wait_until(lambda: consumer.stats.acked == 3, timeout=30, what="redelivered and acked")
    assert consumer.stats.redelivered == 3
    assert sorted(run_keys(app)) == sorted(
        [f"m-{n}" for n in range(5)] + [f"late-{n}" for n in range(3)]
    )
    assert ok_evaluation_count(app) == 8
    assert consumer_backlog(stream) == (0, 0)


def test_messages_the_sensor_cannot_handle_are_terminated_with_the_reason(
    pg_url: str, stream: str
) -> None:
    app = build_app(pg_url, source(stream))
    publish(stream, [("good", order(1)), ("raises", order(2, kind="poison")), ("bad", b"{no")])
    with consuming(app) as consumer:
        wait_until(lambda: consumer.stats.acked + consumer.stats.dead_lettered == 3, what="settled")
    assert run_keys(app) == ["good"]
    assert consumer.stats.dead_lettered == 2
    reasons = failed_evaluations(app)
    assert "cannot handle order 2" in reasons["raises"]
    assert "does not decode" in reasons["bad"]
    assert consumer_backlog(stream) == (0, 0)  # terminated: not waiting for redelivery


def test_the_consumer_reconnects_after_the_connection_drops(pg_url: str, stream: str) -> None:
    with DropProxy(("127.0.0.1", 4222)) as proxy:
        app = build_app(pg_url, source(stream, url=f"nats://127.0.0.1:{proxy.port}"))
        publish(stream, [(f"a-{n}", order(n)) for n in range(20)])
        with consuming(app) as consumer:
            wait_until(lambda: consumer.stats.acked == 20, what="first messages acked")
            proxy.down()
            wait_until(lambda: not consumer.stats.connected, what="the loss noticed")
            publish(stream, [(f"b-{n}", order(n)) for n in range(20)])
            proxy.up()
            wait_until(lambda: consumer.stats.acked == 40, timeout=60, what="all acked after")
        assert consumer.stats.reconnects >= 1
        assert len(set(run_keys(app))) == len(run_keys(app)) == 40
        assert consumer_backlog(stream) == (0, 0)
