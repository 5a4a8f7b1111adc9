"""The Redis Streams source against the real server on 127.0.0.1:6379."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import ferryman as fm
from tests.brokers.support import (
    BUILT,
    REDIS_URL,
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
def client() -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(REDIS_URL)
    yield connection
    connection.close()


@pytest.fixture
def stream(client: redis.Redis) -> Iterator[str]:
    name = unique("orders")
    yield name
    client.delete(name, f"{name}:dead")


def add(client: redis.Redis, stream: str, orders: list[dict[str, object]]) -> list[str]:
    pipe = client.pipeline()
    for order in orders:
        pipe.xadd(stream, {"payload": json.dumps(order)})
    return [entry_id.decode() for entry_id in pipe.execute()]


def backlog(client: redis.Redis, stream: str, group: str = "ferryman") -> tuple[int, int]:
    """(pending, not yet read) of the group."""
    (info,) = [g for g in client.xinfo_groups(stream) if g["name"] in (group, group.encode())]
    return int(info["pending"]), int(info["lag"] or 0)


def source(stream: str, url: str = REDIS_URL, **options: object) -> fm.sources.Source:
    return fm.sources.redis_stream(url, stream=stream, payload_field="payload", **options)  # type: ignore[arg-type]


def test_each_entry_one_run_acked_after_commit(
    store_url: str, client: redis.Redis, stream: str
) -> None:
    app = build_app(store_url, source(stream, batch_size=64))
    ids = add(client, stream, [{"n": n} for n in range(300)])
    with consuming(app) as consumer:
        wait_until(lambda: consumer.stats.acked == 300, what="300 entries acked")
    assert sorted(run_keys(app)) == sorted(ids)
    assert backlog(client, stream) == (0, 0)
    assert ok_evaluation_count(app) == 300


def test_entries_left_pending_by_a_dead_consumer_are_claimed_and_written_once(
    pg_url: str, client: redis.Redis, stream: str
) -> None:
    app = build_app(pg_url, source(stream, claim_after=0.5))
    ids = add(client, stream, [{"n": n} for n in range(10)])
    client.xgroup_create(stream, "ferryman", id="0")
    # A consumer that died after reading five entries, having committed two of them:
    client.xreadgroup("ferryman", "dead-consumer", {stream: ">"}, count=5)
    for entry in ids[:2]:
        app.ingest("orders", entry, {"n": "committed before the crash"})
    with consuming(app) as consumer:
        wait_until(lambda: consumer.stats.acked == 10, what="all acked")
    assert sorted(run_keys(app)) == sorted(ids)
    assert consumer.stats.redelivered == 5 and consumer.stats.duplicates == 2
    assert ok_evaluation_count(app) == 10
    assert backlog(client, stream) == (0, 0)


def test_entries_waiting_for_a_slow_commit_are_not_claimed_back_by_their_own_consumer(
    pg_url: str, client: redis.Redis, stream: str
) -> None:
    """A batch read while the one before commits stays pending until its own commit.

    Each commit here takes longer than ``claim_after``: the entries read during it
    have been pending that long when the claim runs, and are still this consumer's.
    """
    app = fm.App(pg_url)
    BUILT.append(app)

    @app.job()
    def load_order(ctx: fm.JobContext, payload: Any) -> None:
        pass

    @app.push_sensor("load_order", source=source(stream, batch_size=2, claim_after=0.5))
    def orders(ctx: fm.SensorContext, message: fm.Message) -> list[fm.RunRequest]:
        time.sleep(0.4)  # slow work: a batch of two commits after 0.8 s
        return [fm.RunRequest(message.message_id)]

    ids = add(client, stream, [{"n": n} for n in range(6)])
    with consuming(app) as consumer:
        wait_until(lambda: consumer.stats.acked >= 6, what="six entries acked")
        assert consumer.stats.acked == 6
    assert consumer.stats.redelivered == 0 and consumer.stats.duplicates == 0
    assert sorted(run_keys(app)) == sorted(ids)
    assert ok_evaluation_count(app) == 6
    assert backlog(client, stream) == (0, 0)


def test_entries_the_sensor_cannot_handle_go_to_the_dead_letter_stream(
    pg_url: str, client: redis.Redis, stream: str
) -> None:
    app = build_app(pg_url, source(stream))
    good, poison = add(client, stream, [{"n": 1}, {"n": 2, "kind": "poison"}])
    bad = client.xadd(stream, {"payload": "{not json"}).decode()
    with consuming(app) as consumer:
        wait_until(lambda: consumer.stats.acked + consumer.stats.dead_lettered == 3, what="settled")
    assert run_keys(app) == [good]
    dead = {
        fields[b"ferryman-entry-id"].decode(): fields[b"ferryman-reason"].decode()
        for _, fields in client.xrange(f"{stream}:dead")
    }
    reasons = failed_evaluations(app)
    assert set(dead) == {poison, bad} == set(reasons)
    assert "cannot handle order 2" in dead[poison] and "cannot handle order 2" in reasons[poison]
    assert "does not decode" in dead[bad]
    assert backlog(client, stream) == (0, 0)


def test_the_consumer_reconnects_after_the_connection_drops(
    pg_url: str, client: redis.Redis, stream: str
) -> None:
    with DropProxy(("127.0.0.1", 6379)) as proxy:
        app = build_app(pg_url, source(stream, url=f"redis://127.0.0.1:{proxy.port}/0"))
        add(client, stream, [{"n": n} for n in range(20)])
        with consuming(app) as consumer:
            wait_until(lambda: consumer.stats.acked == 20, what="first entries acked")
            proxy.down()
            wait_until(lambda: not consumer.stats.connected, what="the loss noticed")
            add(client, stream, [{"n": n} for n in range(20, 40)])
            proxy.up()
            wait_until(lambda: consumer.stats.acked == 40, timeout=60, what="all acked after")
        assert consumer.stats.reconnects >= 1
        assert len(set(run_keys(app))) == len(run_keys(app)) == 40
        assert backlog(client, stream) == (0, 0)


def consumer_names(client: redis.Redis, stream: str, group: str = "ferryman") -> set[str]:
    return {c["name"].decode() for c in client.xinfo_consumers(stream, group)}


def test_consumers_of_dead_processes_are_deleted_once_nothing_is_pending_with_them(
    pg_url: str, client: redis.Redis, stream: str
) -> None:
    app = build_app(pg_url, source(stream, claim_after=0.5))
    ids = add(client, stream, [{"n": n} for n in range(10)])
    client.xgroup_create(stream, "ferryman", id="0")
    # Two earlier processes' consumers: one read three entries and died, one read nothing.
    client.xreadgroup("ferryman", "gone-with-entries", {stream: ">"}, count=3)
    client.xgroup_createconsumer(stream, "ferryman", "gone-idle")
    assert consumer_names(client, stream) == {"gone-with-entries", "gone-idle"}
    with consuming(app) as consumer:
        wait_until(lambda: consumer.stats.acked == 10, what="all acked")
        # The entries of the dead consumer were claimed first, then it was deleted.
        wait_until(
            lambda: consumer_names(client, stream) == {consumer.consumer_name},
            what="only the live consumer left in the group",
        )
    assert sorted(run_keys(app)) == sorted(ids)
    assert consumer.stats.redelivered == 3
    assert backlog(client, stream) == (0, 0)


def test_a_consumer_with_pending_entries_is_never_deleted(client: redis.Redis, stream: str) -> None:
    """Deleting a consumer drops its pending entries: one holding any must stay, however idle."""
    add(client, stream, [{"n": n} for n in range(4)])
    client.xgroup_create(stream, "ferryman", id="0")
    client.xreadgroup("ferryman", "holds-two", {stream: ">"}, count=2)
    client.xgroup_createconsumer(stream, "ferryman", "holds-none")
    session = source(stream, claim_after=0.001).connect("this-one")
    try:
        wait_until(
            lambda: all(c["idle"] >= 1 for c in client.xinfo_consumers(stream, "ferryman")),
            what="both consumers idle for the claim_after of 1 ms",
        )
        session._forget_dead_consumers()  # type: ignore[attr-defined]
    finally:
        session.close()
    assert consumer_names(client, stream) == {"holds-two"}
    assert backlog(client, stream) == (2, 2)
