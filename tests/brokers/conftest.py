"""Apps built by the broker tests are closed after each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.brokers.support import BUILT


@pytest.fixture(autouse=True)
def _close_built_apps() -> Iterator[None]:
    yield
    while BUILT:
        BUILT.pop().close()
