"""Redis Streams (through redis-py): a consumer group, XACK after the commit.

The source reads with ``XREADGROUP`` as consumer ``<host>-<pid>-<sensor>``
of its group (created at the stream's start if missing). An entry read but
never acked — its consumer died, or its batch's commit failed — stays in
the group's pending entries list; every ``claim_after`` seconds the source
takes over entries pending that long with ``XAUTOCLAIM`` and delivers them
again (the dedupe makes that harmless for those already committed). An
entry this session handed out and has not settled yet is pending with it
too; neither that claim nor a read of its own pending entries hands it out
a second time, however long its commit takes. Each
consumer name is its process's, so every restart adds one to the group:
after each claim the source deletes (``XGROUP DELCONSUMER``) the consumers
other than itself that have no pending entry and have been idle for
``claim_after``, in one server-side script, so that no entry can become
pending with a consumer between the check and the delete (deleting a
consumer drops its pending entries from the group).

A message the sensor cannot handle is added to the dead-letter stream
(``<stream>:dead`` by default) with its fields, its entry id and the reason,
and acked, in one ``MULTI``/``EXEC`` transaction: it is in one stream or the
other, never in both or neither.

The message id is the stream entry id, or the field ``id_field`` of the
entry (or of its decoded payload). The payload is the entry's fields as a
dict of str, or with ``payload_field``, that one field decoded by
``decode`` (JSON by default).
"""

from __future__ import annotations

import logging
import time
import urllib.parse
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
    cut_reason,
    decoded,
    json_decode,
)

log = logging.getLogger("ferryman.sources")

_Entries = list[tuple[bytes, dict[bytes, bytes]]]  # (entry id, fields) as redis-py returns them

# KEYS[1] stream; ARGV group, this consumer, idle milliseconds. Deletes the
# group's other consumers with no pending entry, idle that long; their names.
_FORGET_DEAD_CONSUMERS = """
local removed = {}
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local fields = {}
  for i = 1, #consumer, 2 do fields[consumer[i]] = consumer[i + 1] end
  if fields['name'] ~= ARGV[2] and tonumber(fields['pending']) == 0
      and tonumber(fields['idle']) >= tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], fields['name'])
    table.insert(removed, fields['name'])
  end
end
return removed
"""


@dataclass(frozen=True, slots=True)
class RedisStreamSource(Source):
    url: str
    stream: str
    group: str
    dead_letter_stream: str
    payload_field: str | None
    id_rule: IdRule
    decode: Decode | None
    batch_size: int
    wait: float
    claim_after: float
    kind: str = "redis"

    def describe(self) -> str:
        parsed = urllib.parse.urlsplit(self.url)
        where = f"{parsed.hostname or '127.0.0.1'}:{parsed.port or 6379}{parsed.path or '/0'}"
        return f"redis://{where} stream {self.stream!r} group {self.group!r}"

    def connect(self, consumer: str) -> BrokerSession:
        return _Session(self, consumer)


def redis_stream(
    url: str,
    *,
    stream: str,
    group: str = "ferryman",
    payload_field: str | None = None,
    id_field: str | None = None,
    decode: Decode | None = json_decode,
    dead_letter_stream: str | None = None,
    batch_size: int = 250,
    wait: float = 1.0,
    claim_after: float = 30.0,
) -> RedisStreamSource:
    """Entries of a Redis stream, read by consumer group ``group``, XACKed after the commit.

    ``claim_after``: seconds an entry may stay pending (read, not acked) with
    another consumer before this one claims it; longer than a batch takes.
    """
    check_common("redis", batch_size, wait)
    for what, value in (("stream", stream), ("group", group)):
        if not isinstance(value, str) or not value:
            raise ConfigurationError(
                f"redis source: {what} must be a non-empty name, got {value!r}"
            )
    if not isinstance(claim_after, int | float) or claim_after <= 0:
        raise ConfigurationError(
            f"redis source: claim_after must be seconds > 0, got {claim_after!r}"
        )
    try:
        import redis  # noqa: F401  # checked at definition time, so a missing extra shows early
    except ImportError as exc:
        raise ConfigurationError(
            "the redis source needs redis-py: pip install 'ferryman[brokers]'"
        ) from exc
    return RedisStreamSource(
        url=url,
        stream=stream,
        group=group,
        dead_letter_stream=dead_letter_stream or f"{stream}:dead",
        payload_field=payload_field,
        id_rule=IdRule(None, id_field),
        decode=decode,
        batch_size=batch_size,
        wait=float(wait),
        claim_after=float(claim_after),
    )


