"""Embedded SQLite store: WAL, fsynced commits, and group commit so durability does not cost throughput.

Writers queue their units; one writer task runs every queued unit inside a single transaction, each in its own
SAVEPOINT (one failing unit rolls back only itself), then COMMITs once in a worker thread, where the fsync
happens while the event loop goes on accepting requests. Every caller's future resolves after that COMMIT.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import re
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import orjson

from router.core.model import Event, Outbound, OutboundStatus
from router.core.store.base import OUTBOX_COLUMNS, Store, StoreUnavailable, Tx, Unit, migrations, outbound_from_row

log = logging.getLogger(__name__)

_PLACEHOLDER = re.compile(r"\$(\d+)")


def _sql(sql: str, cache: dict[str, str] = {}) -> str:  # noqa: B006 - a deliberate module-level memo
    converted = cache.get(sql)
    if converted is None:
        converted = cache[sql] = _PLACEHOLDER.sub(r"?\1", sql)
    return converted


_RETURNING_ID = " RETURNING id"


def _insert_returning_id(sql: str, cache: dict[str, tuple[str, str] | None] = {}) -> tuple[str, str] | None:  # noqa: B006
    """For `INSERT INTO t (...) VALUES (...) RETURNING id` of one row: (t, the statement without RETURNING in
    SQLite's placeholders). None for anything else (several rows, INSERT ... SELECT, ON CONFLICT, ...)."""
    try:
        return cache[sql]
    except KeyError:
        pass
    found = None
    head = sql.lstrip()
    if head[:12].upper() == "INSERT INTO " and sql.endswith(_RETURNING_ID):
        body = sql[: -len(_RETURNING_ID)]
        upper = body.upper()
        table = head[12:].split("(", 1)[0].strip()
        if (
            table.isidentifier()
            and upper.count(" VALUES ") == 1
            and body.rstrip().endswith(")")
            and "SELECT" not in upper
            and " ON CONFLICT" not in upper
            and "),(" not in upper.replace(" ", "")
        ):
            found = (table, _sql(body))
    cache[sql] = found
    return found


def _dumps(value: Any) -> str:
    """Compact JSON text, as json.dumps(separators=(",", ":"), ensure_ascii=False) writes it, but faster."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:  # what orjson refuses (integers past 64 bits, ...): the standard library
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:  # NaN, integers past 64 bits, ...: what json.dumps may have written
        return json.loads(raw)


def _param(value: Any) -> Any:
    if isinstance(value, datetime):
        # One fixed format in UTC, so that text comparisons in SQL order instants correctly.
        return value.astimezone(timezone.utc).isoformat(timespec="microseconds")
    if isinstance(value, (dict, list)):
        return _dumps(value)
    return value


sqlite3.register_converter("TIMESTAMPTZ", lambda raw: datetime.fromisoformat(raw.decode()))
sqlite3.register_converter("JSONB", _loads)


def _connect(path: str, busy_timeout_ms: int) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path,
        detect_types=sqlite3.PARSE_DECLTYPES,
        isolation_level=None,  # we issue BEGIN/COMMIT ourselves
        check_same_thread=False,  # COMMIT runs in a worker thread, never concurrently with other use
        timeout=busy_timeout_ms / 1000,
    )
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


_UPDATE_SQL: dict[tuple[str, ...], str] = {}


def _fail(batch: Sequence[Any], error: Exception) -> None:
    """Every job of `batch` not answered yet gets `error` (none is left waiting)."""
    for job in batch:
        if not job.future.done():
            job.future.set_exception(error)

# Parameter types sqlite3 binds as they are (subclasses such as str enums go through the slower checks).
_PLAIN = frozenset({str, int, type(None), float, bytes, bool})


class SqliteTx(Tx):
    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn
        # A unit passes the same `now` many times; convert it once.
        self._last_time: datetime | None = None
        self._last_text = ""
        self._rowid_tables: dict[str, bool] = {}

    def _params(self, args: tuple[Any, ...]) -> tuple[Any, ...] | list[Any]:
        for value in args:
            if type(value) not in _PLAIN:
                break
        else:  # the common case: nothing to convert
            return args
        out = []
        for value in args:
            if type(value) in _PLAIN:
                pass
            elif isinstance(value, datetime):
                if value is not self._last_time:
                    self._last_time, self._last_text = value, _param(value)
                value = self._last_text
            elif isinstance(value, (dict, list)):
                value = _dumps(value)
            out.append(value)
        return out

    async def execute(self, sql: str, *args: Any) -> None:
        self._conn.execute(_sql(sql), self._params(args))

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        return self._conn.execute(_sql(sql), self._params(args)).fetchall()

    async def fetchrow(self, sql: str, *args: Any) -> Any | None:
        return self._conn.execute(_sql(sql), self._params(args)).fetchone()

    async def fetchval(self, sql: str, *args: Any) -> Any:
        insert = _insert_returning_id(sql)
        if insert is not None and self._id_is_rowid(insert[0]):
            # A one-row INSERT ... RETURNING id where id is the rowid: read it from the cursor, without SQLite
            # materialising a result set.
            cursor = self._conn.execute(insert[1], self._params(args))
            return cursor.lastrowid if cursor.rowcount == 1 else None
        row = self._conn.execute(_sql(sql), self._params(args)).fetchone()
        return None if row is None else row[0]

    def _id_is_rowid(self, table: str) -> bool:
        """Whether `table.id` is an INTEGER PRIMARY KEY, i.e. an alias of the rowid (looked up once per table)."""
        known = self._rowid_tables.get(table)
        if known is None:
            columns = self._conn.execute(f'PRAGMA table_info("{table}")').fetchall()
            keys = [c for c in columns if c["pk"]]
            pk_index = any(i["origin"] == "pk" for i in self._conn.execute(f'PRAGMA index_list("{table}")'))
            known = self._rowid_tables[table] = (
                len(keys) == 1 and keys[0]["name"] == "id" and keys[0]["type"].upper() == "INTEGER" and not pk_index
            )
        return known

    async def _update(self, table: str, row_id: int, fields: dict[str, Any], allowed: frozenset[str] | set[str]) -> None:
        # As Tx._update, with each (table, columns) statement built once.
        for name in fields:
            if name not in allowed:
                raise ValueError(f"cannot update {table}.{sorted(set(fields) - set(allowed))}")
        if not fields:
            return
        key = (table, *fields)
        sql = _UPDATE_SQL.get(key)
        if sql is None:
            assignments = ", ".join(f"{name} = ?{i}" for i, name in enumerate(fields, start=2))
            sql = _UPDATE_SQL[key] = f"UPDATE {table} SET {assignments} WHERE id = ?1"
        self._conn.execute(sql, self._params((row_id, *fields.values())))

    async def append_events(
        self, rows: Sequence[tuple[int | None, str, dict[str, Any]]], actor: str, at: datetime
    ) -> list[Event]:
        if len(rows) == 1:  # the common case; a one-row INSERT reads its id without RETURNING
            case_id, type, data = rows[0]
            return [await self.append_event(case_id, type, actor, data, at)]
        return await super().append_events(rows, actor, at)

    async def next_case_number(self) -> int:
        row = self._conn.execute(
            "UPDATE counters SET value = value + 1 WHERE name = 'case_number' RETURNING value"
        ).fetchone()
        return row[0]

    async def lock_customer(self, customer_id: int) -> None:
        # One writer at a time already: the group-commit writer runs units one after another.
        return None

    async def claim_due_outbound(self, now: datetime, lease_until: datetime, limit: int) -> list[Outbound]:
        rows = await self.fetch(
            "UPDATE outbox SET status = 'sending', claimed_until = $2 WHERE id IN (SELECT id FROM outbox "
            "WHERE (status = 'pending' AND next_attempt_at <= $1) OR (status = 'sending' AND claimed_until < $1) "
            f"ORDER BY next_attempt_at LIMIT $3) RETURNING {OUTBOX_COLUMNS}",
            now,
            lease_until,
            limit,
        )
        return sorted((outbound_from_row(r) for r in rows), key=lambda o: o.id)


class _Job:
    __slots__ = ("unit", "future")

    def __init__(self, unit: Unit[Any], future: asyncio.Future[Any]):
        self.unit = unit
        self.future = future


class SqliteStore(Store):
    backend = "sqlite"

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 5000, max_batch: int = 256):
        self.path = str(path)
        self.busy_timeout_ms = busy_timeout_ms
        self.max_batch = max_batch
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task[None] | None = None
        # The thread that runs each COMMIT (and so the fsync), off the event loop.
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.batches = 0  # how many commits; with `writes` it shows the group-commit factor
        self.writes = 0

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._writer = _connect(self.path, self.busy_timeout_ms)
        mode = self._writer.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal" and self.path != ":memory:":
            raise StoreUnavailable(f"{self.path}: SQLite refused WAL mode (got {mode}); is it on a network filesystem?")
        # FULL: in WAL mode NORMAL would not fsync at COMMIT, and an acknowledged message could be lost.
        self._writer.execute("PRAGMA synchronous = FULL")
        self._migrate()
        self._reader = _connect(self.path, self.busy_timeout_ms)
        self._queue = asyncio.Queue()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._task = asyncio.create_task(self._run_writer(), name="sqlite-group-commit")

    def _migrate(self) -> None:
        conn = self._writer
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            for version, sql in migrations("sqlite"):
                if version in done:
                    continue
                log.info("applying SQLite migration %04d", version)
                for statement in _split_statements(sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, datetime('now'))", (version,)
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._queue is not None:
            while not self._queue.empty():
                job = self._queue.get_nowait()
                if not job.future.done():
                    job.future.set_exception(StoreUnavailable("the store is closing"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        for conn in (self._reader, self._writer):
            if conn is not None:
                conn.close()
        self._reader = self._writer = None

    async def write(self, unit: Unit[Any]) -> Any:
        if self._queue is None or self._task is None or self._task.done():
            raise StoreUnavailable("the store is not open")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(unit, future))
        return await future

    async def read(self, unit: Unit[Any]) -> Any:
        if self._reader is None:
            raise StoreUnavailable("the store is not open")
        # Reads run on their own connection; WAL gives them a consistent snapshot without blocking the writer.
        try:
            self._reader.execute("BEGIN")
            try:
                return await unit(SqliteTx(self._reader))
            finally:
                self._reader.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"the database could not be read: {exc}") from exc

    async def _run_writer(self) -> None:
        assert self._queue is not None and self._writer is not None
        conn = self._writer
        tx = SqliteTx(conn)
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._commit_batch(conn, tx, batch)
            except asyncio.CancelledError:  # the store is closing: nobody in this batch may wait for ever
                _fail(batch, StoreUnavailable("the store closed before this write was committed"))
                raise
            except Exception as exc:  # noqa: BLE001 - the writer must outlive any one batch
                log.exception("SQLite write batch of %d failed", len(batch))
                _fail(batch, StoreUnavailable(f"the database could not be written: {exc}"))

    async def _in_thread(self, fn: Any, *args: Any) -> Any:
        assert self._executor is not None
        work = self._executor.submit(fn, *args)
        try:
            return await asyncio.wrap_future(work)
        except asyncio.CancelledError:
            # The thread may still be using the connection: let it finish before anyone else touches it.
            concurrent.futures.wait([work])
            raise

    async def _commit_batch(self, conn: sqlite3.Connection, tx: SqliteTx, batch: list[_Job]) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot start a write: {exc}") from exc
        results: list[tuple[_Job, bool, Any]] = []
        try:
            for job in batch:
                if job.future.cancelled():
                    continue
                conn.execute("SAVEPOINT unit")
                try:
                    value = await job.unit(tx)
                except (asyncio.CancelledError, Exception) as exc:  # noqa: BLE001 - one unit's failure is its own
                    task = asyncio.current_task()
                    if isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling():
                        raise  # the writer itself is being stopped
                    conn.execute("ROLLBACK TO unit")
                    conn.execute("RELEASE unit")
                    # A unit that cancelled itself failed, as one that raised did; the batch goes on.
                    results.append((job, False, StoreUnavailable("the write was cancelled")
                                    if isinstance(exc, asyncio.CancelledError) else exc))
                else:
                    conn.execute("RELEASE unit")
                    results.append((job, True, value))
            committed: list[bool] = []

            def commit() -> None:
                conn.execute("COMMIT")
                committed.append(True)  # reached only when the COMMIT itself succeeded

            try:
                await self._in_thread(commit)
            except asyncio.CancelledError:
                if committed:  # cancelled while the COMMIT ran, and it went through: say so
                    self._resolve(results)
                raise
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._resolve(results)

    def _resolve(self, results: list[tuple[_Job, bool, Any]]) -> None:
        self.batches += 1
        self.writes += len(results)
        for job, ok, value in results:
            if job.future.done():
                continue
            if ok:
                job.future.set_result(value)
            else:
                job.future.set_exception(value)


def _split_statements(sql: str) -> list[str]:
    statements, buffer = [], ""
    for line in sql.splitlines():
        if line.strip().startswith("--"):
            continue
        buffer += line + "\n"
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements


__all__ = ["SqliteStore", "SqliteTx", "OutboundStatus"]
