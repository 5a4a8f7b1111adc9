"""Resume when ListParts pages over gaps in the part numbers, on moto and SeaweedFS.

A crash with several parts in flight leaves S3 holding parts the store never
confirmed, with gaps between them. Listing them takes several pages once an
upload has more than 1,000 parts; here the page is shrunk to one part so a
30 MiB file shows the same paging. SeaweedFS pages by part number, as S3
does, so every part it holds is adopted. moto treats the marker as an index
into its list, which hides parts after a gap: those are sent again, and the
object must come out right all the same.
"""

from __future__ import annotations

import base64
import zlib
from pathlib import Path
from typing import Any

import pytest

import ferryman as fm
from ferryman.store import Store
from ferryman.transfer import resume
from tests.s3_fixtures import s3_bucket, s3_client, s3_endpoint, s3_server
from tests.s3_servers import seaweed, seaweed_bucket, seaweed_env
from tests.transfer.support import MiB, file_sha256, object_sha256, write_random

__all__ = [  # fixtures used here
    "s3_bucket",
    "s3_client",
    "s3_endpoint",
    "s3_server",
    "seaweed",
    "seaweed_bucket",
    "seaweed_env",
]

PART = 5 * MiB


class Interrupted(Exception):
    pass


@pytest.fixture(params=["moto", "seaweedfs"])
def server(request: pytest.FixtureRequest) -> tuple[str, Any, str]:
    """(name, client, bucket) on one of the two S3 servers."""
    if request.param == "moto":
        return "moto", request.getfixturevalue("s3_client"), request.getfixturevalue("s3_bucket")
    bucket = request.getfixturevalue("seaweed_bucket")
    return "seaweedfs", request.getfixturevalue("seaweed_env").client(), bucket


# Enough parts that the two landed beyond gaps still fit after the last one confirmed.
PARTS = 7


def stop_after_first_part(update: fm.transfer.TransferProgress) -> None:
    if update.parts_confirmed >= 1 and not update.done:
        raise Interrupted("a crash after the first part")


def test_parts_beyond_a_gap_are_adopted_or_resent_never_lost(
    tmp_path: Path,
    sqlite_url: str,
    server: tuple[str, Any, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name, client, bucket = server
    monkeypatch.setattr(resume, "LIST_PARTS_PAGE", 1)
    source = write_random(tmp_path / "gaps.bin", PARTS * PART)
    url = f"s3://{bucket}/gaps.bin"
    with pytest.raises(Interrupted):
        fm.transfer.upload(
            source,
            url,
            part_size=PART,
            concurrency=1,
            store=sqlite_url,
            progress=stop_after_first_part,
        )
    store = Store(sqlite_url)
    try:
        (transfer,) = store.list_transfers(status=fm.TransferStatus.ACTIVE)
        # The sender's pool has two threads for one slot of concurrency, so
        # while the first part's row commits, the next ones may be sent and
        # committed too: a stop lands after one part and at most three.
        confirmed = transfer.parts_confirmed
        assert 1 <= confirmed <= 3 and transfer.upload_id is not None
        # Two more parts reached S3 before the crash, with a gap before each.
        data = source.read_bytes()
        landed = [confirmed + 2, confirmed + 4]
        for number in landed:
            body = data[(number - 1) * PART : number * PART]
            client.upload_part(
                Bucket=bucket,
                Key="gaps.bin",
                UploadId=transfer.upload_id,
                PartNumber=number,
                Body=body,
                ChecksumCRC32=base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode(),
            )

        done = fm.transfer.upload(source, url, store=sqlite_url)

        assert done.status is fm.TransferStatus.SUCCEEDED and done.resumes == 1
        parts = store.get_transfer_parts(done.id)
    finally:
        store.close()
    assert [p.part_number for p in parts] == list(range(1, PARTS + 1))
    adopted = [p.part_number for p in parts if p.adopted]
    if name == "seaweedfs":
        assert adopted == landed  # each found on a page of its own
    else:
        # Past the first gap moto's pages no longer follow the part numbers,
        # so it never lists the last part: sent again, not adopted.
        assert adopted == landed[:1]
    assert object_sha256(client, bucket, "gaps.bin") == file_sha256(source)
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