class _Session:
    def __init__(self, source: RedisStreamSource, consumer: str) -> None:
        import redis

        self.source = source
        self.consumer = consumer
        # Any: redis-py types each reply as the union of its RESP2 and RESP3 shapes,
        # of which this session (RESP2, bytes) gets one.
        self.client: Any = redis.Redis.from_url(
            source.url, socket_timeout=source.wait + 10, socket_connect_timeout=5
        )
        try:
            self.client.xgroup_create(source.stream, source.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._forget_dead = self.client.register_script(_FORGET_DEAD_CONSUMERS)
        self._next_claim = 0.0
        self._own_pending = True  # first, what this consumer name read and did not ack
        # Entries handed out and not yet settled. They are pending with this consumer,
        # so a read of its own pending entries or a claim (once a commit took longer
        # than claim_after) would find them again: they are never handed out twice.
        self._outstanding: set[bytes] = set()

    def receive(self, max_messages: int, wait: float) -> list[Received]:
        if self._own_pending:
            own = self._own_pending_entries(max_messages)
            if own:
                return self._hand_out(own, redelivered=True)
            self._own_pending = False
        if time.monotonic() >= self._next_claim:
            self._next_claim = time.monotonic() + self.source.claim_after / 2
            claimed = self._claim(max_messages)
            if claimed:
                self._next_claim = 0.0  # there may be more: claim again next time
                return self._hand_out(claimed, redelivered=True)
        answer = self.client.xreadgroup(
            self.source.group,
            self.consumer,
            {self.source.stream: ">"},
            count=max_messages,
            block=max(1, round(wait * 1000)),
        )
        return self._hand_out(answer[0][1] if answer else [], redelivered=False)

    def _hand_out(self, entries: _Entries, *, redelivered: bool) -> list[Received]:
        self._outstanding.update(entry_id for entry_id, _ in entries)
        return [self._received(i, f, redelivered=redelivered) for i, f in entries]

    def _own_pending_entries(self, max_messages: int) -> _Entries:
        """Entries pending with this consumer that are not out already, oldest first."""
        after = "0"
        while True:
            answer = self.client.xreadgroup(
                self.source.group, self.consumer, {self.source.stream: after}, count=max_messages
            )
            page = answer[0][1] if answer else []
            fresh = [(i, f) for i, f in page if f and i not in self._outstanding]
            if fresh or not page:
                return fresh
            after = page[-1][0]

    def _claim(self, max_messages: int) -> _Entries:
        """Entries another consumer read and did not ack within ``claim_after``."""
        answer = self.client.xautoclaim(
            self.source.stream,
            self.source.group,
            self.consumer,
            min_idle_time=round(self.source.claim_after * 1000),
            start_id="0-0",
            count=max_messages,
        )
        entries = answer[1]
        deleted = answer[2] if len(answer) > 2 else []
        if deleted:  # trimmed from the stream while pending: nothing left to deliver
            self.client.xack(self.source.stream, self.source.group, *deleted)
        if not entries:  # every entry pending that long is now this consumer's
            self._forget_dead_consumers()
        return [(i, f) for i, f in entries if f is not None and i not in self._outstanding]

    def _forget_dead_consumers(self) -> None:
        """Delete consumers of earlier processes: nothing pending, idle for ``claim_after``."""
        removed = self._forget_dead(
            keys=[self.source.stream],
            args=[self.source.group, self.consumer, round(self.source.claim_after * 1000)],
        )
        if removed:
            names = ", ".join(n.decode("utf-8", "replace") for n in removed)
            log.info(
                "deleted consumers %s of group %r: gone, nothing pending", names, self.source.group
            )

    def _received(
        self, entry_id: bytes, fields: dict[bytes, bytes], *, redelivered: bool
    ) -> Received:
        entry = entry_id.decode()
        texts = {key.decode("utf-8", "replace"): value for key, value in fields.items()}
        payload: Any
        error: str | None = None
        if self.source.payload_field is not None:
            body = texts.get(self.source.payload_field)
            if body is None:
                payload, error = None, f"the entry has no field {self.source.payload_field!r}"
            else:
                payload, error = decoded(self.source.decode, body)
        else:
            payload = {key: value.decode("utf-8", "replace") for key, value in texts.items()}
        rule = self.source.id_rule
        message_id: str | None
        if rule.field is not None and rule.field in texts:
            message_id, missing = texts[rule.field].decode("utf-8", "replace"), None
        else:
            message_id, missing = rule.pick(entry, None, payload)
        return Received(
            message_id=message_id or f"redis-entry:{entry}",
            payload=payload,
            redelivered=redelivered,
            handle=entry_id,
            error=error or missing,
        )

    def ack(self, messages: Sequence[Received]) -> None:
        if messages:
            self.client.xack(self.source.stream, self.source.group, *[m.handle for m in messages])
            self._outstanding.difference_update(m.handle for m in messages)

    def dead_letter(self, messages: Sequence[tuple[Received, str]]) -> None:
        pipe = self.client.pipeline(transaction=True)
        for message, reason in messages:
            fields = self.client.xrange(self.source.stream, message.handle, message.handle)
            original = fields[0][1] if fields else {}
            pipe.xadd(
                self.source.dead_letter_stream,
                {
                    **original,
                    "ferryman-entry-id": message.handle,
                    "ferryman-message-id": message.message_id,
                    "ferryman-reason": cut_reason(reason),
                },
            )
            pipe.xack(self.source.stream, self.source.group, message.handle)
        pipe.execute()
        self._outstanding.difference_update(message.handle for message, _ in messages)

    def release(self, messages: Sequence[Received]) -> None:
        # They stay pending with this consumer, which reads its own pending entries next.
        self._outstanding.difference_update(m.handle for m in messages)
        self._own_pending = True

    def lag(self) -> int | None:
        for group in self.client.xinfo_groups(self.source.stream):
            name = group.get("name")
            if (name.decode() if isinstance(name, bytes) else name) == self.source.group:
                lag = group.get("lag")
                pending = int(group.get("pending") or 0)
                return pending + (int(lag) if lag is not None else 0)
        return None

    def close(self) -> None:
        self.client.close()
