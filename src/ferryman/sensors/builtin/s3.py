"""``fm.sensors.s3_prefix``: new and changed objects under an S3 prefix.

Each object version becomes one run: the run_key is
``s3://bucket/key@etag``, so an object overwritten with new content (a new
ETag) gets a new run and the same content is never requested twice.

Why a full listing per evaluation: ListObjectsV2 returns keys in key order,
never in time order, and has no "modified since" filter, so the only way to
see every new object — whatever its key — is to list the whole prefix. The
listing streams page by page; only the new objects are kept in memory.

How nothing is missed with a bounded cursor (see
:mod:`ferryman.sensors.builtin.watermark`): the watermark is the newest
``LastModified`` decided so far, and objects with a ``LastModified`` up to
``safety_window`` seconds older are still looked at, their identities
compared against the cursor's edge. That window matters for S3 because:

* ``LastModified`` has one-second granularity: several objects share a
  second, and one of them may be listed only after the others were decided;
* an object written by a multipart upload carries the time the upload was
  *started*, but appears in listings only when it completes — a large
  upload shows up with a ``LastModified`` as old as the upload took;
* replication and some S3-compatible stores make objects visible a while
  after their ``LastModified``.

So ``safety_window`` (default 15 minutes) must be longer than the longest
multipart upload into the prefix and the longest replication delay. The
cursor's edge holds the digests of the objects modified within the window,
at most ``max_edge`` of them (8 bytes each, about 110 kB of cursor when
full), and empties once nothing new has arrived for two windows. The
watermark is also capped at this host's clock, so a server clock running
ahead cannot push it past objects still to come.

Cost: one ListObjectsV2 request per ``page_size`` keys per evaluation; an
object modified before the floor is dismissed without further work.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ferryman.errors import ConfigurationError
from ferryman.model import RunRequest, SensorResult
from ferryman.sensors.builtin.routing import UNROUTED, Router, Routes, warn_unrouted
from ferryman.sensors.builtin.watermark import Watermark, identity_digest
from ferryman.sensors.context import SensorContext

CURSOR_KIND = "s3"


@dataclass(frozen=True, slots=True, kw_only=True)
class S3Report:
    """What one evaluation of an S3 prefix sensor saw (``sensor.last_report``)."""

    objects_listed: int
    pages: int
    new: int
    waiting: int
    unrouted: int
    cursor_bytes: int


@dataclass(frozen=True, slots=True)
class _Candidate:
    changed: int  # LastModified, whole seconds since the epoch
    key: str
    etag: str
    size: int
    last_modified: datetime
    digest: bytes
    run_key: str


class S3PrefixSensor:
    """A poll sensor over one S3 prefix; see :func:`s3_prefix`."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        routes: Routes | None,
        client: Any,
        max_per_evaluation: int,
        safety_window: float,
        max_edge: int,
        page_size: int,
        clock: Callable[[], float],
        name: str | None,
    ) -> None:
        if not bucket:
            raise ConfigurationError("s3_prefix needs a bucket name")
        if safety_window < 0:
            raise ConfigurationError("safety_window must not be negative")
        if max_per_evaluation < 1 or max_edge < 1 or not 1 <= page_size <= 1000:
            raise ConfigurationError(
                "max_per_evaluation and max_edge must be at least 1, page_size 1 to 1000"
            )
        self.bucket = bucket
        self.prefix = prefix
        self.router = Router.build(routes)
        self.max_per_evaluation = max_per_evaluation
        self.safety_window = safety_window
        self.max_edge = max_edge
        self.page_size = page_size
        self.clock = clock
        self.last_report: S3Report | None = None
        self._client = client
        self._client_lock = threading.Lock()
        self.__name__ = self.__qualname__ = name or f"s3_{_slug(bucket)}"
        self.__doc__ = f"New and changed objects under s3://{bucket}/{prefix}."

    def __repr__(self) -> str:
        return f"<s3 prefix sensor {self.__name__} s3://{self.bucket}/{self.prefix}>"

    @property
    def client(self) -> Any:
        """The boto3 S3 client: the one given, or one from the standard AWS environment.

        ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``), credentials, region
        and profiles are read by boto3 itself, when the sensor is first
        evaluated, so defining the sensor touches no network.
        """
        with self._client_lock:  # boto3's default session is not thread-safe
            if self._client is None:
                # Imported here: boto3 takes a while to import and only S3 users need it.
                import boto3  # type: ignore[import-untyped]

                self._client = boto3.client("s3")
            return self._client

    def check_cursor(self, cursor: str) -> None:
        """Raise :class:`~ferryman.ConfigurationError` unless this sensor can read ``cursor``.

        Called before an operator's cursor is committed (``set-cursor``, the API,
        the dashboard), so a cursor that would fail every evaluation is refused.
        """
        Watermark.decode(cursor, CURSOR_KIND)

    def __call__(self, ctx: SensorContext, cursor: str | None) -> SensorResult:
        now = int(self.clock())
        state = Watermark.decode(cursor, CURSOR_KIND)
        candidates: list[_Candidate] = []
        listed = pages = 0
        floor, edge = state.floor, state.edge
        for page in self._pages():
            pages += 1
            for item in page:
                key: str = item["Key"]
                listed += 1
                if key.endswith("/") and item.get("Size", 0) == 0:
                    continue  # a "folder" placeholder, not an object to ingest
                last_modified: datetime = item["LastModified"]
                changed = int(last_modified.timestamp())
                if floor is not None and changed <= floor:
                    continue
                etag = str(item.get("ETag", "")).strip('"')
                run_key = f"s3://{self.bucket}/{key}@{etag}"
                digest = identity_digest(run_key)
                if digest in edge:
                    continue
                candidates.append(
                    _Candidate(
                        changed, key, etag, int(item.get("Size", 0)), last_modified, digest, run_key
                    )
                )
        candidates.sort(key=lambda c: (c.changed, c.key))
        chosen = candidates[: self.max_per_evaluation]
        rest = candidates[self.max_per_evaluation :]

        requests, unrouted = self._requests(chosen)
        warn_unrouted(ctx.logger, "objects", unrouted)
        state.advance(
            ((c.changed, c.digest) for c in chosen),
            window=int(self.safety_window),
            max_edge=self.max_edge,
            ceiling=now,
            undecided_min=rest[0].changed if rest else None,
            log=ctx.logger,
        )
        new_cursor = state.encode(CURSOR_KIND)
        self.last_report = S3Report(
            objects_listed=listed,
            pages=pages,
            new=len(requests),
            waiting=len(rest),
            unrouted=len(unrouted),
            cursor_bytes=len(new_cursor or ""),
        )
        return SensorResult(run_requests=requests, cursor=new_cursor, skipped=len(unrouted))

    def _requests(self, chosen: list[_Candidate]) -> tuple[list[RunRequest], list[str]]:
        """The run requests of the chosen objects, and the keys routed to no job."""
        requests: list[RunRequest] = []
        unrouted: list[str] = []
        for candidate in chosen:
            job = self.router.job_for(candidate.key)
            if job is UNROUTED:
                unrouted.append(candidate.key)
                continue
            payload = {
                "bucket": self.bucket,
                "key": candidate.key,
                "uri": f"s3://{self.bucket}/{candidate.key}",
                "etag": candidate.etag,
                "size": candidate.size,
                "last_modified": candidate.last_modified.isoformat(),
            }
            requests.append(
                RunRequest(candidate.run_key, payload, job if isinstance(job, str) else None)
            )
        return requests, unrouted

    def _pages(self) -> Iterator[list[dict[str, Any]]]:
        """The prefix's objects, one ListObjectsV2 page at a time."""
        arguments: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": self.prefix,
            "MaxKeys": self.page_size,
        }
        while True:
            response = self.client.list_objects_v2(**arguments)
            yield list(response.get("Contents", ()))
            token = response.get("NextContinuationToken")
            if not response.get("IsTruncated") or not token:
                return
            arguments["ContinuationToken"] = token


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text).strip("_") or "bucket"


