"""Who holds a transfer, and when another upload may take it over.

A transfer is held by one call of ``upload`` at a time — inside a job, by one
attempt of its run — not by a process: a worker runs several jobs at once,
and two of them may want the same object (a file that changed while its
previous version was still uploading). The owner recorded is
``host:pid/call``, ``call`` numbering this process's upload calls; the calls
still running here are kept in :data:`_live`, so a call that returned (or
raised) is known to be over without waiting for its lease.

Thread: :class:`Hold` renews a held transfer's lease on
``ferryman-transfer-<id>-lease``. It never dies silently: a refused renewal,
a lease that could not be renewed for its whole length, or a crash of the
thread itself is logged and kept in ``Hold.lost``, which the upload raises.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

from ferryman.errors import FerrymanError, LeaseLost, StoreError, TransferConflict
from ferryman.logs import process_id
from ferryman.model import Transfer
from ferryman.store import Store, TransferFence
from ferryman.supervise import supervised

_lock = threading.Lock()
_calls = itertools.count(1)
_live: set[int] = set()  # this process's upload calls that have not returned


def _forget_parent_calls() -> None:
    # A forked worker is a new process: its parent's calls are not its own,
    # and a lock some parent thread held at the fork would never be released.
    global _lock
    _lock = threading.Lock()
    _live.clear()


os.register_at_fork(after_in_child=_forget_parent_calls)


@contextmanager
def upload_call() -> Iterator[str]:
    """This call's owner id, ``host:pid/call``; counted live until the block ends.

    Registered before the transfer is opened, so that no other call of this
    process can see the transfer held by a call it does not know is running.
    """
    with _lock:
        call = next(_calls)
        _live.add(call)
    try:
        yield f"{process_id()}/{call}"
    finally:
        with _lock:
            _live.discard(call)


def owner_is_gone(transfer: Transfer, now: float) -> bool:
    """May another upload call take ``transfer`` over? Yes if its owner is gone.

    Gone means: a call of this process that has returned; a process on this
    host that is dead (a SIGKILLed upload is resumed at once, not after its
    lease); or, for a live call and for other hosts, a lease that expired
    (the owner's heartbeat stops renewing it once it crashes, is cut off or
    can no longer renew it) or was released (its call returned unfinished).
    """
    host, _, process = (transfer.owner or "").rpartition(":")
    pid, _, call = process.partition("/")
    if host == socket.gethostname() and pid.isdigit():
        if int(pid) == os.getpid():
            with _lock:
                if not (call.isdigit() and int(call) in _live):
                    return True  # the call that held it is over
        else:
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                pass  # alive, another user's
    expires = transfer.lease_expires_at
    return expires is None or expires.timestamp() < now


class Hold:
    """One upload call's hold on its transfer, for the length of a ``with`` block.

    Inside the block a thread renews the lease every third of its length.
    A refused renewal (the transfer taken over, the run's lease lost) ends
    the hold at once. A store error is logged and retried at the next beat;
    once renewals have failed for a whole lease another call may take the
    transfer over, so the hold ends with that error. Any other exception is a
    fault of the thread itself: its supervisor (:mod:`ferryman.supervise`)
    logs it with its traceback and counts it, and the hold keeps it. The upload
    checks :attr:`lost` between parts and raises it.

    Leaving the block by an exception (the call stopped short), a transfer
    still active is released, so the next call resumes it now rather than
    after the lease.
    """

    def __init__(
        self,
        store: Store,
        fence: TransferFence,
        lease_seconds: float,
        log: logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self.store = store
        self.fence = fence
        self.lease_seconds = lease_seconds
        self.log = log
        self.lost: BaseException | None = None
        self._stop = threading.Event()
        # Not restarted: a heartbeat that crashed may have missed a renewal, so
        # the upload stops with the crash (kept in ``lost``) rather than go on.
        self._thread = supervised(
            f"ferryman-transfer-{fence.transfer_id}-lease",
            self._renew,
            on_crash=self._crashed,
            start=False,
        )

    def __enter__(self) -> Hold:
        self._thread.start()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.stop()
        if _value is not None:  # a block that ends normally has finished its transfer
            self._release()

    def stop(self) -> None:
        """Stop renewing (the transfer is being finished, or the call is over)."""
        self._stop.set()
        self._thread.join()

    def _renew(self) -> None:
        interval = self.lease_seconds / 3
        renewed = time.monotonic()
        while not self._stop.wait(interval):
            try:
                self.store.renew_transfer(self.fence, self.lease_seconds)
                renewed = time.monotonic()
            except (LeaseLost, TransferConflict) as exc:
                self.lost = exc
                return
            except StoreError as exc:
                failing = time.monotonic() - renewed
                if failing < self.lease_seconds:
                    self.log.warning("renewing the transfer's lease failed, retrying: %s", exc)
                    continue
                self.log.error(
                    "transfer %d: its lease could not be renewed for %.0fs; stopping: %s",
                    self.fence.transfer_id,
                    failing,
                    exc,
                )
                self.lost = exc
                return

    def _crashed(self, exc: BaseException) -> None:
        self.lost = exc

    def _release(self) -> None:
        # A failure here only costs the next call a wait for the lease: logged, not raised.
        try:
            # DEBUG: the error that cut the call short is what the user needs to
            # read (the CLI promises it as the one line on stderr).
            if self.store.release_transfer(self.fence):
                self.log.debug("transfer %d left active for a later call", self.fence.transfer_id)
        except FerrymanError as exc:
            self.log.warning(
                "could not release transfer %d; another call may take it over once its "
                "lease expires: %s",
                self.fence.transfer_id,
                exc,
            )
