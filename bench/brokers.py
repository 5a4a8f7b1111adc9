"""Broker sources: messages/s into runs, next to a bare consumer, in the same run.

For each broker (RabbitMQ, Redis Streams, NATS JetStream, SQS on a moto server
started on a loopback port, or with ``--sqs-server fauxqs`` on fauxqs, which
``make fauxqs`` installs: moto scans the whole queue on every call, so its
figures measure moto), ``--messages`` messages are published to a fresh
queue twice, and two consumers drain them in turn:

* **ferryman**: a push sensor with ``source=fm.sources.<broker>(...)``,
  consumed by the same consumer ``ferryman run`` runs (one thread), into a
  fresh PostgreSQL store: per message one evaluation, one delivery row and
  one run, committed in one transaction per batch; each message acked only
  after its batch committed.
* **bare**: the same broker client, with the same prefetch, inserting one row
  per message into a PostgreSQL table in a transaction of its own and
  acknowledging the message after that commit — the at-least-once loop
  users write by hand (with no dedupe, no run, no evaluation).

Timed: from the consumer's start to the last message acknowledged. The
figure is messages/s. Both consumers talk to the same servers on this
machine, one after the other.

Usage: ``.venv/bin/python bench/brokers.py`` (``--help`` for the options).
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder comes first on sys.path, and bench/queue.py
# would shadow the standard library's queue module (which concurrent.futures uses).
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import argparse
import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import ferryman as fm  # noqa: E402  # after the path fix above
from ferryman.sources.consumer import SourceConsumer  # noqa: E402
from ferryman.store import upgrade  # noqa: E402

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
REDIS_URL = "redis://127.0.0.1:6379/0"
NATS_URL = "nats://127.0.0.1:4222"
# The bare consumer's fetch or prefetch window; ferryman runs with its sources' defaults,
# as users do (a batch of up to 250; 100 for SQS).
BATCH = 100
BROKER_NAMES = ("rabbitmq", "redis", "nats", "sqs")


# -- a database of the run's own ---------------------------------------------------


@contextlib.contextmanager
def fresh_database(admin: str) -> Iterator[str]:
    name = f"ferryman_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = admin.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sqlalchemy_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


# -- brokers: publish, a ferryman source, a bare consumer ------------------------------


class Rabbit:
    name = "rabbitmq"

    def __init__(self) -> None:
        import pika  # type: ignore[import-untyped]

        self.pika = pika

    def _connection(self) -> Any:
        return self.pika.BlockingConnection(self.pika.URLParameters(RABBITMQ_URL))

    def prepare(self, count: int) -> str:
        queue = f"bench-{uuid.uuid4().hex[:10]}"
        fm.sources.rabbitmq(RABBITMQ_URL, queue=queue).connect("bench").close()
        connection = self._connection()
        channel = connection.channel()
        channel.confirm_delivery()
        for n in range(count):
            channel.basic_publish(
                "",
                queue,
                json.dumps({"n": n}).encode(),
                self.pika.BasicProperties(message_id=f"m-{n}"),
            )
        connection.close()
        return queue

    def source(self, queue: str) -> fm.sources.Source:
        return fm.sources.rabbitmq(RABBITMQ_URL, queue=queue)

    def bare(self, queue: str, count: int, insert: Callable[[str, bytes], None]) -> None:
        connection = self._connection()
        channel = connection.channel()
        channel.basic_qos(prefetch_count=2 * BATCH)
        consumed = channel.consume(queue, inactivity_timeout=10)
        for done, (method, properties, body) in enumerate(consumed, start=1):
            if method is None:
                raise RuntimeError("the bare consumer waited 10 s for a message")
            insert(properties.message_id, body)
            channel.basic_ack(method.delivery_tag)
            if done == count:
                break
        channel.cancel()
        connection.close()

    def remove(self, queue: str) -> None:
        connection = self._connection()
        connection.channel().queue_delete(queue)
        connection.channel().queue_delete(f"{queue}.dead")
        connection.close()


class Redis:
    name = "redis"

    def __init__(self) -> None:
        import redis

        self.client = redis.Redis.from_url(REDIS_URL)

    def prepare(self, count: int) -> str:
        stream = f"bench-{uuid.uuid4().hex[:10]}"
        pipe = self.client.pipeline()
        for n in range(count):
            pipe.xadd(stream, {"payload": json.dumps({"n": n})})
        pipe.execute()
        return stream

    def source(self, stream: str) -> fm.sources.Source:
        return fm.sources.redis_stream(REDIS_URL, stream=stream, payload_field="payload")

    def bare(self, stream: str, count: int, insert: Callable[[str, bytes], None]) -> None:
        self.client.xgroup_create(stream, "bare", id="0")
        done = 0
        while done < count:
            answer = self.client.xreadgroup(
                "bare", "bare-1", {stream: ">"}, count=BATCH, block=10_000
            )
            if not answer:
                raise RuntimeError("the bare consumer waited 10 s for an entry")
            for entry_id, fields in answer[0][1]:
                insert(entry_id.decode(), fields[b"payload"])
                self.client.xack(stream, "bare", entry_id)
                done += 1

    def remove(self, stream: str) -> None:
        self.client.delete(stream, f"{stream}:dead")


class Nats:
    name = "nats"

    def _run(self, action: Callable[[Any, Any], Any]) -> Any:
        import nats

        async def run() -> Any:
            client = await nats.connect(NATS_URL)
            try:
                return await action(client, client.jetstream())
            finally:
                await client.close()

        return asyncio.run(run())

    def prepare(self, count: int) -> str:
        from nats.js.api import StreamConfig

        stream = f"bench_{uuid.uuid4().hex[:10]}"

        async def publish(_client: Any, js: Any) -> None:
            await js.add_stream(StreamConfig(name=stream, subjects=[stream]))
            for start in range(0, count, 500):
                await asyncio.gather(
                    *(
                        js.publish(
                            stream,
                            json.dumps({"n": n}).encode(),
                            headers={"Nats-Msg-Id": f"m-{n}"},
                        )
                        for n in range(start, min(count, start + 500))
                    )
                )

        self._run(publish)
        return stream

    def source(self, stream: str) -> fm.sources.Source:
        return fm.sources.nats(NATS_URL, stream=stream)

    def bare(self, stream: str, count: int, insert: Callable[[str, bytes], None]) -> None:
        async def consume(_client: Any, js: Any) -> None:
            subscription = await js.pull_subscribe(stream, durable="bare", stream=stream)
            done = 0
            while done < count:
                for message in await subscription.fetch(BATCH, timeout=10):
                    insert(message.headers["Nats-Msg-Id"], message.data)
                    await message.ack()
                    done += 1
            await _client.flush()

        self._run(consume)

    def remove(self, stream: str) -> None:
        async def delete(_client: Any, js: Any) -> None:
            await js.delete_stream(stream)

        self._run(delete)


class Sqs:
    name = "sqs"

    def __init__(self, endpoint: str) -> None:
        import boto3  # type: ignore[import-untyped]

        self.endpoint = endpoint
        self.client = boto3.client(
            "sqs",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",  # a moto server on loopback takes any
        )

    def prepare(self, count: int) -> str:
        name = f"bench-{uuid.uuid4().hex[:10]}"
        dead = self.client.create_queue(QueueName=f"{name}-dead")["QueueUrl"]
        arn = self.client.get_queue_attributes(QueueUrl=dead, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        policy = json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": "5"})
        url: str = self.client.create_queue(QueueName=name, Attributes={"RedrivePolicy": policy})[
            "QueueUrl"
        ]
        for start in range(0, count, 10):
            self.client.send_message_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(n), "MessageBody": json.dumps({"n": n})}
                    for n in range(start, min(count, start + 10))
                ],
            )
        return url

    def source(self, url: str) -> fm.sources.Source:
        return fm.sources.sqs(url, endpoint_url=self.endpoint, region="us-east-1")

    def bare(self, url: str, count: int, insert: Callable[[str, bytes], None]) -> None:
        done = 0
        while done < count:
            messages = self.client.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=10
            ).get("Messages", [])
            if not messages:
                raise RuntimeError("the bare consumer waited 10 s for a message")
            for message in messages:
                insert(message["MessageId"], message["Body"].encode())
                self.client.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
                done += 1

    def remove(self, url: str) -> None:
        self.client.delete_queue(QueueUrl=url)


# -- the two consumers, timed --------------------------------------------------------


def time_ferryman(broker: Any, count: int, admin: str) -> float:
    queue = broker.prepare(count)
    try:
        with fresh_database(admin) as url:
            upgrade(sqlalchemy_url(url))
            app = fm.App(sqlalchemy_url(url))

            @app.job()
            def load(ctx: fm.JobContext, payload: Any) -> None:
                pass

            @app.push_sensor("load", source=broker.source(queue))
            def orders(ctx: fm.SensorContext, message: fm.Message) -> list[fm.RunRequest]:
                return [fm.RunRequest(message.message_id, message.payload)]

            app.store  # opened before the clock starts, as a running daemon's is  # noqa: B018
            consumer = SourceConsumer(app._sensor_engine, "orders", app.sources["orders"])
            started = time.perf_counter()
            consumer.start()
            while consumer.stats.acked < count:
                if consumer.stats.dead_lettered or consumer.stats.crashes:
                    raise RuntimeError(f"the ferryman consumer failed: {consumer.stats}")
                time.sleep(0.005)
            elapsed = time.perf_counter() - started
            consumer.stop()
            consumer.join(30)
            runs = len(app.get_runs())
            app.close()
            if runs != count:
                raise RuntimeError(f"ferryman made {runs} runs of {count} messages")
            return count / elapsed
    finally:
        broker.remove(queue)


def time_bare(broker: Any, count: int, admin: str) -> float:
    queue = broker.prepare(count)
    try:
        with fresh_database(admin) as url, psycopg.connect(url) as conn:
            conn.execute("CREATE TABLE messages (message_id text PRIMARY KEY, payload bytea)")
            conn.commit()

            def insert(message_id: str, body: bytes) -> None:
                conn.execute(
                    "INSERT INTO messages (message_id, payload) VALUES (%s, %s)",
                    (message_id, body),
                )
                conn.commit()  # acked after this commit

            started = time.perf_counter()
            broker.bare(queue, count, insert)
            elapsed = time.perf_counter() - started
            stored = conn.execute("SELECT count(*) FROM messages").fetchone()
            if stored is None or stored[0] != count:
                raise RuntimeError(f"the bare consumer stored {stored} rows of {count}")
            return count / elapsed
    finally:
        broker.remove(queue)


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def label(broker: str, sqs_server: str) -> str:
    return f"sqs on {sqs_server}" if broker == "sqs" else broker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/brokers.py", description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=5000, help="per broker and consumer")
    parser.add_argument("--brokers", default=",".join(BROKER_NAMES), help="comma-separated")
    parser.add_argument("--pg", default=PG_ADMIN, help="PostgreSQL admin URL (fresh dbs made)")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument(
        "--sqs-server",
        choices=("moto", "fauxqs"),
        default="moto",
        help="the SQS endpoint: moto's server, or fauxqs (installed by `make fauxqs`)",
    )
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.brokers.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(BROKER_NAMES))
    if unknown:
        parser.error(f"unknown brokers {unknown}; choose among {list(BROKER_NAMES)}")
    rows = []
    # ferryman's SQS source builds its client from the standard AWS variables.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")  # either server takes any
    with contextlib.ExitStack() as stack:
        if args.sqs_server == "fauxqs" and "sqs" in chosen:
            sys.path.insert(0, str(ROOT))
            from tests.brokers.sqs_server import fauxqs_server

            endpoint = stack.enter_context(fauxqs_server(Path(os.devnull)))
        elif "sqs" in chosen:
            endpoint = stack.enter_context(moto_server())
        else:
            endpoint = ""  # no SQS server is started for a run without SQS
        makers: dict[str, Callable[[], Any]] = {
            "rabbitmq": Rabbit,
            "redis": Redis,
            "nats": Nats,
            "sqs": lambda: Sqs(endpoint),
        }
        for name in chosen:
            broker = makers[name]()
            bare = time_bare(broker, args.messages, args.pg)
            ours = time_ferryman(broker, args.messages, args.pg)
            rows.append({"broker": name, "ferryman": ours, "bare": bare, "ratio": ours / bare})
            print(
                f"{label(name, args.sqs_server)}: ferryman {ours:,.0f} msg/s, "
                f"bare {bare:,.0f} msg/s, {ours / bare:.2f}x",
                flush=True,
            )
    print()
    print(f"| broker | ferryman msg/s | bare consumer msg/s | ratio | ({args.messages:,} messages)")
    print("|---|---:|---:|---:|")
    for row in rows:
        figures = f"{row['ferryman']:,.0f} | {row['bare']:,.0f} | {row['ratio']:.2f}x"
        print(f"| {label(row['broker'], args.sqs_server)} | {figures} |")
    if args.json:
        found = {"messages": args.messages, "sqs_server": args.sqs_server, "rows": rows}
        args.json.write_text(json.dumps(found, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
