"""Parse, validate and map one credit-application document to table rows.

Pure functions with no database access, so the job, the bare-loop benchmark
and the tests all map documents the same way. Every refusal is an
:class:`InvalidApplication` whose message names the application and the line
(and element) at fault; the job turns it into ``fm.Reject``.

The parser never resolves entities nor fetches anything from the network, and
a document with a DOCTYPE is refused, so a hostile document cannot read local
files, call out (XXE) or blow up in memory.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from lxml import etree

CA_NS = "urn:example:credit-application:1"
PA_NS = "urn:example:postal-address:1"
CA = f"{{{CA_NS}}}"
PA = f"{{{PA_NS}}}"
SCHEMA_FILE = Path(__file__).with_name("application.xsd")
MIN_APPLICANT_AGE = 18

Rows = dict[str, list[dict[str, Any]]]


class InvalidApplication(ValueError):
    """The document can never be loaded as it is; ``reason`` says where and why."""

    def __init__(self, app_id: int, reason: str) -> None:
        super().__init__(f"app {app_id}: {reason}")
        self.app_id = app_id
        self.reason = reason


class _Tools(threading.local):
    """lxml parsers and validators must not be shared between threads: one set per thread."""

    def __init__(self) -> None:
        self.parser = etree.XMLParser(
            resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
        )
        self.schema = etree.XMLSchema(etree.parse(str(SCHEMA_FILE)))


_tools = _Tools()


def _short(text: str) -> str:
    """libxml2 messages spell namespaces out in full; the prefixes read better."""
    return text.replace(CA, "ca:").replace(PA, "pa:")


def parse(app_id: int, document: str | bytes) -> etree._Element:
    """The validated root element, or :class:`InvalidApplication`."""
    data = document.encode() if isinstance(document, str) else document
    try:
        root = etree.fromstring(data, _tools.parser)
    except etree.XMLSyntaxError as exc:
        # libxml2 repeats the position at the end of its message; it is given once, up front.
        message = re.sub(r"(, line \d+)+, column \d+$", "", exc.msg)
        raise InvalidApplication(
            app_id, f"malformed XML at line {exc.lineno}, column {exc.offset}: {message}"
        ) from None
    doctype = root.getroottree().docinfo.internalDTD
    if doctype is not None:
        # Applications have no use for a DTD; entities are where XML attacks live.
        raise InvalidApplication(app_id, "a DOCTYPE declaration is not accepted")
    schema = _tools.schema
    if not schema.validate(root):
        error = schema.error_log[0]
        raise InvalidApplication(app_id, f"line {error.line}: {_short(error.message)}")
    return root


def map_application(app_id: int, document: str | bytes) -> Rows:
    """Rows for ``app_base``, ``contact_base``, ``contact_address``, ``contact_employment``.

    Raises :class:`InvalidApplication` for malformed XML, a document the
    schema refuses (a missing required element, a wrong type), or one that
    is valid XML but wrong (its id is not ``app_id``, a contact id used twice,
    no applicant, an employment that ends before it starts, an amount that is
    not positive or not in cents, an applicant under age).
    """
    root = parse(app_id, document)
    declared = int(root.get("id", "0"))
    if declared != app_id:
        raise InvalidApplication(
            app_id, f"line {root.sourceline}: the document's id is {declared}, not {app_id}"
        )
    submitted = dt.datetime.fromisoformat(_text(root, "Submitted"))
    product = _child(root, "Product")
    amount = _child(product, "Amount")
    amount_cents = _cents(app_id, amount)
    if amount_cents <= 0:
        raise InvalidApplication(
            app_id, f"line {amount.sourceline}: ca:Amount must be positive, got {amount.text}"
        )
    rows: Rows = {
        "app_base": [],
        "contact_base": [],
        "contact_address": [],
        "contact_employment": [],
    }
    seen: dict[str, int] = {}
    applicants = 0
    for contact in _child(root, "Contacts").iterchildren(f"{CA}Contact"):
        contact_id = contact.get("id", "")
        line = contact.sourceline or 0
        if contact_id in seen:
            raise InvalidApplication(
                app_id,
                f"line {line}: contact id {contact_id!r} is used twice "
                f"(first at line {seen[contact_id]})",
            )
        seen[contact_id] = line
        role = contact.get("role", "")
        birth_date = dt.date.fromisoformat(_text(contact, "BirthDate"))
        if role == "applicant":
            applicants += 1
            if _age(birth_date, submitted.date()) < MIN_APPLICANT_AGE:
                raise InvalidApplication(
                    app_id,
                    f"line {line}: applicant {contact_id!r} was born {birth_date}, "
                    f"under {MIN_APPLICANT_AGE} when the application was submitted",
                )
        name = _child(contact, "Name")
        rows["contact_base"].append(
            {
                "app_id": app_id,
                "contact_id": contact_id,
                "role": role,
                "first_name": _text(name, "First"),
                "middle_name": name.findtext(f"{CA}Middle"),
                "last_name": _text(name, "Last"),
                "birth_date": birth_date,
                "email": contact.findtext(f"{CA}Email"),
                "phone": contact.findtext(f"{CA}Phone"),
            }
        )
        addresses = _child(contact, "Addresses").iterchildren(f"{PA}Address")
        for position, address in enumerate(addresses, start=1):
            since = address.findtext(f"{PA}Since")
            rows["contact_address"].append(
                {
                    "app_id": app_id,
                    "contact_id": contact_id,
                    "position": position,
                    "address_type": address.get("type"),
                    "street": address.findtext(f"{PA}Street"),
                    "city": address.findtext(f"{PA}City"),
                    "postal_code": address.findtext(f"{PA}PostalCode"),
                    "country": address.findtext(f"{PA}Country"),
                    "since": None if since is None else dt.date.fromisoformat(since),
                }
            )
        employments = contact.find(f"{CA}Employments")
        for position, job in enumerate(
            () if employments is None else employments.iterchildren(f"{CA}Employment"), start=1
        ):
            start = dt.date.fromisoformat(_text(job, "Start"))
            end_text = job.findtext(f"{CA}End")
            end = None if end_text is None else dt.date.fromisoformat(end_text)
            if end is not None and end < start:
                raise InvalidApplication(
                    app_id,
                    f"line {job.sourceline}: employment of contact {contact_id!r} ends "
                    f"({end}) before it starts ({start})",
                )
            income = _child(job, "MonthlyIncome")
            rows["contact_employment"].append(
                {
                    "app_id": app_id,
                    "contact_id": contact_id,
                    "position": position,
                    "employer": _text(job, "Employer"),
                    "job_title": job.findtext(f"{CA}Position"),
                    "start_date": start,
                    "end_date": end,
                    "monthly_income_cents": _cents(app_id, income),
                    "income_currency": income.get("currency"),
                }
            )
    if applicants != 1:
        raise InvalidApplication(
            app_id,
            f"line {_child(root, 'Contacts').sourceline}: ca:Contacts must hold exactly one "
            f"applicant, found {applicants}",
        )
    rows["app_base"].append(
        {
            "app_id": app_id,
            "schema_version": root.get("version"),
            "submitted_at": _text(root, "Submitted"),
            "channel": root.findtext(f"{CA}Channel"),
            "product_code": product.get("code"),
            "amount_cents": amount_cents,
            "currency": amount.get("currency"),
            "term_months": int(_text(product, "TermMonths")),
            "contact_count": len(seen),
        }
    )
    return rows


def _child(element: etree._Element, name: str) -> etree._Element:
    # The schema has made every required element present by the time this is called.
    child = element.find(f"{CA}{name}")
    assert child is not None, name
    return child


def _text(element: etree._Element, name: str) -> str:
    return _child(element, name).text or ""


def _cents(app_id: int, element: etree._Element) -> int:
    try:
        value = Decimal((element.text or "").strip())
    except InvalidOperation:  # the schema's xs:decimal makes this unreachable
        raise InvalidApplication(app_id, f"line {element.sourceline}: not a number") from None
    cents = value * 100
    if cents != cents.to_integral_value():
        raise InvalidApplication(
            app_id,
            f"line {element.sourceline}: {_short(element.tag)} {element.text} "
            "has more than two decimals",
        )
    return int(cents)


def _age(born: dt.date, on: dt.date) -> int:
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))
