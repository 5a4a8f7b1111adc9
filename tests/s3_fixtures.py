"""A real S3 endpoint for tests: a moto server on a loopback port, one per session.

The server speaks the S3 HTTP API; clients reach it the way they reach any
S3-compatible store, through ``AWS_ENDPOINT_URL``. Tests that use
:func:`s3_endpoint` get that variable (and dummy credentials) set for their
duration, and :func:`s3_bucket` gives each test a bucket of its own.

Use with ``from tests.s3_fixtures import s3_bucket, s3_client, s3_endpoint``
in a test module (they are pytest fixtures).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

S3_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Start a moto S3 server on 127.0.0.1 (a free port) for the whole session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_endpoint(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The server's URL, with the standard AWS variables pointing at it for this test."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    for name, value in S3_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return s3_server


@pytest.fixture
def s3_client(s3_endpoint: str) -> Any:
    """A boto3 S3 client built from the environment, as ferryman builds its own."""
    import boto3  # type: ignore[import-untyped]

    return boto3.client("s3")


@pytest.fixture
def s3_bucket(s3_client: Any) -> str:
    """A fresh, empty bucket for one test."""
    name = f"ferryman-test-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name
