"""``python -m tests.mutants``: apply each mutation to a copy of src/ and run its tests.

Each mutation is applied alone to a fresh copy of ``src/ferryman`` in a
temporary directory (the worktree is never touched); its tests run with that
copy first on ``PYTHONPATH``, which the processes they start (workers,
daemons, ``ferryman`` commands) inherit. A mutation is *killed* when one of
its tests fails, and the first failing test is reported; it *survived* when
they all pass. The exit status is 1 if any mutation survived or could not be
applied (a snippet not found exactly once, a test id that matches nothing).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tests.mutants.catalogue import MUTATIONS, REPO, SOURCE, Mutation, promises

KILLED, SURVIVED, BROKEN = "killed", "SURVIVED", "BROKEN"
_FAILED_LINE = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Result:
    mutation: Mutation
    verdict: str
    detail: str  # the killing test, or why the mutation could not be checked
    seconds: float


def mutated_copy(mutation: Mutation, into: Path) -> None:
    """``src/ferryman`` copied into ``into``, with the mutation's edits applied."""
    shutil.copytree(
        SOURCE / "ferryman", into / "ferryman", ignore=shutil.ignore_patterns("__pycache__")
    )
    for edit in mutation.edits:
        path = into / edit.path
        text = path.read_text()
        found = text.count(edit.original)
        if found != 1:
            raise ValueError(f"{edit.path}: the snippet occurs {found} times, not once")
        text = text.replace(edit.original, edit.replacement)
        compile(text, str(path), "exec")  # a SyntaxError is a broken mutation, not a kill
        path.write_text(text)


def environment(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(copy), env.get("PYTHONPATH")]))
    return env


def check_children_import(copy: Path) -> None:
    """A grandchild process of the tests imports ferryman from ``copy``, not from src/."""
    probe = (
        "import subprocess, sys; sys.stdout.write(subprocess.run([sys.executable, '-c', "
        "'import ferryman; print(ferryman.__file__)'], capture_output=True, text=True).stdout)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env=environment(copy),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    imported = Path(done.stdout.strip())
    if not imported.is_relative_to(copy):
        raise SystemExit(f"a child process imports ferryman from {imported}, not from {copy}")
    print(f"child processes import the mutated copy ({imported})")


def run_tests(mutation: Mutation, copy: Path, log: Path) -> tuple[str, str]:
    command = [
        sys.executable,
        *("-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"),
        *("-o", f"timeout={mutation.timeout:g}"),
        *mutation.tests,
    ]
    # Beyond pytest-timeout's own limit: a hang that even it cannot break.
    wall = mutation.timeout * len(mutation.tests) + 120
    with log.open("w") as output:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=environment(copy),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = process.wait(wall)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return BROKEN, f"the tests ran past {wall:g}s (see {log})"
    text = log.read_text(errors="replace")
    if code == 0:
        return SURVIVED, "every test passed"
    failed = _FAILED_LINE.search(text)
    if code == 1 and failed is not None:
        return KILLED, failed.group(1)
    last = text.strip().splitlines()[-1] if text.strip() else ""
    return BROKEN, f"pytest exited {code}: {last} (see {log})"


def check(mutation: Mutation, logs: Path) -> Result:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ferryman-mutant-") as tmp:
        copy = Path(tmp)
        try:
            mutated_copy(mutation, copy)
        except (ValueError, SyntaxError) as exc:
            return Result(mutation, BROKEN, str(exc), time.monotonic() - started)
        log = logs / f"{slug(mutation.name)}.log"
        verdict, detail = run_tests(mutation, copy, log)
    return Result(mutation, verdict, detail, time.monotonic() - started)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def table(results: Sequence[Result]) -> Table:
    shown = Table(title="mutations of the code behind docs/guarantees.md")
    shown.add_column("#", justify="right")
    shown.add_column("mutation")
    shown.add_column("promise")
    shown.add_column("killed by")
    shown.add_column("s", justify="right")
    for number, result in enumerate(results, 1):
        killer = result.detail.split("::")[-1] if result.verdict == KILLED else result.verdict
        style = None if result.verdict == KILLED else "bold red"
        shown.add_row(
            str(number),
            result.mutation.name,
            result.mutation.promise,
            killer if result.verdict == KILLED else f"{killer}: {result.detail}",
            f"{result.seconds:.0f}",
            style=style,
        )
    return shown


def markdown(results: Sequence[Result]) -> str:
    lines = ["| mutation | promise | killed by |", "|---|---|---|"]
    for result in results:
        killer = (
            f"`{result.detail.split('::')[-1]}`" if result.verdict == KILLED else result.verdict
        )
        lines.append(f"| {result.mutation.name} | {result.mutation.promise} | {killer} |")
    return "\n".join(lines)


def baseline(chosen: Sequence[Mutation], jobs: int) -> int:
    """Each mutation's tests on an unchanged copy: a test failing here would kill anything."""
    logs = Path(tempfile.mkdtemp(prefix="ferryman-mutants-baseline-"))
    print(f"the tests of {len(chosen)} mutations on src/ unchanged; pytest logs in {logs}")
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = list(pool.map(lambda m: check(replace(m, edits=()), logs), chosen))
    failing = [r for r in results if r.verdict != SURVIVED]
    for result in failing:
        print(f"  fails unmutated: {result.mutation.name}: {result.detail}")
    minutes = (time.monotonic() - started) / 60
    print(f"{len(results) - len(failing)} of {len(results)} pass unmutated; {minutes:.1f} minutes")
    return 1 if failing else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make mutants", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="mutations checked at once")
    parser.add_argument("--only", action="append", default=[], help="names containing this")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="run each mutation's tests on src/ unchanged instead: they must all pass",
    )
    args = parser.parse_args(argv)

    uncovered = [p for p in promises() if p not in {m.promise for m in MUTATIONS}]
    if uncovered:
        print(f"promises of docs/guarantees.md without a mutation: {uncovered}", file=sys.stderr)
        return 1
    chosen = [m for m in MUTATIONS if not args.only or any(o in m.name for o in args.only)]
    if args.baseline:
        return baseline(chosen, args.jobs)
    logs = Path(tempfile.mkdtemp(prefix="ferryman-mutants-logs-"))
    with tempfile.TemporaryDirectory(prefix="ferryman-mutant-probe-") as probe:
        shutil.copytree(SOURCE / "ferryman", Path(probe) / "ferryman")
        check_children_import(Path(probe))
    print(f"{len(chosen)} mutations, {args.jobs} at a time; pytest logs in {logs}")

    started = time.monotonic()
    printing = threading.Lock()

    def checked(mutation: Mutation) -> Result:
        result = check(mutation, logs)
        with printing:
            print(f"  {result.verdict:8} {result.seconds:5.0f}s  {mutation.name}: {result.detail}")
        return result

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(checked, chosen))
    elapsed = time.monotonic() - started

    console = Console(width=200)
    console.print(table(results))
    killed = sum(r.verdict == KILLED for r in results)
    console.print(
        f"{len(results)} mutations, {killed} killed, {len(results) - killed} not; "
        f"{elapsed / 60:.1f} minutes"
    )
    if args.markdown:
        print(markdown(results))
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
