"""An async job: exchange rates fetched by runs that mostly wait, a hundred at once.

``fetch_rate`` awaits a quote (here a stand-in for an HTTP call made with an
async client), then writes it to the ``rates`` table in ``async with
ctx.transaction()``, so the row commits with the run's success. With
``--concurrency 100`` one worker runs up to a hundred of these at once, on
one event loop thread.

The store is ``FERRYMAN_STORE`` (default ``sqlite:///queues.db`` in the
current directory). From the repository root::

    python -m examples.queues.async_jobs          # create the rates table
    ferryman --app examples.queues.async_jobs:app submit fetch_rate EURUSD \\
        --payload '{"pair": "EURUSD"}'
    ferryman --app examples.queues.async_jobs:app work --until-idle --concurrency 100

See docs/how-to/queues.md.
"""

from __future__ import annotations

import asyncio
import os
import zlib

import sqlalchemy as sa

import ferryman as fm

app = fm.App(os.environ.get("FERRYMAN_STORE", "sqlite:///queues.db"))

metadata = sa.MetaData()
rates = sa.Table(
    "rates",
    metadata,
    sa.Column("pair", sa.String(20), primary_key=True),
    sa.Column("rate", sa.Float, nullable=False),
)


async def quote(pair: str) -> float:
    """The rate of ``pair``: stands for ``await client.get(...)`` with httpx or aiohttp."""
    await asyncio.sleep(0.2)
    return 1 + zlib.crc32(pair.encode()) % 1000 / 1000


@app.job(max_attempts=3)
async def fetch_rate(ctx: fm.AsyncJobContext, payload: dict[str, str]) -> None:
    rate = await quote(payload["pair"])  # the slow part: awaited before the transaction
    async with ctx.transaction() as conn:  # commits with the run's success, or not at all
        await conn.execute(rates.insert().values(pair=payload["pair"], rate=rate))


if __name__ == "__main__":
    metadata.create_all(app.engine)
