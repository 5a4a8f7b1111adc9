"""``ferryman sensors set-cursor``: a built-in sensor's cursor is checked before it is committed.

A folder, S3 prefix or SQL table sensor reads a cursor of its own format; one
it cannot read would fail every evaluation after it. The command refuses it
in one line and leaves the stored cursor as it was. A sensor of the user's
own keeps a free-text cursor. Run as a user runs it: the installed console
script, a real store on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import subprocess
import sys
from pathlib import Path

import pytest

import ferryman as fm

FERRYMAN = Path(sys.executable).parent / "ferryman"

APP = """
import os
import ferryman as fm

app = fm.App(os.environ["TEST_STORE"])


@app.job()
def load(ctx, payload):
    pass


app.poll_sensor(job="load", name="inbox", interval=0.0)(
    fm.sensors.folder(os.environ["TEST_INBOX"], "*", stable_for=0.0)
)
app.poll_sensor(job="load", name="landing")(fm.sensors.s3_prefix("landing", "in/"))
app.poll_sensor(job="load", name="orders")(fm.sensors.sql_table(app, "orders", "id"))
app.poll_sensor(job="load", name="unloaded")(
    fm.sensors.sql_table(app, "orders", "id", mode="missing")
)


@app.poll_sensor(job="load", name="exports")
def exports(ctx, cursor):
    return fm.SensorResult(cursor=cursor)
"""


@pytest.fixture
def cli(tmp_path: Path, store_url: str) -> Cli:
    (tmp_path / "cursorapp.py").write_text(APP)
    (tmp_path / "inbox").mkdir()
    return Cli(tmp_path, store_url)


class Cli:
    def __init__(self, root: Path, store_url: str) -> None:
        self.root = root
        base = {k: v for k, v in os.environ.items() if not k.startswith(("FERRYMAN_", "AWS_"))}
        self.env = {**base, "TEST_STORE": store_url, "TEST_INBOX": str(root / "inbox")}

    def __call__(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(FERRYMAN), "--app", "cursorapp:app", *args],
            capture_output=True,
            text=True,
            cwd=self.root,
            env=env or self.env,
            timeout=120,
        )

    def sensor(self, name: str) -> dict[str, object]:
        listed = self("sensors", "--json")
        assert listed.returncode == 0, listed.stderr
        [found] = [s for s in json.loads(listed.stdout) if s["name"] == name]
        return dict(found)


@pytest.mark.parametrize(
    ("sensor", "kind"),
    [("inbox", "folder"), ("landing", "s3"), ("orders", "sql_table"), ("unloaded", "sql_table")],
)
def test_a_builtin_sensor_refuses_a_cursor_it_cannot_read(
    cli: Cli, store_url: str, sensor: str, kind: str
) -> None:
    before = cli.sensor(sensor)
    # What makes a cursor unreadable is the sensor's, the same on every store: each
    # way on SQLite; on the database servers, the one that reads as another kind's.
    unreadable = ["{bad json", "42"] if store_url.startswith("sqlite") else []
    for bad in [*unreadable, '{"v": 1, "kind": "other"}']:
        result = cli("sensors", "set-cursor", sensor, bad)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert f"sensor '{sensor}'" in lines[0] and f"not a {kind} cursor" in lines[0]
    after = cli.sensor(sensor)
    assert (after["cursor"], after["state_version"]) == (before["cursor"], before["state_version"])
    evaluations = json.loads(cli("evaluations", sensor, "--json").stdout)
    assert evaluations == []  # no manual evaluation was recorded


def test_a_cursor_the_folder_sensor_wrote_is_accepted_back(cli: Cli) -> None:
    (cli.root / "inbox" / "a.csv").write_text("x\n")
    ticked = cli("tick", "--sensor", "inbox", "--json")
    assert ticked.returncode == 0, ticked.stderr
    written = json.loads(ticked.stdout)[0]["cursor_after"]
    assert json.loads(written)["kind"] == "folder"
    assert cli("sensors", "set-cursor", "inbox", "--clear").returncode == 0
    moved = cli("sensors", "set-cursor", "inbox", written)
    assert moved.returncode == 0, moved.stderr
    assert cli.sensor("inbox")["cursor"] == written
    again = cli("tick", "--sensor", "inbox", "--force", "--json")
    assert again.returncode == 0, again.stderr
    [evaluation] = json.loads(again.stdout)
    assert (evaluation["outcome"], evaluation["runs_deduplicated"]) == ("ok", 0)


def test_a_sensor_of_ones_own_keeps_a_free_text_cursor(cli: Cli) -> None:
    moved = cli("sensors", "set-cursor", "exports", "{not json, and that is fine")
    assert moved.returncode == 0, moved.stderr
    assert cli.sensor("exports")["cursor"] == "{not json, and that is fine"


def test_set_cursor_records_the_login_name_without_user_in_the_environment(cli: Cli) -> None:
    env = {k: v for k, v in cli.env.items() if k not in ("USER", "LOGNAME", "LNAME", "USERNAME")}
    moved = cli("sensors", "set-cursor", "exports", "export-1", env=env)
    assert moved.returncode == 0, moved.stderr
    login = pwd.getpwuid(os.getuid()).pw_name
    assert f"by cli:{login}" in moved.stdout
    [manual] = json.loads(cli("evaluations", "exports", "--json").stdout)
    assert manual["evaluator"] == f"cli:{login}"


def test_app_set_cursor_checks_a_builtin_cursor_too(make_app: type[fm.App], tmp_path: Path) -> None:
    app = make_app()

    @app.job
    def load(ctx: fm.JobContext, payload: object) -> None: ...

    app.poll_sensor(job="load", name="inbox")(fm.sensors.folder(tmp_path, "*"))
    with pytest.raises(
        fm.ConfigurationError, match=re.escape("sensor 'inbox': cursor '{bad' is not a folder")
    ):
        app.set_cursor("inbox", "{bad", by="api")
    assert app.get_sensor("inbox").cursor is None
    assert app.get_evaluations("inbox") == []
