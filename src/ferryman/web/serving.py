"""Running the web server: alone (``ferryman serve``) or beside the daemon (``ferryman run``).

Secure by default: it binds to 127.0.0.1; a token guards every mutation
(``FERRYMAN_API_TOKEN``, or one generated at start and printed once, never
logged); and it refuses to listen beyond loopback unless the token was
configured, since a printed one-off token on a shared address helps no one.

The port is bound before the server starts (:func:`listen`), so a taken port
is known at once: ``ferryman serve`` stops with a one-line error, ``ferryman
run`` warns and goes on without pages (see ``ferryman.cli.serve.start_beside_daemon``).

As it starts, the server takes the overview's first count of runs and folds
the processing log into ``/metrics`` (:func:`warm_up`) on a thread of its
own, carrying forward what a server saved last: a first request then costs
what every later one does, rather than a count of every run. It answers
meanwhile: only on a store that never had a saved count does the warm-up
read every run, and a request that needs the count (or the totals) while it
runs waits for it rather than counting again.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

from ferryman.app import App
from ferryman.errors import ConfigurationError, PortInUse, StoreError
from ferryman.supervise import supervised
from ferryman.web.server import create_app
from ferryman.web.settings import WebSettings

TOKEN_VARIABLE = "FERRYMAN_API_TOKEN"  # noqa: S105 - the variable's name, not a token
MIN_TOKEN_LENGTH = 16
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

log = logging.getLogger("ferryman.web")


@dataclass(frozen=True, slots=True, kw_only=True)
class Token:
    value: str
    generated: bool  # made up at start: shown once to whoever started the server


def resolve_token(environ: dict[str, str] | None = None) -> Token:
    """The API token from ``FERRYMAN_API_TOKEN``, or a fresh random one."""
    configured = (environ if environ is not None else dict(os.environ)).get(TOKEN_VARIABLE, "")
    if configured:
        if len(configured) < MIN_TOKEN_LENGTH:
            raise ConfigurationError(
                f"{TOKEN_VARIABLE} is too short to guard anything: use at least "
                f"{MIN_TOKEN_LENGTH} characters"
            )
        return Token(value=configured, generated=False)
    return Token(value=secrets.token_urlsafe(24), generated=True)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, token: Token) -> None:
    """Refuse a non-loopback address unless the token was configured."""
    if not is_loopback(host) and token.generated:
        raise ConfigurationError(
            f"refusing to listen on {host} without a configured token: set "
            f"{TOKEN_VARIABLE} (the dashboard and API would be reachable from other machines)"
        )


def listen(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A socket listening on ``host:port`` now, for the server to take over.

    Bound here rather than by uvicorn, which reports a taken port only as a
    log line and ``sys.exit(1)`` from inside its event loop: bound here, the
    caller knows at once and can say what to do. Raises :class:`PortInUse`
    when the port is taken, :class:`ConfigurationError` for any other reason
    the address cannot be used.
    """
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except OSError as exc:
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc}") from exc
    listener = socket.socket(family, kind, protocol)
    try:
        # As uvicorn does: a restart may bind over connections still in TIME_WAIT.
        # It does not let two servers share a port: listen() below refuses that.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(backlog)
    except OSError as exc:
        listener.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(host, port) from exc
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return listener


def warm_up(web: FastAPI) -> None:
    """Take the overview's first count of runs and fold the processing log into /metrics.

    Both start from what a server saved last (see :mod:`ferryman.web.run_counts`),
    so only a server on a store that never had one counts every run. Before
    that, compile the pages' templates (each is compiled on first use) and
    read the overview once (its statements are compiled on first use too): a
    first overview does not wait for the count (see
    :meth:`~ferryman.web.run_counts.RunCounts.at_once`), so it should not pay
    for those either.

    A store that fails here is logged: the first request tries again.
    """
    started = time.monotonic()
    app: App = web.state.ferryman
    from ferryman.web.rendering import templates

    for name in templates.env.list_templates():  # compiled once, here, not by a first request
        templates.env.get_template(name)
    try:
        # The overview's queries once, so that their SQL is compiled and cached
        # before a first overview comes, which does not wait for the count below.
        app.store.overview(alive_within=app.lease_seconds, count=False)
        web.state.run_counts.current()
        list(web.state.metrics.collect())
    except StoreError as exc:
        log.warning("warming up the counts failed (the first request retries): %s", exc)
        return
    log.debug("web server warmed up in %.3f s", time.monotonic() - started)


class _Server(uvicorn.Server):
    """uvicorn's server, ending with status 0 on SIGTERM/SIGINT like every ferryman command.

    uvicorn re-raises the signal after a graceful shutdown, so the process
    would report death by signal although it stopped cleanly. Its start-up
    begins warming up the counts (:func:`warm_up`, on a thread: neither the
    event loop nor the first answer waits for a store that counts slowly).
    """

    def __init__(self, config: uvicorn.Config, web: FastAPI) -> None:
        super().__init__(config)
        self.web = web
        self.warming: threading.Thread | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.warming = supervised("ferryman-web-warm-up", lambda: warm_up(self.web)).thread
        await super().startup(sockets=sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def make_server(app: App, *, host: str, port: int, token: Token, read_only: bool) -> uvicorn.Server:
    check_bind(host, token)
    web = create_app(app, WebSettings(token=token.value, read_only=read_only))
    config = uvicorn.Config(
        web,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,  # one line per request would drown the daemon's own logs
        server_header=False,
    )
    return _Server(config, web)


class BackgroundServer:
    """The web server on a named thread, beside ``App.run``'s sensors and workers.

    ``listener`` comes from :func:`listen`: the port is already ours, so a
    taken port is dealt with before this thread exists.
    """

    def __init__(self, server: uvicorn.Server, listener: socket.socket) -> None:
        self.server = server
        self.listener = listener
        self.thread = supervised("ferryman-web", self._serve, start=False).thread
        self.error: BaseException | None = None

    def _serve(self) -> None:
        try:
            self.server.run(sockets=[self.listener])
        except BaseException as exc:  # uvicorn ends with SystemExit: catch that too
            self.error = exc
            # Before the server is up, start() reports this and the command
            # stops. After, it is a crash for the supervisor to log and count;
            # the daemon goes on without pages (its sensors and workers matter more).
            if self.server.started:
                raise
        finally:
            self.listener.close()

    def start(self, timeout: float = 10.0) -> None:
        """Start serving; raise if the server is not serving within ``timeout``."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)  # uvicorn offers no event to wait on
        if not self.server.started:
            raise ConfigurationError(
                f"the web server did not start on {self.server.config.host}:"
                f"{self.server.config.port}: {self.error or 'timed out'}"
            )

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
