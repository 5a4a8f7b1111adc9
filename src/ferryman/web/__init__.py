"""The HTTP side of ferryman: a JSON API, dashboard pages and ``/metrics``.

Served by ``ferryman serve`` alone or by ``ferryman run --serve`` next to the
daemon. Reads go through the store's read model
(:mod:`ferryman.store.read_model`); writes go through the
:class:`~ferryman.App`, the same calls the CLI makes.

FastAPI is imported with ``create_app``, on first use (PEP 562): the CLI reads
the server's settings and defaults from :mod:`.settings` without it.
"""

import typing as _typing

from ferryman.web.settings import WebSettings

if _typing.TYPE_CHECKING:
    from ferryman.web.server import create_app

__all__ = ["WebSettings", "create_app"]


def __getattr__(name: str) -> _typing.Any:
    if name != "create_app":
        raise AttributeError(f"module 'ferryman.web' has no attribute {name!r}")
    from ferryman.web.server import create_app

    return create_app
