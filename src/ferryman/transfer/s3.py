"""S3 plumbing for transfers: URLs, part sizes, the client, errors and retries.

Only the standard S3 API is used (multipart uploads, ``ChecksumSHA256``,
``ListParts``, ``HeadObject``), so AWS S3, MinIO, SeaweedFS and moto behave
alike. The client comes from boto3's default chain: ``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``,
``AWS_REGION`` ... Credentials never appear in ferryman's messages or logs.

Transient failures — HTTP 5xx, throttling, ``BadDigest`` (bytes damaged in
flight; the same bytes are sent again), dropped or refused connections,
timeouts — are retried here with a deterministic backoff (:class:`~ferryman.Backoff`
keyed by the operation), botocore's own randomised retries being switched off.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ferryman.errors import ConfigurationError, S3Error, S3Unavailable
from ferryman.model import Backoff

MiB = 1024 * 1024
GiB = 1024 * MiB
MIN_PART_SIZE = 5 * MiB  # S3's minimum for every part but the last
MAX_PART_SIZE = 5 * GiB
MAX_PARTS = 10_000
DEFAULT_PART_SIZE = 8 * MiB

log = logging.getLogger("ferryman.transfer")
T = TypeVar("T")

_URL = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.\-_]{1,254})/(?P<key>.+)$")
_RETRYABLE_CODES = frozenset(
    {
        "BadDigest",
        "InternalError",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
    }
)
_DENIED_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"}
)


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/key`` → ``(bucket, key)``, or :class:`~ferryman.ConfigurationError`."""
    match = _URL.match(url or "")
    if match is None or match["key"].endswith("/"):
        raise ConfigurationError(
            f"bad S3 URL {url!r}: expected s3://bucket/key (a bucket name and an object key, "
            "the key not ending in '/')"
        )
    return match["bucket"], match["key"]


