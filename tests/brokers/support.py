"""What the broker tests share: an app, its consumer, checks (the proxy that drops
connections is tests/proxies.py's ``DropProxy``)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

import ferryman as fm
from ferryman.sources.base import Source
from ferryman.sources.consumer import SourceConsumer
from ferryman.store.schema import runs, sensor_evaluations

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
REDIS_URL = "redis://127.0.0.1:6379/0"
NATS_URL = "nats://127.0.0.1:4222"


def unique(prefix: str) -> str:
    """A broker-side name of this test's own (queues and streams outlive a test run)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


BUILT: list[fm.App] = []  # closed after each test (tests/brokers/conftest.py)


def build_app(store_url: str, source: Source, *, fail_on: str = "poison") -> fm.App:
    """An app whose push sensor ``orders`` makes one run per message, keyed by its id.

    A payload ``{"kind": fail_on}`` makes the sensor raise.
    """
    app = fm.App(store_url)
    BUILT.append(app)

    @app.job()
    def load_order(ctx: fm.JobContext, payload: Any) -> None:
        pass

    @app.push_sensor("load_order", source=source)
    def orders(ctx: fm.SensorContext, message: fm.Message) -> list[fm.RunRequest]:
        if isinstance(message.payload, dict) and message.payload.get("kind") == fail_on:
            raise ValueError(f"cannot handle order {message.payload.get('n')}")
        return [fm.RunRequest(message.message_id, {"body": message.payload})]

    return app


@contextlib.contextmanager
def consuming(app: fm.App, sensor: str = "orders") -> Iterator[SourceConsumer]:
    """The app's consumer of ``sensor``, running on its thread for the block."""
    consumer = SourceConsumer(app._sensor_engine, sensor, app.sources[sensor])
    consumer.start()
    try:
        yield consumer
    finally:
        consumer.stop()
        assert consumer.join(30), "the consumer did not stop"


def run_keys(app: fm.App) -> list[str]:
    """The run_key of every run, one entry per run (so duplicates would show)."""
    with app.store.read("reading runs") as conn:
        return list(conn.execute(sa.select(runs.c.run_key)).scalars())


def failed_evaluations(app: fm.App, sensor: str = "orders") -> dict[str, str]:
    """message_id -> error of each failed evaluation."""
    with app.store.read("reading evaluations") as conn:
        rows = conn.execute(
            sa.select(sensor_evaluations.c.message_id, sensor_evaluations.c.error).where(
                sensor_evaluations.c.sensor == sensor,
                sensor_evaluations.c.outcome == "failed",
            )
        )
        return {row.message_id: row.error for row in rows}


def ok_evaluation_count(app: fm.App, sensor: str = "orders") -> int:
    with app.store.read("counting evaluations") as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).where(
                    sensor_evaluations.c.sensor == sensor, sensor_evaluations.c.outcome == "ok"
                )
            ).scalar_one()
        )
