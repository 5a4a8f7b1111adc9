"""Sensor pipelines: a folder, hand-written poll and push sensors, a SQL table, an S3 prefix."""
