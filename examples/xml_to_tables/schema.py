"""The tables of the XML reference pipeline, for SQLite, PostgreSQL and MariaDB alike.

``app_xml`` is the staging table the applications arrive in, one XML document
per ``app_id``. The four target tables are what the job maps each document
into. Their primary keys are natural keys of the document (the application,
the contact id inside it, an element's position), so a second insert of the
same application could only ever fail; with ferryman it never happens.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# A contact id is part of primary keys, and MariaDB keys no TEXT column
# without a length: there it is a VARCHAR.
ContactId = sa.Text().with_variant(sa.String(255), "mariadb", "mysql")

app_xml = sa.Table(
    "app_xml",
    metadata,
    sa.Column("app_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("xml", sa.Text, nullable=False),
)

app_base = sa.Table(
    "app_base",
    metadata,
    sa.Column("app_id", sa.BigInteger, primary_key=True),
    sa.Column("schema_version", sa.Text, nullable=False),
    sa.Column("submitted_at", sa.Text, nullable=False),  # ISO 8601 as sent, with its offset
    sa.Column("channel", sa.Text),
    sa.Column("product_code", sa.Text, nullable=False),
    sa.Column("amount_cents", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("term_months", sa.Integer, nullable=False),
    sa.Column("contact_count", sa.Integer, nullable=False),
)

contact_base = sa.Table(
    "contact_base",
    metadata,
    sa.Column("app_id", sa.BigInteger, sa.ForeignKey("app_base.app_id"), primary_key=True),
    sa.Column("contact_id", ContactId, primary_key=True),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("first_name", sa.Text, nullable=False),
    sa.Column("middle_name", sa.Text),
    sa.Column("last_name", sa.Text, nullable=False),
    sa.Column("birth_date", sa.Date, nullable=False),
    sa.Column("email", sa.Text),
    sa.Column("phone", sa.Text),
)

contact_address = sa.Table(
    "contact_address",
    metadata,
    sa.Column("app_id", sa.BigInteger, primary_key=True),
    sa.Column("contact_id", ContactId, primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),  # 1-based order in the document
    sa.Column("address_type", sa.Text, nullable=False),
    sa.Column("street", sa.Text, nullable=False),
    sa.Column("city", sa.Text, nullable=False),
    sa.Column("postal_code", sa.Text, nullable=False),
    sa.Column("country", sa.Text, nullable=False),
    sa.Column("since", sa.Date),
    sa.ForeignKeyConstraint(
        ["app_id", "contact_id"], [contact_base.c.app_id, contact_base.c.contact_id]
    ),
)

contact_employment = sa.Table(
    "contact_employment",
    metadata,
    sa.Column("app_id", sa.BigInteger, primary_key=True),
    sa.Column("contact_id", ContactId, primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("employer", sa.Text, nullable=False),
    sa.Column("job_title", sa.Text),
    sa.Column("start_date", sa.Date, nullable=False),
    sa.Column("end_date", sa.Date),
    sa.Column("monthly_income_cents", sa.BigInteger, nullable=False),
    sa.Column("income_currency", sa.Text, nullable=False),
    sa.ForeignKeyConstraint(
        ["app_id", "contact_id"], [contact_base.c.app_id, contact_base.c.contact_id]
    ),
)

# Parents first: the order rows are inserted in and the order tables are created in.
TARGET_TABLES = (app_base, contact_base, contact_address, contact_employment)
