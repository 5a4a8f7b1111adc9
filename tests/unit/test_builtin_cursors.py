"""The built-in sensors' cursors and routing, without any I/O.

The property test drives the real S3 prefix sensor through an in-memory
listing: objects appear late, out of key order, with shared and older
timestamps, and every evaluation decides at most a few of them; each object
version must be requested exactly once, from a cursor that stays bounded.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ferryman as fm
from ferryman.sensors.builtin.routing import UNROUTED, Router
from ferryman.sensors.builtin.sql_state import (
    Batch,
    CursorState,
    decode_key,
    encode_key,
    json_safe,
    key_text,
)
from ferryman.sensors.builtin.watermark import Watermark, identity_digest
from tests.sensor_support import Clock, Driver

# -- routing -------------------------------------------------------------------------


def test_the_first_matching_route_wins_and_patterns_are_searched() -> None:
    router = Router.build({r"\.xml$": "parse_xml", r"\.csv": "load_csv", "raw/": "archive"})
    assert router.job_for("in/a.xml") == "parse_xml"
    assert router.job_for("in/a.csv.xml") == "parse_xml"
    assert router.job_for("raw/a.csv") == "load_csv"  # order given, not specificity
    assert router.job_for("raw/a.bin") == "archive"  # searched anywhere in the name
    assert router.job_for("a.txt") is UNROUTED
    assert router.jobs == ("parse_xml", "load_csv", "archive")
    assert Router.build(None).job_for("anything") is None


@pytest.mark.parametrize(
    ("routes", "message"),
    [({"(": "job"}, "not a valid regex"), ({".*": ""}, "names no job"), (["a"], "must map")],
)
def test_bad_routes_fail_when_the_sensor_is_defined(routes: Any, message: str) -> None:
    with pytest.raises(fm.ConfigurationError, match=message):
        Router.build(routes)


# -- watermark + edge ----------------------------------------------------------------


def test_an_item_with_the_watermarks_timestamp_is_still_new() -> None:
    state = Watermark()
    first = identity_digest("a")
    state.advance([(100, first)], window=0, max_edge=10)
    assert (state.watermark, state.floor) == (100, 99)  # one unit below, even with no window
    assert not state.is_new(100, first)  # decided: remembered in the edge
    assert state.is_new(100, identity_digest("b"))  # a late item sharing the timestamp
    assert not state.is_new(99, identity_digest("c"))  # older than the window: old


def test_the_floor_stays_below_undecided_items_and_never_moves_back() -> None:
    state = Watermark()
    state.advance([(100, identity_digest("a"))], window=10, max_edge=10, undecided_min=95)
    assert state.floor == 90  # 100 - window
    state.advance([(200, identity_digest("b"))], window=10, max_edge=10, undecided_min=150)
    assert state.floor == 149  # held below the item still waiting at 150
    state.advance([], window=10, max_edge=10, undecided_min=120)
    assert state.floor == 149  # never backwards


def test_the_watermark_is_capped_by_the_ceiling() -> None:
    state = Watermark()
    state.advance([(10_000, identity_digest("future"))], window=5, max_edge=10, ceiling=100)
    assert state.watermark == 100  # a clock running ahead cannot push it past later items
    assert not state.is_new(10_000, identity_digest("future"))  # but the item is remembered


def test_the_edge_drains_when_nothing_new_arrives() -> None:
    state = Watermark()
    burst = [(1_000 + i % 10, identity_digest(f"k{i}")) for i in range(500)]
    state.advance(burst, window=60, max_edge=1_000, ceiling=1_010)
    assert len(state.edge) == 500 and state.floor == 1_009 - 60
    state.advance([], window=60, max_edge=1_000, ceiling=1_100)  # within two windows
    assert len(state.edge) == 500
    state.advance([], window=60, max_edge=1_000, ceiling=1_009 + 120)
    assert state.floor == state.watermark == 1_009 and state.edge == {}
    assert len(state.encode("s3") or "") < 60


def test_the_edge_is_capped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    state = Watermark()
    adapter = logging.LoggerAdapter(logging.getLogger("ferryman.sensor"))
    with caplog.at_level(logging.WARNING, "ferryman.sensor"):
        state.advance(
            [(t, identity_digest(str(t))) for t in range(1000)],
            window=10_000,
            max_edge=100,
            log=adapter,
        )
    assert len(state.edge) == 100
    assert state.floor == 899
    assert "floor raised early, forgetting 900 items" in caplog.text
    assert len(state.encode("s3") or "") < 4_000


def test_the_cursor_round_trips_and_foreign_cursors_are_refused() -> None:
    state = Watermark()
    state.advance([(5, identity_digest("x")), (5, identity_digest("y"))], window=3, max_edge=9)
    text = state.encode("folder")
    assert text is not None
    again = Watermark.decode(text, "folder")
    assert (again.watermark, again.floor, again.edge) == (state.watermark, state.floor, state.edge)
    assert Watermark().encode("folder") is None
    for bad in ("not json", '{"v": 1, "kind": "s3"}', '{"v": 2, "kind": "folder"}'):
        with pytest.raises(fm.ConfigurationError, match="not a folder cursor"):
            Watermark.decode(bad, "folder")


class ListingFromMemory:
    """A ListObjectsV2 stand-in over a dict, paging in key order like S3."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[str, int]] = {}  # key -> (etag, LastModified seconds)

    def list_objects_v2(self, **arguments: Any) -> dict[str, Any]:
        keys = sorted(self.objects)
        start = int(arguments.get("ContinuationToken", 0))
        page = keys[start : start + arguments["MaxKeys"]]
        contents = [
            {
                "Key": key,
                "ETag": f'"{self.objects[key][0]}"',
                "Size": 1,
                "LastModified": dt.datetime.fromtimestamp(self.objects[key][1], dt.UTC),
            }
            for key in page
        ]
        end = start + len(page)
        truncated = end < len(keys)
        return {
            "Contents": contents,
            "IsTruncated": truncated,
            **({"NextContinuationToken": str(end)} if truncated else {}),
        }


