"""The docs do what they say: every block of README.md and docs/ is run or compared.

Each page is followed as a reader follows it, block by block, in a scratch
directory of its own with a fresh SQLite store (``tests/docs/session.py``):

* a ``sh`` block runs and must exit 0 (or the status its ``exit`` mark gives);
* a block with no language after it is that ``sh`` block's expected output;
* a ``python`` block runs as a program, or is saved as the file its ``file``
  mark names, or, with an ``excerpt`` mark, must be lines of that file in
  order (:func:`test_excerpt_is_lines_of_its_file`);
* anything else must say why it is not run.

Marks are HTML comments right above a block (``tests/docs/markdown.py``):

``skip="reason"``
    not run. Reserved for blocks that cannot run as written: placeholders
    for the reader's own app or hosts, a daemon whose twin runs elsewhere on
    the page, a crontab line, output shown for illustration. An output block
    after a skipped command is skipped with it.
``file=NAME`` / ``excerpt=PATH``
    save a python block as NAME in the current directory / compare it with
    PATH in this repository.
``exit=N``
    the status the block ends with.
``output-of="COMMAND"``
    an output block shown without its command: run COMMAND and compare.
``setup="COMMANDS"``
    run before the block, unseen by readers: the files a reader already has
    (the file to upload, say).
``background until="COMMAND" [stop]``
    start a ``sh`` block (a daemon) and go on once COMMAND succeeds; with
    ``stop`` it is stopped there, otherwise when the page ends. Either way it
    must exit 0 on SIGTERM.
``s3=bucket,...``
    give the block a real S3 endpoint (a moto server) through the standard
    AWS variables, with these buckets.
``postgres``
    the block's ``postgresql://`` URLs stand for a fresh, empty database.
``timeout=SECONDS``
    how long the block may run (default 300).

In every command, ``/path/to/ferryman`` stands for this checkout, ``/tmp/``
for the scratch directory and the ports in :data:`FREE_PORTS` for free ones,
so pages run side by side; printed text is turned back before comparing.
"""

from __future__ import annotations

import contextlib
import re
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import PG_ADMIN, _database_url, drop_database
from tests.docs.markdown import Block, blocks, pages
from tests.docs.session import REPO, Session, excerpt_mismatch, output_mismatch
from tests.s3_fixtures import S3_ENVIRONMENT, s3_server

__all__ = ["s3_server"]  # fixtures used here

# Ports the docs use that a test must not take for granted on a shared machine:
# the dashboard's default and the moto server of how-to/sensors.md.
FREE_PORTS = ("8765", "5000")

PAGES = pages(REPO)
EXCERPTS = [b for page in PAGES for b in blocks(REPO, page) if "excerpt" in b.marks]


def free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


@pytest.fixture
def empty_databases() -> Iterator[Callable[[], str]]:
    """Make empty PostgreSQL databases (no ferryman tables); dropped after the test."""
    made: list[str] = []

    def make() -> str:
        name = f"ferryman_docs_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return _database_url(name).replace("postgresql+psycopg://", "postgresql://")

    yield make
    for name in made:
        drop_database(name)


