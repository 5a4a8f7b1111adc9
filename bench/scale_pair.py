"""Two checkouts side by side on the stores ``scale.py`` seeded: each size, each checkout.

Starts ``ferryman serve`` from each checkout (``--before`` and ``--after``,
folders holding ``src/``) on each seeded store (``scale.py --seed-only`` with
the same ``--name`` and ``--sizes``), the saved counts deleted before each
start, so each start counts every run and folds the whole log. It prints the
time until each answers and its first overview and ``/metrics``, then the p95
(and p50) of every endpoint of ``bench/web.py`` with the requests interleaved:
each round sends one request to every server in turn, so the load of the
moment weighs on all of them alike (two halves run one after the other, as
``scale.py`` runs them, each see a different machine).

    .venv/bin/python bench/scale_pair.py --before ../main --after . --stores postgres,sqlite \\
        --sizes 100000,1000000 --name webscale --requests 20
"""

from __future__ import annotations

import os
import sys

if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)  # bench/queue.py would shadow the standard library's queue module

import argparse
import random
import subprocess
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from bench import scale, timing, web  # noqa: E402  (after the path set-up above)

Server = tuple[str, int]  # checkout, size


def start_all(
    kind: str, urls: dict[int, str], checkouts: dict[str, Path]
) -> dict[Server, tuple[subprocess.Popen[bytes], str]]:
    started = {}
    for size, url in urls.items():
        for label, checkout in checkouts.items():
            web.forget_counts(url)
            timing.REPO = checkout  # serve() runs ferryman from this checkout's src/
            process, base, cold = timing.cold_start(url, start_timeout=3600)
            figures = ", ".join(f"{name} {ms:,.0f} ms" for name, ms in cold.items())
            print(f"{kind} {label} {size:,}: {figures}", flush=True)
            started[(label, size)] = (process, base)
    return started


def interleaved(kind: str, bases: dict[Server, str], sizes: list[int], requests: int) -> None:
    clients = {server: httpx.Client(base_url=base, timeout=120) for server, base in bases.items()}
    paths = {size: web.endpoints(size, random.Random(7)) for size in sizes}
    header = "".join(f"{f'{label} {size:,}':>22}" for label, size in clients)
    print(f"\n{kind}: p95 ms (p50), {requests} rounds of one request to each server")
    print(f"{'endpoint':<34}{header}")
    for name in paths[sizes[0]]:
        chosen = {server: paths[server[1]][name] for server in clients}
        timings = timing.in_turns(clients, chosen, requests, warm=2)
        cells = "".join(
            f"{timing.percentile(t, 0.95):>13.1f} ({timing.percentile(t, 0.5):5.1f})"
            for t in timings.values()
        )
        print(f"{name:<34}{cells}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="a checkout (holds src/)")
    parser.add_argument("--after", type=Path, default=REPO)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--stores", default="postgres,sqlite")
    parser.add_argument("--requests", type=int, default=20, help="rounds per endpoint")
    parser.add_argument("--name", default="ferryman_bench_scale", help="as scale.py's --name")
    parser.add_argument("--pg", default=os.environ.get("FERRYMAN_BENCH_PG", scale.DEFAULT_PG))
    args = parser.parse_args()
    sizes = sorted(int(size) for size in args.sizes.split(","))
    scale.PREFIX = args.name
    checkouts = {"before": args.before.resolve(), "after": args.after.resolve()}
    for kind in args.stores.split(","):
        urls = {
            size: scale.seed_sqlite(size, False)
            if kind == "sqlite"
            else scale.seed_postgres(args.pg, size, False)
            for size in sizes
        }
        started = start_all(kind, urls, checkouts)
        try:
            interleaved(
                kind, {server: base for server, (_, base) in started.items()}, sizes, args.requests
            )
        finally:
            for process, _ in started.values():
                process.terminate()


if __name__ == "__main__":
    main()
