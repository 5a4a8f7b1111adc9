"""The ``ferryman`` command (also ``python -m ferryman``).

* :mod:`.main` — the Typer app, its global options and the run-queue commands;
* :mod:`.sensors`, :mod:`.transfers`, :mod:`.serve` — the sensor, transfer
  and web commands it adds;
* :mod:`.output` — tables, JSON and the exit codes;
* :mod:`.errors` — every error as one line on stderr, with its exit code;
* :mod:`.progress` — the live progress view of ``work --progress``.
"""

from ferryman.cli.main import cli, main

__all__ = ["cli", "main"]
