"""Crash storms of broker sources: ``ferryman run`` SIGKILLed again and again while it consumes.

:func:`run_storm` publishes the messages (SQS's as the storm goes: see
:class:`SqsBroker`), then starts ``ferryman run`` (the
app of :mod:`tests.brokers.storm_app`) and SIGKILLs it after a random 0.3-1 s,
again and again; then lets one last daemon drain the queue and stops it with
SIGTERM. The broker side of each kind is a :class:`Broker`: publish, and
count what is left (ready, pending or in flight) once no consumer runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa

import ferryman as fm
from ferryman.store.schema import runs, sensor_evaluations
from tests.brokers.support import NATS_URL, RABBITMQ_URL, REDIS_URL, unique
from tests.helpers import wait_until

REPO = Path(__file__).resolve().parents[2]
DRAIN_ROUNDS = 3
PROGRESS_WAIT = 20.0  # seconds a new daemon gets to commit its first batch before the kill
DRAIN_STALL = 120.0  # seconds the last daemon may go without a new run or ack before failing
DRAIN_POLL = 0.5  # seconds between two counts while it drains (each asks the store and broker)


class Broker(Protocol):
    kind: str
    queue: str
    # None: every message is published before the storm; a number: published
    # while it goes on, no more than that many waiting for a run at once.
    backlog: int | None

    def publish(self, count: int) -> list[str]:
        """Publish ``count`` messages; their message ids (what the runs are keyed by)."""

    def left(self) -> int:
        """Messages not yet acked (ready, pending or in flight), with no consumer running."""

    def dead(self) -> int:
        """Messages in the dead-letter queue or stream (0 where JetStream keeps no queue)."""

    def remove(self) -> None: ...


class RabbitBroker:
    kind = "rabbitmq"
    backlog: int | None = None

    def __init__(self) -> None:
        self.queue = unique("storm")
        fm.sources.rabbitmq(RABBITMQ_URL, queue=self.queue).connect("declare").close()

    def _channel(self) -> Any:
        import pika  # type: ignore[import-untyped]

        connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
        return connection, connection.channel()

    def publish(self, count: int) -> list[str]:
        import pika

        ids = [f"m-{n:06d}" for n in range(count)]
        connection, channel = self._channel()
        channel.confirm_delivery()
        for message_id in ids:
            channel.basic_publish(
                "", self.queue, json.dumps(message_id), pika.BasicProperties(message_id=message_id)
            )
        connection.close()
        return ids

    def _count(self, queue: str) -> int:
        connection, channel = self._channel()
        try:
            return int(channel.queue_declare(queue, passive=True).method.message_count)
        finally:
            connection.close()

    def left(self) -> int:
        return self._count(self.queue)

    def dead(self) -> int:
        return self._count(f"{self.queue}.dead")

    def remove(self) -> None:
        connection, channel = self._channel()
        channel.queue_delete(self.queue)
        channel.queue_delete(f"{self.queue}.dead")
        connection.close()


class RedisBroker:
    kind = "redis"
    backlog: int | None = None

    def __init__(self) -> None:
        import redis

        self.queue = unique("storm")
        self.client = redis.Redis.from_url(REDIS_URL)

    def publish(self, count: int) -> list[str]:
        ids: list[str] = []
        for start in range(0, count, 1000):
            pipe = self.client.pipeline()
            for n in range(start, min(count, start + 1000)):
                pipe.xadd(self.queue, {"payload": json.dumps(n)})
            ids += [entry.decode() for entry in pipe.execute()]
        return ids

    def left(self) -> int:
        for group in self.client.xinfo_groups(self.queue):
            return int(group["pending"]) + int(group["lag"] or 0)
        return int(self.client.xlen(self.queue))  # no group yet: nothing was read

    def dead(self) -> int:
        return int(self.client.xlen(f"{self.queue}:dead"))

    def remove(self) -> None:
        self.client.delete(self.queue, f"{self.queue}:dead")
        self.client.close()


class NatsBroker:
    kind = "nats"
    backlog: int | None = None

    def __init__(self) -> None:
        from nats.js.api import StreamConfig

        self.queue = unique("storm").replace("-", "_")
        self._jetstream(
            lambda js: js.add_stream(StreamConfig(name=self.queue, subjects=[self.queue]))
        )

    @staticmethod
    def _jetstream(action: Any) -> Any:
        import nats

        async def run() -> Any:
            client = await nats.connect(NATS_URL)
            try:
                return await action(client.jetstream())
            finally:
                await client.close()

        return asyncio.run(run())

    def publish(self, count: int) -> list[str]:
        ids = [f"m-{n:06d}" for n in range(count)]

        async def send(js: Any) -> None:
            for start in range(0, count, 500):
                acks = [
                    js.publish(
                        self.queue,
                        json.dumps(message_id).encode(),
                        headers={"Nats-Msg-Id": message_id},
                    )
                    for message_id in ids[start : start + 500]
                ]
                await asyncio.gather(*acks)

        self._jetstream(send)
        return ids

    def left(self) -> int:
        async def info(js: Any) -> int:
            try:
                found = await js.consumer_info(self.queue, "ferryman")
            except Exception:  # no consumer yet: nothing was delivered
                return int((await js.stream_info(self.queue)).state.messages)
            return int(found.num_pending) + int(found.num_ack_pending)

        result: int = self._jetstream(info)
        return result

    def dead(self) -> int:
        return 0  # terminated messages stay in the stream; the evaluations say which

    def remove(self) -> None:
        self._jetstream(lambda js: js.delete_stream(self.queue))


class SqsBroker:
    """An SQS queue (and its redrive target) on the endpoint of ``AWS_ENDPOINT_URL``.

    ``backlog``: moto's server scans the whole queue on every send and receive
    (several times over): with every message published up front, 10,000 would
    take hours. On moto they are published as the consumers go, no more than
    200 waiting at once, so each call stays cheap; on fauxqs
    (tests/brokers/sqs_server.py), whose calls cost the same at any length,
    all before the storm (``backlog=None``), as on the other brokers.
    """

    kind = "sqs"

    def __init__(self, backlog: int | None = 200) -> None:
        import boto3  # type: ignore[import-untyped]

        self.backlog = backlog
        self.client = boto3.client("sqs")
        name = unique("storm")
        self.dead_url = self.client.create_queue(QueueName=f"{name}-dead")["QueueUrl"]
        arn = self.client.get_queue_attributes(QueueUrl=self.dead_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        policy = json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": "1000"})
        self.queue = self.client.create_queue(QueueName=name, Attributes={"RedrivePolicy": policy})[
            "QueueUrl"
        ]
        self._sent = 0  # messages published so far, each body its number

    def publish(self, count: int) -> list[str]:
        ids: list[str] = []
        for start in range(self._sent, self._sent + count, 10):
            answer = self.client.send_message_batch(
                QueueUrl=self.queue,
                Entries=[
                    {"Id": str(n - start), "MessageBody": json.dumps(n)}
                    for n in range(start, min(self._sent + count, start + 10))
                ],
            )
            ids += [entry["MessageId"] for entry in answer["Successful"]]
        self._sent += count
        return ids

    def _count(self, url: str) -> int:
        found = self.client.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(found["ApproximateNumberOfMessages"]) + int(
            found["ApproximateNumberOfMessagesNotVisible"]
        )

    def left(self) -> int:
        return self._count(self.queue)

    def dead(self) -> int:
        return self._count(self.dead_url)

    def remove(self) -> None:
        self.client.delete_queue(QueueUrl=self.queue)
        self.client.delete_queue(QueueUrl=self.dead_url)


BROKERS: dict[str, type[RabbitBroker | RedisBroker | NatsBroker | SqsBroker]] = {
    "rabbitmq": RabbitBroker,
    "redis": RedisBroker,
    "nats": NatsBroker,
    "sqs": SqsBroker,
}


@dataclass(frozen=True, kw_only=True)
class StormResult:
    kills: int
    messages: int
    runs: int  # rows in the runs table
    distinct: int  # distinct run keys
    missing: int  # published messages without a run
    failed_evaluations: int
    dead_lettered: int
    left: int  # messages not acked at the end


def start_daemon(
    broker: Broker, store_url: str, log: Path, *, work_ms: float = 0.0, batch: int | None = None
) -> subprocess.Popen[bytes]:
    """``ferryman run`` of the storm app; ``batch``: its source's batch size (else the default)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FERRYMAN_", "BROKER_STORM_"))}
    env.update(
        FERRYMAN_STORE=store_url,
        BROKER_STORM_KIND=broker.kind,
        BROKER_STORM_QUEUE=broker.queue,
        BROKER_STORM_WORK_MS=str(work_ms),
    )
    if batch is not None:
        env["BROKER_STORM_BATCH"] = str(batch)
    with log.open("ab") as output:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ferryman",
                "--app",
                "tests.brokers.storm_app:app",
                "run",
                "--no-serve",
                "--concurrency",
                "2",
            ],
            cwd=REPO,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def count_runs(app: fm.App) -> tuple[int, set[str]]:
    with app.store.read("counting runs") as conn:
        keys = list(conn.execute(sa.select(runs.c.run_key)).scalars())
    return len(keys), set(keys)


