"""The long storm: the crash storms, longer and on every store, until 1,000 SIGKILLs.

``make soak`` (``python -m tests.crash.soak``) runs each storm of
``tests/crash`` with a longer length than the suite gives it, on SQLite,
PostgreSQL and (the storms parametrised by store) MariaDB, where the suite
runs the biggest storms smaller:

* ``workers`` — ``test_crash_storm.py``: worker processes SIGKILLed while
  they run jobs that write their effect through ``ctx.transaction()``;
* ``xml pipeline`` — ``test_xml_storm.py``: ``ferryman work`` instances of
  the XML reference pipeline SIGKILLed while they load applications;
* ``sensors`` — ``test_sensor_crash.py``: ``app.run()`` daemons SIGKILLed
  while their poll sensor evaluates;
* ``schedules`` — ``test_schedule_crash.py``: ``app.run()`` daemons SIGKILLed
  while they evaluate a one-second schedule;
* ``uploads`` — ``test_transfer_crash.py``: ``ferryman upload`` SIGKILLed
  mid-upload to SeaweedFS, then run again;
* ``upload jobs`` — ``test_transfer_job_crash.py``: a worker SIGKILLed while
  its job uploads; the retried run resumes the transfer;
* ``queue limits`` — ``test_queue_storm.py``: workers SIGKILLed while they run
  a job limited in concurrency and per concurrency key;
* ``brokers`` — ``tests/brokers/test_storms.py``: ``ferryman run`` SIGKILLed
  while it consumes RabbitMQ, Redis Streams, NATS JetStream and SQS.

Each storm is one pytest run of that test, sized through ``FERRYMAN_STORM_*``
variables, which appends what it did as a JSON line to the file named by
``FERRYMAN_STORM_REPORT`` (see ``tests/crash/support.py``). Rounds of all
storms repeat until the kills add up to ``--kills``; then a table says, per
storm and store: kills, items (runs, files or objects), lost and duplicated.
*Lost*: a run without its effect, a file without its run, an object not
equal to its file. *Duplicated*: an effect applied twice, a file with two
runs, a part uploaded again beyond those in flight at the kill. The exit
status is 1 if anything was lost or duplicated, a storm failed, or the kills
fell short.

It lives next to the storms, not in ``bench/``: it measures no speed, it
runs the crash tests with their fixtures (a database per test, SeaweedFS),
and its verdict is theirs. At ``--scale 1`` one round of the storms then
run (on SQLite and PostgreSQL, without the XML storm) made about 1,200
kills in about 20 minutes on two cores; MariaDB and the XML storm add to it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, kw_only=True)
class Storm:
    name: str
    test: str  # pytest node id, without the store parameter
    parametrised: bool  # by the store_url fixture; otherwise FERRYMAN_STORM_STORE picks
    settings: dict[str, float]  # FERRYMAN_STORM_<NAME>, at --scale 1
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def stores(self) -> tuple[str, ...]:
        """Every store for a storm parametrised by store; else the two it can pick."""
        return STORES if self.parametrised else STORES[:2]

    def node(self, store: str) -> str:
        return f"{self.test}[{store}]" if self.parametrised else self.test

    def environment(self, store: str, scale: float) -> dict[str, str]:
        env = {
            f"FERRYMAN_STORM_{k}": f"{max(1, round(v * scale))}" for k, v in self.settings.items()
        }
        env["FERRYMAN_STORM_FULL"] = "1"  # no store runs the suite's small variant here
        env.update({f"FERRYMAN_STORM_{k}": f"{lo},{hi}" for k, (lo, hi) in self.ranges.items()})
        if not self.parametrised:
            env["FERRYMAN_STORM_STORE"] = store
        return env


STORMS = (
    # About 1.8 kills a second; the runs outlast the storm so it ends on time.
    Storm(
        name="workers",
        test="tests/crash/test_crash_storm.py::test_crash_storm_applies_every_effect_exactly_once",
        parametrised=True,
        settings={"SECONDS": 240, "RUNS": 12_000},
        ranges={"KILL_INTERVAL": (0.2, 0.8)},
    ),
    # About two kills a second; 2,000 applications at the suite's pace, more here.
    Storm(
        name="xml pipeline",
        test="tests/crash/test_xml_storm.py::test_xml_pipeline_loads_each_application_once_through_a_kill_storm",
        parametrised=True,
        settings={"SECONDS": 120, "APPS": 6_000},
    ),
    # About one kill a second: each waits for a fresh daemon to evaluate.
    Storm(
        name="sensors",
        test="tests/crash/test_sensor_crash.py::test_sigkill_during_evaluations_loses_and_doubles_nothing",
        parametrised=True,
        settings={"SECONDS": 150, "KILLS": 150},
    ),
    # Ticks of a fake clock ten times faster than real time: 150 s, a kill every 0.5-1.5 s.
    Storm(
        name="schedules",
        test="tests/crash/test_schedule_crash.py::test_sigkilled_daemons_run_each_tick_exactly_once",
        parametrised=True,
        settings={"SCHEDULE_TICKS": 1500},
    ),
    # One kill per 30-60 MiB upload: 5-12 s each.
    Storm(
        name="uploads",
        test="tests/crash/test_transfer_crash.py::test_killed_uploads_resume_to_the_exact_object",
        parametrised=False,
        settings={"ITERATIONS": 15, "SECONDS": 600},
    ),
    Storm(
        name="upload jobs",
        test="tests/crash/test_transfer_job_crash.py::test_a_killed_worker_s_upload_is_resumed_by_the_retried_run",
        parametrised=False,
        settings={"ITERATIONS": 5},
    ),
    # Queue limits: 2,000 runs over 20 keys, four workers, 100 SIGKILLs.
    Storm(
        name="queue limits",
        test="tests/crash/test_queue_storm.py::test_keys_never_overlap_and_the_limit_holds_through_a_kill_storm",
        parametrised=True,
        settings={"QUEUE_RUNS": 2_000, "QUEUE_KILLS": 100},
    ),
    # Each broker source in turn (RabbitMQ, Redis, NATS, SQS): 10,000 messages
    # while ``ferryman run`` is SIGKILLed 50 times; about 4 min per broker.
    Storm(
        name="brokers",
        test="tests/brokers/test_storms.py::test_sigkilled_consumers_make_exactly_one_run_per_message",
        parametrised=False,
        settings={"BROKER_MESSAGES": 10_000, "BROKER_KILLS": 50},
    ),
)
STORES = ("sqlite", "postgres", "mariadb")
COUNTS = ("kills", "items", "lost", "duplicated")


@dataclass
class Row:
    """One storm on one store, over every round."""

    unit: str = ""
    runs: int = 0  # pytest runs of the storm
    failed: list[str] = field(default_factory=list)  # logs of the runs that failed
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))


def run_storm(
    storm: Storm, store: str, scale: float, logs: Path, round_: int
) -> tuple[int, list[dict[str, Any]], Path]:
    """One pytest run of ``storm`` on ``store``: its exit status, its JSON lines, its log."""
    report = logs / f"round{round_}-{storm.name.replace(' ', '-')}-{store}.jsonl"
    log = report.with_suffix(".log")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMAN_STORM_")}
    env.update(storm.environment(store, scale))
    env["FERRYMAN_STORM_REPORT"] = str(report)
    command = [sys.executable, "-m", "pytest", storm.node(store), "-q", "-p", "no:cacheprovider"]
    with log.open("wb") as output:
        done = subprocess.run(command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT)
    lines = report.read_text().splitlines() if report.exists() else []
    return done.returncode, [json.loads(line) for line in lines], log


def table(rows: dict[tuple[str, str], Row]) -> str:
    header = ("storm", "store", "kills", "items", "lost", "duplicated", "pytest runs")
    body = [
        (
            storm,
            store,
            str(row.counts["kills"]),
            f"{row.counts['items']} {row.unit}",
            str(row.counts["lost"]),
            str(row.counts["duplicated"]),
            f"{row.runs}" + (f" ({len(row.failed)} failed)" if row.failed else ""),
        )
        for (storm, store), row in rows.items()
    ]
    total = {name: sum(row.counts[name] for row in rows.values()) for name in COUNTS}
    body.append(
        ("total", "", str(total["kills"]), "", str(total["lost"]), str(total["duplicated"]), "")
    )
    widths = [max(len(cells[i]) for cells in (header, *body)) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(cells) for cells in body)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.crash.soak", description=__doc__)
    parser.add_argument("--kills", type=int, default=1000, help="SIGKILLs to reach (1000)")
    parser.add_argument("--scale", type=float, default=1.0, help="storm lengths times this (1)")
    parser.add_argument("--max-rounds", type=int, default=5, help="give up after (5)")
    parser.add_argument("--logs", type=Path, help="keep the storms' logs here (a new temp dir)")
    args = parser.parse_args(argv)
    logs = args.logs or Path(tempfile.mkdtemp(prefix="ferryman-soak-"))
    logs.mkdir(parents=True, exist_ok=True)
    print(f"soak: until {args.kills} kills, storm scale {args.scale:g}, logs in {logs}", flush=True)

    rows: dict[tuple[str, str], Row] = {
        (storm.name, store): Row() for storm in STORMS for store in storm.stores
    }
    kills = 0
    started = time.monotonic()
    for round_ in range(1, args.max_rounds + 1):
        for storm in STORMS:
            for store in storm.stores:
                status, lines, log = run_storm(storm, store, args.scale, logs, round_)
                row = rows[storm.name, store]
                row.runs += 1
                if status != 0 or not lines:
                    row.failed.append(str(log))
                for line in lines:
                    row.unit = line["unit"]
                    for name in COUNTS:
                        row.counts[name] += line[name]
                kills += sum(line["kills"] for line in lines)
                minutes = (time.monotonic() - started) / 60
                done = ", ".join(f"{name} {sum(line[name] for line in lines)}" for name in COUNTS)
                verdict = "passed" if status == 0 else f"FAILED (exit {status}, see {log})"
                print(
                    f"[{minutes:5.1f} min] round {round_} {storm.name} on {store}: {done}: "
                    f"{verdict}; {kills} kills so far",
                    flush=True,
                )
        if kills >= args.kills:
            break

    print(table(rows))
    lost = sum(row.counts["lost"] for row in rows.values())
    duplicated = sum(row.counts["duplicated"] for row in rows.values())
    failed = [log for row in rows.values() for log in row.failed]
    print(
        f"soak: {kills} kills in {(time.monotonic() - started) / 60:.1f} min: {lost} lost, "
        f"{duplicated} duplicated, {len(failed)} storm runs failed"
        + "".join(f"\n  failed: {log}" for log in failed)
    )
    return 1 if lost or duplicated or failed or kills < args.kills else 0


if __name__ == "__main__":
    sys.exit(main())
