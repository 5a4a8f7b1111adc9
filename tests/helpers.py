"""Small test utilities shared by the suites."""

from __future__ import annotations

import base64
import hashlib
import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], *, timeout: float = 30.0, what: str = "") -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``.

    This waits for an observable state (a row, a file, a status), never for a
    fixed time.
    """
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def incompressible(length: int) -> str:
    """A text of ``length`` characters that no compression shrinks (the same every time).

    A long key of one repeated letter would be compressed by PostgreSQL to a
    few bytes and slip under any index size limit a real key runs into.
    """
    blocks: list[str] = []
    digest = b"ferryman"
    while sum(map(len, blocks)) < length:
        digest = hashlib.sha256(digest).digest()
        blocks.append(base64.b32encode(digest).decode().rstrip("="))
    return "".join(blocks)[:length]


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
