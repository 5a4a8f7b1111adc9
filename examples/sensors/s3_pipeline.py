"""An S3 prefix sensor: each new or changed JSON object under ``incoming/`` becomes a run.

The bucket is ``S3_PIPELINE_BUCKET`` (default ``landing``). The S3 client
comes from the standard AWS environment (``AWS_ENDPOINT_URL`` for any
S3-compatible endpoint, credentials, region, profiles). The ``load_document``
job downloads the object and stores it in the ``documents`` table of the
store database through ``ctx.transaction()``; objects that are not ``.json``
match no route and are counted as skipped.

The store is ``FERRYMAN_STORE`` (default ``sqlite:///sensors.db``). Against a
local S3 endpoint (``python -m moto.server -p 5000`` in another terminal),
from the repository root::

    export AWS_ENDPOINT_URL=http://127.0.0.1:5000 AWS_ACCESS_KEY_ID=test \\
        AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
    python -m examples.sensors.s3_pipeline      # tables, bucket, two sample objects
    ferryman --app examples.sensors.s3_pipeline:app tick
    ferryman --app examples.sensors.s3_pipeline:app work --until-idle
"""

from __future__ import annotations

import json
import os
from typing import Any

import sqlalchemy as sa

import ferryman as fm

app = fm.App(os.environ.get("FERRYMAN_STORE", "sqlite:///sensors.db"))
BUCKET = os.environ.get("S3_PIPELINE_BUCKET", "landing")

metadata = sa.MetaData()
documents = sa.Table(
    "documents",
    metadata,
    sa.Column("uri", sa.Text, primary_key=True),
    sa.Column("etag", sa.Text, nullable=False),
    sa.Column("body", sa.JSON, nullable=False),
)

# The sensor builds its boto3 client on first use; the job reuses it.
incoming = app.poll_sensor(jobs=["load_document"], interval=60.0, name="incoming_objects")(
    fm.sensors.s3_prefix(
        BUCKET,
        "incoming/",
        routes={r"\.json$": "load_document"},
        # An object can show up in a listing with a LastModified this much older than
        # the newest one already seen (multipart uploads, replication) and still be found.
        safety_window=900.0,
    )
)


@app.job(max_attempts=5)
def load_document(ctx: fm.JobContext, obj: dict[str, Any]) -> None:
    """``obj`` is the sensor's payload: bucket, key, uri, etag, size, last_modified."""
    # The object as it is now: a run for an older version loads the newer content, which
    # is harmless, since the newest version's run replaces the row with the same content.
    response = incoming.client.get_object(Bucket=obj["bucket"], Key=obj["key"])
    etag = str(response["ETag"]).strip('"')
    try:
        body = json.loads(response["Body"].read())
    except json.JSONDecodeError as exc:
        raise fm.Reject(f"{obj['uri']} is not JSON: {exc}") from exc
    with ctx.transaction() as conn:  # the newest version of a key replaces the older
        conn.execute(documents.delete().where(documents.c.uri == obj["uri"]))
        conn.execute(documents.insert().values(uri=obj["uri"], etag=etag, body=body))


def setup() -> None:
    """Create the table and the bucket, and upload two sample objects."""
    metadata.create_all(app.engine)
    client = incoming.client
    buckets = {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}
    if BUCKET not in buckets:
        client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key="incoming/a.json", Body=b'{"id": "a"}')
    client.put_object(Bucket=BUCKET, Key="incoming/notes.txt", Body=b"not for us")


if __name__ == "__main__":
    setup()
    print(f"store {app.store_url}: documents table ready; objects in s3://{BUCKET}/incoming/")
