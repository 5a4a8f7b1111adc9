"""Sensors: find work and turn it into runs, by the commit rules of :mod:`.engine`.

* :mod:`.registry` — what ``@app.poll_sensor`` / ``@app.push_sensor`` register;
* :mod:`.engine` — evaluation and its commit rules;
* :mod:`.cursor` — the versioned stored form of a cursor;
* :mod:`.daemon` — the sensor loop of ``ferryman run``.
"""

import importlib as _importlib
import typing as _typing

from ferryman.sensors.context import SensorContext

if _typing.TYPE_CHECKING:
    from ferryman.sensors.builtin.folder import folder
    from ferryman.sensors.builtin.s3 import s3_prefix
    from ferryman.sensors.builtin.sql_table import sql_table

# -- built-in sensors ----------------------------------------------------------
# fm.sensors.folder, fm.sensors.s3_prefix, fm.sensors.sql_table: factories of
# poll-sensor functions (see ferryman.sensors.builtin), imported on first use:
# the SQL table's brings SQLAlchemy, the S3 prefix's boto3 (PEP 562).
_BUILTIN = {
    "folder": "ferryman.sensors.builtin.folder",
    "s3_prefix": "ferryman.sensors.builtin.s3",
    "sql_table": "ferryman.sensors.builtin.sql_table",
}

# The user-facing names only; the engine, the daemon and the definitions are
# ferryman's own (import them from their modules).
__all__ = ["SensorContext", "folder", "s3_prefix", "sql_table"]


def __getattr__(name: str) -> _typing.Any:
    if name not in _BUILTIN:
        raise AttributeError(f"module 'ferryman.sensors' has no attribute {name!r}")
    value = getattr(_importlib.import_module(_BUILTIN[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