def format_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def choose_part_size(file_size: int, requested: int | None = None) -> int:
    """The part size for a file of ``file_size`` bytes under S3's rules.

    Parts are 5 MiB to 5 GiB and at most 10,000 per object. Without a request
    the size is 8 MiB, grown in whole MiB just enough to fit the file in
    10,000 parts (a 2 TiB file gets 210 MiB parts). A requested size that
    breaks a rule is a :class:`~ferryman.ConfigurationError` saying what works.
    """
    if file_size > MAX_PART_SIZE * MAX_PARTS:
        raise ConfigurationError(
            f"{format_size(file_size)} is more than S3 allows in one object "
            f"({MAX_PARTS:,} parts of at most {format_size(MAX_PART_SIZE)})"
        )
    needed = math.ceil(file_size / MAX_PARTS / MiB) * MiB
    if requested is None:
        return max(DEFAULT_PART_SIZE, needed)
    if not MIN_PART_SIZE <= requested <= MAX_PART_SIZE:
        raise ConfigurationError(
            f"part size {format_size(requested)} is outside S3's limits "
            f"({format_size(MIN_PART_SIZE)} to {format_size(MAX_PART_SIZE)})"
        )
    if requested < needed:
        raise ConfigurationError(
            f"part size {format_size(requested)} needs "
            f"{math.ceil(file_size / requested):,} parts for {format_size(file_size)}; "
            f"S3 allows {MAX_PARTS:,}: use at least {format_size(needed)} (or leave it out)"
        )
    return requested


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``8MiB``, ``8M``, ``16 MB``, ``1GiB``, ``5242880`` → bytes (binary units)."""
    match = _SIZE.match(text)
    if match is None:
        raise ConfigurationError(f"bad size {text!r}: expected e.g. 8MiB, 64M or 1GiB")
    unit = (match[2] or "b")[0].lower()
    scale = {"b": 1, "k": 1024, "m": MiB, "g": GiB, "t": 1024 * GiB}[unit]
    return int(float(match[1]) * scale)


def make_client(concurrency: int) -> Any:
    """A boto3 S3 client from the standard AWS environment, retries left to :class:`Retrying`."""
    import boto3  # type: ignore[import-untyped]  # imported late: slow, and only S3 users need it
    from botocore.config import Config  # type: ignore[import-untyped]

    config = Config(
        retries={"total_max_attempts": 1, "mode": "standard"},
        # Every part carries its SHA-256 in a signed x-amz-checksum-sha256
        # header, which the server checks: signing the body too would make
        # client and server hash each part once more (botocore does so over
        # plain HTTP unless told not to) for no added integrity.
        s3={"payload_signing_enabled": False},
        max_pool_connections=concurrency + 4,
        connect_timeout=5,
        read_timeout=60,
        tcp_keepalive=True,
    )
    try:
        # A session per client: boto3's default session is not thread-safe.
        return boto3.session.Session().client("s3", config=config)
    except Exception as exc:  # botocore's errors, and ValueError for a bad AWS_ENDPOINT_URL
        raise settings_error(exc) from exc


def endpoint_of(client: Any) -> str:
    return str(getattr(client.meta, "endpoint_url", "S3"))


@dataclass(frozen=True, slots=True)
class Retrying:
    """Calls S3 with bounded, deterministic retries of transient failures."""

    client: Any
    attempts: int = 10
    backoff: Backoff = field(default_factory=lambda: Backoff(base=0.2, factor=2.0, max=5.0))
    sleep: Callable[[float], None] = time.sleep

    def __call__(self, operation: str, key: str, **arguments: Any) -> Any:
        """``client.<operation>(**arguments)``; ``key`` spreads the backoff (e.g. the part)."""
        from botocore.exceptions import (  # type: ignore[import-untyped]
            BotoCoreError,
            ClientError,
        )

        method = getattr(self.client, operation)
        for attempt in range(1, self.attempts + 1):
            try:
                return method(**arguments)
            except ClientError as exc:
                code, status = client_error_code(exc)
                retryable = status >= 500 or code in _RETRYABLE_CODES
                if not retryable or attempt == self.attempts:
                    raise self.translate(operation, arguments, exc) from exc
                reason = f"{code or status}"
            except BotoCoreError as exc:
                # Connection refused/reset/closed, timeouts, truncated responses.
                if not _is_transient(exc):
                    raise settings_error(exc, operation) from exc
                if attempt == self.attempts:
                    raise S3Unavailable(
                        f"cannot reach S3 at {endpoint_of(self.client)} ({operation}, "
                        f"{self.attempts} attempts): {_first_line(exc)}"
                    ) from exc
                reason = type(exc).__name__
            delay = self.backoff.delay(attempt, f"{operation}:{key}")
            log.warning(
                "S3 %s failed (%s), attempt %d of %d; retrying in %.2fs",
                operation,
                reason,
                attempt,
                self.attempts,
                delay,
                extra={"operation": operation, "attempt": attempt},
            )
            self.sleep(delay)
        raise AssertionError("unreachable")

    def translate(self, operation: str, arguments: dict[str, Any], exc: Any) -> S3Error:
        code, status = client_error_code(exc)
        bucket = arguments.get("Bucket", "?")
        where = f"s3://{bucket}/{arguments['Key']}" if "Key" in arguments else f"s3://{bucket}"
        endpoint = endpoint_of(self.client)
        if code == "NoSuchBucket":
            return S3Error(f"bucket {bucket!r} does not exist at {endpoint}", code)
        if code in _DENIED_CODES or status == 403:
            return S3Error(
                f"access denied to {where} at {endpoint} ({code or status}): check the "
                "credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE) and the bucket policy",
                code,
            )
        if status >= 500 or code in _RETRYABLE_CODES:
            return S3Unavailable(
                f"S3 at {endpoint} kept failing ({operation} on {where}, "
                f"{self.attempts} attempts): {code or status}",
                code,
            )
        message = exc.response.get("Error", {}).get("Message", "")
        return S3Error(f"S3 refused {operation} on {where}: {code or status} {message}", code)


def client_error_code(exc: Any) -> tuple[str, int]:
    response = getattr(exc, "response", {}) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def _is_transient(exc: Exception) -> bool:
    from botocore import exceptions as bx  # type: ignore[import-untyped]

    return isinstance(
        exc,
        bx.HTTPClientError
        | bx.ConnectionError
        | bx.ResponseStreamingError
        | bx.IncompleteReadError,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# botocore's errors about the AWS settings themselves (profile, credentials, region),
# raised before any request reaches S3: the fix is in the environment, not in S3.
_SETTINGS_ERRORS = (
    "NoCredentialsError",
    "PartialCredentialsError",
    "CredentialRetrievalError",
    "UnknownCredentialError",
    "ProfileNotFound",
    "ConfigNotFound",
    "InvalidConfigError",
    "NoRegionError",
    "InvalidRegionError",
    "SSOError",
    "TokenRetrievalError",
    "NoAuthTokenError",
)


def settings_error(exc: Exception, operation: str = "") -> ConfigurationError | S3Error:
    """A botocore error that no retry can fix, in ferryman's terms (credentials never shown).

    Missing or unknown profiles, credentials and regions, and a malformed
    ``AWS_ENDPOINT_URL``, are a :class:`~ferryman.ConfigurationError` naming the
    setting to fix; anything else botocore refuses is an :class:`~ferryman.S3Error`.
    """
    from botocore import exceptions as bx

    kinds = tuple(getattr(bx, name) for name in _SETTINGS_ERRORS if hasattr(bx, name))
    reason = _first_line(exc)
    if isinstance(exc, bx.ProfileNotFound):
        return ConfigurationError(
            f"AWS profile {exc.kwargs.get('profile')!r} not found in the AWS config files "
            "(~/.aws/config, ~/.aws/credentials): check AWS_PROFILE"
        )
    if isinstance(exc, bx.NoCredentialsError):
        return ConfigurationError(
            "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "or AWS_PROFILE"
        )
    if isinstance(exc, kinds):
        return ConfigurationError(f"AWS settings: {reason}")
    if isinstance(exc, ValueError) and not isinstance(exc, bx.BotoCoreError):
        return ConfigurationError(f"AWS settings: {reason} (check AWS_ENDPOINT_URL)")
    where = f" ({operation})" if operation else ""
    return S3Error(f"S3 client error{where}: {type(exc).__name__}: {reason}", type(exc).__name__)
