"""Loopback TCP proxies that stand between a client and an S3 endpoint.

* :class:`SlowProxy` relays at a bounded rate, so a test can stop a transfer
  mid-way: bytes from the server to the client go at about ``rate`` bytes per
  second per connection, and from the client to the server at about
  ``upload_rate`` when it is given (else as they come).
* :class:`FaultProxy` breaks connections on purpose, for resilience tests.
  Every third client connection (the second, fifth ...) is answered with an
  error; the others are relayed and broken, with sizes from a seeded draw:

  * ``inject``: answered at once with ``500`` or ``503`` and closed, the
    request never reaching the server;
  * ``drop``: relayed until the client has sent a random number of bytes
    (1-16 MiB, so often in the middle of a part), then both sides are closed.

  It counts what it did so a test can show the faults really happened.
* :class:`DropProxy` relays as it comes (any TCP protocol: the broker tests
  put it before RabbitMQ, Redis, NATS and SQS) until :meth:`DropProxy.down`
  cuts every relayed connection and refuses new ones, as a server that went
  away would; :meth:`DropProxy.up` accepts again.

All accept on ``127.0.0.1`` (``proxy.endpoint``) from ``with`` to its end,
each connection on a thread of its own.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable

CHUNK = 64 * 1024


class _Proxy:
    """Accepts connections on a loopback port and hands each to :meth:`_serve`."""

    def __init__(self, upstream: tuple[str, int], *, name: str) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name=name, daemon=True)

    def __enter__(self) -> _Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()
        self._listener.close()
        self._thread.join(timeout=10)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            serve = self._serve_later(client)
            threading.Thread(target=serve, daemon=True).start()

    def _serve_later(self, client: socket.socket) -> Callable[[], None]:
        """What to do with ``client``, decided in the order connections came."""
        raise NotImplementedError

    def _connect(self, client: socket.socket) -> socket.socket | None:
        """A connection to the upstream server; None (the client closed) if it refuses."""
        try:
            return socket.create_connection(self.upstream, timeout=30)
        except OSError:
            client.close()
            return None


def _shut(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    """Relay ``source`` to ``sink`` until either side closes; then shut both."""
    try:
        while data := source.recv(CHUNK):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        _shut(source, sink)


class SlowProxy(_Proxy):
    def __init__(self, upstream: str, *, rate: int, upload_rate: int | None = None) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        super().__init__((host, int(port)), name="slow-proxy")
        self.rate = rate
        self.upload_rate = upload_rate

    def __enter__(self) -> SlowProxy:
        super().__enter__()
        return self

    def _serve_later(self, client: socket.socket) -> Callable[[], None]:
        return lambda: self._relay(client)

    def _relay(self, client: socket.socket) -> None:
        server = self._connect(client)
        if server is None:
            return

        def pipe(source: socket.socket, sink: socket.socket, rate: int | None) -> None:
            started, sent = time.monotonic(), 0
            try:
                while data := source.recv(CHUNK):
                    sink.sendall(data)
                    sent += len(data)
                    if rate is not None:
                        ahead = sent / rate - (time.monotonic() - started)
                        if ahead > 0:
                            time.sleep(ahead)  # the bandwidth limit itself
            except OSError:
                pass
            finally:
                _shut(source, sink)

        up = threading.Thread(target=pipe, args=(client, server, self.upload_rate), daemon=True)
        up.start()
        pipe(server, client, self.rate)
        up.join(timeout=30)
        client.close()
        server.close()


class FaultProxy(_Proxy):
    def __init__(self, upstream: tuple[str, int], *, seed: int = 0, inject_every: int = 3):
        super().__init__(upstream, name="fault-proxy")
        self.inject_every = inject_every
        self._connections = 0
        self.counts: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def __enter__(self) -> FaultProxy:
        super().__enter__()
        return self

    def _serve_later(self, client: socket.socket) -> Callable[[], None]:
        with self._lock:
            self._connections += 1
            inject = self._connections % self.inject_every == 2 % self.inject_every
            status = self._rng.choice([500, 503])
            budget = self._rng.randint(1 << 20, 16 << 20)
        if inject:
            return lambda: self._inject(client, status)
        return lambda: self._relay(client, budget)

    def _inject(self, client: socket.socket, status: int) -> None:
        with client:
            try:
                client.recv(CHUNK)  # the request line and headers, at least in part
                reason = "Internal Server Error" if status == 500 else "Service Unavailable"
                client.sendall(
                    f"HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\n"
                    "Connection: close\r\n\r\n".encode()
                )
            except OSError:
                pass
        self._count(f"injected_{status}")

    def _relay(self, client: socket.socket, budget: int) -> None:
        server = self._connect(client)
        if server is None:
            return
        done = threading.Event()

        def downstream() -> None:
            try:
                while data := server.recv(CHUNK):
                    client.sendall(data)
            except OSError:
                pass
            finally:
                done.set()

        threading.Thread(target=downstream, daemon=True).start()
        sent = 0
        try:
            while not done.is_set():
                data = client.recv(CHUNK)
                if not data:
                    break
                if sent + len(data) > budget:
                    self._count("dropped")
                    break
                server.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            _shut(client, server)
            client.close()
            server.close()

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1


class DropProxy(_Proxy):
    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__(upstream, name="drop-proxy")
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._accepting = True

    def __enter__(self) -> DropProxy:
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.down()

    def down(self) -> None:
        """Cut every relayed connection; refuse new ones until :meth:`up`."""
        with self._lock:
            self._accepting = False
            cut = list(self._open)
        _shut(*cut)

    def up(self) -> None:
        with self._lock:
            self._accepting = True

    def _serve_later(self, client: socket.socket) -> Callable[[], None]:
        return lambda: self._relay(client)

    def _relay(self, client: socket.socket) -> None:
        server = self._connect(client)
        if server is None:
            return
        server.settimeout(None)  # a broker connection may idle longer than a connect may take
        with self._lock:
            relayed = self._accepting
            if relayed:
                self._open.update((client, server))
        if relayed:
            up = threading.Thread(target=_pipe, args=(client, server), daemon=True)
            up.start()
            _pipe(server, client)
            up.join(timeout=30)
        with self._lock:
            self._open.difference_update((client, server))
        client.close()
        server.close()
