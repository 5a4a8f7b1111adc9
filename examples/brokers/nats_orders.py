"""Orders from a NATS JetStream stream through a durable pull consumer, acked after the commit.

python -m examples.brokers.nats_orders publish 5     # creates the stream ORDERS if missing
ferryman --app examples.brokers.nats_orders:app run
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import ferryman as fm

NATS_URL = os.environ.get("ORDERS_NATS_URL", "nats://127.0.0.1:4222")
STREAM = os.environ.get("ORDERS_NATS_STREAM", "ORDERS")

ORDERS = fm.sources.nats(
    NATS_URL,
    stream=STREAM,
    subject=f"{STREAM.lower()}.new",
    durable="ferryman",  # the durable consumer, created if missing
    ack_wait=30.0,  # unacked this long (its consumer died): JetStream redelivers
    max_deliver=20,  # delivered this often without an ack: JetStream gives it up
)
app = fm.App(os.environ.get("FERRYMAN_STORE", "sqlite:///brokers.db"))


@app.job()
def load_order(ctx: fm.JobContext, payload: dict[str, Any]) -> None:
    ctx.logger.info("loading order %s", payload["order_id"])


@app.push_sensor("load_order", source=ORDERS)
def orders(ctx: fm.SensorContext, message: fm.Message) -> list[fm.RunRequest]:
    return [fm.RunRequest(message.message_id, message.payload)]  # the Nats-Msg-Id


def publish(count: int) -> None:
    import nats
    from nats.js.api import StreamConfig

    async def send() -> None:
        client = await nats.connect(NATS_URL)
        jetstream = client.jetstream()
        await jetstream.add_stream(StreamConfig(name=STREAM, subjects=[f"{STREAM.lower()}.new"]))
        for n in range(1, count + 1):
            body = json.dumps({"order_id": n}).encode()
            # Nats-Msg-Id: JetStream drops a republished duplicate, ferryman dedupes by it.
            headers = {"Nats-Msg-Id": f"order-{n}"}
            await jetstream.publish(f"{STREAM.lower()}.new", body, headers=headers)
        await client.close()

    asyncio.run(send())


if __name__ == "__main__" and sys.argv[1:2] == ["publish"]:
    publish(int(sys.argv[2]))
