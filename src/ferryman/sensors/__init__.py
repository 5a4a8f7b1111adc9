"""Sensors: find work and turn it into runs, by the commit rules of :mod:`.engine`.

* :mod:`.registry` — what ``@app.poll_sensor`` / ``@app.push_sensor`` register;
* :mod:`.engine` — evaluation and its commit rules;
* :mod:`.cursor` — the versioned stored form of a cursor;
* :mod:`.daemon` — the sensor loop of ``ferryman run``.
"""

from ferryman.sensors.context import SensorContext
from ferryman.sensors.cursor import UnreadableCursor
from ferryman.sensors.daemon import SensorDaemon
from ferryman.sensors.engine import SensorEngine
from ferryman.sensors.registry import SensorDefinition, SensorKind

__all__ = [
    "SensorContext",
    "SensorDaemon",
    "SensorDefinition",
    "SensorEngine",
    "SensorKind",
    "UnreadableCursor",
]

# -- built-in sensors ----------------------------------------------------------
# fm.sensors.folder, fm.sensors.s3_prefix, fm.sensors.sql_table: factories of
# poll-sensor functions (see ferryman.sensors.builtin).
from ferryman.sensors.builtin.folder import folder as folder
from ferryman.sensors.builtin.s3 import s3_prefix as s3_prefix
from ferryman.sensors.builtin.sql_table import sql_table as sql_table

__all__ += ["folder", "s3_prefix", "sql_table"]
