"""The public surface is a contract: code outside this repository imports these names.

``fm.__all__`` is compared exactly (as httpx's tests/test_exported_members.py
does), so a name can neither slip in nor out unnoticed; the exception tree
drawn in ``ferryman.errors`` and docs/reference/errors.md is compared with
the real one.
"""

import importlib
import pkgutil
import re
import types
from pathlib import Path

import ferryman as fm
from ferryman import errors

DOCS = Path(__file__).resolve().parents[2] / "docs" / "reference" / "errors.md"

EXPECTED = [
    "App",
    "AsyncJobContext",
    "Backoff",
    "ConfigurationError",
    "Download",
    "DownloadFailed",
    "DownloadPart",
    "Evaluation",
    "EvaluationOutcome",
    "FerrymanError",
    "JobContext",
    "JobSummary",
    "LeaseLost",
    "Message",
    "PayloadError",
    "PortInUse",
    "Rate",
    "Reject",
    "RoutingError",
    "Run",
    "RunEvent",
    "RunEventKind",
    "RunRequest",
    "RunStatus",
    "S3Error",
    "S3Unavailable",
    "SchemaMismatch",
    "SensorContext",
    "SensorKind",
    "SensorOutputError",
    "SensorResult",
    "SensorState",
    "SensorStatus",
    "StoreError",
    "StoreUnavailable",
    "SubmitResult",
    "Transfer",
    "TransferConflict",
    "TransferError",
    "TransferFailed",
    "TransferPart",
    "TransferStatus",
    "UnknownJob",
    "UnknownSensor",
    "UnreadableCursor",
    "WorkReport",
    "WorkerInfo",
    "sensors",
    "sources",
    "transfer",
]


# Submodules that are part of the surface (fm.sensors.folder, fm.transfer.upload);
# every other submodule shows up on the package only because it was imported.
PUBLIC_MODULES = {"sensors", "sources", "transfer"}
SENSOR_NAMES = ["SensorContext", "folder", "s3_prefix", "sql_table"]


def test_exported_names_are_pinned_and_sorted() -> None:
    assert fm.__all__ == EXPECTED
    assert fm.__all__ == sorted(fm.__all__)
    for name in fm.__all__:
        assert getattr(fm, name).__doc__, f"{name} needs a docstring"


def test_all_public_names_are_exported() -> None:
    # dir(), not vars(): the heavier names are imported on first use (PEP 562).
    public = {
        name
        for name in dir(fm)
        if not name.startswith("_")
        and (not isinstance(getattr(fm, name), types.ModuleType) or name in PUBLIC_MODULES)
    }
    assert sorted(public) == fm.__all__


def test_the_sensors_namespace_holds_the_user_facing_names_only() -> None:
    assert fm.sensors.__all__ == SENSOR_NAMES
    public = {
        name
        for name in dir(fm.sensors)
        if not name.startswith("_") and not isinstance(getattr(fm.sensors, name), types.ModuleType)
    }
    assert sorted(public) == SENSOR_NAMES


def test_run_status_values_are_the_documented_strings() -> None:
    assert [s.value for s in fm.RunStatus] == [
        "queued", "running", "succeeded", "failed", "dead", "cancelled"
    ]  # fmt: skip
    assert fm.RunStatus("dead") == "dead"


def test_every_error_derives_from_the_root() -> None:
    for name in fm.__all__:
        value = getattr(fm, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, fm.FerrymanError), name


def drawn_tree(text: str) -> set[tuple[str, str]]:
    """The (parent, child) pairs of the tree drawn in ``text`` (box-drawing lines)."""
    lines = [line.strip("\n") for line in text.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.strip() == "FerrymanError")
    indent = len(lines[start]) - len(lines[start].lstrip())
    parents = ["FerrymanError"]
    pairs: set[tuple[str, str]] = set()
    for line in lines[start + 1 :]:
        found = re.match(r"^([ │]*)[├└]── (\w+)", line[indent:])
        if found is None:
            break
        depth = len(found.group(1)) // 4
        del parents[depth + 1 :]
        pairs.add((parents[depth], found.group(2)))
        parents.append(found.group(2))
    return pairs


def real_tree() -> set[tuple[str, str]]:
    """The (parent, child) pairs of FerrymanError's subclasses in every ferryman module."""
    for module in pkgutil.walk_packages(fm.__path__, "ferryman."):
        # Alembic's env and scripts run only under Alembic; __main__ runs the command line.
        if ".migrations." not in module.name and not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    pairs: set[tuple[str, str]] = set()
    pending = [fm.FerrymanError]
    while pending:
        parent = pending.pop()
        for child in parent.__subclasses__():
            if child.__module__.startswith("ferryman."):
                pairs.add((parent.__name__, child.__name__))
                pending.append(child)
    return pairs


def test_the_drawn_exception_tree_is_the_real_one() -> None:
    real = real_tree()
    assert drawn_tree(errors.__doc__ or "") == real
    assert drawn_tree(DOCS.read_text()) == real
    # ... and every exception in it is one import away: ``fm.<Name>``.
    assert {child for _, child in real} <= set(fm.__all__)
    for _, child in real:
        assert getattr(fm, child).__module__ == "ferryman.errors", child