def count_evaluations(app: fm.App) -> int:
    with app.store.read("counting evaluations") as conn:
        return int(
            conn.execute(sa.select(sa.func.count()).select_from(sensor_evaluations)).scalar_one()
        )


class Publisher(threading.Thread):
    """Publishes a storm's messages: all at once, or as the consumers make room.

    With a ``backlog``, it publishes ten at a time whenever fewer than the
    backlog's worth of published messages have no run yet, on a store
    connection of its own, until all are out.
    """

    def __init__(self, broker: Broker, store_url: str, messages: int) -> None:
        super().__init__(name=f"publish-{broker.kind}", daemon=True)
        self.broker, self.store_url, self.messages = broker, store_url, messages
        self.ids: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        if self.broker.backlog is None:
            self.ids = self.broker.publish(self.messages)
            return
        app = fm.App(self.store_url)
        try:
            while len(self.ids) < self.messages:
                if len(self.ids) - run_count(app) >= self.broker.backlog:
                    time.sleep(DRAIN_POLL / 10)  # the pace of the look-ups, as in the drain
                    continue
                self.ids += self.broker.publish(min(10, self.messages - len(self.ids)))
        except BaseException as error:  # reported by check(), in the storm's thread
            self.error = error
        finally:
            app.close()

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"publishing failed: {self.error!r}") from self.error

    def published(self) -> list[str]:
        if self.is_alive():
            self.join(timeout=60)
        self.check()
        assert len(self.ids) == self.messages, f"{len(self.ids)} of {self.messages} published"
        return self.ids


