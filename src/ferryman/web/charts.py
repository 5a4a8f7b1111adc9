"""Charts drawn on the server as SVG: a time axis, hover values, nothing to load.

Each function returns a complete ``<svg>`` element as :class:`markupsafe.Markup`,
every value from the store escaped. Hover values are ``<title>`` elements
(browsers show them as tooltips, screen readers read them), so the charts
need no script and work under the dashboard's Content-Security-Policy. Colours
come from classes in ``ferryman.css`` (``bar-succeeded``, ``line-p95`` ...),
never from inline styles, which that policy forbids.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

from markupsafe import Markup, escape

from ferryman.store.read_model import AttemptBar, DurationSlot

WIDTH = 1200
LEFT = 60  # room for the value axis
LABEL = 180  # room for run keys, left of a timeline
RIGHT = 10
AXIS = 22  # room for the time axis, below the plot
ROW = 16  # one timeline row
TICKS = 6
SLOTS = 60  # bars of a chart drawn per time slot


@dataclasses.dataclass(frozen=True, slots=True)
class Window:
    """The time range a chart covers, in seconds since the epoch."""

    since: float
    until: float

    def x(self, moment: float, left: float, width: float) -> float:
        span = max(self.until - self.since, 1e-9)
        return left + max(0.0, min(1.0, (moment - self.since) / span)) * width


def clock(moment: float, span: float) -> str:
    """A time label as precise as the span needs: dates past two days, seconds under ten minutes."""
    shown = datetime.fromtimestamp(moment, UTC)
    if span > 2 * 86400:
        return shown.strftime("%m-%d %H:%M")
    return shown.strftime("%H:%M:%S" if span < 600 else "%H:%M")


def seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min"


def _time_axis(window: Window, left: float, width: float, y: float) -> list[str]:
    span = window.until - window.since
    parts = [f'<line class="axis" x1="{left}" y1="{y}" x2="{left + width}" y2="{y}"></line>']
    for index in range(TICKS + 1):
        moment = window.since + span * index / TICKS
        x = window.x(moment, left, width)
        anchor = "start" if index == 0 else ("end" if index == TICKS else "middle")
        parts.append(f'<line class="tick" x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + 4}"></line>')
        parts.append(
            f'<text class="tick-label" x="{x:.1f}" y="{y + 16}" text-anchor="{anchor}">'
            f"{escape(clock(moment, span))}</text>"
        )
    return parts


def _svg(height: float, label: str, parts: list[str]) -> Markup:
    # Every value from the store in ``parts`` went through escape() where it was placed.
    return Markup(  # noqa: S704
        f'<svg class="plot" viewBox="0 0 {WIDTH} {height:.0f}" role="img" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">'
        + "".join(parts)
        + "</svg>"
    )


def gantt(bars: Sequence[AttemptBar], window: Window, now: float, label: str) -> Markup:
    """One row per run, one bar per attempt from claim to end, coloured by how it ended.

    A run's retries sit side by side on its row; an attempt taken over (its
    lease expired and another worker claimed it) ends where the takeover
    began. The run key labels the row and links to the run; each bar's title
    names the attempt, the worker and the times.
    """
    rows: dict[int, int] = {}
    for bar in bars:
        rows.setdefault(bar.run_id, len(rows))
    height = len(rows) * ROW + AXIS + 4
    left, width = LABEL, WIDTH - LABEL - RIGHT
    parts = []
    for bar in bars:
        y = rows[bar.run_id] * ROW + 2
        x0 = window.x(bar.start, left, width)
        x1 = window.x(bar.end if bar.end is not None else now, left, width)
        ended = f"{clock(bar.end, 0)}" if bar.end is not None else "still running"
        took = seconds((bar.end if bar.end is not None else now) - bar.start)
        title = (
            f"run {bar.run_id} {bar.run_key} · attempt {bar.attempt}: {bar.outcome} · "
            f"worker {bar.worker_id or '?'} · {clock(bar.start, 0)} → {ended} ({took})"
        )
        outcome = bar.outcome.replace(" ", "-")
        parts.append(
            f'<a href="/runs/{bar.run_id}"><rect class="bar bar-{escape(outcome)}" '
            f'x="{x0:.1f}" y="{y}" width="{max(2.0, x1 - x0):.1f}" height="{ROW - 4}">'
            f"<title>{escape(title)}</title></rect></a>"
        )
    keys = {bar.run_id: bar.run_key for bar in bars}
    for run_id, row in rows.items():
        key = keys[run_id] if len(keys[run_id]) <= 26 else keys[run_id][:25] + "…"
        parts.append(
            f'<a href="/runs/{run_id}"><text class="row-label" x="4" y="{row * ROW + ROW - 4}">'
            f"{escape(key)}</text></a>"
        )
    parts += _time_axis(window, left, width, height - AXIS)
    return _svg(height, label, parts)


def stacked(
    slots: Sequence[tuple[float, Mapping[str, int]]],
    series: Sequence[str],
    window: Window,
    label: str,
    height: float = 160,
) -> Markup:
    """Stacked bars per time slot (``series`` bottom up), each segment titled with its count."""
    left, width = LEFT, WIDTH - LEFT - RIGHT
    plot = height - AXIS
    peak = max((sum(c.get(s, 0) for s in series) for _, c in slots), default=0) or 1
    step = width / max(1, len(slots))
    parts = _value_axis(peak, plot, left, lambda value: f"{value:.3g}")
    for index, (start, counts) in enumerate(slots):
        x = left + index * step
        y = plot
        for name in series:
            value = counts.get(name, 0)
            if not value:
                continue
            tall = value / peak * (plot - 4)
            y -= tall
            title = f"{clock(start, window.until - window.since)}: {value} {name}"
            parts.append(
                f'<rect class="bar bar-{escape(name)}" x="{x + 0.5:.1f}" y="{y:.1f}" '
                f'width="{max(1.0, step - 1):.1f}" height="{tall:.1f}">'
                f"<title>{escape(title)}</title></rect>"
            )
    parts += _time_axis(window, left, width, plot)
    return _svg(height, label, parts)


def _value_axis(peak: float, plot: float, left: float, shown: Callable[[float], str]) -> list[str]:
    parts = [f'<line class="axis" x1="{left}" y1="0" x2="{left}" y2="{plot}"></line>']
    for fraction in (0.0, 0.5, 1.0):
        y = plot - fraction * (plot - 4)
        parts.append(
            f'<text class="tick-label" x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(shown(peak * fraction))}</text>"
        )
    return parts


def percentiles(slots: Sequence[DurationSlot], window: Window, label: str) -> Markup:
    """p50, p95 and p99 of run durations per slot as three lines, each point titled."""
    left, width, height = LEFT, WIDTH - LEFT - RIGHT, 200.0
    plot = height - AXIS
    peak = max((s.p99 or 0.0 for s in slots), default=0.0) or 1.0
    step = width / max(1, len(slots))
    span = window.until - window.since
    parts = _value_axis(peak, plot, left, seconds)
    for name in ("p50", "p95", "p99"):
        points = []
        for index, slot in enumerate(slots):
            value = getattr(slot, name)
            if value is None:
                continue
            x = left + (index + 0.5) * step
            y = plot - value / peak * (plot - 4)
            points.append((x, y))
            title = f"{clock(slot.start, span)}: {name} {seconds(value)} of {slot.runs} runs"
            parts.append(
                f'<circle class="dot-{name}" cx="{x:.1f}" cy="{y:.1f}" r="3">'
                f"<title>{escape(title)}</title></circle>"
            )
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            parts.insert(0, f'<polyline class="line-{name}" points="{path}"></polyline>')
    parts += _time_axis(window, left, width, plot)
    return _svg(height, label, parts)


def lines(
    points: Sequence[tuple[float, Mapping[str, float | None]]],
    series: Sequence[str],
    window: Window,
    label: str,
    shown: Callable[[float], str],
    height: float = 160,
) -> Markup:
    """One line per name of ``series`` through ``points`` (moment, values), placed by time.

    A value of None leaves a gap in its line. Each point is a circle titled
    with its time and value, so hovering (or a screen reader) gives the value.
    """
    left, width = LEFT, WIDTH - LEFT - RIGHT
    plot = height - AXIS
    peak = max((v for _, values in points for v in values.values() if v is not None), default=0)
    peak = peak or 1.0
    span = window.until - window.since
    parts = _value_axis(peak, plot, left, shown)
    for name in series:
        runs: list[list[tuple[float, float]]] = [[]]
        for moment, values in points:
            value = values.get(name)
            if value is None:
                runs.append([])
                continue
            x = window.x(moment, left, width)
            y = plot - value / peak * (plot - 4)
            runs[-1].append((x, y))
            title = f"{clock(moment, span)}: {name.replace('-', ' ')} {shown(value)}"
            parts.append(
                f'<circle class="dot-{escape(name)}" cx="{x:.1f}" cy="{y:.1f}" r="2.5">'
                f"<title>{escape(title)}</title></circle>"
            )
        for run in runs:
            if len(run) > 1:
                path = " ".join(f"{x:.1f},{y:.1f}" for x, y in run)
                line = f'<polyline class="line-{escape(name)}" points="{path}"></polyline>'
                parts.insert(0, line)
    parts += _time_axis(window, left, width, plot)
    return _svg(height, label, parts)


def count(value: float) -> str:
    """A count on a value axis or in a title, thousands separated (half way up an axis
    may fall between two whole numbers)."""
    return f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"
