"""A loopback TCP proxy that breaks connections on purpose, for resilience tests.

Every third client connection (the second, fifth ...) is answered with an
error; the others are relayed and broken, with sizes from a seeded draw:

* ``inject``: answered at once with ``500`` or ``503`` and closed, the request
  never reaching the server;
* ``drop``: relayed until the client has sent a random number of bytes
  (1-16 MiB, so often in the middle of a part), then both sides are closed.

The proxy counts what it did so a test can show the faults really happened.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
from collections import Counter

CHUNK = 64 * 1024


class FaultProxy:
    def __init__(self, upstream: tuple[str, int], *, seed: int = 0, inject_every: int = 3):
        self.upstream = upstream
        self.inject_every = inject_every
        self._connections = 0
        self.counts: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)

    def __enter__(self) -> FaultProxy:
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
            with self._lock:
                self._connections += 1
                inject = self._connections % self.inject_every == 2 % self.inject_every
                status = self._rng.choice([500, 503])
                budget = self._rng.randint(1 << 20, 16 << 20)
            if inject:
                threading.Thread(target=self._inject, args=(client, status), daemon=True).start()
            else:
                threading.Thread(target=self._relay, args=(client, budget), daemon=True).start()

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
        try:
            server = socket.create_connection(self.upstream, timeout=30)
        except OSError:
            client.close()
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
            for sock in (client, server):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1
