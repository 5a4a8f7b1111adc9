"""Helpers for the XML reference pipeline's tests: staging, the CLI, and reading tables back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from examples.xml_to_tables.generator import GeneratedApplication
from examples.xml_to_tables.mapping import InvalidApplication, map_application
from examples.xml_to_tables.schema import TARGET_TABLES

import ferryman as fm

REPO = Path(__file__).resolve().parents[1]
APP = "examples.xml_to_tables.pipeline:app"


def cli_env(lease_seconds: float) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMAN_")}
    env["XML_TO_TABLES_LEASE_SECONDS"] = str(lease_seconds)
    env["COLUMNS"] = "200"
    return env


def ferryman_command(store_url: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "ferryman", "--app", APP, "--store", store_url, *args]


def run_ferryman(
    store_url: str, *args: str, lease_seconds: float = 30.0, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The ``ferryman`` command as a user runs it, for the example app on ``store_url``."""
    return subprocess.run(
        ferryman_command(store_url, *args),
        cwd=REPO,
        env=cli_env(lease_seconds),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_ferryman(
    store_url: str, log: Path, *args: str, lease_seconds: float
) -> subprocess.Popen[bytes]:
    with log.open("ab") as output:
        return subprocess.Popen(
            ferryman_command(store_url, *args),
            cwd=REPO,
            env=cli_env(lease_seconds),
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def reference_rows(staged: list[GeneratedApplication]) -> dict[str, set[tuple[Any, ...]]]:
    """Every target table's rows, mapped in this process from the staged documents."""
    expected: dict[str, set[tuple[Any, ...]]] = {table.name: set() for table in TARGET_TABLES}
    for application in staged:
        try:
            rows = map_application(application.app_id, application.xml)
        except InvalidApplication:
            continue
        for table in TARGET_TABLES:
            for row in rows[table.name]:
                expected[table.name].add(tuple(row[column.name] for column in table.c))
    return expected


def stored_rows(app: fm.App) -> dict[str, list[tuple[Any, ...]]]:
    """Every target table's rows as the store holds them (a list: duplicates would show)."""
    with app.store.read("reading the target tables") as conn:
        return {
            table.name: [tuple(row) for row in conn.execute(sa.select(table))]
            for table in TARGET_TABLES
        }
