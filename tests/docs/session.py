"""Follow one page of the docs as a reader would: its blocks in order, in a scratch directory.

Each ``sh`` block runs in ``bash`` (``set -eo pipefail``): the variables it
exports and the directory it ends in carry over to the next block, as in a
terminal. The scratch directory stands for the repository root the docs
assume (``.venv`` and ``examples`` are links to this checkout's) and for
``/tmp`` (see :data:`SUBSTITUTIONS`); ``HOME`` is empty, so no AWS profile of
whoever runs the tests leaks in. ``curl`` fails on an HTTP error status
(``--fail-with-body``), so a request the server refuses fails its block.

Every process a block starts (a daemon, a server put in the background with
``&``) is in that block's process group, which is stopped when the page ends.

Output blocks are compared line by line with what the command printed, after
both are normalised (:func:`tokens`): each expected line's words must appear,
in order, in one printed line, and the expected lines in order. Table
borders, times, durations and worker ids do not count; ``…`` ends a word
that may go on.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.docs.markdown import Block
from tests.helpers import wait_until

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
BLOCK_TIMEOUT = 300.0
DAEMON_START = 120.0  # seconds a background block's `until` may take to succeed
DAEMON_STOP = 60.0  # seconds a daemon may take to exit after SIGTERM

_BOX = re.compile("[\u2500-\u257f]")
_VARIABLE = [
    (re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d\d:\d\d|Z)?"), "<time>"),
    (re.compile(r"\b\d\d-\d\d \d\d:\d\d:\d\d\b"), "<time>"),
    (re.compile(r"\b\d+(?:\.\d+)?s\b"), "<seconds>"),
    (re.compile(r"\b[\w.-]+:\d+:[0-9a-f]{8}\b"), "<worker>"),
]


def tokens(line: str) -> list[str]:
    """The words of ``line`` that must match: no borders, variable fields as placeholders."""
    line = _BOX.sub(" ", line)
    for pattern, placeholder in _VARIABLE:
        line = pattern.sub(placeholder, line)
    return line.split()


def _word_matches(expected: str, actual: str) -> bool:
    for ellipsis in ("…", "..."):
        if expected.endswith(ellipsis):
            return actual.startswith(expected[: -len(ellipsis)])
    return expected == actual


def _line_matches(expected: list[str], actual: list[str]) -> bool:
    position = 0
    for word in expected:
        if word in ("…", "..."):
            continue  # a gap: any words, which a subsequence allows anyway
        while position < len(actual) and not _word_matches(word, actual[position]):
            position += 1
        if position == len(actual):
            return False
        position += 1
    return True


def output_mismatch(expected: str, printed: str) -> str | None:
    """Why ``printed`` is not what ``expected`` shows, or None when it is."""
    actual = [tokens(line) for line in printed.splitlines()]
    position = 0
    for line in expected.splitlines():
        wanted = tokens(line)
        if not wanted:
            continue
        # The same printed line may match the next expected one too: the docs
        # show some table rows wrapped over two lines.
        found = next(
            (i for i in range(position, len(actual)) if _line_matches(wanted, actual[i])), None
        )
        if found is None:
            return f"no printed line (from line {position + 1} on) matches:\n  {line}"
        position = found
    return None


def excerpt_mismatch(block: str, source: str) -> str | None:
    """Why ``block`` is not lines of ``source`` in order, or None when it is.

    Lines left out of the excerpt are fine (docstrings, some comments); a line
    may also leave out the file's comment at its end. The excerpt may be
    dedented by a constant amount (a function body shown at top level). A
    line holding only ``...`` marks a cut.
    """
    lines = source.splitlines()
    position = 0
    indent: int | None = None
    for line in block.splitlines():
        if not line.strip() or line.strip() == "...":
            continue
        line = line.rstrip()
        while position < len(lines):
            found = _excerpt_indent(line, lines[position], indent)
            if found is not None:
                indent = found
                break
            position += 1
        if position == len(lines):
            return f"this line is not in the file (in this order):\n  {line}"
        position += 1
    return None


def _excerpt_indent(line: str, source_line: str, indent: int | None) -> int | None:
    """The indentation ``line`` lost if it is ``source_line`` (or it without its comment)."""
    for candidate in (source_line.rstrip(), source_line.split("  #")[0].rstrip()):
        if not candidate.endswith(line):
            continue
        lost = len(candidate) - len(line)
        if candidate[:lost].strip() == "" and indent in (None, lost):
            return lost
    return None


class Session:
    """A scratch directory and shell state for one page; :meth:`close` stops what it started."""

    def __init__(self, root: Path, *, substitutions: dict[str, str], env: dict[str, str]) -> None:
        self.root = root
        self.substitutions = substitutions
        (root / "home").mkdir()
        (root / "tmp").mkdir()
        (root / ".venv").symlink_to(VENV_BIN.parent)
        (root / "examples").symlink_to(REPO / "examples")
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("FERRYMAN_", "AWS_"))},
            "HOME": str(root / "home"),
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
            "COLUMNS": "200",
            "AWS_EC2_METADATA_DISABLED": "true",  # no instance metadata to wait for here
            **env,
        }
        self._state = root / ".docs-test-env"
        self._cwd = root / ".docs-test-cwd"
        self._cwd.write_text(str(root))
        self._groups: list[subprocess.Popen[bytes]] = []
        self._daemons: list[tuple[Block, subprocess.Popen[bytes], Path]] = []
        self._count = 0

    # -- text in docs terms and in this machine's terms ------------------------

    def substitute(self, text: str) -> str:
        # One pass over the text: what one substitution wrote is never read by
        # another (a checkout under /tmp/ must not be moved by the "/tmp/" rule).
        alternatives = []
        for doc in sorted(self.substitutions, key=len, reverse=True):
            after = r"(?!\w)" if doc[-1].isalnum() else ""
            alternatives.append(f"{re.escape(doc)}{after}")
        pattern = rf"(?<![\w.-])(?:{'|'.join(alternatives)})"
        return re.sub(pattern, lambda found: self.substitutions[found.group(0)], text)

    def restore(self, text: str) -> str:
        """``text`` in the docs' terms; the scratch directory itself reads as ``/tmp/``."""
        pairs = [*self.substitutions.items(), ("/tmp/", f"{self.root}/")]
        for doc, here in sorted(pairs, key=lambda pair: -len(pair[1])):
            text = text.replace(here, doc)
        return text

    @property
    def cwd(self) -> Path:
        return Path(self._cwd.read_text().strip())

    # -- running ---------------------------------------------------------------

    def _script(self, commands: str, *, substitute: bool) -> str:
        return "\n".join(
            [
                f'if [ -f "{self._state}" ]; then source "{self._state}"; fi',
                f'cd "$(cat "{self._cwd}")"',
                'curl() { command curl --fail-with-body "$@"; }',
                f'trap \'export -p > "{self._state}"; pwd > "{self._cwd}"\' EXIT',
                "set -eo pipefail",
                self.substitute(commands) if substitute else commands,
            ]
        )

    def _start(
        self, commands: str, env: dict[str, str], *, substitute: bool = True
    ) -> tuple[subprocess.Popen[bytes], Path]:
        self._count += 1
        log = self.root / f".docs-test-{self._count}.out"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                ["bash", "-c", self._script(commands, substitute=substitute)],
                cwd=self.root,
                env={**self.env, **env},
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped as a whole
            )
        self._groups.append(process)
        return process, log

    def run(
        self,
        commands: str,
        *,
        env: dict[str, str] | None = None,
        timeout: float = BLOCK_TIMEOUT,
        substitute: bool = True,
    ) -> tuple[int, str]:
        """Run ``commands``; their exit status and output (stdout and stderr, docs terms).

        ``commands`` are in the docs' terms (see :meth:`substitute`) unless
        ``substitute`` is false: a command of the test's own, with real paths.
        """
        process, log = self._start(commands, env or {}, substitute=substitute)
        return self._wait(process, log, timeout, commands), self._read(log)

    def _wait(self, process: subprocess.Popen[bytes], log: Path, timeout: float, what: str) -> int:
        """``process``'s exit status; killed, with its output in the error, after ``timeout``."""
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()
            raise AssertionError(
                f"still running after {timeout:.0f}s:\n{what}\n{self._read(log)}"
            ) from None

    def _read(self, log: Path) -> str:
        return self.restore(log.read_text(errors="replace"))

    def background(self, block: Block, until: str, *, stop: bool, env: dict[str, str]) -> str:
        """Start ``block`` in the background and wait until ``until`` succeeds.

        The block is one command, which replaces the shell (``exec``): the
        exit status seen after SIGTERM is the daemon's own.
        """
        command = block.text.strip()
        if "\n" in command.replace("\\\n", ""):
            raise AssertionError(f"{block.where}: a background block is one command")
        process, log = self._start(f"exec {command}", env)

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"exited ({process.returncode}) before `{until}` succeeded")
            return self.run(until, timeout=30)[0] == 0

        try:
            wait_until(ready, timeout=DAEMON_START, what=f"`{until}`")
        except AssertionError as exc:
            raise AssertionError(f"{block.where}: {exc}:\n{self._read(log)}") from None
        if stop:
            self._stop(block, process, log)
        else:
            self._daemons.append((block, process, log))
        return self._read(log)

    def _stop(self, block: Block, process: subprocess.Popen[bytes], log: Path) -> None:
        _signal_group(process, signal.SIGTERM)
        code = self._wait(process, log, DAEMON_STOP, f"{block.where}, sent SIGTERM")
        if code != 0:
            raise AssertionError(
                f"{block.where}: exited {code} on SIGTERM, expected 0:\n{self._read(log)}"
            )

    def close(self, check: Callable[[], bool] = lambda: True) -> None:
        """Stop the daemons (each must exit 0 on SIGTERM, when ``check()``), then the rest."""
        try:
            for block, process, log in self._daemons:
                if check():
                    self._stop(block, process, log)
        finally:
            for process in self._groups:
                _signal_group(process, signal.SIGKILL)
                process.wait()


def _signal_group(process: subprocess.Popen[bytes], number: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group has already exited
        os.killpg(process.pid, number)


__all__ = ["REPO", "Session", "excerpt_mismatch", "output_mismatch", "tokens"]
