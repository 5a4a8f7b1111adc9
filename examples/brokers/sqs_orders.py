"""Orders from an SQS queue, long-polled, deleted only after the commit.

The queue needs a redrive policy (its dead-letter queue). AWS settings come
from the standard variables (AWS_ENDPOINT_URL, AWS_REGION, credentials).

    python -m examples.brokers.sqs_orders publish 5      # creates both queues if missing
    ferryman --app examples.brokers.sqs_orders:app run
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import ferryman as fm

QUEUE = os.environ.get("ORDERS_SQS_QUEUE", "orders")

ORDERS = fm.sources.sqs(
    QUEUE,  # a name, or the queue URL
    visibility_timeout=60,  # extended while a batch is in work
)
app = fm.App(os.environ.get("FERRYMAN_STORE", "sqlite:///brokers.db"))


@app.job()
def load_order(ctx: fm.JobContext, payload: dict[str, Any]) -> None:
    ctx.logger.info("loading order %s", payload["order_id"])


@app.push_sensor("load_order", source=ORDERS)
def orders(ctx: fm.SensorContext, message: fm.Message) -> list[fm.RunRequest]:
    return [fm.RunRequest(f"order-{message.payload['order_id']}", message.payload)]


def publish(count: int) -> None:
    import boto3  # type: ignore[import-untyped]

    client = boto3.client("sqs")
    dead = client.create_queue(QueueName=f"{QUEUE}-dead")["QueueUrl"]
    dead_arn = client.get_queue_attributes(QueueUrl=dead, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    redrive = json.dumps({"deadLetterTargetArn": dead_arn, "maxReceiveCount": "5"})
    url = client.create_queue(QueueName=QUEUE, Attributes={"RedrivePolicy": redrive})["QueueUrl"]
    for n in range(1, count + 1):
        client.send_message(QueueUrl=url, MessageBody=json.dumps({"order_id": n}))


if __name__ == "__main__" and sys.argv[1:2] == ["publish"]:
    publish(int(sys.argv[2]))