class PageRun:
    """Follows one page: runs its blocks and checks their outputs."""

    def __init__(self, session: Session, s3_endpoint: str, database: Callable[[], str]) -> None:
        self.session = session
        self.s3_endpoint = s3_endpoint
        self.database = database
        self.last: tuple[Block, str | None] | None = None  # sh block, its output (None: skipped)

    def follow(self, page: str) -> None:
        for block in blocks(REPO, page):
            if block.lang == "sh":
                self.last = (block, None if "skip" in block.marks else self.shell(block))
            elif block.lang == "":
                self.output(block)
            elif "skip" in block.marks:
                continue
            elif block.lang == "python":
                self.python(block)
            else:
                raise AssertionError(
                    f'{block.where}: a ```{block.lang} block is neither run nor marked skip="why"'
                )

    def environment(self, block: Block) -> dict[str, str]:
        if "s3" not in block.marks:
            return {}
        env = {**S3_ENVIRONMENT, "AWS_ENDPOINT_URL": self.s3_endpoint}
        import boto3  # type: ignore[import-untyped]

        client = boto3.client("s3", endpoint_url=self.s3_endpoint, **_credentials())
        for bucket in filter(None, (block.mark("s3") or "").split(",")):
            # A bucket may have been made for an earlier block of the same page.
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket=bucket)
        return env

    def commands(self, block: Block) -> str:
        if "postgres" not in block.marks:
            return block.text
        url = self.database()
        return re.sub(r"postgresql://\S+", lambda _m: url, block.text)

    def shell(self, block: Block) -> str:
        env = self.environment(block)
        setup = block.mark("setup")
        if setup is not None:
            code, printed = self.session.run(setup, env=env)
            assert code == 0, f"{block.where}: its setup exited {code}:\n{printed}"
        if "background" in block.marks:
            until = block.mark("until")
            assert until, f'{block.where}: background needs until="command"'
            return self.session.background(block, until, stop="stop" in block.marks, env=env)
        timeout = float(block.mark("timeout") or 300)
        code, printed = self.session.run(self.commands(block), env=env, timeout=timeout)
        expected = int(block.mark("exit") or 0)
        assert code == expected, f"{block.where}: exit {code}, expected {expected}:\n{printed}"
        return printed

    def output(self, block: Block) -> None:
        if "skip" in block.marks:
            return
        command = block.mark("output-of")
        if command is not None:
            code, printed = self.session.run(command)
            expected = int(block.mark("exit") or 0)
            assert code == expected, f"{block.where}: `{command}` exit {code}:\n{printed}"
        elif self.last is None:
            raise AssertionError(
                f"{block.where}: an output block with no command before it: mark it "
                'output-of="command" or skip="why"'
            )
        elif self.last[1] is None:
            return  # the output of a command that was not run
        else:
            printed = self.last[1]
        mismatch = output_mismatch(block.text, printed)
        assert mismatch is None, f"{block.where}: {mismatch}\n--- printed:\n{printed}"

    def python(self, block: Block) -> None:
        name = block.mark("file")
        if name is not None:
            (self.session.cwd / name).write_text(block.text)
        elif "excerpt" not in block.marks:
            program = self.session.root / f".docs-test-{block.line}.py"
            program.write_text(block.text)
            env = self.environment(block)
            code, printed = self.session.run(f'python "{program}"', env=env, substitute=False)
            assert code == 0, f"{block.where}: the program exited {code}:\n{printed}"


def _credentials() -> dict[str, Any]:
    return {
        "aws_access_key_id": S3_ENVIRONMENT["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_ENVIRONMENT["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_ENVIRONMENT["AWS_REGION"],
    }


@pytest.mark.timeout(900)
@pytest.mark.parametrize("page", PAGES)
def test_page_runs_as_written(
    page: str, tmp_path: Path, s3_server: str, empty_databases: Callable[[], str]
) -> None:
    substitutions = {"/path/to/ferryman": str(REPO), "/tmp/": f"{tmp_path}/tmp/"}
    substitutions.update({port: free_port() for port in FREE_PORTS})
    session = Session(tmp_path, substitutions=substitutions, env={})
    passed = False
    try:
        PageRun(session, s3_server, empty_databases).follow(page)
        passed = True
    finally:
        session.close(check=lambda: passed)


@pytest.mark.parametrize("block", EXCERPTS, ids=[b.where for b in EXCERPTS])
def test_excerpt_is_lines_of_its_file(block: Block) -> None:
    source = REPO / str(block.mark("excerpt"))
    mismatch = excerpt_mismatch(block.text, source.read_text())
    assert mismatch is None, f"{block.where} is marked as an excerpt of {source}: {mismatch}"


def test_the_readme_snippet_is_the_demo_pipeline() -> None:
    [snippet, *_] = [b for b in blocks(REPO, "README.md") if b.lang == "python"]
    assert snippet.mark("excerpt") == "examples/demo/pipeline.py"
    assert excerpt_mismatch(snippet.text, (REPO / "examples/demo/pipeline.py").read_text()) is None
