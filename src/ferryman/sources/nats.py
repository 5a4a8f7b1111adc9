"""NATS JetStream (through nats-py): a durable pull consumer, explicit acks after the commit.

nats-py is asynchronous; the session runs its own event loop on the
consumer's thread, so the rest of ferryman stays synchronous. The durable
consumer (``durable``, created on the stream if missing, explicit acks) is
fetched in batches; each message is acked once its batch committed, and the
acks are flushed to the server before the next fetch. A message not acked
within ``ack_wait`` seconds (its consumer died) is redelivered by JetStream.

A message the sensor cannot handle is terminated (``+TERM``): JetStream
stops redelivering it and publishes a ``MSG_TERMINATED`` advisory; the
reason is on the failed evaluation. A message delivered ``max_deliver``
times without an ack (one that keeps killing its consumer) is given up by
JetStream too, with a ``MAX_DELIVERIES`` advisory.

The message id is the ``Nats-Msg-Id`` header (the one JetStream deduplicates
publishes by), else ``<stream>:<stream sequence>``; or the header
``id_header``, or the payload field ``id_field``.

The session connects without nats-py's own reconnection: a lost connection
ends the session and the consumer reconnects after its backoff, with a
fresh fetch, so no message can be half-settled on a dead connection.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

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

T = TypeVar("T")
NATS_MSG_ID = "Nats-Msg-Id"


@dataclass(frozen=True, slots=True)
class NatsSource(Source):
    url: str
    stream: str
    subject: str | None
    durable: str
    id_rule: IdRule
    decode: Decode | None
    batch_size: int
    wait: float
    ack_wait: float
    max_deliver: int
    kind: str = "nats"

    def describe(self) -> str:
        parsed = urllib.parse.urlsplit(self.url)
        where = f"{parsed.hostname or '127.0.0.1'}:{parsed.port or 4222}"
        return f"nats://{where} stream {self.stream!r} consumer {self.durable!r}"

    def connect(self, consumer: str) -> BrokerSession:
        return _Session(self)


def nats(
    url: str,
    *,
    stream: str,
    subject: str | None = None,
    durable: str = "ferryman",
    id_header: str | None = None,
    id_field: str | None = None,
    decode: Decode | None = json_decode,
    batch_size: int = 250,
    wait: float = 1.0,
    ack_wait: float = 30.0,
    max_deliver: int = 100,
) -> NatsSource:
    """Messages of a JetStream stream through durable pull consumer ``durable``.

    ``subject`` filters the stream (default: its subject, if it has one). ``ack_wait``: the
    seconds JetStream waits for an ack before redelivering — longer than a
    batch takes. ``max_deliver``: deliveries after which JetStream gives a
    message up.
    """
    check_common("nats", batch_size, wait)
    for what, value in (("stream", stream), ("durable", durable)):
        if not isinstance(value, str) or not value:
            raise ConfigurationError(f"nats source: {what} must be a non-empty name, got {value!r}")
    if not isinstance(ack_wait, int | float) or ack_wait <= wait:
        raise ConfigurationError(
            f"nats source: ack_wait must be seconds longer than wait ({wait}), got {ack_wait!r}"
        )
    if not isinstance(max_deliver, int) or max_deliver < 1:
        raise ConfigurationError(f"nats source: max_deliver must be >= 1, got {max_deliver!r}")
    try:
        import nats as nats_client  # noqa: F401  # checked early, so a missing extra shows early
    except ImportError as exc:
        raise ConfigurationError(
            "the nats source needs nats-py: pip install 'ferryman[brokers]'"
        ) from exc
    return NatsSource(
        url=url,
        stream=stream,
        subject=subject,
        durable=durable,
        id_rule=IdRule(id_header, id_field),
        decode=decode,
        batch_size=batch_size,
        wait=float(wait),
        ack_wait=float(ack_wait),
        max_deliver=max_deliver,
    )


class _Session:
    def __init__(self, source: NatsSource) -> None:
        self.source = source
        self.loop = asyncio.new_event_loop()
        self.client: Any = None
        try:
            self._run(self._open())
        except BaseException:
            self.close()
            raise

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    async def _open(self) -> None:
        import nats as nats_client
        from nats.js.api import AckPolicy, ConsumerConfig
        from nats.js.errors import NotFoundError

        self.client = await nats_client.connect(
            self.source.url, allow_reconnect=False, connect_timeout=5, max_reconnect_attempts=0
        )
        jetstream = self.client.jetstream()
        try:
            info = await jetstream.stream_info(self.source.stream)
        except NotFoundError:
            raise ConfigurationError(
                f"nats source: stream {self.source.stream!r} does not exist on "
                f"{self.source.describe()}; create it (nats stream add) first"
            ) from None
        subject = self.source.subject
        if subject is None:
            subjects = list(info.config.subjects or [])
            if len(subjects) != 1:
                raise ConfigurationError(
                    f"nats source: stream {self.source.stream!r} has subjects {subjects}; "
                    "name the one to consume with subject="
                )
            subject = subjects[0]
        self.subscription = await jetstream.pull_subscribe(
            subject,
            durable=self.source.durable,
            stream=self.source.stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.source.ack_wait,
                max_deliver=self.source.max_deliver,
                filter_subject=subject,
                max_ack_pending=max(1000, 4 * self.source.batch_size),
            ),
        )

    def receive(self, max_messages: int, wait: float) -> list[Received]:
        try:
            messages = self._run(self.subscription.fetch(max_messages, timeout=wait))
        except TimeoutError:
            # Nothing came within ``wait``. nats-py raises its own TimeoutError,
            # or asyncio's bare one when ``wait`` ran out between its two pull
            # requests (on a busy machine). Neither means the connection is
            # gone (that is checked below): taken for a lost broker, it cost a
            # reconnect and its backoff.
            messages = []
        if self.client.is_closed or not self.client.is_connected:
            raise ConnectionError(f"lost the connection to {self.source.describe()}")
        return [self._received(message) for message in messages]

    def _received(self, message: Any) -> Received:
        payload, error = decoded(self.source.decode, message.data)
        headers = dict(message.headers or {})
        metadata = message.metadata
        own_id = headers.get(NATS_MSG_ID) or f"{self.source.stream}:{metadata.sequence.stream}"
        message_id, missing = self.source.id_rule.pick(own_id, headers, payload)
        return Received(
            message_id=message_id or f"{self.source.stream}:{metadata.sequence.stream}",
            payload=payload,
            redelivered=metadata.num_delivered > 1,
            handle=message,
            headers=headers,
            error=error or missing,
        )

    def _settle(self, action: str, messages: Sequence[Received]) -> None:
        async def settle() -> None:
            for message in messages:
                await getattr(message.handle, action)()
            await self.client.flush(timeout=10)

        if messages:
            self._run(settle())

    def ack(self, messages: Sequence[Received]) -> None:
        self._settle("ack", messages)

    def dead_letter(self, messages: Sequence[tuple[Received, str]]) -> None:
        self._settle("term", [message for message, _reason in messages])

    def release(self, messages: Sequence[Received]) -> None:
        self._settle("nak", messages)

    def lag(self) -> int | None:
        info = self._run(self.subscription.consumer_info())
        return int(info.num_pending) + int(info.num_ack_pending)

    def close(self) -> None:
        try:
            if self.client is not None and not self.client.is_closed:
                self._run(self.client.close())
        finally:
            self.loop.close()
