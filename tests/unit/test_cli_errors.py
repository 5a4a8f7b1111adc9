"""Every error of the ``ferryman`` command is one line on stderr with its documented exit code.

Each case runs the installed console script (``.venv/bin/ferryman``) in a
process of its own, as a user types it, against a real store; the AWS cases
point it at a real S3 endpoint (a moto server) with AWS settings a user gets
wrong.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.s3_fixtures import s3_server

__all__ = ["s3_server"]  # fixtures used here

FERRYMAN = Path(sys.executable).parent / "ferryman"


def ferryman(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("FERRYMAN_", "AWS_", "COLUMNS"))
    }
    return subprocess.run(
        [str(FERRYMAN), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**base, **(env or {})},
        timeout=120,
    )


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *texts: str) -> str:
    """The single ``error: ...`` line, after checking it is all stderr holds."""
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    for text in texts:
        assert text in lines[0], (text, lines[0])
    return lines[0]


APP = """
import os
import ferryman as fm

app = fm.App(os.environ["TEST_STORE"])


@app.job()
def load(ctx, payload):
    pass
"""


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "errapp.py").write_text(APP)
    return tmp_path


@pytest.mark.parametrize(
    ("args", "texts"),
    [
        (["--log-level", "LOUD", "status"], ["--log-level", "'LOUD'", "'debug'"]),
        (["--log-format", "xml", "status"], ["--log-format", "'xml'", "'json'"]),
        (["work", "--concurrency", "x"], ["--concurrency: 'x' is not a valid integer"]),
        (["work", "--concurrency", "0"], ["--concurrency: must be at least 1, not '0'"]),
        (["work", "--grace", "soon"], ["--grace: 'soon' is not a valid number"]),
        (["runs", "--status", "nope"], ["--status: 'nope' is not one of 'queued'"]),
        (["runs", "--limit", "0"], ["--limit", "at least 1"]),
        (["runs", "show", "abc"], ["RUN_ID: 'abc' is not a valid integer"]),
        (["runs", "show"], ["missing argument"]),
        (["retry", "--status", "queued"], ["--status: 'queued' is not one of 'failed', 'dead'"]),
        (["serve", "--port", "70000"], ["--port: must be at most 65535, not '70000'"]),
        (["ingest", "hook"], ["missing option '--id'"]),
        (["status", "--bogus"], ["no such option: --bogus"]),
        (["status", "extra"], ["unexpected extra argument"]),
        (["bogus"], ["no such command 'bogus'"]),
        (["upload", "f", "s3://bucket/k", "--concurrency", "0"], ["--concurrency", "at least 1"]),
        (["transfers", "--status", "x"], ["--status: 'x' is not one of 'active'"]),
    ],
)
def test_bad_option_values_are_one_line_usage_errors(
    tmp_path: Path, args: list[str], texts: list[str]
) -> None:
    result = ferryman(tmp_path, "--store", f"sqlite:///{tmp_path}/s.db", *args)
    line = one_line_error(result, 2, *texts)
    assert "--help" in line  # where to read more, instead of a usage panel


def test_help_is_still_typers_help(tmp_path: Path) -> None:
    shown = ferryman(tmp_path, "work", "--help")
    assert shown.returncode == 0, shown.stderr
    assert "--concurrency" in shown.stdout and "Usage:" in shown.stdout
    bare = ferryman(tmp_path)
    assert bare.returncode == 2 and "Commands" in bare.stdout and bare.stderr == ""


def test_log_level_is_case_insensitive(tmp_path: Path) -> None:
    result = ferryman(
        tmp_path, "--store", f"sqlite:///{tmp_path}/s.db", "--log-level", "DEBUG", "status"
    )
    assert result.returncode == 0, result.stderr


def test_markup_and_line_breaks_in_a_message_are_shown_as_they_are(tmp_path: Path) -> None:
    missing = tmp_path / "[bold]no" / "such\ndir"
    result = ferryman(tmp_path, "--store", f"sqlite:///{missing}/s.db", "status")
    one_line_error(result, 2, "[bold]no", "does not exist")
    named = ferryman(tmp_path, "--app", "no\nsuch:app", "status")
    one_line_error(named, 2, "--app no such:app: cannot import")


def test_an_app_that_fails_to_import_is_named_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("import os\nraise RuntimeError('no settings file')\n")
    result = ferryman(tmp_path, "--app", "broken:app", "status")
    one_line_error(result, 2, "--app broken:app", "RuntimeError: no settings file", "broken.py:2")
    (tmp_path / "typo.py").write_text("def f(:\n")
    one_line_error(ferryman(tmp_path, "--app", "typo.py:app", "status"), 2, "SyntaxError")


def test_an_unexpected_exception_is_one_line_and_exit_70(tmp_path: Path) -> None:
    (tmp_path / "buggy.py").write_text(
        "import os\nimport ferryman as fm\n\n\n"
        "class Buggy(fm.App):\n"
        "    def status(self):\n"
        "        return {}['no such key']\n\n\n"
        "app = Buggy(os.environ['TEST_STORE'])\n"
    )
    env = {"TEST_STORE": f"sqlite:///{tmp_path}/s.db"}
    result = ferryman(tmp_path, "--app", "buggy:app", "status", env=env)
    one_line_error(result, 70, "KeyError: 'no such key'", "buggy.py:7", "--log-level DEBUG")
    debug = ferryman(tmp_path, "--log-level", "debug", "--app", "buggy:app", "status", env=env)
    assert debug.returncode == 70 and "Traceback" in debug.stderr


@pytest.mark.parametrize(
    ("args", "code", "texts"),
    [
        (["work", "--until-idle", "--jobs", "nosuch"], 2, ["unknown job 'nosuch'"]),
        (["tick"], 2, ["no poll sensor"]),
        (["ingest", "nosuch", "--id", "1"], 1, ["unknown sensor 'nosuch'"]),
        (["ingest", "nosuch", "--id", "1", "--payload", "{bad"], 2, ["--payload is not JSON"]),
        (["sensors", "pause", "nosuch"], 1, ["unknown sensor 'nosuch'"]),
        (["sensors", "set-cursor", "nosuch"], 2, ["give a VALUE or --clear"]),
        (["evaluations", "nosuch"], 1, ["unknown sensor 'nosuch'"]),
        (["runs", "show", "9"], 1, ["no run 9"]),
        (["cancel", "9"], 1, ["run 9 is not queued"]),
        (["retry"], 2, ["name run ids"]),
        (["upload", "nofile", "s3://bucket/k"], 1, ["no file nofile"]),
        (["upload", "errapp.py", "s3:/bucket"], 2, ["bad S3 URL"]),
        (["upload", "errapp.py", "s3://bucket/k", "--part-size", "xx"], 2, ["bad size"]),
        (["transfers", "gc", "--prefix", "s3://b/p", "--older-than", "xx"], 2, ["bad duration"]),
        (["serve", "--host", "10.1.2.3"], 2, ["FERRYMAN_API_TOKEN"]),
    ],
)
def test_every_verb_refuses_bad_input_in_one_line(
    app_dir: Path, args: list[str], code: int, texts: list[str]
) -> None:
    env = {"TEST_STORE": f"sqlite:///{app_dir}/s.db"}
    one_line_error(ferryman(app_dir, "--app", "errapp:app", *args, env=env), code, *texts)


@pytest.fixture
def aws_home(tmp_path: Path, s3_server: str) -> dict[str, str]:
    """AWS settings with no profile and no credentials anywhere, S3 at the moto server."""
    empty = tmp_path / "aws-empty"
    empty.write_text("")
    (tmp_path / "f.txt").write_text("some bytes\n")
    return {
        "AWS_ENDPOINT_URL": s3_server,
        "AWS_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(empty),
        "AWS_SHARED_CREDENTIALS_FILE": str(empty),
        # No instance metadata service to ask on this machine: do not wait for one.
        "AWS_EC2_METADATA_DISABLED": "true",
    }


UPLOAD = ["upload", "f.txt", "s3://bucket/f.txt", "--retries", "1"]
GC = ["transfers", "gc", "--prefix", "s3://bucket/in/"]
UNREACHABLE = {
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    "AWS_ACCESS_KEY_ID": "a",
    "AWS_SECRET_ACCESS_KEY": "b",
}


@pytest.mark.parametrize(
    ("args", "settings", "code", "texts"),
    [
        (UPLOAD, {"AWS_PROFILE": "nosuch"}, 2, ["AWS profile 'nosuch' not found", "AWS_PROFILE"]),
        (GC, {"AWS_PROFILE": "nosuch"}, 2, ["AWS profile 'nosuch' not found", "AWS_PROFILE"]),
        (UPLOAD, {}, 2, ["no AWS credentials found", "AWS_ACCESS_KEY_ID"]),
        (GC, {}, 2, ["no AWS credentials found", "AWS_ACCESS_KEY_ID"]),
        (UPLOAD, {"AWS_ACCESS_KEY_ID": "AKIDONLY"}, 2, ["missing: AWS_SECRET_ACCESS_KEY"]),
        (UPLOAD, {"AWS_ENDPOINT_URL": "not-a-url"}, 2, ["Invalid endpoint", "AWS_ENDPOINT_URL"]),
        (UPLOAD, UNREACHABLE, 7, ["cannot reach S3 at http://127.0.0.1:9"]),
    ],
)
def test_aws_settings_errors_are_one_line(
    tmp_path: Path,
    aws_home: dict[str, str],
    args: list[str],
    settings: dict[str, str],
    code: int,
    texts: list[str],
) -> None:
    env = {**aws_home, **settings}
    result = ferryman(tmp_path, "--store", f"sqlite:///{tmp_path}/s.db", *args, env=env)
    line = one_line_error(result, code, *texts)
    assert "AKIDONLY" not in line
