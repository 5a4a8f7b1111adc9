"""``ferryman serve``, and the server ``ferryman run`` starts beside its daemon.

The JSON API, the dashboard and ``/metrics`` for one store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer

from ferryman.cli.output import EXIT_USAGE, err, fail
from ferryman.errors import ConfigurationError, PortInUse

# The server's settings module imports neither FastAPI nor uvicorn.
from ferryman.web.settings import DEFAULT_HOST, DEFAULT_PORT

if TYPE_CHECKING:
    from ferryman.app import App
    from ferryman.web.serving import BackgroundServer

HostOption = Annotated[
    str, typer.Option(help="Address to listen on; beyond loopback needs FERRYMAN_API_TOKEN.")
]
PortOption = Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")]
ReadOnlyOption = Annotated[
    bool, typer.Option("--read-only", help="Refuse every change, token or not.")
]


def announce(host: str, port: int, token_value: str, generated: bool) -> None:
    """Where to look, and the token if it was made up now (stderr only, never a log)."""
    err.print(f"dashboard and API on http://{host}:{port}/", highlight=False, soft_wrap=True)
    if generated:
        err.print(
            f"API token (set FERRYMAN_API_TOKEN to choose your own): {token_value}",
            highlight=False,
            soft_wrap=True,
        )


def start_beside_daemon(
    app: App, *, host: str, port: int, read_only: bool
) -> BackgroundServer | None:
    """The server of ``ferryman run``, serving on a thread; None when its port is taken.

    A taken port is not worth stopping the daemon for: a second ``ferryman
    run`` on the same host is a normal way to add workers, and its sensors
    and workers matter more than a second dashboard. It is logged as a
    warning naming the port and the way out. Anything else wrong with the
    address (or the token) stops the command with a one-line error.
    """
    from ferryman.web.serving import (
        BackgroundServer,
        listen,
        log,
        make_server,
        resolve_token,
    )

    try:
        token = resolve_token()
        server = make_server(app, host=host, port=port, token=token, read_only=read_only)
        web = BackgroundServer(server, listen(host, port))
        web.start()
    except PortInUse as exc:
        log.warning(
            "%s: the daemon goes on without the dashboard, the API and /metrics; "
            "choose a free port with --port, or pass --no-serve",
            exc,
        )
        return None
    except ConfigurationError as exc:
        fail(str(exc), EXIT_USAGE)
    announce(host, port, token.value, token.generated)
    return web


def register(cli: typer.Typer, load_app: Callable[[], App]) -> None:
    @cli.command("serve")
    def serve(
        host: HostOption = DEFAULT_HOST,
        port: PortOption = DEFAULT_PORT,
        read_only: ReadOnlyOption = False,
    ) -> None:
        """Serve the JSON API, the dashboard and /metrics until SIGTERM/SIGINT."""
        from ferryman.web.serving import listen, make_server, resolve_token

        try:
            token = resolve_token()
            server = make_server(load_app(), host=host, port=port, token=token, read_only=read_only)
            listener = listen(host, port)
        except PortInUse as exc:
            fail(f"{exc}: choose a free port with --port", EXIT_USAGE)
        except ConfigurationError as exc:
            fail(str(exc), EXIT_USAGE)
        announce(host, port, token.value, token.generated)
        server.run(sockets=[listener])
