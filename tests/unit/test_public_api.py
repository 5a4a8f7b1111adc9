"""The public surface is a contract: code outside this repository imports these names."""

import ferryman as fm

EXPECTED = [
    "App",
    "Backoff",
    "ConfigurationError",
    "Evaluation",
    "EvaluationOutcome",
    "FerrymanError",
    "JobContext",
    "JobSummary",
    "LeaseLost",
    "Message",
    "PayloadError",
    "Reject",
    "Run",
    "RunEvent",
    "RunEventKind",
    "RunRequest",
    "RunStatus",
    "S3Error",
    "S3Unavailable",
    "SchemaMismatch",
    "SensorContext",
    "SensorResult",
    "SensorState",
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
    "WorkReport",
    "WorkerInfo",
    "sources",
    "transfer",
]


def test_exported_names_are_pinned_and_sorted() -> None:
    assert fm.__all__ == sorted(fm.__all__)
    assert set(EXPECTED) <= set(fm.__all__)
    for name in fm.__all__:
        assert getattr(fm, name).__doc__, f"{name} needs a docstring"


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
