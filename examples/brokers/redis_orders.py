"""Orders from a Redis stream, read by a consumer group, XACKed only after the commit.

python -m examples.brokers.redis_orders publish 5
ferryman --app examples.brokers.redis_orders:app run
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import ferryman as fm

REDIS_URL = os.environ.get("ORDERS_REDIS_URL", "redis://127.0.0.1:6379/0")
STREAM = os.environ.get("ORDERS_STREAM", "orders")

ORDERS = fm.sources.redis_stream(
    REDIS_URL,
    stream=STREAM,
    group="ferryman",  # created at the stream's start if missing
    payload_field="order",  # the entry's "order" field, decoded from JSON
    id_field="order_id",  # deduplicate by this field rather than the entry id
    claim_after=30.0,  # take over entries a dead consumer left pending this long
)
app = fm.App(os.environ.get("FERRYMAN_STORE", "sqlite:///brokers.db"))


@app.job()
def load_order(ctx: fm.JobContext, payload: dict[str, Any]) -> None:
    ctx.logger.info("loading order %s", payload["order_id"])


@app.push_sensor("load_order", source=ORDERS)
def orders(ctx: fm.SensorContext, message: fm.Message) -> list[fm.RunRequest]:
    return [fm.RunRequest(f"order-{message.message_id}", message.payload)]


def publish(count: int) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    for n in range(1, count + 1):
        client.xadd(STREAM, {"order_id": str(n), "order": json.dumps({"order_id": n})})
    client.close()


if __name__ == "__main__" and sys.argv[1:2] == ["publish"]:
    publish(int(sys.argv[2]))
