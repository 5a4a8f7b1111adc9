"""Broker sources for push sensors: ``@app.push_sensor(..., source=fm.sources.rabbitmq(...))``.

Every source has one shape (:class:`~ferryman.sources.base.Source`) and one
consumer (:mod:`ferryman.sources.consumer`), run by ``ferryman run`` on a
supervised thread per source. Each message's id feeds the sensor's push
dedupe; a message is acknowledged only after its evaluation committed, and
a message the sensor cannot handle goes to the broker's dead-letter
mechanism with the reason on its failed evaluation.

* :func:`rabbitmq` — a RabbitMQ queue (pika), dead-lettered through a DLX;
* :func:`redis_stream` — a Redis stream read by a consumer group;
* :func:`nats` — a NATS JetStream durable pull consumer;
* :func:`sqs` — an Amazon SQS queue (boto3), dead-lettered to its redrive target.

The broker clients are in the ``brokers`` extra: ``pip install 'ferryman[brokers]'``.
"""

from ferryman.sources.base import BrokerSession, Received, Source
from ferryman.sources.consumer import SourceStats
from ferryman.sources.nats import nats
from ferryman.sources.rabbitmq import rabbitmq
from ferryman.sources.redis_streams import redis_stream
from ferryman.sources.sqs import sqs

__all__ = [
    "BrokerSession",
    "Received",
    "Source",
    "SourceStats",
    "nats",
    "rabbitmq",
    "redis_stream",
    "sqs",
]
