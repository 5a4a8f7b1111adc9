"""Fill the staging table ``app_xml`` with generated applications.

    python -m examples.xml_to_tables.stage --apps 2000 --bad-share 0.05 [--store URL]

Creates the example's tables when they are missing. Application ids continue
after the highest staged one, so running it twice stages more applications.
"""

from __future__ import annotations

import argparse
import os

import sqlalchemy as sa

from examples.xml_to_tables.generator import GeneratedApplication, generate
from examples.xml_to_tables.schema import app_xml, metadata

BATCH = 1000


def stage(
    engine: sa.Engine, count: int, *, bad_share: float = 0.05, seed: int = 1
) -> list[GeneratedApplication]:
    """Stage ``count`` applications and return them (with the defect each was given)."""
    metadata.create_all(engine)
    with engine.begin() as conn:
        first_id = (conn.scalar(sa.select(sa.func.max(app_xml.c.app_id))) or 0) + 1
    staged = list(generate(seed, count, bad_share, first_id=first_id))
    for start in range(0, len(staged), BATCH):
        batch = staged[start : start + BATCH]
        with engine.begin() as conn:
            conn.execute(app_xml.insert(), [{"app_id": a.app_id, "xml": a.xml} for a in batch])
    return staged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=2000)
    parser.add_argument("--bad-share", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--store", default=os.environ.get("FERRYMAN_STORE", "sqlite:///xml_to_tables.db")
    )
    args = parser.parse_args()
    from examples.xml_to_tables.pipeline import app

    app.use_store(args.store)
    staged = stage(app.engine, args.apps, bad_share=args.bad_share, seed=args.seed)
    bad = sum(1 for a in staged if a.defect)
    print(f"staged apps {staged[0].app_id}..{staged[-1].app_id}, {bad} of them with defects")


if __name__ == "__main__":
    main()
