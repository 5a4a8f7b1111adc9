"""What the transfer pages add to a transfer's record: its rate, time left and parts map.

The rate of an active upload is measured over its most recently confirmed
parts (a resumed upload's first parts may be days old); over a list of
transfers, where parts are not read, it is the bytes confirmed over the
transfer's life so far. Time left is the bytes still to send at that rate.
"""

from __future__ import annotations

import dataclasses
import math

from markupsafe import Markup, escape

from ferryman.model import Transfer, TransferPart, TransferStatus
from ferryman.web import charts

RECENT_PARTS = 10  # parts the rate of an active upload is measured over
MAP_COLUMNS = 50  # squares per row of a parts map
SQUARE = 12


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Progress:
    """Bytes per second and seconds left (None when there is nothing to measure)."""

    rate: float | None
    eta: float | None


def total_size(transfer: Transfer) -> int | None:
    return transfer.total_size or transfer.source_size


def _eta(transfer: Transfer, rate: float | None) -> float | None:
    total = total_size(transfer)
    if transfer.status is not TransferStatus.ACTIVE or not rate or total is None:
        return None
    return max(0.0, total - transfer.bytes_confirmed) / rate


def lifetime_progress(transfer: Transfer) -> Progress:
    """The average rate since the transfer began (what a list can tell without its parts)."""
    end = transfer.finished_at or transfer.updated_at
    took = (end - transfer.created_at).total_seconds()
    rate = transfer.bytes_confirmed / took if took > 0 and transfer.bytes_confirmed else None
    return Progress(rate=rate, eta=_eta(transfer, rate))


def recent_progress(transfer: Transfer, parts: list[TransferPart]) -> Progress:
    """The rate over the newest confirmed parts: the time between the first and the last of
    them, for the bytes of all but the first (which was under way before it)."""
    recent = sorted(parts, key=lambda part: part.confirmed_at)[-RECENT_PARTS:]
    if len(recent) < 2:
        return lifetime_progress(transfer)
    took = (recent[-1].confirmed_at - recent[0].confirmed_at).total_seconds()
    sent = sum(part.size for part in recent[1:])
    rate = sent / took if took > 0 else None
    return Progress(rate=rate, eta=_eta(transfer, rate))


def parts_map(transfer: Transfer, parts: list[TransferPart]) -> Markup | None:
    """One square per part of the object: confirmed, adopted after a crash, or still to send."""
    total = total_size(transfer)
    if not total or not transfer.part_size:
        return None
    count = max(
        math.ceil(total / transfer.part_size), max((p.part_number for p in parts), default=0)
    )
    confirmed = {part.part_number: part for part in parts}
    rows = math.ceil(count / MAP_COLUMNS)
    squares = []
    for number in range(1, count + 1):
        x = (number - 1) % MAP_COLUMNS * (SQUARE + 2)
        y = (number - 1) // MAP_COLUMNS * (SQUARE + 2)
        part = confirmed.get(number)
        if part is None:
            kind, title = "part-missing", f"part {number}: not confirmed yet"
        else:
            kind = "part-adopted" if part.adopted else "part-confirmed"
            title = f"part {number}: {part.size} bytes from {part.start}, confirmed " + (
                part.confirmed_at.strftime("%H:%M:%S") + (" (adopted)" if part.adopted else "")
            )
        squares.append(
            f'<rect class="{kind}" x="{x}" y="{y}" width="{SQUARE}" height="{SQUARE}">'
            f"<title>{escape(title)}</title></rect>"
        )
    width = min(count, MAP_COLUMNS) * (SQUARE + 2)
    height = rows * (SQUARE + 2)
    label = f"{len(parts)} of {count} parts confirmed"
    # Every value in the squares went through escape() where it was placed.
    return Markup(  # noqa: S704
        f'<svg class="parts-map" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{escape(label)}" '
        f'xmlns="http://www.w3.org/2000/svg">' + "".join(squares) + "</svg>"
    )


def throughput_chart(transfer: Transfer, parts: list[TransferPart], now: float) -> Markup | None:
    """KiB confirmed per time slot, from the first part's confirmation to the last (or now)."""
    if len(parts) < 2:
        return None
    times = sorted(part.confirmed_at.timestamp() for part in parts)
    end = now if transfer.status is TransferStatus.ACTIVE else times[-1]
    window = charts.Window(times[0], max(end, times[0] + 60) + 1)
    width = max(1.0, math.ceil((window.until - window.since) / charts.SLOTS))
    sent: dict[int, int] = {}
    for part in parts:
        slot = int((part.confirmed_at.timestamp() - window.since) // width)
        sent[slot] = sent.get(slot, 0) + part.size // 1024
    slots = math.ceil((window.until - window.since) / width)
    drawn = [(window.since + i * width, {"KiB": sent.get(i, 0)}) for i in range(slots)]
    return charts.stacked(drawn, ["KiB"], window, "KiB confirmed per time slot")
