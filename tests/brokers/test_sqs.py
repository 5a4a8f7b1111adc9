"""The SQS source against moto's server (a real HTTP endpoint speaking the SQS API)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import boto3  # type: ignore[import-untyped]
import pytest

import ferryman as fm
from tests.brokers.support import (
    build_app,
    consuming,
    failed_evaluations,
    ok_evaluation_count,
    run_keys,
)
from tests.helpers import wait_until
from tests.proxies import DropProxy
from tests.s3_fixtures import s3_endpoint, s3_server

__all__ = ["s3_endpoint", "s3_server"]  # fixtures


@pytest.fixture
def sqs_client(s3_endpoint: str) -> Any:
    return boto3.client("sqs")


@pytest.fixture
def queues(sqs_client: Any) -> tuple[str, str]:
    """A queue and its dead-letter queue (its redrive target): their URLs."""
    name = f"orders-{uuid.uuid4().hex[:10]}"
    dead = sqs_client.create_queue(QueueName=f"{name}-dead")["QueueUrl"]
    dead_arn = sqs_client.get_queue_attributes(QueueUrl=dead, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    url = sqs_client.create_queue(
        QueueName=name,
        Attributes={
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dead_arn, "maxReceiveCount": "50"})
        },
    )["QueueUrl"]
    return url, dead


def send(client: Any, url: str, bodies: list[str]) -> list[str]:
    ids = []
    for start in range(0, len(bodies), 10):
        answer = client.send_message_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(n), "MessageBody": b} for n, b in enumerate(bodies[start : start + 10])
            ],
        )
        ids += [entry["MessageId"] for entry in answer["Successful"]]
    return ids


def counts(client: Any, url: str) -> tuple[int, int]:
    """(visible, in flight) messages of the queue."""
    found = client.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(found["ApproximateNumberOfMessages"]), int(
        found["ApproximateNumberOfMessagesNotVisible"]
    )


def order(n: int, **extra: Any) -> str:
    return json.dumps({"n": n, **extra})


def test_each_message_one_run_deleted_after_commit(
    store_url: str, sqs_client: Any, queues: tuple[str, str]
) -> None:
    url, _ = queues
    app = build_app(store_url, fm.sources.sqs(url, batch_size=50))
    ids = send(sqs_client, url, [order(n) for n in range(200)])
    with consuming(app) as consumer:
        wait_until(lambda: consumer.stats.acked == 200, what="200 messages deleted")
    assert sorted(run_keys(app)) == sorted(ids)
    assert counts(sqs_client, url) == (0, 0)
    assert ok_evaluation_count(app) == 200


def test_a_message_whose_visibility_lapsed_comes_back_and_writes_nothing(
    pg_url: str, sqs_client: Any, queues: tuple[str, str]
) -> None:
    url, _ = queues
    app = build_app(pg_url, fm.sources.sqs(url))
    (message_id,) = send(sqs_client, url, [order(1)])
    # A consumer received it, committed its evaluation and died before deleting it:
    sqs_client.receive_message(QueueUrl=url, VisibilityTimeout=1, WaitTimeSeconds=1)
    app.ingest("orders", message_id, {"n": 1})
    with consuming(app) as consumer:
        wait_until(lambda: consumer.stats.acked == 1, what="redelivered and deleted")
    assert consumer.stats.redelivered == 1 and consumer.stats.duplicates == 1
    assert run_keys(app) == [message_id] and ok_evaluation_count(app) == 1
    assert counts(sqs_client, url) == (0, 0)


def test_the_visibility_of_a_slow_batch_is_extended(
    pg_url: str, sqs_client: Any, queues: tuple[str, str]
) -> None:
    url, _ = queues
    app = fm.App(pg_url)
    released = __import__("threading").Event()

    @app.job()
    def load_order(ctx: fm.JobContext, payload: Any) -> None:
        pass

    @app.push_sensor("load_order", source=fm.sources.sqs(url, visibility_timeout=3))
    def orders(ctx: fm.SensorContext, message: fm.Message) -> list[fm.RunRequest]:
        released.wait(30)
        return [fm.RunRequest(message.message_id)]

    try:
        (message_id,) = send(sqs_client, url, [order(1)])
        with consuming(app) as consumer:
            wait_until(lambda: consumer.stats.consumed == 1, what="received")
            # Twice its visibility timeout later, it is still hidden from everyone else:
            other = sqs_client.receive_message(QueueUrl=url, WaitTimeSeconds=6)
            assert other.get("Messages", []) == []
            released.set()
            wait_until(lambda: consumer.stats.acked == 1, what="deleted")
        assert run_keys(app) == [message_id]
    finally:
        released.set()
        app.close()


def test_messages_the_sensor_cannot_handle_go_to_the_redrive_target_with_the_reason(
    pg_url: str, sqs_client: Any, queues: tuple[str, str]
) -> None:
    url, dead = queues
    app = build_app(pg_url, fm.sources.sqs(url))
    good, poison, bad = send(sqs_client, url, [order(1), order(2, kind="poison"), "{no"])
    with consuming(app) as consumer:
        wait_until(lambda: consumer.stats.acked + consumer.stats.dead_lettered == 3, what="settled")
    assert run_keys(app) == [good]
    moved = sqs_client.receive_message(
        QueueUrl=dead, MaxNumberOfMessages=10, MessageAttributeNames=["All"], WaitTimeSeconds=1
    )["Messages"]
    by_body = {m["Body"]: m["MessageAttributes"]["ferryman-reason"]["StringValue"] for m in moved}
    assert "cannot handle order 2" in by_body[order(2, kind="poison")]
    assert "does not decode" in by_body["{no"]
    reasons = failed_evaluations(app)
    assert set(reasons) == {poison, bad}
    assert counts(sqs_client, url) == (0, 0)


def test_a_queue_without_a_redrive_policy_is_refused(pg_url: str, sqs_client: Any) -> None:
    url = sqs_client.create_queue(QueueName=f"plain-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    with pytest.raises(fm.ConfigurationError, match="no redrive policy"):
        fm.sources.sqs(url).connect("test")


def test_the_consumer_reconnects_after_the_connection_drops(
    pg_url: str, s3_server: str, sqs_client: Any, queues: tuple[str, str]
) -> None:
    url, _ = queues
    port = int(s3_server.rsplit(":", 1)[1])
    with DropProxy(("127.0.0.1", port)) as proxy:
        # A long poll cut off mid-way may have taken messages whose answer was lost:
        # they are visible again once their (short, here) visibility timeout lapses.
        source = fm.sources.sqs(
            url, endpoint_url=f"http://127.0.0.1:{proxy.port}", visibility_timeout=5
        )
        app = build_app(pg_url, source)
        send(sqs_client, url, [order(n) for n in range(20)])
        with consuming(app) as consumer:
            wait_until(lambda: consumer.stats.acked == 20, what="first messages deleted")
            proxy.down()
            wait_until(lambda: consumer.stats.last_error is not None, what="the loss noticed")
            send(sqs_client, url, [order(n) for n in range(20, 40)])
            proxy.up()
            wait_until(lambda: consumer.stats.acked == 40, timeout=60, what="all deleted after")
        assert consumer.stats.reconnects >= 1
        assert len(set(run_keys(app))) == len(run_keys(app)) == 40
        assert counts(sqs_client, url) == (0, 0)
