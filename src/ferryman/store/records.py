"""Rows to domain records, in one place."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from ferryman.errors import PayloadError
from ferryman.model import (
    Download,
    DownloadPart,
    Evaluation,
    EvaluationOutcome,
    Run,
    RunEvent,
    RunEventKind,
    RunStatus,
    SensorKind,
    SensorState,
    SensorStatus,
    Transfer,
    TransferPart,
    TransferStatus,
    WorkerInfo,
)

# ASCII output: every string, lone surrogates and NUL included, is written as
# JSON escapes and read back exactly (see the text rules below).
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=True)
# _ENCODER.encode builds a C encoder for every document (with its cycle
# markers), which cost a small payload more than the encoding itself (1.7 us
# against 0.7 us, measured): each thread keeps one instead (the markers are
# the thread's own, and dropped after an error, which may leave them filled).
_ENCODERS = threading.local()
# Characters no store column can hold as they are: NUL (PostgreSQL text refuses
# it) and the lone surrogates by which Python spells undecodable bytes (UTF-8
# has no encoding for them).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# A lone high surrogate right before a lone low one: JSON writes the two exactly
# as it writes the one character they pair to (U+10000 and above), and reads
# them back as that character.
_PAIRING_SURROGATES = re.compile("[\ud800-\udbff][\udc00-\udfff]")
SHOWN_KEY_CHARS = 100
# Deeper documents are refused: JSON parsers recurse once per level, and a
# document must read back wherever it is read (a job thread, a web request).
MAX_DEPTH = 100
_CONTAINERS = (dict, list, tuple)

# The text rules at the store boundary, in one place:
#
# * JSON documents (payloads, checkpoints, log details) are stored losslessly:
#   any string in them comes back exactly as it was given (to_json). What JSON
#   would store changed or could not read back is refused with a PayloadError
#   naming it: NaN and infinities, objects that are not JSON, a key that is not
#   a string (JSON would make 1 and "1" one key), nesting over MAX_DEPTH levels.
#   Tuples are stored, and read back, as lists. A lone high surrogate right
#   before a lone low one is refused too (json_would_join): JSON cannot tell the
#   two from the one character they pair to.
# * Free text (errors, reasons, evaluators) is stored with what cannot be
#   stored escaped as ``\x00`` and ``\udcff`` (clean_text): it is read by people.
#   Shown anywhere (the API, the dashboard), JSON documents get the same escape
#   (displayable), since UTF-8 output cannot hold a lone surrogate either.
# * Keys (run keys, message ids) are identities: an escaped key could equal
#   another, real one, so a key that cannot be stored exactly is refused with
#   a PayloadError naming it (checked_key). Refused before anything is written.


def to_json(value: Any, what: str) -> str:
    """Serialise ``value`` or raise :class:`PayloadError` naming ``what`` it belongs to."""
    try:
        text = _encode(value)
    except RecursionError:
        raise PayloadError(f"{what} is nested more than {MAX_DEPTH} levels deep") from None
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"{what} is not JSON-serialisable: {exc}") from exc
    # Only a document whose JSON escapes a surrogate can hold a pair of lone ones.
    _check_document(value, what, strings="\\ud" in text)
    return text


def to_json_many(values: Iterable[Any]) -> list[str]:
    """``to_json`` of each value, for a batch: the thread's encoder looked up once.

    Refuses what :func:`to_json` refuses, with a :class:`PayloadError` that
    names no document: call ``to_json`` on each for the error to show users.
    """
    encoder: Callable[[Any, int], Any] | None = getattr(_ENCODERS, "encoder", None)
    if encoder is None:
        encoder = _ENCODERS.encoder = _c_encoder()
        if encoder is None:
            return [to_json(value, "document") for value in values]
    texts = []
    join = "".join
    for value in values:
        try:
            text = join(encoder(value, 0))
        except BaseException as exc:
            _ENCODERS.encoder = None  # its cycle markers may be left filled
            if isinstance(exc, RecursionError | TypeError | ValueError):
                raise PayloadError(f"a document is not JSON-serialisable: {exc}") from exc
            raise
        _check_document(value, "document", strings="\\ud" in text)
        texts.append(text)
    return texts


def _encode(value: Any) -> str:
    """``_ENCODER.encode(value)``, on this thread's C encoder where there is one."""
    encoder: Callable[[Any, int], Any] | None = getattr(_ENCODERS, "encoder", None)
    if encoder is None:
        encoder = _ENCODERS.encoder = _c_encoder()
        if encoder is None:
            return _ENCODER.encode(value)
    try:
        return "".join(encoder(value, 0))
    except BaseException:
        _ENCODERS.encoder = None
        raise


