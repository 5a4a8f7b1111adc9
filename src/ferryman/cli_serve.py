"""``ferryman serve``: the JSON API, the dashboard and ``/metrics`` for one store."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from ferryman.app import App
from ferryman.cli_output import EXIT_USAGE, err, fail
from ferryman.errors import ConfigurationError

HostOption = Annotated[
    str, typer.Option(help="Address to listen on; beyond loopback needs FERRYMAN_API_TOKEN.")
]
PortOption = Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")]


def announce(host: str, port: int, token_value: str, generated: bool) -> None:
    """Where to look, and the token if it was made up now (stderr only, never a log)."""
    err.print(f"dashboard and API on http://{host}:{port}/", highlight=False, soft_wrap=True)
    if generated:
        err.print(
            f"API token (set FERRYMAN_API_TOKEN to choose your own): {token_value}",
            highlight=False,
            soft_wrap=True,
        )


def register(cli: typer.Typer, load_app: Callable[[], App]) -> None:
    from ferryman.web.serving import DEFAULT_HOST, DEFAULT_PORT

    @cli.command("serve")
    def serve(
        host: HostOption = DEFAULT_HOST,
        port: PortOption = DEFAULT_PORT,
        read_only: Annotated[
            bool, typer.Option("--read-only", help="Refuse every change, token or not.")
        ] = False,
    ) -> None:
        """Serve the JSON API, the dashboard and /metrics until SIGTERM/SIGINT."""
        from ferryman.web.serving import make_server, resolve_token

        try:
            token = resolve_token()
            server = make_server(load_app(), host=host, port=port, token=token, read_only=read_only)
        except ConfigurationError as exc:
            fail(str(exc), EXIT_USAGE)
        announce(host, port, token.value, token.generated)
        server.run()
