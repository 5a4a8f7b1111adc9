"""How long ferryman takes to start: ``import ferryman``, ``ferryman --help``, a no-op tick.

Each command runs N times as a fresh process (after one warm-up run that also
writes the bytecode caches, as an installed package has them); the table
shows the median and the best wall-clock time and the median CPU time of the
process (user + system, which a loaded machine does not inflate as much).
Targets: ``import ferryman`` < 0.25 s, ``ferryman --help`` < 0.5 s and
``ferryman tick`` of an app with one no-op poll sensor < 1 s, on an idle
machine. The tick's SQLite store is created by the warm-up run.

    .venv/bin/python bench/startup.py [--runs 10] [--src path/to/other/src]

``--src`` measures another checkout's code with this interpreter (its
bytecode goes to a cache folder of its own, never into that checkout).
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder comes first on sys.path, and bench/queue.py
# would shadow the standard library's queue module.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import argparse
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"import ferryman": 0.25, "ferryman --help": 0.5, "ferryman tick (no-op sensor)": 1.0}

NOOP_APP = """\
import ferryman as fm

app = fm.App("sqlite:///tick.db")


@app.job()
def load(ctx: fm.JobContext, payload: object) -> None:
    pass


@app.poll_sensor(job="load", interval=0.0)
def nothing(ctx: fm.SensorContext, cursor: str | None) -> fm.SensorResult:
    return fm.SensorResult(run_requests=[], cursor=cursor)
"""


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall-clock and CPU seconds of one run of ``command``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--src", type=Path, default=REPO / "src", help="the code to start")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMAN_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # installed packages have their .pyc files
    env["PYTHONPATH"] = str(args.src.resolve())
    env["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / "ferryman-startup-pycache")
    python = sys.executable
    cli = [python, "-c", "from ferryman.cli import main; main()"]
    with tempfile.TemporaryDirectory(prefix="ferryman-startup-") as folder:
        cwd = Path(folder)
        (cwd / "noop_app.py").write_text(NOOP_APP)
        commands = {
            "import ferryman": [python, "-c", "import ferryman"],
            "ferryman --help": [*cli, "--help"],
            "ferryman tick (no-op sensor)": [*cli, "--app", "noop_app:app", "tick", "--json"],
        }
        print(f"load average {os.getloadavg()[0]:.2f}; {args.runs} runs each", flush=True)
        print(f"{'command':<30}{'median s':>10}{'best s':>9}{'CPU s':>8}{'target s':>10}")
        for name, command in commands.items():
            timed(command, cwd, env)  # warm-up: bytecode caches, the tick's store
            runs = [timed(command, cwd, env) for _ in range(args.runs)]
            walls = [wall for wall, _ in runs]
            cpu = statistics.median(c for _, c in runs)
            print(
                f"{name:<30}{statistics.median(walls):>10.3f}{min(walls):>9.3f}"
                f"{cpu:>8.3f}{TARGETS[name]:>10.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
