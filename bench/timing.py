"""Timing the real dashboard server, shared by ``bench/web.py`` and ``bench/scale.py``.

:func:`serve` starts ``ferryman serve`` on a free loopback port in a process
of its own; :func:`cold_start` times how long it takes to answer and then its
first overview and first ``/metrics`` on their own (what the server does
as it starts, while it answers, is in ``ferryman.web.serving.warm_up``); :func:`measure`
times requests to one endpoint after three to warm connections and caches,
and :func:`in_turns` to several servers, one request to each in turn.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import TypeVar

import httpx

K = TypeVar("K", bound=Hashable)

REPO = Path(__file__).resolve().parents[1]
TOKEN = "bench-token-0123456789"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def serve(url: str, start_timeout: float = 60.0) -> tuple[subprocess.Popen[bytes], str]:
    """``ferryman serve`` on ``url``'s store, once it answers: the process and its base URL."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMAN_")}
    env["FERRYMAN_API_TOKEN"] = TOKEN
    env["PYTHONPATH"] = str(REPO / "src")
    process = subprocess.Popen(
        [sys.executable, "-m", "ferryman", "--store", url, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + start_timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/api/sensors", timeout=5).status_code == 200:
                return process, base
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"ferryman serve did not start on {base}")


def cold_start(
    url: str, start_timeout: float = 600.0
) -> tuple[subprocess.Popen[bytes], str, dict[str, float]]:
    """:func:`serve`, timed: milliseconds until it answers, then to its first overview and
    its first ``/metrics``."""
    figures: dict[str, float] = {}
    started = time.perf_counter()
    process, base = serve(url, start_timeout)
    figures["server start until it answers"] = (time.perf_counter() - started) * 1000
    try:
        for name, path in (
            ("first overview after start", "/"),
            ("first /metrics after start", "/metrics"),
        ):
            started = time.perf_counter()
            httpx.get(f"{base}{path}", timeout=start_timeout).raise_for_status()
            figures[name] = (time.perf_counter() - started) * 1000
    except BaseException:
        process.kill()
        raise
    return process, base, figures


def measure(base: str, paths: list[str], requests: int) -> list[float]:
    """Milliseconds of ``requests`` GETs taking ``paths`` in turn, after three to warm up."""
    with httpx.Client(base_url=base, timeout=60) as client:
        return in_turns({base: client}, {base: paths}, requests)[base]


def in_turns(
    clients: Mapping[K, httpx.Client], paths: Mapping[K, list[str]], requests: int, warm: int = 3
) -> dict[K, list[float]]:
    """Milliseconds of ``requests`` rounds of one GET to each server of ``clients`` in turn,
    each taking its ``paths`` in turn, after ``warm`` to each to warm caches and
    connections. Servers timed in turns meet the same load of a shared machine."""
    for key, client in clients.items():
        for path in paths[key][:warm]:
            client.get(path).raise_for_status()
    timings: dict[K, list[float]] = {key: [] for key in clients}
    for index in range(requests):
        for key, client in clients.items():
            listed = paths[key]
            started = time.perf_counter()
            response = client.get(listed[index % len(listed)])
            timings[key].append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
    return timings


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]
