"""The SQL table sensor's cursors and key handling.

Keys travel three ways: as JSON in the cursor (ints and strings as
themselves, other types tagged, e.g. ``{"datetime": "2024-06-01T10:00:00"}``,
so they bind back with their own type), as text in the run_key, and — with
the rest of the row — as a JSON-safe payload.

``mode="cursor"`` keeps a settled key and the keys requested above it in the
last ``commit_lag`` seconds, one batch per evaluation: integer keys as
``[low, high]`` ranges (serial ids requested together are contiguous, so a
batch is usually one range), other keys as 8-byte digests of their text.
``mode="missing"`` keeps only where its pass over the table stands.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ferryman.errors import ConfigurationError
from ferryman.sensors.builtin.watermark import DIGEST_BYTES

CURSOR_VERSION = 1


# -- keys: JSON for the cursor, text for the run_key, JSON-safe payloads --------------


def encode_key(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        raise ConfigurationError(f"a key column must not hold {value!r}")
    if isinstance(value, int | str):
        return value
    if isinstance(value, float):
        return {"float": value.hex()}
    if isinstance(value, dt.datetime):
        return {"datetime": value.isoformat()}
    if isinstance(value, dt.date):
        return {"date": value.isoformat()}
    if isinstance(value, decimal.Decimal):
        return {"decimal": str(value)}
    if isinstance(value, uuid.UUID):
        return {"uuid": str(value)}
    raise ConfigurationError(f"unsupported key type {type(value).__name__} for a SQL sensor")


def decode_key(encoded: Any) -> Any:
    if not isinstance(encoded, dict):
        return encoded
    ((kind, text),) = encoded.items()
    decoders: dict[str, Callable[[str], Any]] = {
        "float": float.fromhex,
        "datetime": dt.datetime.fromisoformat,
        "date": dt.date.fromisoformat,
        "decimal": decimal.Decimal,
        "uuid": uuid.UUID,
    }
    return decoders[kind](text)


def key_text(value: Any) -> str:
    if isinstance(value, dt.date):  # datetime too
        return value.isoformat()
    if isinstance(value, float):
        return repr(value)
    return str(value)


def json_safe(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return str(value)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# -- cursor mode state ----------------------------------------------------------------


@dataclass(slots=True)
class Batch:
    """Keys requested in one evaluation: when, and the largest key read then."""

    seen_ms: int
    high: Any
    keys: list[Any]  # int keys, or 8-byte digests of the key text

    def encode(self) -> list[Any]:
        if self.keys and all(is_int(k) for k in self.keys):
            return [self.seen_ms, encode_key(self.high), {"ranges": _ranges(self.keys)}]
        packed = base64.b64encode(b"".join(sorted(self.keys))).decode("ascii")
        return [self.seen_ms, encode_key(self.high), {"digests": packed}]

    @classmethod
    def decode(cls, document: list[Any]) -> Batch:
        seen_ms, high, body = document
        keys: list[Any] = []
        if "ranges" in body:
            for low, top in body["ranges"]:
                keys.extend(range(int(low), int(top) + 1))
        else:
            raw = base64.b64decode(body["digests"], validate=True)
            keys = [raw[i : i + DIGEST_BYTES] for i in range(0, len(raw), DIGEST_BYTES)]
        return cls(int(seen_ms), decode_key(high), keys)


def _ranges(keys: list[int]) -> list[list[int]]:
    ordered = sorted(set(keys))
    ranges: list[list[int]] = []
    for key in ordered:
        if ranges and ranges[-1][1] == key - 1:
            ranges[-1][1] = key
        else:
            ranges.append([key, key])
    return ranges


@dataclass(slots=True)
class CursorState:
    settled: Any = None  # every row with a key at or below this has been requested
    recent: list[Batch] = field(default_factory=list)

    def encode(self) -> str:
        document = {
            "v": CURSOR_VERSION,
            "kind": "sql_cursor",
            "settled": None if self.settled is None else encode_key(self.settled),
            "recent": [batch.encode() for batch in self.recent],
        }
        return json.dumps(document, separators=(",", ":"))

    @classmethod
    def decode(cls, cursor: str | None) -> CursorState:
        if cursor is None:
            return cls()
        try:
            document = json.loads(cursor)
            if document.get("v") != CURSOR_VERSION or document.get("kind") != "sql_cursor":
                raise ValueError("expected a version 1 sql_cursor cursor")
            settled = document["settled"]
            return cls(
                None if settled is None else decode_key(settled),
                [Batch.decode(batch) for batch in document["recent"]],
            )
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConfigurationError(
                f"cursor {cursor[:200]!r} is not a sql_table cursor: {exc}"
            ) from exc

    def requested(self) -> tuple[set[int], set[bytes]]:
        ints: set[int] = set()
        digests: set[bytes] = set()
        for batch in self.recent:
            for key in batch.keys:
                (digests if isinstance(key, bytes) else ints).add(key)
        return ints, digests


def decode_scan_cursor(cursor: str | None) -> Any:
    if cursor is None:
        return None
    try:
        document = json.loads(cursor)
        if document.get("v") != CURSOR_VERSION or document.get("kind") != "sql_missing":
            raise ValueError("expected a version 1 sql_missing cursor")
        after = document["after"]
        return None if after is None else decode_key(after)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ConfigurationError(
            f"cursor {cursor[:200]!r} is not a sql_table cursor: {exc}"
        ) from exc


def encode_scan_cursor(after: Any) -> str:
    """The missing mode's cursor: the last key of this pass (``None``: start over)."""
    position = None if after is None else encode_key(after)
    document = {"v": CURSOR_VERSION, "kind": "sql_missing", "after": position}
    return json.dumps(document, separators=(",", ":"))
