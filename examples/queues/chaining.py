"""Chaining: a split job asks for one convert run per page, with its own success.

``split`` reads how many pages a document has and asks for one ``convert``
run per page with ``ctx.submit``. The convert runs are written in the same
transaction as the split's success (here the ``ctx.transaction()`` block that
also records the document): they exist if and only if the split succeeded,
once, however often workers are killed. A split that fails asks for nothing;
its next attempt asks again. Each page's ``convert`` records its page.

The store is ``FERRYMAN_STORE`` (default ``sqlite:///queues.db`` in the
current directory). From the repository root::

    python -m examples.queues.chaining            # create the tables, submit two documents
    ferryman --app examples.queues.chaining:app work --until-idle

See docs/how-to/queues.md.
"""

from __future__ import annotations

import os
from typing import Any

import sqlalchemy as sa

import ferryman as fm

app = fm.App(os.environ.get("FERRYMAN_STORE", "sqlite:///queues.db"))

metadata = sa.MetaData()
documents = sa.Table(
    "documents",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("pages", sa.Integer, nullable=False),
)
pages = sa.Table(
    "pages",
    metadata,
    sa.Column("document", sa.Text, primary_key=True),
    sa.Column("page", sa.Integer, primary_key=True),
)


@app.job
def split(ctx: fm.JobContext, payload: dict[str, Any]) -> None:
    name, count = payload["document"], payload["pages"]
    with ctx.transaction() as conn:
        conn.execute(documents.insert().values(name=name, pages=count))
        ctx.submit(
            "convert",
            *(
                fm.RunRequest(f"{name}/{page}", {"document": name, "page": page})
                for page in range(1, count + 1)
            ),
        )


@app.job
def convert(ctx: fm.JobContext, payload: dict[str, Any]) -> None:
    with ctx.transaction() as conn:
        conn.execute(pages.insert().values(document=payload["document"], page=payload["page"]))


if __name__ == "__main__":
    metadata.create_all(app.engine)
    app.submit(
        "split",
        fm.RunRequest("report.pdf", {"document": "report.pdf", "pages": 3}),
        fm.RunRequest("invoice.pdf", {"document": "invoice.pdf", "pages": 1}),
    )