arrival = st.tuples(
    st.integers(0, 7),  # which of a handful of keys (so some are overwritten)
    st.integers(-30, 0),  # LastModified relative to now: late or same-second objects
)


@settings(max_examples=150, deadline=None)
@given(
    rounds=st.lists(st.lists(arrival, max_size=6), min_size=1, max_size=8),
    per_evaluation=st.integers(1, 4),
    page_size=st.integers(1, 5),
)
def test_every_object_version_is_requested_exactly_once(
    rounds: Sequence[Sequence[tuple[int, int]]], per_evaluation: int, page_size: int
) -> None:
    clock = Clock(1_700_000_000.0)
    listing = ListingFromMemory()
    sensor = fm.sensors.s3_prefix(
        "bucket",
        client=listing,
        max_per_evaluation=per_evaluation,
        page_size=page_size,
        safety_window=60,
        clock=clock,
    )
    driver = Driver(sensor)
    versions: set[str] = set()
    requested: list[str] = []
    for number, arrivals in enumerate(rounds):
        for key_number, offset in arrivals:
            key = f"k{key_number}"
            etag = uuid.uuid4().hex  # each put is a new version
            listing.objects[key] = (etag, int(clock.now) + offset)
            versions.add(f"s3://bucket/{key}@{etag}")
        requested += [r.run_key for r in driver.evaluate().run_requests]
        clock.advance(1 + number % 3)
    for _ in range(20):  # let the per-evaluation limit drain what is left
        requested += [r.run_key for r in driver.evaluate().run_requests]
    current = {f"s3://bucket/{k}@{etag}" for k, (etag, _) in listing.objects.items()}
    assert len(requested) == len(set(requested)), "a version was requested twice"
    assert current <= set(requested), "a current object version was never requested"
    assert set(requested) <= versions
    assert len(driver.cursor or "") < 2_000


# -- the SQL sensor's keys and cursor -------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        7,
        "order-7",
        1.5,
        dt.datetime(2024, 6, 1, 12, 30, tzinfo=dt.UTC),
        dt.date(2024, 6, 1),
        decimal.Decimal("10.50"),
        uuid.UUID(int=7),
    ],
)
def test_keys_round_trip_through_json_with_their_type(key: Any) -> None:
    encoded = json.loads(json.dumps(encode_key(key)))
    assert decode_key(encoded) == key
    assert type(decode_key(encoded)) is type(key)


def test_keys_as_text_and_payloads_as_json() -> None:
    assert key_text(dt.datetime(2024, 6, 1, 12)) == "2024-06-01T12:00:00"
    assert key_text(10) == "10"
    row = {"at": dt.time(1, 2), "n": decimal.Decimal("1.10"), "blob": b"\x00\x01", "j": {"a": [1]}}
    assert json_safe(row) == {"at": "01:02:00", "n": "1.10", "blob": "AAE=", "j": {"a": [1]}}
    with pytest.raises(fm.ConfigurationError, match="must not hold"):
        encode_key(None)


def test_integer_batches_are_kept_as_ranges() -> None:
    state = CursorState(settled=3, recent=[Batch(1_000, 12, [4, 5, 6, 8, 9, 12])])
    text = state.encode()
    assert '"ranges":[[4,6],[8,9],[12,12]]' in text
    again = CursorState.decode(text)
    assert again.settled == 3 and again.recent[0].keys == [4, 5, 6, 8, 9, 12]
    digests = CursorState(recent=[Batch(1, "b", [identity_digest("t:a"), identity_digest("t:b")])])
    assert CursorState.decode(digests.encode()).requested()[1] == {
        identity_digest("t:a"),
        identity_digest("t:b"),
    }
