"""Folder → S3: every stable file of a folder uploaded once, with a metadata sidecar.

* ``outbox`` is a folder sensor: one run per new or changed file, keyed
  ``relpath@mtime_ns:size``, once the file has not changed for
  ``FOLDER_TO_S3_STABLE_FOR`` seconds (default 5), so files still being
  written wait.
* ``upload_file`` sends the file with ``fm.transfer.upload(..., ctx=ctx)``: a
  resumable multipart upload whose parts are the run's checkpoint, every
  write fenced by the run's lease. A worker killed mid-upload leaves the
  confirmed parts; the run's next attempt sends only the rest. The object
  lands at ``<FOLDER_TO_S3_TARGET><relpath>`` and, once S3 has verified it,
  its sidecar ``<key>.meta.json`` (size, SHA-256, parts, source, times, and
  the metadata below).

Settings: ``FERRYMAN_STORE`` (default ``sqlite:///folder_to_s3.db``),
``FOLDER_TO_S3_OUTBOX`` (default ``outbox``), ``FOLDER_TO_S3_TARGET`` (default
``s3://landing/outbox/``), and S3 from the standard AWS variables
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...). From the repository root::

    ferryman --app examples.folder_to_s3.pipeline:app run     # sensor + workers
    ferryman --app examples.folder_to_s3.pipeline:app transfers

``python -m examples.folder_to_s3.check_example`` runs it against a local S3
server and checks the objects. See docs/how-to/s3-uploads.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ferryman as fm

app = fm.App(os.environ.get("FERRYMAN_STORE", "sqlite:///folder_to_s3.db"))
OUTBOX = Path(os.environ.get("FOLDER_TO_S3_OUTBOX", "outbox"))
TARGET = os.environ.get("FOLDER_TO_S3_TARGET", "s3://landing/outbox/")
STABLE_FOR = float(os.environ.get("FOLDER_TO_S3_STABLE_FOR", "5"))


@app.job(max_attempts=5, backoff=fm.Backoff(base=5.0, factor=2.0, max=300.0))
def upload_file(ctx: fm.JobContext, found: dict[str, Any]) -> None:
    """Upload one file the sensor found; a retry resumes from the confirmed parts."""
    transfer = fm.transfer.upload(
        found["path"],
        f"{TARGET}{found['relpath']}",
        ctx=ctx,
        sidecar=True,
        metadata={"relpath": found["relpath"], "mtime_ns": found["mtime_ns"]},
    )
    ctx.logger.info("uploaded %s (%d B)", transfer.key, transfer.bytes_confirmed)


app.poll_sensor(job="upload_file", interval=10.0, name="outbox")(
    fm.sensors.folder(OUTBOX, "*", recursive=True, stable_for=STABLE_FOR)
)
