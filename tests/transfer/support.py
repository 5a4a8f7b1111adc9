"""Helpers for transfer tests: random files, object hashes, reading the store."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

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
