"""``ferryman serve`` and ``ferryman run --serve`` as real processes: binding, tokens, shutdown."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ferryman.cli.output import EXIT_USAGE
from tests.helpers import wait_until
from tests.web.conftest import TOKEN, free_port

REPO = Path(__file__).resolve().parents[2]
APP = "tests.web.served_app:app"


def ferryman(*args: str, store: str, env: dict[str, str] | None = None) -> list[str]:
    return [sys.executable, "-m", "ferryman", "--app", APP, "--store", store, *args]


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMAN_")}
    env.update(extra)
    return env


@pytest.fixture
def store(sqlite_url: str) -> str:
    return sqlite_url


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=output, stderr=output)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def serving(
    processes: list[subprocess.Popen[bytes]],
    command: list[str],
    store: str,
    env: dict[str, str],
    log: Path,
) -> str:
    """Start ``ferryman COMMAND --port P`` and wait until its API answers; its base URL."""
    port = free_port()
    processes.append(start(ferryman(*command, "--port", str(port), store=store), env, log))
    base = f"http://127.0.0.1:{port}"
    what = f"ferryman {' '.join(command)}"
    wait_until(lambda: answers(f"{base}/api/summary"), timeout=60, what=what)
    return base


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_serve_refuses_a_public_address_without_a_configured_token(store: str) -> None:
    done = subprocess.run(
        ferryman("serve", "--host", "0.0.0.0", store=store),
        cwd=REPO,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == EXIT_USAGE
    assert "refusing to listen on 0.0.0.0 without a configured token" in done.stderr
    assert "Traceback" not in done.stderr
    short = subprocess.run(
        ferryman("serve", store=store),
        cwd=REPO,
        env=environment(FERRYMAN_API_TOKEN="short"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert short.returncode == EXIT_USAGE and "too short" in short.stderr


def test_serve_with_a_configured_token_guards_mutations(
    store: str, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    log = tmp_path / "serve.log"
    base = serving(processes, ["serve"], store, environment(FERRYMAN_API_TOKEN=TOKEN), log)
    pause = f"{base}/api/sensors/numbers/pause"
    assert httpx.post(pause).status_code == 401
    assert httpx.post(pause, headers={"Authorization": "Bearer wrong"}).status_code == 403
    paused = httpx.post(pause, headers={"Authorization": f"Bearer {TOKEN}"})
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    processes[0].send_signal(signal.SIGTERM)
    assert processes[0].wait(timeout=30) == 0
    assert TOKEN not in log.read_text()  # a configured token is never echoed


def test_serve_read_only_refuses_every_change(
    store: str, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    base = serving(
        processes,
        ["serve", "--read-only"],
        store,
        environment(FERRYMAN_API_TOKEN=TOKEN),
        tmp_path / "serve.log",
    )
    refused = httpx.post(
        f"{base}/api/sensors/numbers/pause", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert refused.status_code == 403 and "read-only" in refused.json()["detail"]


def test_run_serves_the_api_beside_the_daemon_with_a_printed_token(
    store: str, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    log = tmp_path / "run.log"
    base = serving(processes, ["run"], store, environment(), log)
    printed = wait_until(
        lambda: re.search(r"API token \(set FERRYMAN_API_TOKEN[^)]*\): (\S+)", log.read_text()),
        what="the generated token on stderr",
    )
    token = printed.group(1)
    # The daemon's sensor ran: its evaluation is visible through the API.
    wait_until(
        lambda: httpx.get(f"{base}/api/sensors/numbers").json()["cursor"] is not None,
        what="the numbers sensor to be evaluated by the daemon",
    )
    body = {"message_id": "from-http", "payload": {"n": 1}}
    headers = {"Authorization": f"Bearer {token}"}
    first = httpx.post(f"{base}/api/sensors/inbox/messages", json=body, headers=headers)
    assert first.status_code == 201
    wait_until(
        lambda: any(
            r["run_key"] == "msg-from-http" and r["status"] == "succeeded"
            for r in httpx.get(f"{base}/api/runs", params={"job": "load"}).json()["items"]
        ),
        what="the daemon's worker to run the ingested message",
    )
    processes[0].send_signal(signal.SIGTERM)
    assert processes[0].wait(timeout=60) == 0
    assert not answers(f"{base}/api/summary")


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port something else listens on, as a first ferryman run's would."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_serve_on_a_taken_port_stops_with_a_one_line_error(store: str, taken_port: int) -> None:
    done = subprocess.run(
        ferryman("serve", "--port", str(taken_port), store=store),
        cwd=REPO,
        env=environment(FERRYMAN_API_TOKEN=TOKEN),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == EXIT_USAGE
    assert done.stderr.strip() == (
        f"error: 127.0.0.1:{taken_port} is already in use (by another ferryman on this "
        "host?): choose a free port with --port"
    )


def test_run_on_a_taken_port_warns_and_goes_on_without_pages(
    store: str, tmp_path: Path, taken_port: int, processes: list[subprocess.Popen[bytes]]
) -> None:
    log = tmp_path / "run.log"
    processes.append(
        start(ferryman("run", "--port", str(taken_port), store=store), environment(), log)
    )
    wait_until(
        lambda: f"127.0.0.1:{taken_port} is already in use" in log.read_text(),
        timeout=60,
        what="the warning about the taken port",
    )
    warning = [line for line in log.read_text().splitlines() if "already in use" in line]
    assert len(warning) == 1 and " WARNING ferryman.web " in warning[0]
    assert "goes on without the dashboard" in warning[0] and "--port" in warning[0]
    assert "--no-serve" in warning[0]
    # The sensors and workers run all the same: the sensor's runs are worked off.
    from tests.web.web_app import make_app

    app = make_app(store)
    try:
        wait_until(
            lambda: any(
                r.run_key == "n-1" and r.status.value == "succeeded"
                for r in app.get_runs(job="load")
            ),
            timeout=60,
            what="the daemon to evaluate its sensor and run what it requested",
        )
    finally:
        app.close()
    processes[0].send_signal(signal.SIGTERM)
    assert processes[0].wait(timeout=60) == 0
    output = log.read_text()
    assert "dashboard and API on" not in output and "API token" not in output
    assert "Traceback" not in output


def test_run_read_only_serves_pages_but_refuses_changes(
    store: str, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    base = serving(
        processes,
        ["run", "--read-only"],
        store,
        environment(FERRYMAN_API_TOKEN=TOKEN),
        tmp_path / "run.log",
    )
    headers = {"Authorization": f"Bearer {TOKEN}"}
    refused = httpx.post(f"{base}/api/sensors/numbers/pause", headers=headers)
    assert refused.status_code == 403 and "read-only" in refused.json()["detail"]
    ingest = httpx.post(
        f"{base}/api/sensors/inbox/messages", json={"message_id": "m"}, headers=headers
    )
    assert ingest.status_code == 403
    assert httpx.get(f"{base}/api/sensors/numbers").json()["status"] == "running"
    processes[0].send_signal(signal.SIGTERM)
    assert processes[0].wait(timeout=60) == 0


def test_the_cli_hides_sensitive_payload_fields_too(store: str) -> None:
    from tests.web.web_app import make_app, populate

    app = make_app(store)
    populate(app)
    (secret,) = [r.id for r in app.get_runs() if r.run_key == "secret-1"]
    app.close()
    for args in (
        ("runs", "show", str(secret)),
        ("runs", "show", str(secret), "--json"),
        ("runs", "--json"),
    ):
        done = subprocess.run(
            ferryman(*args, store=store),
            cwd=REPO,
            env=environment(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "hunter2" not in done.stdout and "***" in done.stdout
