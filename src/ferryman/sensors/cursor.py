"""The stored form of a sensor's cursor: a small versioned JSON envelope.

Users see a cursor as ``str | None``. In the store it is written as
``{"v": 1, "value": "..."}`` (``NULL`` for no cursor), so that a later
version of ferryman can change the encoding and still read every cursor
written before it. A stored cursor this code cannot read — not JSON, not an
envelope, an unknown version — is an :class:`UnreadableCursor` naming the
sensor and the stored text; the engine records it as a failed evaluation of
that sensor alone.
"""

from __future__ import annotations

import json

from ferryman.errors import UnreadableCursor as UnreadableCursor  # defined in the tree
from ferryman.store.records import json_would_join

CURSOR_VERSION = 1


def encode_cursor(value: str | None) -> str | None:
    """The stored text of ``value``; the same value always encodes to the same text."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"a cursor is a str or None, got {type(value).__name__}")
    problem = unstorable_cursor(value)
    if problem is not None:
        raise ValueError(f"a cursor that {problem}")
    return json.dumps({"v": CURSOR_VERSION, "value": value}, separators=(",", ":"))


def unstorable_cursor(value: str) -> str | None:
    """Why ``value`` cannot be a cursor ("cannot be stored exactly: ..."), or None."""
    problem = json_would_join(value)
    return None if problem is None else f"cannot be stored exactly: {problem}"


def decode_cursor(sensor: str, stored: str | None) -> str | None:
    """The cursor ``stored`` stands for, or :class:`UnreadableCursor`."""
    if stored is None:
        return None
    try:
        envelope = json.loads(stored)
    except ValueError:
        raise UnreadableCursor(sensor, stored, "not JSON") from None
    if not isinstance(envelope, dict) or "v" not in envelope:
        raise UnreadableCursor(sensor, stored, "not a versioned cursor envelope")
    if envelope["v"] != CURSOR_VERSION:
        raise UnreadableCursor(
            sensor, stored, f"unknown encoding version {envelope['v']!r}, expected 1"
        )
    value = envelope.get("value")
    if not isinstance(value, str) or set(envelope) != {"v", "value"}:
        raise UnreadableCursor(sensor, stored, "a version 1 envelope holds one string 'value'")
    return value


def shown_cursor(sensor: str, stored: str | None) -> str | None:
    """The cursor for display: decoded, or the stored text itself when unreadable."""
    try:
        return decode_cursor(sensor, stored)
    except UnreadableCursor:
        return stored
