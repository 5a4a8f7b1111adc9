"""Hypothesis strategies for what users hand to ferryman: keys, texts, documents.

They lean on the inputs that break stores: NUL (PostgreSQL text refuses it),
lone surrogates (how Python spells a byte it could not decode; UTF-8 has no
encoding for them), backslashes and quotes (escapes), line breaks, very long
strings (64 KiB, past PostgreSQL's B-tree entry size), and values JSON cannot
hold (NaN, infinities, bytes, sets, objects, keys that are not strings, nesting
deeper than the documented bound).

:func:`expected_document` says what the store must do with a value given as
a JSON document: keep it (returning it as JSON reads it back: tuples as
lists) or refuse it.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from typing import Any

from hypothesis import strategies as st

from tests.helpers import incompressible

NUL = "\x00"
SURROGATES = ("\udcff", "\ud800", "\udfff", "\udc80")
SPECIALS = (
    NUL,
    *SURROGATES,
    "\\",
    "\\x00",
    "\\udcff",
    ":escaped",
    "\n",
    "\r\n",
    "\t",
    "'",
    '"',
    "@",
    ":",
    "/",
    "%",
    "\x7f",
    "\x85",
    "\u2028",
    "\ufeff",
    "\ufffd",
    "\U0010ffff",
    "é",
    "\U0001f4a5",
)
LONG = (2_700, 8_192, 64 * 1024)  # past a B-tree entry on PostgreSQL; 64 KiB


def short_texts(
    *, min_size: int = 0, max_size: int = 24, storable_only: bool = False
) -> st.SearchStrategy[str]:
    """Any code point, NUL and lone surrogates included, mixed with the specials.

    ``storable_only``: without NUL and lone surrogates (still with escapes
    spelled out, quotes, line breaks and the rest).
    """
    if storable_only:
        pieces = st.one_of(
            st.characters(exclude_categories=["Cs"], exclude_characters=[NUL]),
            st.sampled_from([special for special in SPECIALS if storable(special)]),
        )
    else:
        pieces = st.one_of(st.characters(exclude_categories=[]), st.sampled_from(SPECIALS))
    return st.lists(pieces, min_size=min_size, max_size=max_size).map("".join)


def long_texts(*, storable_only: bool = False) -> st.SearchStrategy[str]:
    """Kilobytes of text that no compression shrinks, a short text spliced in."""
    return st.builds(
        lambda length, inset, at: _splice(incompressible(length), inset, at),
        st.sampled_from(LONG),
        short_texts(max_size=4, storable_only=storable_only),
        st.floats(0, 1),
    )


def _splice(text: str, inset: str, at: float) -> str:
    cut = int(len(text) * at)
    return text[:cut] + inset + text[cut + len(inset) :]


def texts(*, min_size: int = 0) -> st.SearchStrategy[str]:
    return st.one_of(short_texts(min_size=min_size), long_texts())


def keys() -> st.SearchStrategy[str]:
    """Candidate run keys and message ids: non-empty texts of any kind and length,
    half of them storable (most texts with NUL or surrogates in play are not)."""
    return st.one_of(
        short_texts(min_size=1, storable_only=True),
        long_texts(storable_only=True),
        texts(min_size=1),
    )


def json_joins(text: str) -> bool:
    """The documented rule for documents and cursors: a lone high surrogate right before
    a lone low one is refused, since JSON reads the two back as the one character they
    pair to (and writes them as it writes that character)."""
    return any(
        0xD800 <= ord(high) <= 0xDBFF and 0xDC00 <= ord(low) <= 0xDFFF
        for high, low in itertools.pairwise(text)
    )


def storable(key: str) -> bool:
    """The documented key rule: a key is stored exactly unless it holds NUL or a lone surrogate."""
    return not any(char == NUL or 0xD800 <= ord(char) <= 0xDFFF for char in key)


def escaped(text: str) -> str:
    """The documented free-text rule: NUL and lone surrogates written as backslash escapes."""
    return "".join(
        f"\\x{ord(char):02x}"
        if char == NUL
        else f"\\u{ord(char):04x}"
        if 0xD800 <= ord(char) <= 0xDFFF
        else char
        for char in text
    )


# -- documents ---------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    short_texts(),
)

json_documents = st.recursive(
    st.one_of(json_scalars, long_texts()),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(short_texts(), children, max_size=4),
    ),
    max_leaves=8,
)


class Opaque:
    """An object JSON knows nothing about."""

    def __repr__(self) -> str:
        return "<Opaque>"


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


not_json = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.binary(max_size=8),
    st.sets(st.integers(), max_size=3),
    st.frozensets(st.integers(), max_size=3),
    st.builds(Opaque),
    st.datetimes(),
    st.dates(),
    st.just(dt.timedelta(seconds=1)),
    st.complex_numbers(allow_nan=False, allow_infinity=False),
    # Keys JSON would silently turn into strings, two of them into the same one.
    st.dictionaries(st.integers(0, 3), json_scalars, min_size=1, max_size=3),
    st.just({1: "one", "1": "the string one"}),
    st.just({None: 1, "null": 2}),
)

# At the bound and past it; 990 deep is what a JSON encoder still writes and a
# parser called from a deeper stack no longer reads; 5,000, no encoder writes.
deep_documents = st.sampled_from([99, 100, 101, 990, 5_000]).map(nested)

documents = st.one_of(
    *[json_documents] * 3,  # weighed towards what is stored, so the worker has work
    not_json,
    deep_documents,
    st.lists(st.one_of(json_scalars, not_json), min_size=1, max_size=3),
    st.dictionaries(short_texts(), st.one_of(json_scalars, not_json), min_size=1, max_size=3),
)


STORED, REFUSED = "stored", "refused"
MAX_DEPTH = 100  # the documented bound on nesting


def expected_document(value: Any) -> tuple[str, Any]:
    """What the store must do with ``value`` given as a JSON document, and how it reads back.

    A document is what JSON holds without changing it: None, booleans,
    integers, finite floats, strings (any code point, but no lone high surrogate right
    before a lone low one), lists (tuples read
    back as lists) and objects with string keys, nested at most MAX_DEPTH
    levels. Anything else must be refused, not stored changed.
    """
    if _depth(value) > MAX_DEPTH:
        return REFUSED, None
    readback = _readback(value)
    if readback is _NOT_JSON:
        return REFUSED, None
    return STORED, readback


_NOT_JSON = object()


def _depth(value: Any) -> int:
    depth, level = 0, [value]
    while level:
        depth += 1
        deeper: list[Any] = []
        for item in level:
            if isinstance(item, list | tuple):
                deeper.extend(item)
            elif isinstance(item, dict):
                deeper.extend(item.values())
        level = deeper
    return depth - 1


def _readback(value: Any) -> Any:
    if isinstance(value, str):
        return _NOT_JSON if json_joins(value) else value
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _NOT_JSON
    if isinstance(value, list | tuple):
        items = [_readback(item) for item in value]
        return _NOT_JSON if any(item is _NOT_JSON for item in items) else items
    if isinstance(value, dict):
        if not all(isinstance(key, str) and not json_joins(key) for key in value):
            return _NOT_JSON
        entries = {key: _readback(item) for key, item in value.items()}
        return _NOT_JSON if any(item is _NOT_JSON for item in entries.values()) else entries
    return _NOT_JSON


def same_document(left: Any, right: Any) -> bool:
    """``left == right`` for documents of any depth (``==`` recurses, and gives up at 1,000).

    Types count: a list is not a tuple, ``1`` is not ``True`` nor ``1.0``.
    """
    pending = [(left, right)]
    while pending:
        a, b = pending.pop()
        if type(a) is not type(b):
            return False
        if isinstance(a, list):
            if len(a) != len(b):
                return False
            pending.extend(zip(a, b, strict=True))
        elif isinstance(a, dict):
            if list(a) != list(b):
                return False
            pending.extend((a[key], b[key]) for key in a)
        elif a != b:
            return False
    return True
