"""Run each broker example as docs/how-to/brokers.md does, and check what it did.

From the repository root::

    .venv/bin/python -m examples.brokers.check_examples

For each broker: publish five orders to a queue of this run's own, start
``ferryman run`` on the example's app with a fresh SQLite store, wait for
five succeeded runs, stop it with SIGTERM (it must exit 0), and check that
the broker holds nothing unacknowledged. SQS runs on a moto server started
on a loopback port. The brokers are those on this machine (see README).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import ferryman as fm

REPO = Path(__file__).resolve().parents[2]
ORDERS = 5


def check(example: str, env: dict[str, str], root: Path) -> None:
    store = f"sqlite:///{root / f'{example}.db'}"
    env = {**env, "FERRYMAN_STORE": store}
    module = f"examples.brokers.{example}"
    subprocess.run([sys.executable, "-m", module, "publish", str(ORDERS)], env=env, check=True)
    log = root / f"{example}.log"
    with log.open("wb") as output:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "ferryman", "--app", f"{module}:app", "run", "--no-serve"],
            cwd=REPO,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    app = fm.App(store)
    try:
        deadline = time.monotonic() + 120
        while len(app.get_runs(status=fm.RunStatus.SUCCEEDED)) < ORDERS:
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise SystemExit(f"{example}: no {ORDERS} succeeded runs; see {log}")
            time.sleep(0.2)
        keys = sorted(run.run_key for run in app.get_runs())
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=60)
        app.close()
    if code != 0:
        raise SystemExit(f"{example}: ferryman run exited {code} on SIGTERM; see {log}")
    print(f"{example}: {len(keys)} runs {keys[0]} .. {keys[-1]}, stopped cleanly", flush=True)


def main() -> None:
    tag = uuid.uuid4().hex[:8]
    base = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMAN_")}
    base.update(
        ORDERS_QUEUE=f"orders-{tag}",
        ORDERS_STREAM=f"orders-{tag}",
        ORDERS_NATS_STREAM=f"ORDERS_{tag}",
        ORDERS_SQS_QUEUE=f"orders-{tag}",
        PYTHONPATH=str(REPO),
    )
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    aws = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "example",
        "AWS_SECRET_ACCESS_KEY": "example",  # a moto server on loopback takes any
    }
    try:
        with tempfile.TemporaryDirectory(prefix="ferryman-brokers-") as scratch:
            root = Path(scratch)
            for example in ("rabbitmq_orders", "redis_orders", "nats_orders"):
                check(example, base, root)
            check("sqs_orders", {**base, **aws}, root)
    finally:
        server.stop()
        cleanup(tag)


def cleanup(tag: str) -> None:
    """Remove this run's queues and streams from the shared brokers."""
    import asyncio

    import nats
    import pika  # type: ignore[import-untyped]
    import redis

    connection = pika.BlockingConnection(
        pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2F")
    )
    channel = connection.channel()
    channel.queue_delete(f"orders-{tag}")
    channel.queue_delete(f"orders-{tag}.dead")
    connection.close()
    redis.Redis.from_url("redis://127.0.0.1:6379/0").delete(f"orders-{tag}")

    async def drop_stream() -> None:
        client = await nats.connect("nats://127.0.0.1:4222")
        await client.jetstream().delete_stream(f"ORDERS_{tag}")
        await client.close()

    asyncio.run(drop_stream())


if __name__ == "__main__":
    main()
