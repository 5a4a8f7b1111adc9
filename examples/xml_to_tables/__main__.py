"""Walk through the XML reference pipeline on a fresh SQLite store.

    .venv/bin/python -m examples.xml_to_tables [--apps 2000] [--processes 2]

Stages generated applications (5 % broken), lets the sensor request a run for
each, works them with a process pool, shows the rejected ones, fixes one in
the staging table and retries it, then runs the exactly-once checks. It uses
the ``ferryman`` command for every step a user would take. The store is
``examples/xml_to_tables/.state/xml.db``, recreated on every run and left in
place for you to explore.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

import ferryman as fm
from examples.xml_to_tables.generator import application
from examples.xml_to_tables.schema import app_xml
from examples.xml_to_tables.stage import stage

REPO = Path(__file__).resolve().parents[2]
STATE_DIR = Path(__file__).resolve().parent / ".state"
STORE = f"sqlite:///{STATE_DIR / 'xml.db'}"
APP = "examples.xml_to_tables.pipeline:app"
SEED = 1


def ferryman(*args: str) -> None:
    print(f"\n$ ferryman --app {APP} {' '.join(args)}", flush=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMAN_")}
    env.update(FERRYMAN_STORE=STORE, COLUMNS=env.get("COLUMNS", "120"))
    subprocess.run([sys.executable, "-m", "ferryman", "--app", APP, *args], env=env, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()

    shutil.rmtree(STATE_DIR, ignore_errors=True)
    STATE_DIR.mkdir()
    engine = sa.create_engine(STORE)
    staged = stage(engine, args.apps, seed=SEED)
    bad = sorted(a.app_id for a in staged if a.defect)
    print(f"staged {len(staged)} applications in app_xml, {len(bad)} of them broken")

    ferryman("tick")  # the sensor requests one run per staged application
    ferryman("work", "--until-idle", "--processes", str(args.processes))
    ferryman("runs", "--status", "failed", "--job", "load_application", "--limit", "5")

    fixed = bad[0]
    with engine.begin() as conn:
        conn.execute(
            app_xml.update()
            .where(app_xml.c.app_id == fixed)
            .values(xml=application(SEED, fixed, bad_share=0.0).xml)
        )
    store = fm.App(STORE)
    (run,) = (r for r in store.get_runs(status="failed") if r.run_key == f"app_xml:{fixed}")
    store.close()
    print(f"\nfixed application {fixed} in app_xml; retrying its run {run.id}")
    ferryman("retry", str(run.id))
    ferryman("work", "--until-idle")
    ferryman("status")

    print("\n$ python -m examples.xml_to_tables.verify", flush=True)
    env = {**os.environ, "FERRYMAN_STORE": STORE}
    subprocess.run(
        [sys.executable, "-m", "examples.xml_to_tables.verify"], cwd=REPO, env=env, check=True
    )
    engine.dispose()


if __name__ == "__main__":
    main()
