"""Run requests from outside Python: a JSON object becomes a :class:`~ferryman.RunRequest`.

``ferryman submit`` (one request, or one JSON object per line of a file or
stdin) and ``POST /api/runs`` both build their requests here, so the same
object means the same run whichever door it comes in by::

    {"run_key": "app-11", "payload": {"app_id": 11}}

Besides ``run_key`` and ``payload``, an object may set any other field of
:class:`~ferryman.RunRequest` by name — the queue options such as
``priority`` or ``not_before`` where this version has them. That is the one
place where such fields are read from text: :data:`DUE_FIELDS` are given as
an ISO 8601 time with its offset or as ``+10m`` from now (``s``, ``m``,
``h``, ``d``). A field this version's ``RunRequest`` does not have is refused
by name, never dropped.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from ferryman.errors import PayloadError
from ferryman.model import RunRequest

# Fields of RunRequest that hold when a run becomes due (an aware datetime, or
# a timedelta from now on the store's clock).
DUE_FIELDS = frozenset({"not_before"})
_FROM_NOW = re.compile(r"^\+(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def request_fields() -> frozenset[str]:
    """The fields of :class:`~ferryman.RunRequest` an object may set, in this version."""
    return frozenset(field.name for field in dataclasses.fields(RunRequest))


def due_time(text: str, *, name: str = "not_before") -> datetime | timedelta:
    """``+10m`` (a timedelta from now) or an ISO 8601 time with its offset."""
    relative = _FROM_NOW.match(text.strip())
    if relative is not None:
        return timedelta(seconds=float(relative.group(1)) * _UNITS[relative.group(2)])
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise PayloadError(
            f"{name}: {text!r} is neither an ISO 8601 time nor +N[s|m|h|d] from now"
        ) from None
    if moment.tzinfo is None:
        raise PayloadError(
            f"{name}: {text!r} has no UTC offset; write it as e.g. {text}+00:00 or {text}Z"
        )
    return moment


def run_request(record: Mapping[str, Any], *, where: str = "request") -> RunRequest:
    """The :class:`~ferryman.RunRequest` a JSON object stands for.

    Raises :class:`~ferryman.PayloadError` naming ``where`` (e.g. ``line 7``)
    and the field when the object is not a request this version can make.
    """
    if not isinstance(record, Mapping):
        raise PayloadError(f"{where}: expected a JSON object, got {type(record).__name__}")
    known = request_fields()
    unknown = sorted(set(record) - known)
    if unknown:
        raise PayloadError(
            f"{where}: unknown field {', '.join(map(repr, unknown))}; a run request has "
            f"{', '.join(sorted(known))}"
        )
    if "run_key" not in record:
        raise PayloadError(f"{where}: run_key is missing")
    fields = dict(record)
    for name in DUE_FIELDS & set(fields):
        if isinstance(fields[name], str):
            fields[name] = due_time(fields[name], name=f"{where}: {name}")
    try:
        return RunRequest(**fields)
    except PayloadError as exc:
        raise PayloadError(f"{where}: {exc}") from None
    except (TypeError, ValueError) as exc:  # a field of the wrong kind
        raise PayloadError(f"{where}: {exc}") from None
