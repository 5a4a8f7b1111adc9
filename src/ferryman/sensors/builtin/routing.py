"""Routing: which job an item found by a built-in sensor goes to.

``routes`` maps regular expressions to job names. Each pattern is *searched*
(:func:`re.search`) in the item's name — a file's path relative to the
folder, an S3 key, a table row's key — and the first pattern that matches, in
the order given, names the job. An item that no pattern matches is not lost
silently: the sensor counts it in :attr:`ferryman.SensorResult.skipped` (which
the evaluation history records) and logs it.

Without routes every item goes to the sensor's own job (``RunRequest.job``
stays ``None``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ferryman.errors import ConfigurationError

Routes = Mapping[str, str]

#: How many example names an evaluation puts in its "skipped" log line.
EXAMPLES_LOGGED = 5


class Unrouted:
    """The type of :data:`UNROUTED`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNROUTED"


#: Returned by :meth:`Router.job_for` for an item that matches no route.
UNROUTED = Unrouted()


@dataclass(frozen=True, slots=True)
class Router:
    """Compiled routes; ``job_for(name)`` is the job for one item.

    Patterns are compiled when the sensor is defined, so a bad regular
    expression or an empty job name is a :class:`~ferryman.ConfigurationError`
    at import time, not at the first evaluation.
    """

    routes: tuple[tuple[re.Pattern[str], str], ...] = ()

    @classmethod
    def build(cls, routes: Routes | None) -> Router:
        """Compile ``routes`` (``None`` or empty: every item to the sensor's own job)."""
        if routes is None:
            return cls()
        if not isinstance(routes, Mapping):
            raise ConfigurationError(
                f"routes must map regular expressions to job names, got {type(routes).__name__}"
            )
        compiled = []
        for pattern, job in routes.items():
            if not isinstance(job, str) or not job:
                raise ConfigurationError(f"route {pattern!r} names no job: {job!r}")
            try:
                compiled.append((re.compile(pattern), job))
            except (re.error, TypeError) as exc:
                raise ConfigurationError(f"route {pattern!r} is not a valid regex: {exc}") from exc
        return cls(tuple(compiled))

    @property
    def active(self) -> bool:
        """Whether routes were given (otherwise every item goes to the sensor's job)."""
        return bool(self.routes)

    @property
    def jobs(self) -> tuple[str, ...]:
        """The distinct job names the routes lead to, in route order."""
        return tuple(dict.fromkeys(job for _, job in self.routes))

    def job_for(self, name: str) -> str | Unrouted | None:
        """The job for an item called ``name``.

        ``None`` without routes (the sensor's own job), the first matching
        route's job otherwise, or :data:`UNROUTED` when routes exist and none
        matches.
        """
        if not self.routes:
            return None
        for pattern, job in self.routes:
            if pattern.search(name):
                return job
        return UNROUTED


def warn_unrouted(
    logger: logging.LoggerAdapter[logging.Logger], what: str, names: Sequence[str]
) -> None:
    """Log, once per evaluation, the ``what`` (files, objects, rows) that matched no route."""
    if names:
        logger.warning(
            "%d %s match no route and were skipped, e.g. %s",
            len(names),
            what,
            ", ".join(names[:EXAMPLES_LOGGED]),
        )