def _c_encoder() -> Callable[[Any, int], Any] | None:
    """The C encoder ``_ENCODER.encode`` makes for one document, made once; None if
    this Python has none (or it does not write what ``_ENCODER`` writes)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    encoder = make(
        {},
        _ENCODER.default,
        json.encoder.encode_basestring_ascii,
        None,
        _ENCODER.key_separator,
        _ENCODER.item_separator,
        _ENCODER.sort_keys,
        _ENCODER.skipkeys,
        _ENCODER.allow_nan,
    )
    sample = {"key": [1, 2.5, None, True, "\u00e9\ud800"], "": {}}
    if "".join(encoder(sample, 0)) != _ENCODER.encode(sample):
        return None
    return encoder  # type: ignore[no-any-return]


def json_would_join(text: str) -> str | None:
    """Why JSON would not read ``text`` back as given, or None if it would."""
    found = _PAIRING_SURROGATES.search(text)
    if found is None:
        return None
    return (
        f"it holds the lone surrogates {found.group()!r} at position {found.start()}, "
        "which JSON reads back as the one character they pair to"
    )


def _check_document(value: Any, what: str, *, strings: bool) -> None:
    """Refuse what the encoder took but would not read back as given.

    Level by level, without recursion; the encoder has already refused
    cycles and everything that is not JSON. A payload of scalars costs a
    microsecond or two.
    """
    if type(value) is dict and not strings:
        # The common payload, a flat object with string keys: nothing to refuse,
        # found without the walk's lists (a third of the payload's cost).
        for key, child in value.items():
            if type(key) is not str or isinstance(child, _CONTAINERS):
                break
        else:
            return
    level = [value]
    for _ in range(MAX_DEPTH):
        deeper: list[Any] = []
        for item in level:
            if strings:
                _check_strings(item, what)
            if isinstance(item, dict):
                for key in item:
                    if not isinstance(key, str):
                        raise PayloadError(
                            f"{what} is not JSON-serialisable as it is: the key {key!r} is "
                            "not a string, and JSON would make it one (1 and '1' would be "
                            "the same key); use string keys"
                        )
                items: Any = item.values()
            elif isinstance(item, list | tuple):
                items = item
            else:
                continue
            deeper.extend(child for child in items if isinstance(child, _CONTAINERS))
        if not deeper:
            return
        level = deeper
    raise PayloadError(f"{what} is nested more than {MAX_DEPTH} levels deep")


def _check_strings(item: Any, what: str) -> None:
    """Refuse a string of ``item`` (itself, or a key or value one level down) that JSON
    would read back as another."""
    if isinstance(item, str):
        found = [item]
    elif isinstance(item, dict):
        found = [text for pair in item.items() for text in pair if isinstance(text, str)]
    elif isinstance(item, list | tuple):
        found = [text for text in item if isinstance(text, str)]
    else:
        return
    for text in found:
        problem = json_would_join(text)
        if problem is not None:
            raise PayloadError(
                f"{what} cannot be stored exactly: the string {shown_key(text)} {problem}"
            )


def clean_text(text: str) -> str:
    """``text`` as it can be stored: NUL and lone surrogates as backslash escapes."""
    if _UNSTORABLE.search(text) is None:
        return text
    return _UNSTORABLE.sub(lambda found: repr(found.group())[1:-1], text)


def clean_optional(text: str | None) -> str | None:
    return None if text is None else clean_text(text)


def displayable(value: Any) -> Any:
    """A JSON value for display (the API, pages): its strings as :func:`clean_text` makes
    them. What is stored and handed to jobs stays exact; UTF-8 output cannot hold it."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {displayable(key): displayable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [displayable(item) for item in value]
    return value


