"""A loopback proxy to PostgreSQL that lets one COMMIT through and loses its answer.

The hardest moment of an outage for a client is a commit that landed while
the connection dropped before the answer came back: the client sees an error
for a transaction that happened. This proxy makes that moment on demand. It
relays the PostgreSQL protocol unchanged (connect with ``sslmode=disable``, so
the bytes are readable) until a client connection has sent a statement
containing ``arm`` and then a ``COMMIT``: that ``COMMIT`` goes to the server,
the server's answer (the commit done) is swallowed, and both sides of that
connection are closed. It happens once; ``fired`` says whether it did.

``lose``: what the message whose answer is lost contains, ``COMMIT`` by
default. A statement in autocommit commits on its own; prepared, it goes out
as two messages, its text (containing ``arm``) and then its execution: with
``lose=b""``, the message right after the one containing ``arm`` is the
commit whose answer is lost.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading

CHUNK = 64 * 1024


class LostCommitAnswer(socketserver.ThreadingTCPServer):
    daemon_threads = True

    def __init__(self, upstream: tuple[str, int], *, arm: bytes, lose: bytes = b"COMMIT") -> None:
        super().__init__(("127.0.0.1", 0), _Relay)
        self.upstream = upstream
        self.arm = arm
        self.lose = lose
        self.port: int = self.server_address[1]
        self.fired = threading.Event()
        self._firing = threading.Lock()
        self._serving = threading.Thread(target=self.serve_forever, name="pg-proxy", daemon=True)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}?sslmode=disable"

    def __enter__(self) -> LostCommitAnswer:
        self._serving.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
        self._serving.join(timeout=10)

    def fire(self) -> bool:
        """True the first time only: this COMMIT's answer is the one to lose."""
        with self._firing:
            if self.fired.is_set():
                return False
            self.fired.set()
            return True


class _Relay(socketserver.BaseRequestHandler):
    server: LostCommitAnswer

    def handle(self) -> None:
        client: socket.socket = self.request
        upstream = socket.create_connection(self.server.upstream)
        swallow = threading.Event()
        answers = threading.Thread(target=self._answers, args=(upstream, swallow), daemon=True)
        answers.start()
        armed = False
        with contextlib.suppress(OSError):
            while chunk := client.recv(CHUNK):
                if armed and self.server.lose in chunk and self.server.fire():
                    swallow.set()  # before the server can answer
                    upstream.sendall(chunk)
                    break
                armed = armed or self.server.arm in chunk
                upstream.sendall(chunk)
        answers.join(timeout=30)
        _close(client, upstream)

    def _answers(self, upstream: socket.socket, swallow: threading.Event) -> None:
        client: socket.socket = self.request
        with contextlib.suppress(OSError):
            while chunk := upstream.recv(CHUNK):
                if swallow.is_set():
                    break  # the answer to the COMMIT: the commit is done, the client never hears
                client.sendall(chunk)
        _close(client, upstream)


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
