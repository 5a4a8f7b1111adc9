"""Screenshots of the browser tests, kept as artefacts of the test run.

They go to ``$FERRYMAN_ARTIFACTS`` when that is set (a CI job points it
wherever it keeps artefacts), else to ``artifacts/screenshots/`` at the
repository root, which git ignores (``/artifacts/`` in .gitignore). Each run
overwrites the files of the previous one. When a test fails, the page as it
was at that moment is saved too, as ``FAILED-<test>.png``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS_VARIABLE = "FERRYMAN_ARTIFACTS"
CHROMIUM = "/usr/bin/chromium"

# The report of each phase (setup, call, teardown) of a test, for its fixtures to read.
reports = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item) -> Iterator[None]:
    report: pytest.TestReport = yield
    item.stash.setdefault(reports, {})[report.when] = report
    return report


def screenshot_folder() -> Path:
    configured = os.environ.get(ARTIFACTS_VARIABLE)
    folder = Path(configured) if configured else REPO / "artifacts" / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """The folder screenshots are saved in (see the module docstring)."""
    return screenshot_folder()


def shot(page: Page, folder: Path, name: str) -> Path:
    """A full-page screenshot named ``name``; its path is printed for whoever reads the log."""
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--headless"]
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, screenshots: Path, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh browser page; if the test fails, what it showed is saved before it closes."""
    failed_shot = f"FAILED-{re.sub(r'[^A-Za-z0-9_.-]', '_', request.node.name)}"
    (screenshots / f"{failed_shot}.png").unlink(missing_ok=True)  # not a stale one from before
    context = browser.new_context(viewport={"width": 1366, "height": 800})
    opened = context.new_page()
    yield opened
    call = request.node.stash.get(reports, {}).get("call")
    if call is not None and call.failed:
        shot(opened, screenshots, failed_shot)
    context.close()
