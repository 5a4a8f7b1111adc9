"""A bounded cursor for sources that can only be listed: watermark, floor and edge.

The folder and S3 sensors list everything under their root on every
evaluation and must decide, for each item, whether they have already turned
it into a run. Remembering every item ever seen would make the cursor grow
without bound; remembering only a timestamp watermark loses items that share
the watermark's timestamp or that turn up with a slightly older one. The
cursor kept here is in between:

``w`` (watermark)
    the largest change time of an item decided so far (emitted, routed
    nowhere, or refused with a per-item error);
``f`` (floor)
    ``w - safety_window`` (at least one unit below ``w``), never moving
    backwards: an item whose change time is at or below the floor is old and
    is not looked at again;
``e`` (edge)
    the identities of the items decided with a change time above the floor,
    as 8-byte BLAKE2b digests grouped by change time.

An item is *new* when its change time is above the floor and its identity is
not in the edge. So an item that appears late with a change time up to
``safety_window`` older than the watermark (equal timestamps, coarse clocks,
clock skew between a file server and this host) is still found, and an item
already decided is not emitted again. The edge holds only items changed in
the last ``safety_window``, capped at ``max_edge`` entries; when the cap
forces the floor up early a warning is logged, since the window for late
items has then shrunk.

Items seen but not decided in an evaluation (not yet stable, or beyond the
per-evaluation limit) hold the floor below their change time, so the cursor
never moves past them.

The floor follows the watermark, whose timestamps come from the source
itself (the file server's or S3's clock), so a constant clock difference
between the source and this host does not matter while items keep arriving.
When nothing arrives for two safety windows by this host's clock, the floor
moves up to the watermark and the edge empties: a quiet sensor keeps a
cursor of a few dozen bytes.

A digest collision could only hide an item if a new item's 64-bit digest
equalled one of the at most ``max_edge`` digests in the edge: about
``max_edge / 2**64`` per item, below one in a trillion for any realistic edge.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ferryman.errors import ConfigurationError

CURSOR_VERSION = 1
DIGEST_BYTES = 8


def identity_digest(identity: str) -> bytes:
    """The 8-byte digest that stands for one item version in the edge."""
    return hashlib.blake2b(identity.encode("utf-8", "surrogateescape"), digest_size=8).digest()


@dataclass(slots=True)
class Watermark:
    """The mutable, decoded form of a list-and-compare sensor's cursor."""

    watermark: int | None = None
    floor: int | None = None
    edge: dict[bytes, int] = field(default_factory=dict)

    # -- reading -------------------------------------------------------------

    def is_old(self, changed: int) -> bool:
        """Whether an item changed at ``changed`` is at or below the floor (already handled)."""
        return self.floor is not None and changed <= self.floor

    def is_new(self, changed: int, digest: bytes) -> bool:
        """Whether an item (change time, identity digest) has not been decided yet."""
        return not self.is_old(changed) and digest not in self.edge

    # -- advancing -----------------------------------------------------------

    def advance(
        self,
        decided: Iterable[tuple[int, bytes | None]],
        *,
        window: int,
        max_edge: int,
        ceiling: int | None = None,
        undecided_min: int | None = None,
        log: logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> None:
        """Record the items decided in this evaluation and move the cursor forward.

        ``ceiling`` is the present by this host's clock (minus any stability
        delay): it caps the watermark, and once it is two windows past the
        watermark the floor catches up with the watermark, so the edge empties
        when nothing new arrives. ``undecided_min`` is the smallest change time
        of an item seen but not decided: the floor stays below it so that item
        is looked at again.
        An item decided without a digest (refused with a per-item error) moves
        the watermark but is not remembered, so it is reported again until the
        floor passes it. Neither the watermark nor the floor ever moves backwards.
        """
        top = self.watermark
        for changed, digest in decided:
            if digest is not None:
                self.edge[digest] = changed
            top = changed if top is None else max(top, changed)
        if top is not None and ceiling is not None:
            top = min(top, ceiling)
        if top is not None and (self.watermark is None or top > self.watermark):
            self.watermark = top
        if self.watermark is None:
            return
        limit = None if undecided_min is None else undecided_min - 1
        # At least one unit below the watermark: a late item sharing its timestamp is new.
        floor = self.watermark - max(window, 1)
        if ceiling is not None:
            # When nothing new arrives the watermark stands still; once the clock is two
            # windows past it, no item can still turn up at or below it, so the edge drains.
            floor = max(floor, min(self.watermark, ceiling - 2 * window))
        if limit is not None:
            floor = min(floor, limit)
        if self.floor is None or floor > self.floor:
            self.floor = floor
        self._prune(self.floor)
        if len(self.edge) > max_edge:
            self._shrink(max_edge, limit, log)

    def _prune(self, floor: int) -> None:
        stale = [digest for digest, changed in self.edge.items() if changed <= floor]
        for digest in stale:
            del self.edge[digest]

    def _shrink(
        self,
        max_edge: int,
        limit: int | None,
        log: logging.LoggerAdapter[logging.Logger] | None,
    ) -> None:
        times = sorted(self.edge.values())
        # Raise the floor to the change time that leaves at most max_edge entries.
        new_floor = times[len(times) - max_edge - 1]
        if limit is not None:
            new_floor = min(new_floor, limit)
        if self.floor is not None and new_floor <= self.floor:
            return
        before = len(self.edge)
        self.floor = new_floor
        self._prune(new_floor)
        if log is not None:
            log.warning(
                "edge of the cursor exceeded %d entries: floor raised early, forgetting %d "
                "items; items appearing later with a change time at or below the new floor "
                "would not be found (raise max_edge or lower the arrival rate per window)",
                max_edge,
                before - len(self.edge),
            )

    # -- encoding ------------------------------------------------------------

    def encode(self, kind: str) -> str | None:
        """The compact JSON cursor string (``None`` before anything was decided)."""
        if self.watermark is None:
            return None
        groups: dict[int, list[bytes]] = {}
        for digest, changed in self.edge.items():
            groups.setdefault(changed, []).append(digest)
        edge = [
            [changed, base64.b64encode(b"".join(sorted(groups[changed]))).decode("ascii")]
            for changed in sorted(groups)
        ]
        document: dict[str, Any] = {
            "v": CURSOR_VERSION,
            "kind": kind,
            "w": self.watermark,
            "f": self.floor,
            "e": edge,
        }
        return json.dumps(document, separators=(",", ":"))

    @classmethod
    def decode(cls, cursor: str | None, kind: str) -> Watermark:
        """Parse a cursor written by :meth:`encode` (``None``: start from nothing)."""
        if cursor is None:
            return cls()
        try:
            document = json.loads(cursor)
            if document.get("v") != CURSOR_VERSION or document.get("kind") != kind:
                raise ValueError(f"expected a version {CURSOR_VERSION} {kind} cursor")
            edge: dict[bytes, int] = {}
            for changed, packed in document["e"]:
                raw = base64.b64decode(packed, validate=True)
                if len(raw) % DIGEST_BYTES:
                    raise ValueError("edge digests are truncated")
                for start in range(0, len(raw), DIGEST_BYTES):
                    edge[raw[start : start + DIGEST_BYTES]] = int(changed)
            watermark = int(document["w"])
            floor = None if document["f"] is None else int(document["f"])
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConfigurationError(
                f"cursor {cursor[:200]!r} is not a {kind} cursor: {exc}"
            ) from exc
        return cls(watermark=watermark, floor=floor, edge=edge)
