"""Who holds a standalone transfer, and when another process may take it over."""

from __future__ import annotations

import os
import socket

from ferryman.model import Transfer


def owner_id() -> str:
    """This process, as recorded in a transfer's ``owner``: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_is_gone(transfer: Transfer, now: float) -> bool:
    """May this process take ``transfer`` over? Yes if its owner is dead or its lease expired.

    A process on this host is checked directly (a SIGKILLed upload is resumed at
    once, not after its lease); other hosts only by the lease.
    """
    host, _, pid = (transfer.owner or "").rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        if int(pid) == os.getpid():
            return True  # an earlier call in this process gave up on it
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # alive, another user's
    expires = transfer.lease_expires_at
    return expires is None or expires.timestamp() < now