def shown_key(key: str) -> str:
    """A key for a one-line message: quoted, escaped, and cut if very long."""
    return repr(key[:SHOWN_KEY_CHARS]) + ("..." if len(key) > SHOWN_KEY_CHARS else "")


def storable_keys(keys: Iterable[str]) -> bool:
    """Whether every key can be stored exactly (:func:`checked_key` names one that cannot)."""
    # The characters refused are matched one at a time, so the keys run together
    # match exactly where one of them would.
    return _UNSTORABLE.search("".join(keys)) is None


def checked_key(key: str, what: str) -> str:
    """``key`` if it can be stored exactly; else :class:`PayloadError` naming ``what``."""
    found = _UNSTORABLE.search(key)
    if found is None:
        return key
    problem = "a NUL character" if found.group() == "\x00" else "a lone surrogate"
    raise PayloadError(
        f"{what} {shown_key(key)} cannot be stored: it holds {problem} "
        f"({found.group()!r} at position {found.start()}); keys are stored exactly, "
        "so they must be valid Unicode text without NUL"
    )


def from_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def to_datetime(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=UTC)


def _required_datetime(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


def run_from_row(row: sa.RowMapping) -> Run:
    return Run(
        id=row["id"],
        job=row["job"],
        run_key=row["run_key"],
        status=RunStatus(row["status"]),
        attempt=row["attempt"],
        max_attempts=row["max_attempts"],
        payload=from_json(row["payload"]),
        last_error=row["last_error"],
        checkpoint=from_json(row["checkpoint"]),
        lease_owner=row["lease_owner"],
        lease_token=row["lease_token"],
        lease_expires_at=to_datetime(row["lease_expires_at"]),
        available_at=_required_datetime(row["available_at"]),
        created_at=_required_datetime(row["created_at"]),
        updated_at=_required_datetime(row["updated_at"]),
        started_at=to_datetime(row["started_at"]),
        finished_at=to_datetime(row["finished_at"]),
        priority=row["priority"],
        concurrency_key=row["concurrency_key"],
    )


def run_event_from_row(row: sa.RowMapping) -> RunEvent:
    return RunEvent(
        id=row["id"],
        run_id=row["run_id"],
        kind=RunEventKind(row["kind"]),
        at=_required_datetime(row["at"]),
        attempt=row["attempt"],
        worker_id=row["worker_id"],
        lease_token=row["lease_token"],
        detail=from_json(row["detail"]) or {},
    )


def requested_event(run_id: int, created_at: float) -> RunEvent:
    """The ``requested`` event of a run whose creation logged none: its row's
    ``created_at``, id 0 (before every logged row)."""
    return RunEvent(
        id=0,
        run_id=run_id,
        kind=RunEventKind.REQUESTED,
        at=_required_datetime(created_at),
        attempt=0,
        worker_id=None,
        lease_token=None,
    )


def worker_from_row(row: sa.RowMapping, *, alive: bool) -> WorkerInfo:
    return WorkerInfo(
        id=row["id"],
        host=row["host"],
        pid=row["pid"],
        started_at=_required_datetime(row["started_at"]),
        last_seen_at=_required_datetime(row["last_seen_at"]),
        stopped_at=to_datetime(row["stopped_at"]),
        alive=alive,
        crashes=row["crashes"],
        last_crash=row["last_crash"],
    )


def sensor_from_row(row: sa.RowMapping) -> SensorState:
    return SensorState(
        name=row["name"],
        kind=SensorKind(row["kind"]),
        cursor=row["cursor"],
        state_version=row["state_version"],
        status=SensorStatus(row["status"]),
        consecutive_failures=row["consecutive_failures"],
        next_evaluation_at=to_datetime(row["next_evaluation_at"]),
        last_evaluation_at=to_datetime(row["last_evaluation_at"]),
    )


def evaluation_from_row(row: sa.RowMapping) -> Evaluation:
    return Evaluation(
        id=row["id"],
        sensor=row["sensor"],
        idempotency_key=row["idempotency_key"],
        outcome=EvaluationOutcome(row["outcome"]),
        cursor_before=row["cursor_before"],
        cursor_after=row["cursor_after"],
        state_version_before=row["state_version_before"],
        state_version_after=row["state_version_after"],
        runs_requested=row["runs_requested"],
        runs_deduplicated=row["runs_deduplicated"],
        items_skipped=row["items_skipped"],
        error=row["error"],
        started_at=_required_datetime(row["started_at"]),
        finished_at=_required_datetime(row["finished_at"]),
        run_ids=tuple(from_json(row["run_ids"]) or ()),
        evaluator=row["evaluator"],
        message_id=row["message_id"],
    )


def transfer_from_row(row: sa.RowMapping) -> Transfer:
    return Transfer(
        id=row["id"],
        source_path=row["source_path"],
        bucket=row["bucket"],
        key=row["key"],
        status=TransferStatus(row["status"]),
        follow=bool(row["follow"]),
        part_size=row["part_size"],
        upload_id=row["upload_id"],
        source_size=row["source_size"],
        source_mtime=row["source_mtime"],
        bytes_confirmed=row["bytes_confirmed"],
        parts_confirmed=row["parts_confirmed"],
        total_size=row["total_size"],
        sha256=row["sha256"],
        checksum=row["checksum"],
        etag=row["etag"],
        verified_by=row["verified_by"],
        reason=row["reason"],
        error=row["error"],
        user_metadata=from_json(row["user_metadata"]),
        sidecar_key=row["sidecar_key"],
        run_id=row["run_id"],
        owner=row["owner"],
        owner_token=row["owner_token"],
        lease_expires_at=to_datetime(row["lease_expires_at"]),
        resumes=row["resumes"],
        created_at=_required_datetime(row["created_at"]),
        updated_at=_required_datetime(row["updated_at"]),
        finished_at=to_datetime(row["finished_at"]),
        checksum_algorithm=row["checksum_algorithm"],
    )


def transfer_part_from_row(row: sa.RowMapping) -> TransferPart:
    return TransferPart(
        part_number=row["part_number"],
        start=row["start"],
        size=row["size"],
        etag=row["etag"],
        sha256=row["sha256"],
        crc32=row["crc32"],
        adopted=bool(row["adopted"]),
        confirmed_at=_required_datetime(row["confirmed_at"]),
    )


def download_from_row(row: sa.RowMapping) -> Download:
    return Download(
        id=row["id"],
        dest_path=row["dest_path"],
        temp_path=row["temp_path"],
        bucket=row["bucket"],
        key=row["key"],
        version_id=row["version_id"],
        etag=row["etag"],
        size=row["size"],
        part_size=row["part_size"],
        status=TransferStatus(row["status"]),
        bytes_done=row["bytes_done"],
        parts_done=row["parts_done"],
        expected=row["expected"],
        sha256=row["sha256"],
        verified_by=row["verified_by"],
        reason=row["reason"],
        error=row["error"],
        resumes=row["resumes"],
        created_at=_required_datetime(row["created_at"]),
        updated_at=_required_datetime(row["updated_at"]),
        finished_at=to_datetime(row["finished_at"]),
    )


def download_part_from_row(row: sa.RowMapping) -> DownloadPart:
    return DownloadPart(
        part_number=row["part_number"],
        start=row["start"],
        size=row["size"],
        sha256=row["sha256"],
        crc32=row["crc32"],
        confirmed_at=_required_datetime(row["confirmed_at"]),
    )
