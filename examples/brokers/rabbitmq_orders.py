"""Orders from a RabbitMQ queue, one run each, acknowledged only after the commit.

python -m examples.brokers.rabbitmq_orders publish 5      # five sample orders
ferryman --app examples.brokers.rabbitmq_orders:app run   # consume them
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import ferryman as fm

AMQP_URL = os.environ.get("ORDERS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
QUEUE = os.environ.get("ORDERS_QUEUE", "orders")

ORDERS = fm.sources.rabbitmq(AMQP_URL, queue=QUEUE)  # with a dead-letter queue "orders.dead"
app = fm.App(os.environ.get("FERRYMAN_STORE", "sqlite:///brokers.db"))


@app.job()
def load_order(ctx: fm.JobContext, payload: dict[str, Any]) -> None:
    ctx.logger.info("loading order %s for %s", payload["order_id"], payload["customer"])


@app.push_sensor("load_order", source=ORDERS)
def orders(ctx: fm.SensorContext, message: fm.Message) -> list[fm.RunRequest]:
    order = message.payload  # the body, decoded from JSON
    if "order_id" not in order:
        raise ValueError("an order without order_id")  # dead-lettered, with this reason
    return [fm.RunRequest(f"order-{order['order_id']}", order)]


def publish(count: int) -> None:
    """Sample orders, each with its AMQP message_id: the id ferryman deduplicates by."""
    import pika  # type: ignore[import-untyped]

    ORDERS.declare_queues()
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.confirm_delivery()
    for n in range(1, count + 1):
        body = json.dumps({"order_id": n, "customer": f"customer-{n % 3}"})
        channel.basic_publish("", QUEUE, body, pika.BasicProperties(message_id=f"order-{n}"))
    connection.close()


if __name__ == "__main__" and sys.argv[1:2] == ["publish"]:
    publish(int(sys.argv[2]))
