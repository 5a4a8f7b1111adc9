"""The digests that make run keys and message ids unique, whatever their length.

A B-tree index entry on PostgreSQL holds at most about 2.7 kB, so a unique
index on a key itself refuses the first long key (a deep path, a long
message id) and with it every evaluation that carries it. The store
therefore keeps each key in full and makes the SHA-256 of it unique:

* a run is unique by ``run_key_digest(job, run_key)``, the digest of the job
  and the key separated by a NUL, which neither may contain;
* a delivered push message is unique by ``(sensor, message_digest(message_id))``,
  the sensor kept as a value of its own, so that no sensor name and message
  id can be mistaken for another pair that spells the same string.

Lookups by key go through the digests too. Migration 0005 computed the same
digests for the rows it found; these functions must never change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


# The UTF-8 of the text; "surrogatepass" only so that a digest can be taken of
# any str (a key holding a lone surrogate is refused before it is stored).
def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def run_key_digest(job: str, run_key: str) -> bytes:
    """The 32 bytes that stand for ``(job, run_key)`` in the unique index of runs."""
    # The UTF-8 of the text joined is the UTF-8 of each joined (surrogates too,
    # each encoded alone): one encode instead of two and their concatenations.
    return hashlib.sha256(f"{job}\x00{run_key}".encode("utf-8", "surrogatepass")).digest()


def run_key_digests(job: str, run_keys: Iterable[str]) -> list[bytes]:
    """``run_key_digest(job, key)`` of each key, the job's part encoded once (a batch)."""
    prefix = _utf8(job) + b"\x00"
    sha256 = hashlib.sha256
    return [sha256(prefix + key.encode("utf-8", "surrogatepass")).digest() for key in run_keys]


def message_digest(message_id: str) -> bytes:
    """The 32 bytes that stand for a message id in the unique key of deliveries."""
    return hashlib.sha256(_utf8(message_id)).digest()


def concurrency_key_digest(concurrency_key: str) -> bytes:
    """The 32 bytes that stand for a concurrency key where runs are counted by key.

    Runs are compared by key only within their own job, so the job is not part
    of it.
    """
    return hashlib.sha256(_utf8(concurrency_key)).digest()