def run_storm(
    broker: Broker, store_url: str, tmp: Path, *, messages: int, kills: int, seed: int = 0
) -> StormResult:
    """Publish, SIGKILL ``ferryman run`` ``kills`` times, drain with one last daemon, count."""
    rng = random.Random(seed)
    # Each killed daemon takes a batch before its first commit, then consumes for
    # 0.65 s on average (the pace below). Batches small enough that the kills take
    # a small share of the messages that way, and the sensor spending this long on
    # each message, so that consuming them all outlasts the storm by half again
    # and every kill lands while messages are in work. (With the sources' default
    # batches, the first two daemons took every message and the kills after them
    # struck idle daemons.)
    batch = max(1, messages // (max(1, kills) * 8))
    work_ms = 1000 * 1.5 * kills * 0.65 / (messages - 1.5 * kills * batch)
    publisher = Publisher(broker, store_url, messages)
    if broker.backlog is None:
        publisher.run()
    else:
        publisher.start()
    log = tmp / f"storm-{broker.kind}.log"
    app = fm.App(store_url)
    try:
        done = 0
        while done < kills:
            before = count_evaluations(app)
            daemon = start_daemon(broker, store_url, log, work_ms=work_ms, batch=batch)
            # Starting Python takes longer than the storm's pace: the clock starts
            # once this daemon has committed its first batch (or, the queue drained,
            # after a while), then the kill comes at a random moment of consuming.
            deadline = time.monotonic() + PROGRESS_WAIT
            while count_evaluations(app) == before and time.monotonic() < deadline:
                assert daemon.poll() is None, f"a daemon died on its own; see {log}"
                time.sleep(0.05)
            time.sleep(rng.uniform(0.3, 1.0))  # the storm's pace
            daemon.send_signal(signal.SIGKILL)
            daemon.wait(timeout=30)
            done += 1
        # One last daemon drains the queue and is stopped with SIGTERM. A batch it had
        # taken but not delivered when the signal came goes back unacked (as it
        # should): then another daemon takes it, a few rounds at most.
        for _ in range(DRAIN_ROUNDS):
            connected = _connections(log)
            last = start_daemon(broker, store_url, log)
            try:
                # Up first: a SIGTERM before its handlers are in place would just kill it.
                wait_until(
                    lambda seen=connected: _connections(log) > seen, timeout=120, what="connected"
                )
                wait_drained(app, broker, messages, publisher)
            finally:
                last.send_signal(signal.SIGTERM)
                code = last.wait(timeout=60)
            assert code == 0, f"the last daemon exited {code}; see {log}"
            if broker.left() == 0:
                break
        ids = publisher.published()
        total, keys = count_runs(app)
        with app.store.read("counting evaluations") as conn:
            failed = int(
                conn.execute(
                    sa.select(sa.func.count()).where(sensor_evaluations.c.outcome == "failed")
                ).scalar_one()
            )
        return StormResult(
            kills=done,
            messages=messages,
            runs=total,
            distinct=len(keys),
            missing=len(set(ids) - keys),
            failed_evaluations=failed,
            dead_lettered=broker.dead(),
            left=broker.left(),
        )
    finally:
        app.close()


def run_count(app: fm.App) -> int:
    with app.store.read("counting runs") as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(runs)).scalar_one())


def wait_drained(app: fm.App, broker: Broker, messages: int, publisher: Publisher) -> None:
    """Wait for a run per message and nothing left unacked, as long as the drain goes on.

    Not a fixed deadline: how fast the last daemon drains depends on the broker
    (moto's SQS costs time in proportion to its queue on every call) and on the
    machine's load. It fails once no new run and no ack came for ``DRAIN_STALL``
    seconds — longer than any redelivery delay of the storm's sources.
    """
    seen: tuple[int, int] | None = None
    since = time.monotonic()
    while True:
        publisher.check()
        done = run_count(app)
        left = broker.left() if done >= messages else -1
        if left == 0:
            return
        if (done, left) != seen:
            seen, since = (done, left), time.monotonic()
        elif time.monotonic() - since > DRAIN_STALL:
            raise AssertionError(
                f"the drain stalled for {DRAIN_STALL:.0f}s: {done} runs of {messages} messages, "
                f"{left if left >= 0 else 'not counted'} left unacked"
            )
        time.sleep(DRAIN_POLL)  # the pace of the look-ups, not a wait for any event


def _connections(log: Path) -> int:
    """How many times daemons logging to ``log`` connected to the broker."""
    return (
        log.read_text(errors="replace").count("ferryman.sources connected to")
        if log.exists()
        else 0
    )
