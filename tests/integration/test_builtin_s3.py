"""fm.sensors.s3_prefix against a real S3 endpoint (a moto server on a loopback port)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

import ferryman as fm
from tests.s3_fixtures import s3_bucket, s3_client, s3_endpoint, s3_server
from tests.sensor_support import Driver

__all__ = ["s3_bucket", "s3_client", "s3_endpoint", "s3_server"]  # fixtures used here


def put(client: Any, bucket: str, key: str, body: bytes = b"x") -> str:
    etag: str = client.put_object(Bucket=bucket, Key=key, Body=body)["ETag"].strip('"')
    return etag


def keys_of(result: fm.SensorResult) -> list[str]:
    return [request.payload["key"] for request in result.run_requests]


def test_new_and_changed_objects_across_pages_are_requested_once(
    s3_client: Any, s3_bucket: str
) -> None:
    for index in range(10):
        put(s3_client, s3_bucket, f"in/{index:02d}.csv")
    put(s3_client, s3_bucket, "elsewhere/skip.csv")
    sensor = fm.sensors.s3_prefix(s3_bucket, "in/", page_size=3)
    driver = Driver(sensor)

    first = driver.evaluate()
    assert sorted(keys_of(first)) == [f"in/{index:02d}.csv" for index in range(10)]
    assert sensor.last_report is not None and sensor.last_report.pages == 4
    request = next(r for r in first.run_requests if r.payload["key"] == "in/03.csv")
    head = s3_client.head_object(Bucket=s3_bucket, Key="in/03.csv")
    etag = head["ETag"].strip('"')
    assert request.run_key == f"s3://{s3_bucket}/in/03.csv@{etag}"
    assert request.payload == {
        "bucket": s3_bucket,
        "key": "in/03.csv",
        "uri": f"s3://{s3_bucket}/in/03.csv",
        "etag": etag,
        "size": 1,
        "last_modified": head["LastModified"].isoformat(),
    }
    assert driver.evaluate().run_requests == []

    new_etag = put(s3_client, s3_bucket, "in/03.csv", b"rewritten")  # a new version
    put(s3_client, s3_bucket, "in/10.csv")
    put(s3_client, s3_bucket, "in/00a.csv")  # lists between existing keys
    again = driver.evaluate()
    assert sorted(keys_of(again)) == ["in/00a.csv", "in/03.csv", "in/10.csv"]
    assert f"s3://{s3_bucket}/in/03.csv@{new_etag}" in [r.run_key for r in again.run_requests]
    assert driver.evaluate().run_requests == []


def test_objects_in_the_same_second_and_out_of_key_order_are_all_found(
    s3_client: Any, s3_bucket: str
) -> None:
    put(s3_client, s3_bucket, "m.csv")
    driver = Driver(fm.sensors.s3_prefix(s3_bucket, max_per_evaluation=2, page_size=2))
    assert keys_of(driver.evaluate()) == ["m.csv"]
    # LastModified has one-second granularity: these share m.csv's second (or
    # come a second later); "a" lists before "m", "z" after.
    for key in ("z.csv", "a.csv", "b.csv"):
        put(s3_client, s3_bucket, key)
    found = keys_of(driver.evaluate()) + keys_of(driver.evaluate())
    assert sorted(found) == ["a.csv", "b.csv", "z.csv"]
    assert driver.evaluate().run_requests == []
    cursor = driver.cursor_document()
    assert cursor["kind"] == "s3" and len(driver.cursor or "") < 500


def test_routes_and_unmatched_objects_are_counted(
    s3_client: Any, s3_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    for key in ("a.xml", "b.csv", "c.bin", "dir/"):
        put(s3_client, s3_bucket, key, b"" if key.endswith("/") else b"x")
    routes = {r"\.xml$": "parse_xml", r"\.csv$": "load_csv"}
    driver = Driver(fm.sensors.s3_prefix(s3_bucket, routes=routes))
    with caplog.at_level(logging.WARNING, "ferryman.sensor"):
        result = driver.evaluate()
    assert {r.payload["key"]: r.job for r in result.run_requests} == {
        "a.xml": "parse_xml",
        "b.csv": "load_csv",
    }
    assert result.skipped == 1  # c.bin; the "dir/" placeholder is not an object to ingest
    assert "1 objects match no route and were skipped, e.g. c.bin" in caplog.text
    assert driver.evaluate().skipped == 0


def test_a_client_can_be_passed_and_errors_fail_the_evaluation(s3_client: Any) -> None:
    sensor = fm.sensors.s3_prefix("no-such-bucket-here", client=s3_client)
    with pytest.raises(Exception, match="NoSuchBucket"):
        Driver(sensor).evaluate()


def test_a_foreign_cursor_is_refused(s3_bucket: str) -> None:
    sensor = fm.sensors.s3_prefix(s3_bucket)
    folder_cursor = json.dumps({"v": 1, "kind": "folder", "w": 1, "f": 0, "e": []})
    with pytest.raises(fm.ConfigurationError, match="not a s3 cursor"):
        sensor(Driver(sensor).ctx, folder_cursor)


def test_requests_submitted_to_the_store_deduplicate(
    s3_client: Any, s3_bucket: str, make_app: type[fm.App]
) -> None:
    app = make_app()

    @app.job
    def load(ctx: fm.JobContext, payload: dict[str, Any]) -> None: ...

    for index in range(3):
        put(s3_client, s3_bucket, f"{index}.csv")
    result = Driver(fm.sensors.s3_prefix(s3_bucket)).evaluate()
    assert app.submit("load", *result.run_requests).created == 3
    # A second sensor without a cursor sees the same versions: the store keeps one run each.
    again = Driver(fm.sensors.s3_prefix(s3_bucket)).evaluate()
    assert app.submit("load", *again.run_requests).deduplicated == 3
    assert len(app.get_runs(job="load")) == 3
