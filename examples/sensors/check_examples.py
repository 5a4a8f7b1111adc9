"""Run the commands of docs/how-to/sensors.md in a scratch directory and check the results.

From the repository root::

    .venv/bin/python -m examples.sensors.check_examples

Each pipeline gets a fresh SQLite store and source directory under a
temporary directory; the ``ferryman`` commands run as separate processes, as
a user would type them. The S3 pipeline runs against a local moto server
(installed with the test extras) and is skipped without one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[2]


class Scratch:
    """A store and environment of their own for one pipeline."""

    def __init__(self, root: Path, module: str, **env: str) -> None:
        self.store = f"sqlite:///{root / 'sensors.db'}"
        self.app = f"examples.sensors.{module}:app"
        self.module = f"examples.sensors.{module}"
        base = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMAN_")}
        self.env = {**base, **env, "FERRYMAN_STORE": self.store, "COLUMNS": "110"}

    def python(self) -> None:
        subprocess.run([sys.executable, "-m", self.module], cwd=REPO, env=self.env, check=True)

    def ferryman(self, *args: str, expect: int = 0) -> str:
        command = [sys.executable, "-m", "ferryman", "--app", self.app, *args]
        print(f"$ ferryman --app {self.app} {' '.join(args)}", flush=True)
        done = subprocess.run(
            command, cwd=REPO, env=self.env, capture_output=True, text=True, check=False
        )
        print(done.stdout, end="", flush=True)
        if done.returncode != expect:
            raise SystemExit(f"exit {done.returncode}, expected {expect}:\n{done.stderr}")
        return done.stdout

    def rows(self, query: str) -> list[Any]:
        engine = sa.create_engine(self.store)
        try:
            with engine.connect() as conn:
                return [tuple(row) for row in conn.execute(sa.text(query))]
        finally:
            engine.dispose()


def check_exports(root: Path) -> None:
    exports = root / "exports"
    run = Scratch(root, "exports", EXPORTS_DIR=str(exports))
    run.python()
    for number in (1, 2):
        (exports / f"export-00000{number}.json").write_text(
            json.dumps([{"id": f"c-{number}", "name": f"Customer {number}"}])
        )
    run.ferryman("tick")
    assert "no sensor was due" in run.ferryman("tick")
    (exports / "export-000003.json").write_text('[{"id": "c-3", "name": "Three"}]')
    notice = ["ingest", "export_notices", "--id", "msg-1", "--payload"]
    first = run.ferryman(*notice, '{"file": "export-000003.json"}')
    assert run.ferryman(*notice, '{"file": "export-000003.json"}') == first  # a redelivery
    run.ferryman("ingest", "export_notices", "--id", "msg-2", "--payload", "{}", expect=1)
    [evaluation] = json.loads(run.ferryman("tick", "--force", "--json"))
    assert (evaluation["runs_requested"], evaluation["runs_deduplicated"]) == (1, 1)
    run.ferryman("work", "--until-idle")
    assert len(run.rows("SELECT * FROM customers")) == 3
    run.ferryman("sensors", "pause", "new_exports")
    assert "no sensor was due" in run.ferryman("tick", "--force")
    run.ferryman("sensors", "resume", "new_exports")
    run.ferryman("sensors", "set-cursor", "new_exports", "export-000001.json", "--by", "alice")
    [again] = json.loads(run.ferryman("tick", "--json"))
    assert (again["runs_requested"], again["runs_deduplicated"]) == (2, 2)
    outcomes = [
        e["outcome"] for e in json.loads(run.ferryman("evaluations", "new_exports", "--json"))
    ]
    assert outcomes == ["ok", "ok", "manual", "ok"], outcomes


def check_folder(root: Path) -> None:
    inbox = root / "inbox"
    run = Scratch(root, "folder_pipeline", FOLDER_PIPELINE_INBOX=str(inbox))
    run.python()
    (inbox / "2024-05-01.csv").write_text(
        "meter,day,kwh\nm-1,2024-05-01,12.5\nm-2,2024-05-01,7.25\n"
    )
    (inbox / "2024-05-02.json").write_text('[{"meter": "m-1", "day": "2024-05-02", "kwh": 11.0}]')
    (inbox / "README.txt").write_text("notes\n")
    time.sleep(3)  # longer than stable_for
    [evaluation] = json.loads(run.ferryman("tick", "--json"))
    assert (evaluation["runs_requested"], evaluation["items_skipped"]) == (2, 1), evaluation
    run.ferryman("work", "--until-idle")
    assert len(run.rows("SELECT * FROM readings")) == 3


def check_sql(root: Path) -> None:
    run = Scratch(root, "sql_pipeline")
    run.python()
    run.ferryman("tick")
    run.ferryman("work", "--until-idle")
    assert sorted(run.rows("SELECT cents FROM ledger")) == [(-2000,), (7550,), (12000,)]
    assert len(run.rows("SELECT * FROM shipments")) == 2


def check_s3(root: Path) -> None:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        print("moto is not installed: S3 pipeline skipped")
        return
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        run = Scratch(
            root,
            "s3_pipeline",
            AWS_ENDPOINT_URL=f"http://{host}:{port}",
            AWS_ACCESS_KEY_ID="test",
            AWS_SECRET_ACCESS_KEY="test",
            AWS_REGION="us-east-1",
        )
        run.python()
        [evaluation] = json.loads(run.ferryman("tick", "--json"))
        assert (evaluation["runs_requested"], evaluation["items_skipped"]) == (1, 1), evaluation
        run.ferryman("work", "--until-idle")
        assert len(run.rows("SELECT * FROM documents")) == 1
    finally:
        server.stop()


def main() -> None:
    for check in (check_exports, check_folder, check_sql, check_s3):
        with tempfile.TemporaryDirectory(prefix="fm-sensors-") as scratch:
            print(f"\n== {check.__name__} in {scratch}", flush=True)
            check(Path(scratch))
    print("\nall sensor examples ran as documented")


if __name__ == "__main__":
    main()
