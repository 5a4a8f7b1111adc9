"""The web server's settings, in a module of their own.

Every part of the web package reads them (the token guard, the session
cookie, the pages, the server), so they import nothing of the web package
themselves: the parts depend on this module, never on each other through it.
"""

from __future__ import annotations

import dataclasses

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


@dataclasses.dataclass(frozen=True, kw_only=True)
class WebSettings:
    """What the server needs besides the App.

    ``token`` guards every mutating request (API bearer token, dashboard
    sign-in). ``read_only`` refuses every mutation whatever the token.
    """

    token: str
    read_only: bool = False
