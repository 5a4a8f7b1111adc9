"""Built-in poll sensors: a folder, an S3 prefix, a SQL table.

The factories are public as ``fm.sensors.folder``, ``fm.sensors.s3_prefix``
and ``fm.sensors.sql_table``; each returns a poll-sensor function
``fn(ctx, cursor) -> SensorResult`` to register with ``app.poll_sensor(...)``.
Their cursors are compact JSON documents of bounded size, committed by the
engine with the runs they stand for.

* :mod:`.folder`, :mod:`.s3`, :mod:`.sql_table` — one module per sensor;
* :mod:`.routing` — ``routes=``: which job an item goes to;
* :mod:`.watermark` — the watermark + edge cursor of the listing sensors;
* :mod:`.sql_state`, :mod:`.processing_log` — the SQL sensor's cursors and run lookups.
"""
