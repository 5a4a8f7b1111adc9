"""The XML example's mapping: good documents map fully, each kind of bad one is refused clearly."""

from __future__ import annotations

import datetime as dt

import pytest
from examples.xml_to_tables.generator import DEFECTS, application, generate
from examples.xml_to_tables.mapping import InvalidApplication, map_application

SEED = 20261123


def first_with(defect: str | None) -> tuple[int, str]:
    found = next(a for a in generate(SEED, 2000, bad_share=0.2) if a.defect == defect)
    return found.app_id, found.xml


def test_a_good_document_maps_to_every_table() -> None:
    app_id, xml = first_with(None)
    rows = map_application(app_id, xml)
    (base,) = rows["app_base"]
    assert base["app_id"] == app_id
    assert base["contact_count"] == len(rows["contact_base"]) >= 1
    assert [c["role"] for c in rows["contact_base"]].count("applicant") == 1
    assert base["amount_cents"] > 0
    contact_ids = {c["contact_id"] for c in rows["contact_base"]}
    assert {a["contact_id"] for a in rows["contact_address"]} == contact_ids  # one or more each
    for employment in rows["contact_employment"]:
        assert isinstance(employment["start_date"], dt.date)
        assert employment["end_date"] is None or employment["end_date"] >= employment["start_date"]


def test_mapping_is_a_function_of_the_document() -> None:
    again = application(SEED, 42, 0.0)
    assert map_application(42, again.xml) == map_application(42, application(SEED, 42, 0.0).xml)


@pytest.mark.parametrize(
    ("defect", "says"),
    [
        ("malformed", "malformed XML at line "),
        ("missing_element", "Expected is"),  # "... is not expected" or "Missing child"
        ("wrong_type", "is not a valid value"),
        ("duplicate_contact", "is used twice"),
        ("employment_dates", "before it starts"),
    ],
)
def test_each_kind_of_bad_document_is_refused_naming_app_and_line(defect: str, says: str) -> None:
    assert defect in DEFECTS
    app_id, xml = first_with(defect)
    with pytest.raises(InvalidApplication) as refused:
        map_application(app_id, xml)
    message = str(refused.value)
    assert message.startswith(f"app {app_id}: ")
    assert "line " in message
    assert says in message


def test_a_document_filed_under_another_id_is_refused() -> None:
    xml = application(SEED, 7, 0.0).xml
    with pytest.raises(InvalidApplication, match=r"^app 8: line 2: the document's id is 7, not 8"):
        map_application(8, xml)


def test_an_amount_with_fractions_of_a_cent_is_refused() -> None:
    xml = application(SEED, 9, 0.0).xml
    amount_start = xml.index('currency="', xml.index("<ca:Amount")) + len('currency="XXX">')
    amount_end = xml.index("</ca:Amount>")
    broken = xml[:amount_start] + "100.125" + xml[amount_end:]
    with pytest.raises(InvalidApplication, match=r"ca:Amount 100.125 has more than two decimals"):
        map_application(9, broken)


def test_entities_are_never_resolved(tmp_path: object) -> None:
    """A document declaring an external entity (XXE) is refused before anything reads it."""
    secret = f"{tmp_path}/secret.txt"
    with open(secret, "w") as handle:
        handle.write("TOP-SECRET")
    xml = application(SEED, 11, 0.0).xml
    hostile = xml.replace(
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE a [<!ENTITY x SYSTEM "file://{secret}">]>',
    ).replace("<ca:First>", "<ca:First>&x;", 1)
    with pytest.raises(InvalidApplication) as refused:
        map_application(11, hostile)
    assert str(refused.value) == "app 11: a DOCTYPE declaration is not accepted"
