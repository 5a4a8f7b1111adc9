"""RabbitMQ (AMQP 0-9-1, through pika): manual acks, a dead-letter exchange.

The consumer sets a prefetch of two batches and acks nothing until the
batch's evaluations are committed. A message the sensor cannot handle is
rejected without requeue, which RabbitMQ routes through the queue's
dead-letter exchange (``x-dead-letter-exchange``); the reason is on the
failed evaluation, and RabbitMQ adds its ``x-death`` header.

With ``declare=True`` (the default) the source declares the queue durable
with a dead-letter exchange (the default exchange, routing key
``<queue>.dead``) and declares that dead-letter queue; a queue that already
exists with other arguments is refused by RabbitMQ, and the error names it.
With ``declare=False`` the queue must exist (it is checked passively), and
its dead-lettering is the operator's: RabbitMQ drops a rejected message of a
queue that has no dead-letter exchange.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ferryman.errors import ConfigurationError
from ferryman.sources.base import (
    BrokerSession,
    Decode,
    IdRule,
    Received,
    Source,
    check_common,
    decoded,
    json_decode,
)

LINGER = 0.02  # seconds a batch keeps gathering after its first message


@dataclass(frozen=True, slots=True)
class RabbitMQSource(Source):
    url: str
    queue: str
    id_rule: IdRule
    decode: Decode | None
    batch_size: int
    wait: float
    declare: bool
    dead_letter_queue: str | None
    kind: str = "rabbitmq"

    def describe(self) -> str:
        import pika  # type: ignore[import-untyped]  # pika ships no type information

        params = pika.URLParameters(self.url)
        return f"amqp://{params.host}:{params.port}/{params.virtual_host} queue {self.queue!r}"

    def connect(self, consumer: str) -> BrokerSession:
        return _Session(self, consumer)

    def declare_queues(self) -> None:
        """Declare the queue (and its dead-letter queue) now, as the consumer does when it
        starts: messages published before the first consumer then wait in it."""
        _Session(self, "ferryman-declare").close()


def rabbitmq(
    url: str,
    *,
    queue: str,
    id_header: str | None = None,
    id_field: str | None = None,
    decode: Decode | None = json_decode,
    batch_size: int = 250,
    wait: float = 1.0,
    declare: bool = True,
    dead_letter_queue: str | None = None,
) -> RabbitMQSource:
    """Messages from a RabbitMQ queue, acked only after their evaluation committed.

    The message id is the AMQP ``message_id`` property, or the header
    ``id_header``, or the payload field ``id_field``. The body is decoded by
    ``decode`` (JSON by default; ``None`` passes the bytes). With
    ``declare`` the queue is declared durable with dead-lettering to
    ``dead_letter_queue`` (default ``<queue>.dead``), declared too.
    """
    check_common("rabbitmq", batch_size, wait)
    if not isinstance(queue, str) or not queue:
        raise ConfigurationError(f"rabbitmq source: queue must be a non-empty name, got {queue!r}")
    _require_pika()
    return RabbitMQSource(
        url=url,
        queue=queue,
        id_rule=IdRule(id_header, id_field),
        decode=decode,
        batch_size=batch_size,
        wait=float(wait),
        declare=declare,
        dead_letter_queue=dead_letter_queue,
    )


def _require_pika() -> None:
    try:
        import pika  # noqa: F401  # checked at definition time, so a missing extra shows early
    except ImportError as exc:
        raise ConfigurationError(
            "the rabbitmq source needs pika: pip install 'ferryman[brokers]'"
        ) from exc


def dead_letter_arguments(source: RabbitMQSource) -> dict[str, Any]:
    return {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": source.dead_letter_queue or f"{source.queue}.dead",
    }


class _Session:
    def __init__(self, source: RabbitMQSource, consumer: str) -> None:
        import pika

        self.source = source
        params = pika.URLParameters(source.url)
        params.heartbeat = 30
        params.blocked_connection_timeout = 60
        self.connection = pika.BlockingConnection(params)
        try:
            self.channel = self.connection.channel()
            if source.declare:
                dead = source.dead_letter_queue or f"{source.queue}.dead"
                self.channel.queue_declare(dead, durable=True)
                self.channel.queue_declare(
                    source.queue, durable=True, arguments=dead_letter_arguments(source)
                )
            else:
                self.channel.queue_declare(source.queue, passive=True)
            self.channel.basic_qos(prefetch_count=2 * source.batch_size)
            self.pending: list[tuple[Any, Any, bytes]] = []
            self.channel.basic_consume(
                source.queue, self._on_message, auto_ack=False, consumer_tag=consumer
            )
        except BaseException:
            self.connection.close()
            raise

    def _on_message(self, _channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self.pending.append((method, properties, body))

    def receive(self, max_messages: int, wait: float) -> list[Received]:
        deadline = time.monotonic() + wait
        while not self.pending and time.monotonic() < deadline:
            self.connection.process_data_events(time_limit=min(0.2, deadline - time.monotonic()))
        # Once something arrived, gather what follows it closely, then go: a
        # batch waits for no stragglers.
        linger = time.monotonic() + LINGER
        while self.pending and len(self.pending) < max_messages and time.monotonic() < linger:
            self.connection.process_data_events(time_limit=0.001)
        taken, self.pending = self.pending[:max_messages], self.pending[max_messages:]
        return [self._received(*entry) for entry in taken]

    def _received(self, method: Any, properties: Any, body: bytes) -> Received:
        payload, error = decoded(self.source.decode, body)
        headers = dict(properties.headers or {})
        message_id, missing = self.source.id_rule.pick(properties.message_id, headers, payload)
        return Received(
            message_id=message_id or f"amqp-delivery:{method.delivery_tag}",
            payload=payload,
            redelivered=bool(method.redelivered),
            handle=method.delivery_tag,
            headers=headers,
            error=error or missing,
        )

    def ack(self, messages: Sequence[Received]) -> None:
        for message in messages:
            self.channel.basic_ack(message.handle)

    def dead_letter(self, messages: Sequence[tuple[Received, str]]) -> None:
        # Rejected without requeue: RabbitMQ moves it through the dead-letter exchange.
        for message, _reason in messages:
            self.channel.basic_nack(message.handle, requeue=False)

    def release(self, messages: Sequence[Received]) -> None:
        for message in messages:
            self.channel.basic_nack(message.handle, requeue=True)

    def lag(self) -> int | None:
        declared = self.channel.queue_declare(self.source.queue, passive=True)
        return int(declared.method.message_count)

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()
