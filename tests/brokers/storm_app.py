"""The app a broker crash storm runs with ``ferryman run``: one push sensor on one source.

Read from the environment: ``FERRYMAN_STORE``, ``BROKER_STORM_KIND`` (rabbitmq,
redis, nats, sqs) and ``BROKER_STORM_QUEUE`` (the queue, stream or queue URL).
Each message makes one run keyed by its message id, after the sensor spent
``BROKER_STORM_WORK_MS`` on it; the job does nothing. ``BROKER_STORM_BATCH``, when
set, is the source's ``batch_size``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import ferryman as fm
from tests.brokers.support import NATS_URL, RABBITMQ_URL, REDIS_URL


def storm_source(kind: str, queue: str, batch: dict[str, int]) -> fm.sources.Source:
    """The source a storm consumes: short redelivery delays, so kills cost seconds, not minutes.

    ``batch``: ``{"batch_size": n}``, or empty for the source's default.
    """
    if kind == "rabbitmq":
        return fm.sources.rabbitmq(RABBITMQ_URL, queue=queue, **batch)
    if kind == "redis":
        return fm.sources.redis_stream(
            REDIS_URL, stream=queue, payload_field="payload", claim_after=1.0, **batch
        )
    if kind == "nats":
        return fm.sources.nats(NATS_URL, stream=queue, ack_wait=2.0, **batch)
    if kind == "sqs":
        return fm.sources.sqs(queue, visibility_timeout=3, **batch)
    raise ValueError(f"BROKER_STORM_KIND={kind!r}: expected rabbitmq, redis, nats or sqs")


WORK_SECONDS = float(os.environ.get("BROKER_STORM_WORK_MS", "0")) / 1000
BATCH = (
    {"batch_size": int(os.environ["BROKER_STORM_BATCH"])}
    if "BROKER_STORM_BATCH" in os.environ
    else {}
)
app = fm.App(os.environ.get("FERRYMAN_STORE", "sqlite:///ferryman.db"))


@app.job()
def load_order(ctx: fm.JobContext, payload: Any) -> None:
    pass


@app.push_sensor(
    "load_order",
    source=storm_source(
        os.environ.get("BROKER_STORM_KIND", "rabbitmq"),
        os.environ.get("BROKER_STORM_QUEUE", "q"),
        BATCH,
    ),
)
def orders(ctx: fm.SensorContext, message: fm.Message) -> list[fm.RunRequest]:
    time.sleep(WORK_SECONDS)  # the sensor's work on a message, so kills land mid-batch
    return [fm.RunRequest(message.message_id, {"n": message.payload})]
