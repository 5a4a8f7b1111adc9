"""Several worker processes under one supervisor, for CPU-bound jobs.

The supervisor forks ``processes`` children before it starts any thread of its
own; each child is an ordinary threaded worker with its own worker id, its own
connections and its own leases, exactly like a separate ``ferryman work``.
SIGTERM and SIGINT are passed on to the children, which drain and release as
usual. A child that dies while the supervisor is not stopping is replaced:
its runs come back to the queue when their leases expire.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, fields
from types import FrameType

from ferryman.worker.worker import Worker, WorkReport

log = logging.getLogger("ferryman.worker")

RESTART_DELAY = 1.0


def run_processes(
    make_worker: Callable[[], Worker],
    *,
    processes: int,
    until_idle: bool,
    after_fork: Callable[[], None],
    on_started: Callable[[], None] | None = None,
) -> WorkReport:
    if threading.active_count() > 1:
        log.warning("forking worker processes while other threads run; prefer starting them first")
    children: dict[int, int] = {}  # pid -> read end of its report pipe
    stopping = False
    total = WorkReport(worker_id=f"supervisor:{os.getpid()}")

    def spawn() -> None:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            os.close(read_end)
            code = 0
            try:
                after_fork()
                report = make_worker().run(until_idle=until_idle, handle_signals=True)
                os.write(write_end, json.dumps(asdict(report)).encode())
            except BaseException:
                log.exception("worker process failed")
                code = 1
            finally:
                os.close(write_end)
                os._exit(code)
        os.close(write_end)
        children[pid] = read_end

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for _ in range(processes):
            spawn()
        if on_started is not None:
            on_started()
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            read_end = children.pop(pid, None)
            if read_end is None:
                continue
            _collect(read_end, total)
            code = os.waitstatus_to_exitcode(status)
            if code != 0 and not stopping and not until_idle:
                log.warning("worker process %d exited with %d; starting a replacement", pid, code)
                time.sleep(RESTART_DELAY)
                spawn()
            elif code != 0:
                total.errors.append(f"worker process {pid} exited with {code}")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return total


def _collect(read_end: int, total: WorkReport) -> None:
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    if not chunks:
        return
    report = json.loads(b"".join(chunks))
    for item in fields(WorkReport):
        if item.name == "worker_id":
            continue
        value = report.get(item.name)
        if isinstance(value, int):
            setattr(total, item.name, getattr(total, item.name) + value)
        elif isinstance(value, list):
            getattr(total, item.name).extend(value)
