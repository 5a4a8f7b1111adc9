"""The HTTP side of ferryman: a JSON API, dashboard pages and ``/metrics``.

Served by ``ferryman serve`` alone or by ``ferryman run --serve`` next to the
daemon. Reads go through the store's read model
(:mod:`ferryman.store.read_model`); writes go through the
:class:`~ferryman.App`, the same calls the CLI makes.
"""

from ferryman.web.server import create_app
from ferryman.web.settings import WebSettings

__all__ = ["WebSettings", "create_app"]
