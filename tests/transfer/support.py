"""Helpers for transfer tests: random files, object hashes, reading the store."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ferryman.store.schema import transfers

MiB = 1024 * 1024


def write_random(path: Path, size: int, *, seed: int | None = None) -> Path:
    """A file of ``size`` pseudo-random bytes (incompressible, fast to make)."""
    with path.open("wb") as out:
        remaining = size
        block = os.urandom(min(size, MiB)) if seed is None else _seeded(seed, min(size, MiB))
        counter = 0
        while remaining > 0:
            # Vary each MiB so that equal parts never have equal checksums.
            chunk = counter.to_bytes(8, "big") + block[8:]
            out.write(chunk[:remaining])
            remaining -= len(chunk[:remaining])
            counter += 1
    return path


def _seeded(seed: int, size: int) -> bytes:
    out = bytearray()
    state = seed.to_bytes(8, "big")
    while len(out) < size:
        state = hashlib.sha256(state).digest()
        out += state
    return bytes(out[:size])


def object_sha256(client: Any, bucket: str, key: str) -> str:
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    digest = hashlib.sha256()
    for chunk in iter(lambda: body.read(MiB), b""):
        digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        for chunk in iter(lambda: source.read(MiB), b""):
            digest.update(chunk)
    return digest.hexdigest()


REPO = Path(__file__).resolve().parents[2]


def start_ferryman(
    store_url: str, log: Path, env: dict[str, str], *args: str
) -> subprocess.Popen[bytes]:
    """``ferryman --store URL --log-level DEBUG ARGS``, its output appended to ``log``."""
    with log.open("ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "ferryman", "--store", store_url, "--log-level", "DEBUG", *args],
            cwd=REPO,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def start_upload(
    store_url: str, log: Path, env: dict[str, str], *args: str
) -> subprocess.Popen[bytes]:
    """``ferryman --store URL --log-level DEBUG upload ARGS``, its output appended to ``log``."""
    return start_ferryman(store_url, log, env, "upload", *args)


def sends(log_text: str) -> list[int]:
    """Part numbers in the order the uploads logged sending them."""
    return [int(n) for n in re.findall(r"sending part (\d+) ", log_text)]


def transfer_row(store_url: str, source: Path) -> dict[str, Any] | None:
    """The newest transfer of ``source`` as a plain dict, read straight from the store."""
    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as conn:
            row = (
                conn.execute(
                    sa.select(transfers)
                    .where(transfers.c.source_path == str(source))
                    .order_by(transfers.c.id.desc())
                    .limit(1)
                )
                .mappings()
                .one_or_none()
            )
            return None if row is None else dict(row)
    finally:
        engine.dispose()


def crc32_b64(data: bytes) -> str:
    """The CRC32 of ``data`` as S3's ``ChecksumCRC32`` holds it (big-endian, base64)."""
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
