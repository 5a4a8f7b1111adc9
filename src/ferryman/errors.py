"""Every exception ferryman raises derives from :class:`FerrymanError`.

::

    FerrymanError
    ├── ConfigurationError      a wrong argument, URL or name, found before anything is written
    │   ├── UnknownJob          a job name this app has not registered
    │   ├── UnknownSensor       a sensor name this app has not registered
    │   └── PortInUse           the web server's address is taken
    ├── PayloadError            a payload that is not JSON, or a key that cannot be stored
    ├── SensorOutputError       a sensor returned what its kind may not return
    │   └── RoutingError        a run request names a job its sensor may not send to
    ├── UnreadableCursor        a sensor's stored cursor cannot be decoded
    ├── StoreError              the store database failed; the driver error is the ``__cause__``
    │   ├── StoreUnavailable    the database cannot be reached
    │   └── SchemaMismatch      the database schema is older or newer than this code
    ├── LeaseLost               a worker's lease on a run was taken over; its write was rolled back
    ├── Reject                  raised by a job: the input is bad, fail the run now, never retry
    └── TransferError           an upload or download did not complete
        ├── TransferFailed      the transfer is recorded ``failed`` with a reason; upload aborted
        │   └── DownloadFailed  a download is recorded ``failed``: the object changed, or bad bytes
        ├── TransferConflict    another live process owns the transfer, or took it over
        └── S3Error             S3 refused a request; ``code`` is S3's error code
            └── S3Unavailable   the endpoint could not be reached, even after retries

Driver exceptions (psycopg, sqlite3, SQLAlchemy) are translated at the store
boundary with ``raise ... from exc`` so callers only need to know this tree.
Every class here is importable from :mod:`ferryman`; ``tests/unit/
test_public_api.py`` checks that this drawing is the real tree.
"""

from __future__ import annotations


class FerrymanError(Exception):
    """Root of every exception ferryman raises."""


class ConfigurationError(FerrymanError):
    """A wrong argument, store URL, or registration, detected before any write."""


class UnknownJob(ConfigurationError):
    """A job name that the app has not registered."""

    def __init__(self, job: str, known: list[str] | None = None) -> None:
        hint = f" (registered: {', '.join(sorted(known))})" if known else ""
        super().__init__(f"unknown job {job!r}{hint}")
        self.job = job


class UnknownSensor(ConfigurationError):
    """A sensor name that the app has not registered."""

    def __init__(self, sensor: str, known: list[str] | None = None) -> None:
        hint = f" (registered: {', '.join(sorted(known))})" if known else ""
        super().__init__(f"unknown sensor {sensor!r}{hint}")
        self.sensor = sensor


class PortInUse(ConfigurationError):
    """The address is taken, by another ferryman on this host for instance."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(f"{host}:{port} is already in use (by another ferryman on this host?)")
        self.host = host
        self.port = port


class PayloadError(FerrymanError):
    """A payload or checkpoint that JSON cannot hold as it is (NaN, bytes, a key that is
    not a string, nesting over 100 levels, two lone surrogates JSON would join), or a
    run_key or message_id that cannot be stored exactly (not a non-empty string, or
    holding NUL or a lone surrogate).
    Nothing was written."""


class SensorOutputError(FerrymanError):
    """A sensor returned something that is not what its kind must return.

    Recorded as the evaluation's error (in one line, without a traceback);
    the sensor's cursor does not move.
    """


class RoutingError(SensorOutputError):
    """A run request names a job its sensor may not send to (or none, without a default)."""


class UnreadableCursor(FerrymanError):
    """The stored cursor of a sensor cannot be decoded by this version of ferryman."""

    def __init__(self, sensor: str, stored: str, reason: str) -> None:
        shown = stored if len(stored) <= 200 else f"{stored[:200]}..."
        super().__init__(
            f"sensor {sensor!r}: stored cursor {shown!r} cannot be read ({reason}); "
            "fix it with `ferryman sensors set-cursor`"
        )
        self.sensor = sensor
        self.stored = stored


class StoreError(FerrymanError):
    """The store database failed. The driver's exception is ``__cause__``."""


class StoreUnavailable(StoreError):
    """The store database cannot be reached (down, wrong host, wrong path)."""


class SchemaMismatch(StoreError):
    """The store's schema revision is not the one this version of ferryman expects."""


class LeaseLost(FerrymanError):
    """The worker no longer holds the lease on a run.

    Raised by fenced writes (heartbeat, checkpoint, ``ctx.transaction()``): another
    worker claimed the run after this one's lease expired, or the run was released
    or cancelled. The write was rolled back; the run's new owner decides its fate.
    """

    def __init__(self, run_id: int, lease_token: int) -> None:
        super().__init__(f"lease on run {run_id} (token {lease_token}) was lost")
        self.run_id = run_id
        self.lease_token = lease_token


class Reject(FerrymanError):
    """Raised by a job to say its input is bad.

    The run becomes ``failed`` at once with ``reason`` kept as its last error; it
    is never retried automatically (``ferryman retry`` re-runs it after the data
    has been fixed).
    """

    def __init__(self, reason: str) -> None:
        # Kept as text whatever was passed (an exception, bytes): it is stored
        # as the run's last error.
        reason = reason if isinstance(reason, str) else str(reason)
        super().__init__(reason)
        self.reason = reason


class TransferError(FerrymanError):
    """An upload to S3 did not complete; what was confirmed stays recorded for a resume."""


class TransferFailed(TransferError):
    """The transfer is recorded ``failed`` and its multipart upload was aborted.

    ``reason`` is one of ``source_missing`` (the file is gone), ``source_changed``
    (bytes behind a confirmed part changed, or the file changed during a
    non-follow upload), ``too_large``, ``verify_failed`` or ``aborted``.
    """

    def __init__(self, transfer_id: int, reason: str, detail: str) -> None:
        super().__init__(f"transfer {transfer_id} failed ({reason}): {detail}")
        self.transfer_id = transfer_id
        self.reason = reason
        self.detail = detail


class DownloadFailed(TransferFailed):
    """The download is recorded ``failed`` and its temporary file removed; DEST is untouched.

    ``reason`` is ``object_changed`` (the object is not the version the
    download began with) or ``verify_failed`` (the bytes do not match the
    object's checksum).
    """

    def __init__(self, download_id: int, reason: str, detail: str) -> None:
        super().__init__(download_id, reason, detail)
        self.args = (f"download {download_id} failed ({reason}): {detail}",)


class TransferConflict(TransferError):
    """Another live process owns this transfer (or took it over while we ran).

    Nothing this process still had in flight was recorded; the owner carries on.
    """


class S3Error(TransferError):
    """S3 refused a request (``code``: ``AccessDenied``, ``NoSuchBucket`` ...)."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class S3Unavailable(S3Error):
    """The S3 endpoint could not be reached (or kept failing) after every retry."""
