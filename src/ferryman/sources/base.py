"""The one shape of every broker source, and what all of them share.

A :class:`Source` is configuration (frozen, built by ``fm.sources.rabbitmq(...)``
and its siblings); ``connect()`` opens a :class:`BrokerSession`, one
connection to the broker used by one consumer thread. A session hands out
:class:`Received` messages and settles them afterwards — ``ack`` once their
evaluation is committed, ``dead_letter`` when the sensor cannot handle them,
``release`` when they could not be processed now (a paused sensor). It
never settles a message on its own: closing a session gives every unsettled
message back to the broker.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ferryman.errors import ConfigurationError

Decode = Callable[[bytes], Any]
REASON_LIMIT = 1000  # characters of a failure reason put on a dead-lettered message


@dataclass(frozen=True, slots=True, kw_only=True)
class Received:
    """One message taken from a broker, not yet settled.

    ``message_id`` is what the sensor's dedupe keys on. ``error`` says why the
    message cannot be delivered to the sensor at all (a payload that does not
    decode, no id where the source was told to find one); such a message is
    recorded as a failed evaluation and dead-lettered. ``handle`` is the
    broker's own token for settling it.
    """

    message_id: str
    payload: Any
    redelivered: bool
    handle: Any
    headers: Mapping[str, Any] | None = None
    error: str | None = None


class BrokerSession(Protocol):
    """One connection to a broker, used by one thread."""

    def receive(self, max_messages: int, wait: float) -> list[Received]:
        """Up to ``max_messages``, waiting at most about ``wait`` seconds for the first."""

    def ack(self, messages: Sequence[Received]) -> None:
        """Settle messages whose evaluation is committed: the broker forgets them."""

    def dead_letter(self, messages: Sequence[tuple[Received, str]]) -> None:
        """Hand messages to the broker's dead-letter mechanism, each with its reason."""

    def release(self, messages: Sequence[Received]) -> None:
        """Give messages back unprocessed, to be delivered again later."""

    def lag(self) -> int | None:
        """Messages waiting for this consumer, if the broker tells; None if not."""

    def close(self) -> None:
        """Close the connection; unsettled messages go back to the broker."""


class Source(ABC):
    """Where a push sensor's messages come from. Subclasses are frozen dataclasses."""

    kind: str  # "rabbitmq", "redis", "nats", "sqs"
    batch_size: int
    wait: float

    @abstractmethod
    def describe(self) -> str:
        """Where the messages come from, without any secret, for logs and pages."""

    @abstractmethod
    def connect(self, consumer: str) -> BrokerSession:
        """Open a session; ``consumer`` names this consumer to the broker where it asks."""


@dataclass(frozen=True, slots=True)
class IdRule:
    """Where a message's id comes from: the broker's own, a header, or a payload field."""

    header: str | None = None
    field: str | None = None

    def __post_init__(self) -> None:
        if self.header is not None and self.field is not None:
            raise ConfigurationError("give id_header or id_field, not both")
        for name, value in (("id_header", self.header), ("id_field", self.field)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigurationError(f"{name} must be a non-empty string, got {value!r}")

    def pick(
        self, broker_id: str | None, headers: Mapping[str, Any] | None, payload: Any
    ) -> tuple[str | None, str | None]:
        """``(message_id, None)`` or ``(None, why there is none)``."""
        if self.header is not None:
            value = (headers or {}).get(self.header)
            where = f"header {self.header!r}"
        elif self.field is not None:
            value = payload.get(self.field) if isinstance(payload, dict) else None
            where = f"payload field {self.field!r}"
        else:
            value, where = broker_id, "the broker's message id"
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value:
            return None, f"the message has no {where} (found {value!r}) to deduplicate it by"
        return value, None


def decoded(decode: Decode | None, body: bytes) -> tuple[Any, str | None]:
    """``(payload, None)``, or ``(None, why the body does not decode)``."""
    if decode is None:
        return body, None
    try:
        return decode(body), None
    except Exception as exc:  # any decoder's error names a bad message, not a bug of ours
        shown = body[:80]
        return (
            None,
            f"the payload does not decode ({type(exc).__name__}: {exc}); it began {shown!r}",
        )


def json_decode(body: bytes) -> Any:
    """The default decoder: the body is JSON text."""
    return json.loads(body)


def check_common(kind: str, batch_size: int, wait: float) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigurationError(
            f"{kind} source: batch_size must be an int >= 1, got {batch_size!r}"
        )
    if not isinstance(wait, int | float) or not 0 < wait <= 60:
        raise ConfigurationError(f"{kind} source: wait must be seconds in (0, 60], got {wait!r}")


def cut_reason(reason: str) -> str:
    """A failure reason short enough for a message header: its last lines, which say most."""
    return reason if len(reason) <= REASON_LIMIT else "..." + reason[-REASON_LIMIT:]
