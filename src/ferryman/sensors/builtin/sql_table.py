"""``fm.sensors.sql_table``: rows of a database table, by a monotonic key.

Two modes, both reading with keyset pagination (``WHERE key > :last ORDER BY
key LIMIT :batch_size``), never the whole table at once, with every value
bound as a parameter and every identifier taken from SQLAlchemy reflection.

``mode="cursor"``: rows with a key above the cursor, each requested once.
    The trap is that keys do not become visible in key order: on PostgreSQL a
    transaction that took id 10 from a sequence can commit after one that took
    id 11, so a cursor moved to 11 would skip 10 for ever. The cursor here
    holds a *settled* key and the keys requested above it in the last
    ``commit_lag`` seconds. Every evaluation re-reads the rows above the
    settled key and requests those not yet requested, so a row that commits
    late is found; the settled key only passes a key once that key has been
    visible for ``commit_lag`` seconds — by then every transaction that held a
    smaller key has committed or rolled back (the assumption ``commit_lag``
    stands for: no transaction inserting into the table stays open longer).
    Integer keys are kept as ranges, others as 8-byte digests, at most
    ``max_recent`` of them; at the cap, new rows wait (the cursor never
    forgets a row it has not settled). SQLite commits one writer at a time,
    so its default lag is 0 and the cursor is just the last key.

``mode="missing"``: rows that have no run yet — the ``NOT EXISTS`` pattern of
    a processing log. The store's ``ferryman_runs`` table is the log: a row
    is missing when ``(job, run_key)`` has no run. When the table lives in
    the store's database (and there are no routes), one anti-join finds the
    next missing rows in key order and no cursor is needed: the runs
    themselves are the state. Otherwise the sensor walks the table by key,
    ``batch_size`` rows at a time, asks the store which of their run keys
    exist, and keeps its place in the cursor, starting over at the end; a
    row without a run is found within one pass over the table.

The run_key of a row is ``<table>:<key>`` (``<schema>.<table>:<key>`` with a
schema), so both modes, and a change from one to the other, agree on it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol

import sqlalchemy as sa

from ferryman.errors import ConfigurationError
from ferryman.model import RunRequest, SensorResult
from ferryman.sensors.builtin.routing import UNROUTED, Router, Routes, warn_unrouted
from ferryman.sensors.builtin.sql_state import (
    Batch,
    CursorState,
    decode_scan_cursor,
    encode_scan_cursor,
    is_int,
    json_safe,
    key_text,
)
from ferryman.sensors.builtin.watermark import identity_digest
from ferryman.sensors.context import SensorContext
from ferryman.store import Store
from ferryman.store.processing_log import existing_run_keys, no_run

Where = Mapping[str, Any] | Callable[[sa.Table], sa.ColumnElement[bool]]


class HasEngine(Protocol):
    """Anything with a SQLAlchemy engine on the ferryman store, such as an App."""

    @property
    def engine(self) -> sa.Engine: ...


class SqlTableSensor:
    """A poll sensor over one table; see :func:`sql_table`."""

    def __init__(
        self,
        source: str | sa.URL | sa.Engine | HasEngine,
        table: str,
        key_column: str,
        *,
        mode: Literal["cursor", "missing"],
        columns: Sequence[str] | None,
        batch_size: int,
        where: Where | None,
        schema: str | None,
        routes: Routes | None,
        route_column: str | None,
        max_per_evaluation: int,
        commit_lag: float | None,
        max_recent: int,
        job: str | None,
        store: str | sa.URL | sa.Engine | HasEngine | None,
        max_scan: int | None,
        clock: Callable[[], float],
        name: str | None,
    ) -> None:
        if mode not in ("cursor", "missing"):
            raise ConfigurationError(f"mode must be 'cursor' or 'missing', got {mode!r}")
        if batch_size < 1 or max_per_evaluation < 1 or max_recent < 1:
            raise ConfigurationError("batch_size, max_per_evaluation, max_recent must be >= 1")
        if commit_lag is not None and commit_lag < 0:
            raise ConfigurationError("commit_lag must not be negative")
        self._source = source
        self._engine: sa.Engine | None = None
        self._owned: list[sa.Engine] = []
        self._lock = threading.Lock()
        self.table_name = table
        self.key_column = key_column
        self.mode = mode
        self.columns = None if columns is None else tuple(columns)
        self.batch_size = batch_size
        self.where = where
        self.schema = schema
        self.router = Router.build(routes)
        self.route_column = route_column
        self.max_per_evaluation = max_per_evaluation
        self.commit_lag = commit_lag
        self.max_recent = max_recent
        self.job = job
        self.store = store
        self.max_scan = max_scan if max_scan is not None else 10 * batch_size
        self.clock = clock
        self.last_report: dict[str, int] = {}
        self._table: sa.Table | None = None
        self._lookups: Store | None = None  # the store asked which run keys exist
        self._owned_stores: list[Store] = []
        self.run_key_prefix = f"{schema}.{table}:" if schema else f"{table}:"
        self.__name__ = self.__qualname__ = name or f"table_{table}"
        self.__doc__ = f"Rows of {self.run_key_prefix[:-1]} by {key_column} ({mode} mode)."

    def __repr__(self) -> str:
        return f"<sql table sensor {self.__name__} {self.run_key_prefix[:-1]} {self.mode}>"

    # -- connections -----------------------------------------------------------

    @property
    def engine(self) -> sa.Engine:
        """The engine the sensor reads the table with (built on first use)."""
        with self._lock:
            if self._engine is None:
                self._engine = self._reading_engine(self._source)
            return self._engine

    def _store_url(self) -> sa.URL:
        """The URL of the store whose runs missing mode looks for (without opening it)."""
        store = self.store
        if store is None:
            return self.engine.url
        if isinstance(store, str | sa.URL):
            return _normalised_url(store)
        opened = getattr(store, "store", None)  # an App: the store it evaluates with
        if isinstance(opened, Store):
            return opened.url
        return store.url if isinstance(store, sa.Engine) else store.engine.url

    def _existing_run_keys(
        self, conn: sa.Connection, run_keys_by_job: Mapping[str, Sequence[str]]
    ) -> set[tuple[str, str]]:
        """Which of the run keys have a run: asked of the App's store, of the sensor's own
        connection when the table is in the store's database, else of a store opened here."""
        opened = getattr(self.store, "store", None)
        if isinstance(opened, Store):
            return opened.existing_run_keys(run_keys_by_job)
        if self._in_store_database():
            return existing_run_keys(conn, run_keys_by_job)
        return self._lookup_store().existing_run_keys(run_keys_by_job)

    def _lookup_store(self) -> Store:
        """A store of the sensor's own on ``store=``, for lookups only; closed by :meth:`close`."""
        url = self._store_url()  # before the lock: it may build the engine, which takes it
        with self._lock:
            if self._lookups is None:
                # create=False: a database without ferryman's tables is an error, not a new store.
                self._lookups = Store(url, create=False, pool_size=1)
                self._owned_stores.append(self._lookups)
            return self._lookups

    def _reading_engine(self, source: str | sa.URL | sa.Engine | HasEngine) -> sa.Engine:
        """An engine for reads that never hold a write lock.

        A SQLite engine may open every transaction with ``BEGIN IMMEDIATE``
        (the store's own engine does, so that writers never deadlock); a
        sensor reading through it would block every writer for the length of
        its evaluation. For a SQLite file the sensor reads through an engine of
        its own with plain, deferred transactions instead.
        """
        if isinstance(source, str | sa.URL):
            url = _normalised_url(source)
            sqlite = url.get_backend_name() == "sqlite"
            engine = sa.create_engine(url, poolclass=sa.pool.NullPool if sqlite else None)
            self._owned.append(engine)
            return engine
        engine = source if isinstance(source, sa.Engine) else source.engine
        if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
            # No pool: a SQLite connection is cheap to open and none is left behind.
            engine = sa.create_engine(engine.url, poolclass=sa.pool.NullPool)
            self._owned.append(engine)
        return engine

    def close(self) -> None:
        """Dispose of the engines the sensor created (it creates them again if evaluated)."""
        with self._lock:
            for engine in self._owned:
                engine.dispose()
            for store in self._owned_stores:
                store.close()
            self._owned.clear()
            self._owned_stores.clear()
            self._engine = self._lookups = None

    def _reflect(self, conn: sa.Connection) -> sa.Table:
        # Reflected once; a race between two evaluations only reflects twice.
        if self._table is None:
            try:
                table = sa.Table(
                    self.table_name, sa.MetaData(), schema=self.schema, autoload_with=conn
                )
                for column in table.columns:
                    # MariaDB's DOUBLE and FLOAT reflect as decimals: read as floats, as elsewhere.
                    if isinstance(column.type, sa.Float):
                        column.type.asdecimal = False
            except sa.exc.NoSuchTableError as exc:
                raise ConfigurationError(
                    f"sensor {self.__name__}: table {self.run_key_prefix[:-1]!r} does not exist"
                ) from exc
            wanted = [self.key_column, *(self.columns or ()), *filter(None, [self.route_column])]
            if isinstance(self.where, Mapping):
                wanted.extend(self.where)
            unknown = [name for name in wanted if name not in table.c]
            if unknown:
                raise ConfigurationError(
                    f"sensor {self.__name__}: table {self.run_key_prefix[:-1]!r} has no column "
                    f"{', '.join(map(repr, unknown))} (columns: {', '.join(table.c.keys())})"
                )
            self._table = table
        return self._table

    # -- queries ---------------------------------------------------------------

    def _select(self, table: sa.Table) -> sa.Select[Any]:
        key = table.c[self.key_column]
        if self.columns is None:
            selected: list[sa.ColumnElement[Any]] = list(table.c)
        else:
            extra = [self.route_column] if self.route_column else []
            names = dict.fromkeys([self.key_column, *self.columns, *extra])
            selected = [table.c[name] for name in names]
        # Rows whose key is NULL have no place in key order and are never requested.
        query = sa.select(*selected).where(key.is_not(None)).order_by(key)
        if isinstance(self.where, Mapping):
            query = query.where(*(table.c[name] == value for name, value in self.where.items()))
        elif self.where is not None:
            query = query.where(self.where(table))
        return query

    def _pages(
        self, conn: sa.Connection, query: sa.Select[Any], table: sa.Table, after: Any
    ) -> Iterator[list[sa.RowMapping]]:
        """Keyset pages of ``query`` after key ``after`` (``None``: from the start)."""
        key = table.c[self.key_column]
        while True:
            page_query = query if after is None else query.where(key > after)
            rows = list(conn.execute(page_query.limit(self.batch_size)).mappings())
            if rows:
                yield rows
            if len(rows) < self.batch_size:
                return
            after = rows[-1][self.key_column]

    # -- evaluation ------------------------------------------------------------

    def check_cursor(self, cursor: str) -> None:
        """Raise :class:`~ferryman.ConfigurationError` unless this sensor can read ``cursor``.

        Called before an operator's cursor is committed (``set-cursor``, the API,
        the dashboard), so a cursor that would fail every evaluation is refused.
        """
        if self.mode == "cursor":
            CursorState.decode(cursor)
        else:
            decode_scan_cursor(cursor)

    def __call__(self, ctx: SensorContext, cursor: str | None) -> SensorResult:
        with self.engine.connect() as conn:
            table = self._reflect(conn)
            if self.mode == "cursor":
                return self._evaluate_cursor(ctx, conn, table, cursor)
            return self._evaluate_missing(ctx, conn, table, cursor)

    def _request(self, row: sa.RowMapping, skipped: list[str]) -> RunRequest | None:
        key = row[self.key_column]
        run_key = f"{self.run_key_prefix}{key_text(key)}"
        route_text = key_text(row[self.route_column]) if self.route_column else key_text(key)
        job = self.router.job_for(route_text)
        if job is UNROUTED:
            skipped.append(run_key)
            return None
        payload = {name: json_safe(value) for name, value in row.items()}
        return RunRequest(run_key, payload, job if isinstance(job, str) else None)

    def _lag_ms(self) -> int:
        if self.commit_lag is not None:
            return int(self.commit_lag * 1000)
        return 0 if self.engine.dialect.name == "sqlite" else 60_000

    def _evaluate_cursor(
        self, ctx: SensorContext, conn: sa.Connection, table: sa.Table, cursor: str | None
    ) -> SensorResult:
        now_ms = int(self.clock() * 1000)
        state = CursorState.decode(cursor)
        requested_ints, requested_digests = state.requested()
        # Rows above every key requested so far are new; they wait while the
        # cursor holds max_recent keys. Rows below are late commits and are
        # always taken, so the window can drain.
        window_top = max((batch.high for batch in state.recent), default=None)
        held = len(requested_ints) + len(requested_digests)
        requests: list[RunRequest] = []
        skipped: list[str] = []
        keys: list[Any] = []
        high: Any = None
        truncated = window_passed = False
        for page in self._pages(conn, self._select(table), table, state.settled):
            for row in page:
                key = row[self.key_column]
                identity = key if is_int(key) else identity_digest(key_text(key))
                if identity in (requested_ints if is_int(key) else requested_digests):
                    high = key
                    continue
                is_new = window_top is None or key > window_top
                if is_new and not window_passed:
                    # Every row up to window_top has been read: settle before taking new ones.
                    window_passed = True
                    self._settle(state, now_ms, truncated=True, read_up_to=window_top)
                    held = sum(len(batch.keys) for batch in state.recent) + len(keys)
                if len(keys) >= self.max_per_evaluation or (is_new and held >= self.max_recent):
                    truncated = True
                    break
                keys.append(identity)
                held += 1
                high = key
                request = self._request(row, skipped)
                if request is not None:
                    requests.append(request)
            if truncated:
                break
        if truncated and held >= self.max_recent and len(keys) < self.max_per_evaluation:
            ctx.logger.warning(
                "%d requested keys are waiting for commit_lag to pass; new rows wait "
                "(raise max_recent or lower commit_lag)",
                held,
            )
        if keys:
            state.recent.append(Batch(now_ms, high, keys))
        self._settle(state, now_ms, truncated=truncated, read_up_to=high)
        warn_unrouted(ctx.logger, "rows", skipped)
        new_cursor = state.encode()
        self.last_report = {
            "new": len(requests),
            "unrouted": len(skipped),
            "recent": sum(len(batch.keys) for batch in state.recent),
            "cursor_bytes": len(new_cursor),
        }
        return SensorResult(run_requests=requests, cursor=new_cursor, skipped=len(skipped))

    def _settle(self, state: CursorState, now_ms: int, *, truncated: bool, read_up_to: Any) -> None:
        """Move the settled key past batches seen at least ``commit_lag`` ago.

        A batch's ``high`` key was visible when the batch was read; once
        ``commit_lag`` has passed, every row with a smaller key has committed
        (or never will), and this evaluation — which started after that —
        read them all, unless it stopped early at ``read_up_to``.
        """
        old_enough = now_ms - self._lag_ms()
        candidates = [b.high for b in state.recent if b.seen_ms <= old_enough]
        if truncated:
            candidates = [h for h in candidates if read_up_to is not None and h <= read_up_to]
        if not candidates:
            return
        settled = max(candidates)
        if state.settled is None or settled > state.settled:
            state.settled = settled
        state.recent = [b for b in state.recent if not b.high <= state.settled]
        for batch in state.recent:
            if batch.keys and is_int(batch.keys[0]):
                batch.keys = [k for k in batch.keys if k > state.settled]

    # -- missing mode ----------------------------------------------------------

    def _job_for_missing(self, ctx: SensorContext) -> str | None:
        job = self.job or ctx.job
        if job is None and not self.router.active:
            raise ConfigurationError(
                f"sensor {self.__name__}: mode='missing' needs the job whose runs it looks "
                "for: pass job=..."
            )
        return job

    def _in_store_database(self) -> bool:
        if self.store is None:
            return True
        return _database_identity(self._store_url()) == _database_identity(self.engine.url)

    def _evaluate_missing(
        self, ctx: SensorContext, conn: sa.Connection, table: sa.Table, cursor: str | None
    ) -> SensorResult:
        job = self._job_for_missing(ctx)
        key_type = table.c[self.key_column].type
        python_type = _python_type(key_type)
        if (
            job is not None
            and not self.router.active
            and python_type in (int, str)
            and self._in_store_database()
        ):
            return self._missing_by_anti_join(conn, table, job)
        return self._missing_by_lookup(ctx, conn, table, job, cursor)

    def _missing_by_anti_join(self, conn: sa.Connection, table: sa.Table, job: str) -> SensorResult:
        key = table.c[self.key_column]
        run_key = sa.literal(self.run_key_prefix, sa.Text) + sa.cast(key, sa.Text)
        query = self._select(table).where(no_run(job, run_key))
        requests: list[RunRequest] = []
        skipped: list[str] = []
        for page in self._pages(conn, query, table, None):
            for row in page:
                request = self._request(row, skipped)
                if request is not None:
                    requests.append(request)
            if len(requests) >= self.max_per_evaluation:
                break
        self.last_report = {"new": len(requests)}
        return SensorResult(run_requests=requests[: self.max_per_evaluation], cursor=None)

    def _missing_by_lookup(
        self,
        ctx: SensorContext,
        conn: sa.Connection,
        table: sa.Table,
        job: str | None,
        cursor: str | None,
    ) -> SensorResult:
        after = decode_scan_cursor(cursor)
        requests: list[RunRequest] = []
        skipped: list[str] = []
        scanned = 0
        last: Any = None
        reached_end = True
        for page in self._pages(conn, self._select(table), table, after):
            candidates = [r for r in (self._request(row, skipped) for row in page) if r]
            by_job: dict[str, list[str]] = {}
            for request in candidates:
                by_job.setdefault(request.job or job or "", []).append(request.run_key)
            existing = self._existing_run_keys(conn, by_job)
            for request in candidates:
                if (request.job or job or "", request.run_key) not in existing:
                    requests.append(request)
            scanned += len(page)
            last = page[-1][self.key_column]
            if len(requests) >= self.max_per_evaluation or scanned >= self.max_scan:
                reached_end = len(page) < self.batch_size
                break
        warn_unrouted(ctx.logger, "rows", skipped)
        new_cursor = encode_scan_cursor(None if reached_end else last)
        self.last_report = {"new": len(requests), "scanned": scanned, "unrouted": len(skipped)}
        return SensorResult(run_requests=requests, cursor=new_cursor, skipped=len(skipped))


