"""Sensors: find work and turn it into runs, by the commit rules of :mod:`.engine`.

* :mod:`.registry` — what ``@app.poll_sensor`` / ``@app.push_sensor`` register;
* :mod:`.engine` — evaluation and its commit rules;
* :mod:`.cursor` — the versioned stored form of a cursor;
* :mod:`.daemon` — the sensor loop of ``ferryman run``.
"""

# -- built-in sensors ----------------------------------------------------------
# fm.sensors.folder, fm.sensors.s3_prefix, fm.sensors.sql_table: factories of
# poll-sensor functions (see ferryman.sensors.builtin).
from ferryman.sensors.builtin.folder import folder
from ferryman.sensors.builtin.s3 import s3_prefix
from ferryman.sensors.builtin.sql_table import sql_table
from ferryman.sensors.context import SensorContext

# The user-facing names only; the engine, the daemon and the definitions are
# ferryman's own (import them from their modules).
__all__ = ["SensorContext", "folder", "s3_prefix", "sql_table"]
