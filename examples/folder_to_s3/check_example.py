"""Run the folder → S3 example against a local S3 server and check every object.

From the repository root (needs the test extras, for moto's server)::

    .venv/bin/python -m examples.folder_to_s3.check_example

Three files (one of them in a subfolder, one larger than a part, one empty)
go into a scratch outbox; ``ferryman tick`` and ``ferryman work --until-idle``
run as a user would type them. Each object must equal its file, each sidecar
must carry the file's size and SHA-256, and a second tick must find nothing
new. A changed file is uploaded again, under the same key.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
APP = "examples.folder_to_s3.pipeline:app"
BUCKET = "landing"
MiB = 1024 * 1024


def ferryman(env: dict[str, str], *args: str) -> str:
    print(f"$ ferryman --app {APP} {' '.join(args)}", flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "ferryman", "--app", APP, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    print(done.stdout, end="", flush=True)
    if done.returncode != 0:
        raise SystemExit(f"exit {done.returncode}:\n{done.stderr}")
    return done.stdout


def check_objects(client: Any, outbox: Path) -> None:
    for path in sorted(p for p in outbox.rglob("*") if p.is_file()):
        key = f"outbox/{path.relative_to(outbox).as_posix()}"
        data = path.read_bytes()
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert body == data, f"{key}: object differs from {path}"
        meta = client.get_object(Bucket=BUCKET, Key=f"{key}.meta.json")["Body"].read()
        sidecar = json.loads(meta)
        assert sidecar["size"] == len(data), sidecar
        assert sidecar["sha256"] == hashlib.sha256(data).hexdigest(), sidecar
        print(f"ok {key}: {len(data):,} B, sha256 {sidecar['sha256'][:12]}...")


def main() -> None:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        with tempfile.TemporaryDirectory(prefix="fm-folder-to-s3-") as scratch:
            outbox = Path(scratch) / "outbox"
            (outbox / "meters").mkdir(parents=True)
            (outbox / "readings.csv").write_text("meter,day,kwh\nm-1,2024-05-01,12.5\n")
            (outbox / "meters" / "dump.bin").write_bytes(os.urandom(12 * MiB))
            (outbox / "empty.txt").write_bytes(b"")
            base = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMAN_")}
            env = {
                **base,
                "FERRYMAN_STORE": f"sqlite:///{scratch}/store.db",
                "FOLDER_TO_S3_OUTBOX": str(outbox),
                "FOLDER_TO_S3_TARGET": f"s3://{BUCKET}/outbox/",
                "FOLDER_TO_S3_STABLE_FOR": "0",
                "AWS_ENDPOINT_URL": f"http://{host}:{port}",
                "AWS_ACCESS_KEY_ID": "test",
                "AWS_SECRET_ACCESS_KEY": "test",
                "AWS_REGION": "us-east-1",
                "COLUMNS": "120",
            }
            os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
            import boto3  # type: ignore[import-untyped]

            client = boto3.client("s3")
            client.create_bucket(Bucket=BUCKET)

            [evaluation] = json.loads(ferryman(env, "tick", "--json"))
            assert evaluation["runs_requested"] == 3, evaluation
            ferryman(env, "work", "--until-idle")
            check_objects(client, outbox)
            transfers = json.loads(ferryman(env, "transfers", "--json"))
            assert sorted(t["status"] for t in transfers) == ["succeeded"] * 3, transfers

            [again] = json.loads(ferryman(env, "tick", "--force", "--json"))
            assert again["runs_requested"] == 0, again  # nothing new: nothing uploaded twice
            keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=BUCKET)["Contents"])
            assert len(keys) == 6, keys  # three objects, three sidecars

            with (outbox / "readings.csv").open("a") as handle:
                handle.write("m-1,2024-05-02,11.0\n")
            [changed] = json.loads(ferryman(env, "tick", "--force", "--json"))
            assert changed["runs_requested"] == 1, changed
            ferryman(env, "work", "--until-idle")
            check_objects(client, outbox)
    finally:
        server.stop()
    print("\nthe folder → S3 example ran as documented")


if __name__ == "__main__":
    main()
