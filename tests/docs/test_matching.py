"""The comparisons the docs test relies on: they accept what the docs show and refuse drift."""

from __future__ import annotations

from tests.docs.session import excerpt_mismatch, output_mismatch

PRINTED = """\
                                   evaluations
┏━━━━┳━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━┳━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━┓
┃ id ┃ sensor      ┃ finished       ┃ outcome ┃ cursor                                  ┃ r/d   ┃
┡━━━━╇━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━╇━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━┩
│ 4  │ new_exports │ 12-04 21:04:05 │ ok      │ export-000002.json → export-000003.json │ 1 / 1 │
└────┴─────────────┴────────────────┴─────────┴─────────────────────────────────────────┴───────┘
2026-12-04T21:04:05 INFO ferryman.worker retry in 0.00s: OSError run_id=3 worker=vm:13:0123abcd
"""


def test_the_same_table_at_another_width_and_time_matches() -> None:
    shown = """\
┃ id ┃ finished       ┃ outcome ┃ cursor               ┃ r/d   ┃
│ 4  │ 11-23 22:18:17 │ ok      │ export-000002.json → │ 1 / 1 │
│    │                │         │ export-000003.json   │       │
... INFO ferryman.worker retry in 0.25s: OSError run_id=3 worker=host:9:ffffffff
"""
    assert output_mismatch(shown, PRINTED) is None


def test_a_different_figure_or_word_is_drift() -> None:
    assert output_mismatch("│ 4 │ 11-23 22:18:17 │ ok │ 2 / 1 │", PRINTED) is not None
    assert output_mismatch("│ 4 │ 11-23 22:18:17 │ failed │", PRINTED) is not None
    assert output_mismatch("retry in 0.00s: OSError run_id=4", PRINTED) is not None


def test_lines_must_come_in_order_and_an_ellipsis_ends_a_word() -> None:
    assert output_mismatch("retry in\n┃ id ┃ sensor", PRINTED) is not None
    assert output_mismatch("│ 4 │ new_ex… │", PRINTED) is None


SOURCE = """\
def main() -> None:
    again = app.submit("load_order", requests[0])  # deduplicated: the same run
    report = app.work(until_idle=True)
"""


def test_an_excerpt_may_be_dedented_and_leave_out_lines_and_comments() -> None:
    assert excerpt_mismatch('again = app.submit("load_order", requests[0])\n', SOURCE) is None
    block = "def main() -> None:\n    ...\n    report = app.work(until_idle=True)\n"
    assert excerpt_mismatch(block, SOURCE) is None


def test_an_excerpt_that_differs_or_reorders_is_drift() -> None:
    assert excerpt_mismatch("report = app.work(until_idle=False)\n", SOURCE) is not None
    block = 'report = app.work(until_idle=True)\nagain = app.submit("load_order", requests[0])\n'
    assert excerpt_mismatch(block, SOURCE) is not None
    assert excerpt_mismatch("  again = app.submit('load_order', requests[0])\n", SOURCE) is not None
