"""Amazon SQS (through boto3): long polling, visibility extended while in work.

Messages are received with long polling (``WaitTimeSeconds``), up to ten a
call, until a batch is full or the queue has nothing more at once. While a
batch is in work, a thread of the session (``ferryman-source-sqs-visibility``)
extends the visibility timeout of its messages every third of
``visibility_timeout``, so a slow batch is not handed to another consumer
meanwhile; a consumer that dies stops extending, and SQS redelivers its
messages once the timeout lapses. A message is deleted once its batch
committed.

A message the sensor cannot handle is sent to the queue's dead-letter queue
— the target of its redrive policy — with its body, its attributes and a
``ferryman-reason`` attribute, then deleted from the queue. A queue without
a redrive policy is refused: such a message would be redelivered forever.

The client is built as every AWS tool builds it: ``AWS_ENDPOINT_URL``,
``AWS_REGION``, credentials and profiles from the environment.
The message id is SQS's ``MessageId`` (the same on every redelivery), or the
message attribute ``id_header``, or the payload field ``id_field``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ferryman.errors import ConfigurationError
from ferryman.model import Backoff
from ferryman.sources.base import (
    BrokerSession,
    Decode,
    IdRule,
    Received,
    Source,
    check_common,
    cut_reason,
    decoded,
    json_decode,
)
from ferryman.supervise import supervised

log = logging.getLogger("ferryman.sources")

SQS_BATCH = 10  # the most SQS receives, deletes or changes in one call
REASON_ATTRIBUTE = "ferryman-reason"
KEEPER_RESTART = Backoff(base=1.0, factor=2.0, max=30.0)  # after a crash of the visibility keeper


@dataclass(frozen=True, slots=True)
class SqsSource(Source):
    queue: str
    id_rule: IdRule
    decode: Decode | None
    batch_size: int
    wait: float
    visibility_timeout: int
    endpoint_url: str | None
    region: str | None
    kind: str = "sqs"

    def describe(self) -> str:
        return f"sqs queue {self.queue!r}" + (
            f" at {self.endpoint_url}" if self.endpoint_url else ""
        )

    def connect(self, consumer: str) -> BrokerSession:
        return _Session(self)


def sqs(
    queue: str,
    *,
    id_header: str | None = None,
    id_field: str | None = None,
    decode: Decode | None = json_decode,
    batch_size: int = 100,
    wait: float = 1.0,
    visibility_timeout: int = 60,
    endpoint_url: str | None = None,
    region: str | None = None,
) -> SqsSource:
    """Messages of SQS queue ``queue`` (a queue URL, or a name), deleted after the commit.

    ``visibility_timeout``: seconds a received message stays hidden from
    other consumers; extended while its batch is in work.
    """
    check_common("sqs", batch_size, wait)
    if not isinstance(queue, str) or not queue:
        raise ConfigurationError(f"sqs source: queue must be a queue URL or name, got {queue!r}")
    if not isinstance(visibility_timeout, int) or not 3 <= visibility_timeout <= 43200:
        raise ConfigurationError(
            f"sqs source: visibility_timeout must be whole seconds in [3, 43200], "
            f"got {visibility_timeout!r}"
        )
    return SqsSource(
        queue=queue,
        id_rule=IdRule(id_header, id_field),
        decode=decode,
        batch_size=batch_size,
        wait=float(wait),
        visibility_timeout=visibility_timeout,
        endpoint_url=endpoint_url,
        region=region,
    )


def _chunks(items: Sequence[Any]) -> list[Sequence[Any]]:
    return [items[start : start + SQS_BATCH] for start in range(0, len(items), SQS_BATCH)]


class _Session:
    def __init__(self, source: SqsSource) -> None:
        import boto3  # type: ignore[import-untyped]  # boto3 ships no type information
        from botocore.config import Config  # type: ignore[import-untyped]

        self.source = source
        config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5)
        self.client: Any = boto3.session.Session().client(
            "sqs", endpoint_url=source.endpoint_url, region_name=source.region, config=config
        )
        if source.queue.startswith(("http://", "https://")):
            self.queue_url = source.queue
        else:
            self.queue_url = self.client.get_queue_url(QueueName=source.queue)["QueueUrl"]
        self.dead_letter_url = self._dead_letter_queue()
        self._in_work: dict[str, str] = {}  # message id -> receipt handle, while in work
        self._lock = threading.Lock()
        self._closed = threading.Event()
        # Restarted after a crash: extending the visibility again is always safe.
        self._keeper = supervised(
            "ferryman-source-sqs-visibility",
            self._keep_invisible,
            restart=KEEPER_RESTART,
            stop=self._closed,
        )

    def _dead_letter_queue(self) -> str:
        attributes = self.client.get_queue_attributes(
            QueueUrl=self.queue_url, AttributeNames=["RedrivePolicy"]
        ).get("Attributes", {})
        if "RedrivePolicy" not in attributes:
            raise ConfigurationError(
                f"sqs source: queue {self.source.queue!r} has no redrive policy; give it a "
                "dead-letter queue, or messages the sensor cannot handle would come back forever"
            )
        target = json.loads(attributes["RedrivePolicy"])["deadLetterTargetArn"]
        account, name = target.split(":")[-2:]
        url: str = self.client.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)[
            "QueueUrl"
        ]
        return url

    def receive(self, max_messages: int, wait: float) -> list[Received]:
        received: list[Received] = []
        # Under half a second asks for what is there now (the consumer's wait
        # while a batch commits): a long poll of a whole second would hold that
        # batch's deletes back on a quiet queue.
        long_poll = min(20, max(1, round(wait))) if wait >= 0.5 else 0
        while len(received) < max_messages:
            answer = self.client.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=min(SQS_BATCH, max_messages - len(received)),
                WaitTimeSeconds=0 if received else long_poll,
                VisibilityTimeout=self.source.visibility_timeout,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
                MessageAttributeNames=["All"],
            )
            messages = answer.get("Messages", [])
            with self._lock:
                self._in_work.update((m["MessageId"], m["ReceiptHandle"]) for m in messages)
            received += [self._received(m) for m in messages]
            if len(messages) < SQS_BATCH:
                break
        return received

    def _received(self, message: dict[str, Any]) -> Received:
        payload, error = decoded(self.source.decode, message["Body"].encode())
        attributes = {
            name: value.get("StringValue", value.get("BinaryValue"))
            for name, value in message.get("MessageAttributes", {}).items()
        }
        message_id, missing = self.source.id_rule.pick(message["MessageId"], attributes, payload)
        receives = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        return Received(
            message_id=message_id or message["MessageId"],
            payload=payload,
            redelivered=receives > 1,
            handle=message,
            headers=attributes,
            error=error or missing,
        )

    def _keep_invisible(self) -> None:
        """Extend the visibility of the messages in work, every third of the timeout."""
        every = self.source.visibility_timeout / 3
        while not self._closed.wait(every):
            with self._lock:
                handles = list(self._in_work.items())
            for chunk in _chunks(handles):
                try:
                    self.client.change_message_visibility_batch(
                        QueueUrl=self.queue_url,
                        Entries=[
                            {
                                "Id": str(n),
                                "ReceiptHandle": handle,
                                "VisibilityTimeout": self.source.visibility_timeout,
                            }
                            for n, (_, handle) in enumerate(chunk)
                        ],
                    )
                except Exception as exc:  # the next round tries again; a lapse means redelivery
                    log.warning("extending the visibility of messages in work failed: %s", exc)

    def _settled(self, messages: Sequence[Received]) -> None:
        with self._lock:
            for message in messages:
                self._in_work.pop(message.handle["MessageId"], None)

    def _delete(self, messages: Sequence[Received]) -> None:
        for chunk in _chunks(messages):
            answer = self.client.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(n), "ReceiptHandle": m.handle["ReceiptHandle"]}
                    for n, m in enumerate(chunk)
                ],
            )
            for failed in answer.get("Failed", []):
                # Its receipt lapsed: SQS redelivers it, and the redelivery writes nothing.
                log.warning("deleting an SQS message failed: %s", failed.get("Message"))

    def ack(self, messages: Sequence[Received]) -> None:
        try:
            self._delete(messages)
        finally:
            self._settled(messages)

    def dead_letter(self, messages: Sequence[tuple[Received, str]]) -> None:
        for chunk in _chunks(messages):
            entries = []
            for n, (message, reason) in enumerate(chunk):
                attributes = dict(list(message.handle.get("MessageAttributes", {}).items())[:9])
                attributes[REASON_ATTRIBUTE] = {
                    "DataType": "String",
                    "StringValue": cut_reason(reason),
                }
                entries.append(
                    {
                        "Id": str(n),
                        "MessageBody": message.handle["Body"],
                        "MessageAttributes": attributes,
                    }
                )
            answer = self.client.send_message_batch(QueueUrl=self.dead_letter_url, Entries=entries)
            if answer.get("Failed"):
                raise ConnectionError(
                    f"sending to the dead-letter queue failed: {answer['Failed'][0].get('Message')}"
                )
        self.ack([message for message, _ in messages])

    def release(self, messages: Sequence[Received]) -> None:
        self._settled(messages)
        for message in messages:
            self.client.change_message_visibility(
                QueueUrl=self.queue_url,
                ReceiptHandle=message.handle["ReceiptHandle"],
                VisibilityTimeout=0,
            )

    def lag(self) -> int | None:
        attributes = self.client.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(
            attributes["ApproximateNumberOfMessagesNotVisible"]
        )

    def close(self) -> None:
        self._closed.set()
        self._keeper.join(timeout=5)
        with self._lock:
            unsettled = list(self._in_work.values())
        try:
            # Given back at once rather than when their visibility lapses; best effort,
            # since the lapse gives them back all the same.
            for chunk in _chunks(unsettled):
                self.client.change_message_visibility_batch(
                    QueueUrl=self.queue_url,
                    Entries=[
                        {"Id": str(n), "ReceiptHandle": handle, "VisibilityTimeout": 0}
                        for n, handle in enumerate(chunk)
                    ],
                )
        finally:
            self.client.close()