def _python_type(column_type: sa.types.TypeEngine[Any]) -> type | None:
    try:
        return column_type.python_type
    except NotImplementedError:
        return None


def _normalised_url(raw: str | sa.URL) -> sa.URL:
    url = sa.make_url(raw)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def _database_identity(url: sa.URL) -> tuple[Any, ...]:
    backend = url.get_backend_name()
    if backend == "sqlite":
        return (backend, os.path.realpath(url.database or ""))
    return (backend, url.host, url.port or 5432, url.database, url.username)


# Long only by its keyword arguments and their documentation: the body is one call.
def sql_table(
    url_or_engine: str | sa.URL | sa.Engine | HasEngine,
    table: str,
    key_column: str,
    *,
    mode: Literal["cursor", "missing"] = "cursor",
    columns: Sequence[str] | None = None,
    batch_size: int = 1000,
    where: Where | None = None,
    schema: str | None = None,
    routes: Routes | None = None,
    route_column: str | None = None,
    max_per_evaluation: int = 10_000,
    commit_lag: float | None = None,
    max_recent: int = 100_000,
    job: str | None = None,
    store: str | sa.URL | sa.Engine | HasEngine | None = None,
    max_scan: int | None = None,
    clock: Callable[[], float] = time.time,
    name: str | None = None,
) -> SqlTableSensor:
    """A poll sensor that requests one run per row of ``table``, identified by ``key_column``.

    ``url_or_engine`` is the table's database: a URL (``postgresql://`` uses
    psycopg 3), a SQLAlchemy engine, or the App for a table in the store's
    database. Names are checked against the reflected table when the sensor
    is first evaluated; all values are bound parameters.

    ``mode="cursor"`` guarantees each row whose key is above the cursor is
    requested once, even when keys commit out of order, provided no
    transaction inserting into the table stays open longer than
    ``commit_lag`` seconds (default 60; 0 on SQLite, where commits are
    serialised). ``mode="missing"`` guarantees each row without a run of its
    job (``job=``, else the sensor's job) is requested, checked against the
    runs of ``store=`` (default the table's own database).

    The run_key is ``<table>:<key>``; the payload is the row's ``columns``
    (all by default) as JSON-safe values; rows whose key is NULL are ignored.
    Every option, with its default: the table in docs/how-to/sensors.md.
    """
    return SqlTableSensor(
        url_or_engine,
        table,
        key_column,
        mode=mode,
        columns=columns,
        batch_size=batch_size,
        where=where,
        schema=schema,
        routes=routes,
        route_column=route_column,
        max_per_evaluation=max_per_evaluation,
        commit_lag=commit_lag,
        max_recent=max_recent,
        job=job,
        store=store,
        max_scan=max_scan,
        clock=clock,
        name=name,
    )
