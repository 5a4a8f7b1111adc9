"""Synthetic credit-application documents, realistic enough to exercise the mapping.

Each document is a function of ``(seed, app_id)`` alone, so a test, the
benchmark and a rerun all see the same bytes. Applications carry one to three
contacts with one to three addresses (a second namespace) and up to four
employments; middle names, e-mail, phone, channel, "since" dates, positions
and end dates are optional. A share of documents, ``bad_share``, is broken in
one of the ways real feeds break: malformed XML, a required element missing,
a value of the wrong type, a contact id used twice, an employment that ends
before it starts.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from dataclasses import dataclass

from lxml import etree

from examples.xml_to_tables.mapping import CA_NS, PA_NS

DEFECTS = (
    "malformed",
    "missing_element",
    "wrong_type",
    "duplicate_contact",
    "employment_dates",
)

FIRST = ("Anna", "Jürgen", "Zoë", "Mateusz", "Aoife", "Kwame", "Li", "Sofía", "Olav", "Priya")
MIDDLE = ("Maria", "J.", "Louise", "Karl")
LAST = ("Schmidt", "Nowak", "O'Brien", "García", "Nakamura", "Dubois", "Okafor", "Larsen")
STREETS = ("Hauptstraße 5", "12 Rue de la Paix", "ul. Długa 44", "221B Baker Street")
CITIES = (("Berlin", "DE", "10115"), ("Paris", "FR", "75002"), ("Łódź", "PL", "90-001"))
EMPLOYERS = ("Initech GmbH", "Umbrella & Co", "Globex S.A.", "Hooli Ltd", "Acme <Widgets>")
TITLES = ("Engineer", "Nurse", "Accountant", "Driver", "Teacher")
PRODUCTS = ("PL-24", "PL-36", "CAR-60", "MORT-240")
CURRENCIES = ("EUR", "PLN", "GBP")


@dataclass(frozen=True, slots=True)
class GeneratedApplication:
    app_id: int
    xml: str
    defect: str | None  # one of DEFECTS, or None for a good document


def generate(
    seed: int, count: int, bad_share: float = 0.05, first_id: int = 1
) -> Iterator[GeneratedApplication]:
    """``count`` applications with ids from ``first_id``; about ``bad_share`` of them broken."""
    for app_id in range(first_id, first_id + count):
        yield application(seed, app_id, bad_share)


def application(seed: int, app_id: int, bad_share: float = 0.05) -> GeneratedApplication:
    rng = random.Random(f"{seed}:{app_id}")
    defect = rng.choice(DEFECTS) if rng.random() < bad_share else None
    root = _document(rng, app_id, defect)
    xml = etree.tostring(root, pretty_print=True, encoding="unicode")
    xml = '<?xml version="1.0" encoding="UTF-8"?>\n' + xml
    if defect == "malformed":
        xml = _break(rng, xml)
    return GeneratedApplication(app_id, xml, defect)


def _document(rng: random.Random, app_id: int, defect: str | None) -> etree._Element:
    ca = f"{{{CA_NS}}}"
    root = etree.Element(
        f"{ca}Application", nsmap={"ca": CA_NS, "pa": PA_NS}, id=str(app_id), version="1.4"
    )
    submitted = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
        minutes=rng.randrange(300 * 24 * 60)
    )
    etree.SubElement(root, f"{ca}Submitted").text = submitted.isoformat()
    if rng.random() < 0.7:
        etree.SubElement(root, f"{ca}Channel").text = rng.choice(
            ("web", "branch", "broker", "phone")
        )
    product = etree.SubElement(root, f"{ca}Product", code=rng.choice(PRODUCTS))
    currency = rng.choice(CURRENCIES)
    amount = etree.SubElement(product, f"{ca}Amount", currency=currency)
    amount.text = f"{rng.randrange(1_000, 250_000)}.{rng.randrange(100):02d}"
    term = etree.SubElement(product, f"{ca}TermMonths")
    term.text = str(rng.choice((12, 24, 36, 60, 240)))
    contacts = etree.SubElement(root, f"{ca}Contacts")
    roles = ["applicant", *rng.sample(("co-applicant", "guarantor"), rng.randrange(3))]
    for number, role in enumerate(roles, start=1):
        _contact(rng, contacts, f"C{number}", role, submitted.date(), currency)

    if defect == "missing_element":
        victim = rng.choice(
            [
                root.find(f"{ca}Product/{ca}Amount"),
                root.find(f"{ca}Contacts/{ca}Contact/{ca}BirthDate"),
                root.find(f"{ca}Contacts/{ca}Contact/{ca}Name/{ca}Last"),
            ]
        )
        assert victim is not None
        victim.getparent().remove(victim)  # type: ignore[union-attr]
    elif defect == "wrong_type":
        if rng.random() < 0.5:
            term.text = "thirty-six"
        else:
            amount.text = amount.text.replace(".", ",")  # a decimal comma
    elif defect == "duplicate_contact":
        first = contacts[0]
        twin = etree.fromstring(etree.tostring(first))
        twin.set("role", "co-applicant")
        contacts.append(twin)
    elif defect == "employment_dates":
        contact = contacts[0]
        employments = contact.find(f"{ca}Employments")
        if employments is None:
            employments = etree.SubElement(contact, f"{ca}Employments")
        job = _employment(rng, employments, submitted.date(), currency)
        start = dt.date.fromisoformat(job.findtext(f"{ca}Start") or "")
        end = job.find(f"{ca}End")
        if end is None:
            end = etree.Element(f"{ca}End")
            job.find(f"{ca}Start").addnext(end)  # type: ignore[union-attr]
        end.text = (start - dt.timedelta(days=rng.randrange(1, 400))).isoformat()
    return root


def _contact(
    rng: random.Random,
    contacts: etree._Element,
    contact_id: str,
    role: str,
    submitted: dt.date,
    currency: str,
) -> None:
    ca, pa = f"{{{CA_NS}}}", f"{{{PA_NS}}}"
    contact = etree.SubElement(contacts, f"{ca}Contact", id=contact_id, role=role)
    name = etree.SubElement(contact, f"{ca}Name")
    etree.SubElement(name, f"{ca}First").text = rng.choice(FIRST)
    if rng.random() < 0.3:
        etree.SubElement(name, f"{ca}Middle").text = rng.choice(MIDDLE)
    etree.SubElement(name, f"{ca}Last").text = rng.choice(LAST)
    born = submitted - dt.timedelta(days=rng.randrange(19 * 366, 75 * 365))
    etree.SubElement(contact, f"{ca}BirthDate").text = born.isoformat()
    if rng.random() < 0.8:
        etree.SubElement(contact, f"{ca}Email").text = f"{contact_id.lower()}@example.org"
    if rng.random() < 0.5:
        etree.SubElement(contact, f"{ca}Phone").text = f"+49 30 {rng.randrange(10**7):07d}"
    addresses = etree.SubElement(contact, f"{ca}Addresses")
    for index in range(rng.randrange(1, 4)):
        city, country, postal_code = rng.choice(CITIES)
        kind = "current" if index == 0 else rng.choice(("previous", "postal"))
        address = etree.SubElement(addresses, f"{pa}Address", type=kind)
        etree.SubElement(address, f"{pa}Street").text = rng.choice(STREETS)
        etree.SubElement(address, f"{pa}City").text = city
        etree.SubElement(address, f"{pa}PostalCode").text = postal_code
        etree.SubElement(address, f"{pa}Country").text = country
        if rng.random() < 0.6:
            since = submitted - dt.timedelta(days=rng.randrange(30, 7000))
            etree.SubElement(address, f"{pa}Since").text = since.isoformat()
    jobs = rng.randrange(5)
    if jobs:
        employments = etree.SubElement(contact, f"{ca}Employments")
        for _ in range(jobs):
            _employment(rng, employments, submitted, currency)


def _employment(
    rng: random.Random, employments: etree._Element, submitted: dt.date, currency: str
) -> etree._Element:
    ca = f"{{{CA_NS}}}"
    job = etree.SubElement(employments, f"{ca}Employment")
    etree.SubElement(job, f"{ca}Employer").text = rng.choice(EMPLOYERS)
    if rng.random() < 0.7:
        etree.SubElement(job, f"{ca}Position").text = rng.choice(TITLES)
    start = submitted - dt.timedelta(days=rng.randrange(100, 9000))
    etree.SubElement(job, f"{ca}Start").text = start.isoformat()
    if rng.random() < 0.5:
        end = start + dt.timedelta(days=rng.randrange(30, 3000))
        etree.SubElement(job, f"{ca}End").text = min(end, submitted).isoformat()
    income = etree.SubElement(job, f"{ca}MonthlyIncome", currency=currency)
    income.text = f"{rng.randrange(800, 15_000)}.{rng.choice(('00', '50', '99'))}"
    return job


def _break(rng: random.Random, xml: str) -> str:
    """Malformed in one of the ways a truncated upload or a hand edit leaves a document."""
    choice = rng.randrange(3)
    if choice == 0:
        return xml[: rng.randrange(len(xml) // 3, len(xml) - 20)]  # cut off mid-way
    if choice == 1:
        return xml.replace("</ca:Name>", "</ca:Nmae>", 1)  # mismatched end tag
    return xml.replace("&amp;", "&", 1) if "&amp;" in xml else xml.replace("<ca:", "<ca:<", 1)
