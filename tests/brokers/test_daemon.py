"""A broker source inside ``ferryman run``: consumed, shown on the sensor's page and in /metrics,
stopped cleanly by SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx

import ferryman as fm
from tests.brokers.storm import REPO, RabbitBroker, count_runs
from tests.helpers import free_port, wait_until


def test_ferryman_run_consumes_its_sources_and_shows_them(pg_url: str, tmp_path: Path) -> None:
    broker = RabbitBroker()
    port = free_port()
    log = tmp_path / "daemon.log"
    app = fm.App(pg_url)
    try:
        broker.publish(40)
        env = {
            "FERRYMAN_STORE": pg_url,
            "BROKER_STORM_KIND": "rabbitmq",
            "BROKER_STORM_QUEUE": broker.queue,
            "PATH": "/usr/bin:/bin",
        }
        with log.open("ab") as output:
            daemon = subprocess.Popen(
                [
                    *(sys.executable, "-m", "ferryman", "--app", "tests.brokers.storm_app:app"),
                    *("run", "--port", str(port)),
                ],
                cwd=REPO,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until(lambda: count_runs(app)[0] == 40, timeout=120, what="40 runs")
            base = f"http://127.0.0.1:{port}"

            def acked_in_metrics() -> bool:
                try:
                    text = httpx.get(f"{base}/metrics", timeout=5).text
                except httpx.HTTPError:
                    return False
                return 'ferryman_source_acked_total{sensor="orders",source="rabbitmq"} 40.0' in text

            wait_until(acked_in_metrics, timeout=60, what="the acks in /metrics")
            metrics = httpx.get(f"{base}/metrics", timeout=5).text
            assert (
                'ferryman_source_consumed_total{sensor="orders",source="rabbitmq"} 40.0' in metrics
            )
            assert 'ferryman_source_connected{sensor="orders",source="rabbitmq"} 1.0' in metrics
            page = httpx.get(f"{base}/sensors/orders", timeout=5).text
            assert "Broker consumer" in page and broker.queue in page
        finally:
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(timeout=60)
        assert code == 0, log.read_text()[-3000:]
        assert broker.left() == 0
    finally:
        app.close()
        broker.remove()
