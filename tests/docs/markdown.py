"""The fenced blocks of a Markdown page, with the ``docs-test`` marks written above them.

A mark is an HTML comment on the line right above a block's opening fence
(blank lines between are allowed), invisible on the rendered page::

    <!-- docs-test: skip="needs a real AWS account" -->
    <!-- docs-test: file=readings.py excerpt=examples/quickstart/readings.py -->

Its words are ``key=value`` pairs or bare flags, split like a shell line, so a
value with spaces is quoted. The keys are listed in :data:`KEYS`, and
``tests/docs/test_docs.py`` says what each one does.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

KEYS = frozenset(
    {
        "skip",  # not run: the value says why (required)
        "file",  # a python block: save it under this name in the current directory
        "excerpt",  # a python block: its lines are lines of this file, in order
        "exit",  # the exit status the block (or output-of) ends with; default 0
        "output-of",  # an output block: run this command and compare its output
        "background",  # a sh block: runs in the background while the page goes on
        "until",  # with background: wait until this command succeeds
        "stop",  # with background: stop it (SIGTERM, exit 0) once `until` succeeds
        "setup",  # commands run before the block, not shown: the reader's own files
        "s3",  # give the block a real S3 endpoint; the value: buckets to create
        "postgres",  # postgresql:// URLs in the block stand for a fresh, empty database
        "timeout",  # seconds the block may take (default 300)
    }
)
_MARK = re.compile(r"^<!--\s*docs-test:(?P<words>.*?)-->\s*$")
_FENCE = re.compile(r"^```(?P<lang>[\w+-]*)\s*$")


@dataclass(frozen=True, kw_only=True)
class Block:
    """One fenced block: where it is, its language (``""`` for none), text and marks."""

    page: str  # path relative to the repository
    line: int  # line of the opening fence, from 1
    lang: str
    text: str
    marks: dict[str, str]

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    def mark(self, key: str, default: str | None = None) -> str | None:
        return self.marks.get(key, default)


def _marks(line: str, where: str) -> dict[str, str]:
    found = _MARK.match(line.strip())
    if found is None:
        return {}
    marks: dict[str, str] = {}
    for word in shlex.split(found["words"]):
        key, _, value = word.partition("=")
        if key not in KEYS:
            raise ValueError(f"{where}: unknown docs-test mark {key!r} (known: {sorted(KEYS)})")
        marks[key] = value
    if "skip" in marks and not marks["skip"]:
        raise ValueError(f'{where}: skip needs its reason: skip="..."')
    return marks


def blocks(repo: Path, page: str) -> list[Block]:
    """Every fenced block of ``page``, in order."""
    lines = (repo / page).read_text().splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        fence = _FENCE.match(lines[index])
        if fence is None:
            index += 1
            continue
        above = index - 1
        while above >= 0 and not lines[above].strip():
            above -= 1
        where = f"{page}:{index + 1}"
        marks = _marks(lines[above], where) if above >= 0 else {}
        end = index + 1
        while end < len(lines) and lines[end].rstrip() != "```":
            end += 1
        if end == len(lines):
            raise ValueError(f"{where}: the block is never closed")
        text = "\n".join(lines[index + 1 : end]) + "\n"
        found.append(Block(page=page, line=index + 1, lang=fence["lang"], text=text, marks=marks))
        index = end + 1
    return found


def pages(repo: Path) -> list[str]:
    """README.md and every page under docs/, relative to the repository."""
    return ["README.md", *sorted(str(p.relative_to(repo)) for p in (repo / "docs").rglob("*.md"))]


__all__ = ["KEYS", "Block", "blocks", "pages"]
