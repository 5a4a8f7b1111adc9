"""Counting an upload's confirmed bytes and telling the caller about it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from ferryman.model import Transfer


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferProgress:
    """Progress of one upload, reported after each confirmed part.

    ``total`` is ``None`` while a followed file may still grow;
    ``resumed_bytes`` is what earlier runs had confirmed when this one began.
    """

    transfer_id: int
    bytes_confirmed: int
    parts_confirmed: int
    total: int | None
    resumed_bytes: int
    done: bool = False


Progress = Callable[[TransferProgress], None]


class ProgressCounter:
    """Confirmed bytes and parts of one transfer, counted from several part threads.

    Every change is passed to ``callback`` (if any) as a :class:`TransferProgress`.
    """

    def __init__(self, callback: Progress | None) -> None:
        self.callback = callback
        self.transfer_id = 0
        self.total: int | None = None
        self.resumed_bytes = 0
        self._lock = threading.Lock()
        self._bytes = 0
        self._parts = 0

    def start(self, *, transfer_id: int, confirmed_bytes: int, confirmed_parts: int) -> None:
        """Begin counting from what the store already confirmed."""
        with self._lock:
            self.transfer_id = transfer_id
            self._bytes, self._parts = confirmed_bytes, confirmed_parts

    def count(self, size: int) -> None:
        """One more part of ``size`` bytes is confirmed."""
        with self._lock:
            self._bytes += size
            self._parts += 1
            confirmed, parts = self._bytes, self._parts
        self.report(self.transfer_id, confirmed, parts, self.total)

    def report_transfer(self, transfer: Transfer) -> None:
        """Report a transfer as the store has it (finished, or found already done)."""
        self.report(
            transfer.id, transfer.bytes_confirmed, transfer.parts_confirmed, transfer.total_size
        )

    def report(self, transfer_id: int, confirmed: int, parts: int, total: int | None) -> None:
        if self.callback is not None:
            self.callback(
                TransferProgress(
                    transfer_id=transfer_id,
                    bytes_confirmed=confirmed,
                    parts_confirmed=parts,
                    total=total,
                    resumed_bytes=self.resumed_bytes,
                    done=total is not None and confirmed >= total,
                )
            )
