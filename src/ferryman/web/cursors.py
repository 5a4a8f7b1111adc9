"""The built-in sensors' cursors in words: what a page shows above the raw JSON.

The folder and S3 sensors keep a watermark cursor (see
:mod:`ferryman.sensors.builtin.watermark`): the newest change time decided,
the floor below which nothing is looked at again, and digests of the items
decided above the floor (names are not kept, only 8-byte digests). The SQL
table sensor keeps the key every row at or below has been requested, or the
last key of its scan. Any other cursor is the user's own and is shown as is.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any

DIGEST_BYTES = 8


def _time(value: Any, per_second: int) -> str:
    """A change time kept as whole units (microseconds for files, seconds for S3) in UTC."""
    if not isinstance(value, int | float):
        return "—"
    moment = datetime.fromtimestamp(value / per_second, UTC)
    shown = moment.strftime("%Y-%m-%d %H:%M:%S")
    if per_second > 1:
        shown += f".{moment.microsecond // 1000:03d}"
    return f"{shown} UTC"


def _edge_items(edge: Any) -> int:
    items = 0
    for _changed, packed in edge if isinstance(edge, list) else []:
        try:
            items += len(base64.b64decode(packed, validate=True)) // DIGEST_BYTES
        except (binascii.Error, TypeError, ValueError):
            continue
    return items


def _key(value: Any) -> str:
    if isinstance(value, dict) and len(value) == 1:
        ((kind, text),) = value.items()
        return f"{text} ({kind})"
    return json.dumps(value)


def describe(cursor: str | None) -> list[tuple[str, str]] | None:
    """Labelled facts of a built-in sensor's cursor; None for any other cursor."""
    if not cursor or not cursor.startswith("{"):
        return None
    try:
        document = json.loads(cursor)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    kind = document.get("kind")
    if kind in ("folder", "s3") and "w" in document:
        per_second = 1_000_000 if kind == "folder" else 1  # microseconds, S3's whole seconds
        what = "file modification time" if kind == "folder" else "LastModified"
        return [
            ("high-water mark", f"{_time(document['w'], per_second)} (newest {what} decided)"),
            ("floor", f"{_time(document.get('f'), per_second)} (older items are not re-read)"),
            (
                "remembered above the floor",
                f"{_edge_items(document.get('e'))} {'files' if kind == 'folder' else 'objects'}",
            ),
        ]
    if kind == "sql_cursor":
        settled = document.get("settled")
        recent = document.get("recent") or []
        facts = [("watermark", "—" if settled is None else _key(settled))]
        if recent:
            newest = recent[-1]
            facts.append(("newest key read", _key(newest[1])))
            facts.append(("batches not yet settled", str(len(recent))))
        return facts
    if kind == "sql_missing":
        after = document.get("after")
        return [("scan position", "start of the table" if after is None else _key(after))]
    return None
