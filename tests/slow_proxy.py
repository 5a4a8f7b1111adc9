"""A loopback TCP proxy that relays at a bounded rate, so a test can stop a transfer mid-way.

Bytes from the server to the client go at about ``rate`` bytes per second per
connection; the other direction is relayed as it comes.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

CHUNK = 64 * 1024


class SlowProxy:
    def __init__(self, upstream: str, *, rate: int) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        self.upstream = (host, int(port))
        self.rate = rate
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="slow-proxy", daemon=True)

    def __enter__(self) -> SlowProxy:
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
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.upstream, timeout=30)
        except OSError:
            client.close()
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
                for sock in (source, sink):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

        up = threading.Thread(target=pipe, args=(client, server, None), daemon=True)
        up.start()
        pipe(server, client, self.rate)
        up.join(timeout=30)
        client.close()
        server.close()