def s3_prefix(
    bucket: str,
    prefix: str = "",
    *,
    routes: Routes | None = None,
    client: Any = None,
    max_per_evaluation: int = 1000,
    safety_window: float = 900.0,
    max_edge: int = 10_000,
    page_size: int = 1000,
    clock: Callable[[], float] = time.time,
    name: str | None = None,
) -> S3PrefixSensor:
    """A poll sensor that requests one run per new or changed object under ``prefix``.

    Guarantee: every object under ``s3://bucket/prefix`` whose
    ``LastModified`` is at most ``safety_window`` seconds older than the
    newest object already decided when it first appears in a listing is
    requested exactly once per ETag — objects sharing a ``LastModified``
    second and objects listed out of time order included (a cursor that is
    not yet set starts from every object present). The run_key is
    ``s3://bucket/key@etag``; the payload is ``{"bucket", "key", "uri",
    "etag", "size", "last_modified"}``. Zero-byte keys ending in ``/`` (folder
    placeholders) are ignored.

    ``client`` is a boto3 S3 client; by default one is built from the
    standard AWS environment (``AWS_ENDPOINT_URL`` for any S3-compatible
    endpoint). ``routes`` maps regexes searched in the key to job names
    (first match wins); unmatched objects are counted as skipped. At most
    ``max_per_evaluation`` objects are decided per evaluation, oldest first.
    ``page_size`` is ListObjectsV2's ``MaxKeys``. ``clock`` returns the
    current time in seconds. ``name`` becomes the function's ``__name__``
    (default ``s3_<bucket>``).
    """
    return S3PrefixSensor(
        bucket,
        prefix,
        routes=routes,
        client=client,
        max_per_evaluation=max_per_evaluation,
        safety_window=safety_window,
        max_edge=max_edge,
        page_size=page_size,
        clock=clock,
        name=name,
    )
