"""Embedded SQLite store: WAL, fsynced commits, and group commit so durability does not cost throughput.

Writers queue their units; one writer task runs every queued unit inside a single transaction, each in its own
SAVEPOINT (one failing unit rolls back only itself), then COMMITs once in a worker thread, where the fsync
happens while the event loop goes on accepting requests. Every caller's future resolves after that COMMIT.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from router.core.model import Outbound, OutboundStatus
from router.core.store.base import OUTBOX_COLUMNS, Store, StoreUnavailable, Tx, Unit, migrations, outbound_from_row

log = logging.getLogger(__name__)

_PLACEHOLDER = re.compile(r"\$(\d+)")


def _sql(sql: str, cache: dict[str, str] = {}) -> str:  # noqa: B006 - a deliberate module-level memo
    converted = cache.get(sql)
    if converted is None:
        converted = cache[sql] = _PLACEHOLDER.sub(r"?\1", sql)
    return converted


def _param(value: Any) -> Any:
    if isinstance(value, datetime):
        # One fixed format in UTC, so that text comparisons in SQL order instants correctly.
        return value.astimezone(timezone.utc).isoformat(timespec="microseconds")
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return value


sqlite3.register_converter("TIMESTAMPTZ", lambda raw: datetime.fromisoformat(raw.decode()))
sqlite3.register_converter("JSONB", lambda raw: json.loads(raw))


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


class SqliteTx(Tx):
    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn
        # A unit passes the same `now` many times; convert it once.
        self._last_time: datetime | None = None
        self._last_text = ""

    def _params(self, args: tuple[Any, ...]) -> list[Any]:
        out = []
        for value in args:
            if isinstance(value, datetime):
                if value is not self._last_time:
                    self._last_time, self._last_text = value, _param(value)
                value = self._last_text
            elif isinstance(value, (dict, list)):
                value = _param(value)
            out.append(value)
        return out

    async def execute(self, sql: str, *args: Any) -> None:
        self._conn.execute(_sql(sql), self._params(args))

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        return self._conn.execute(_sql(sql), self._params(args)).fetchall()

    async def fetchrow(self, sql: str, *args: Any) -> Any | None:
        return self._conn.execute(_sql(sql), self._params(args)).fetchone()

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
            except Exception as exc:  # noqa: BLE001 - the writer must outlive any one batch
                log.exception("SQLite write batch of %d failed", len(batch))
                failure = StoreUnavailable(f"the database could not be written: {exc}")
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(failure)

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
                except Exception as exc:  # noqa: BLE001 - one unit's failure is its caller's, not the batch's
                    conn.execute("ROLLBACK TO unit")
                    conn.execute("RELEASE unit")
                    results.append((job, False, exc))
                else:
                    conn.execute("RELEASE unit")
                    results.append((job, True, value))
            await asyncio.to_thread(conn.execute, "COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
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
