"""PostgreSQL store (asyncpg): how a deployment outgrows one machine; several router nodes share one database.

Each unit runs in its own transaction on a pooled connection; PostgreSQL's own commit grouping and concurrency
do the rest. Races between nodes (two deliveries of one message, two first messages from one new customer)
surface as unique violations: the unit is rolled back and run again, and then sees the winner's rows.
"""
from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime
from typing import Any

import asyncpg

from router.core.model import Outbound
from router.core.store.base import OUTBOX_COLUMNS, Conflict, Store, StoreUnavailable, Tx, Unit, migrations, outbound_from_row

log = logging.getLogger(__name__)

RETRIES = 5
_MIGRATION_LOCK = 0x5357_4254  # pg_advisory_lock key: nodes starting together migrate one at a time

# A pooled connection died (server restart, failover, network blip): run the unit again on a fresh one.
_CONNECTION_LOST = (
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ConnectionFailureError,
    ConnectionError,
)
# Lost a race with another writer; the retry sees what the winner committed.
_RACE = (
    Conflict,
    asyncpg.exceptions.UniqueViolationError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
)
# The database is there but will not take the work: report it, do not hammer it.
_REFUSED = (
    asyncpg.exceptions.ReadOnlySQLTransactionError,
    asyncpg.exceptions.InsufficientPrivilegeError,
    asyncpg.exceptions.DiskFullError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.InterfaceError,
    OSError,
    asyncio.TimeoutError,
)


class PostgresTx(Tx):
    def __init__(self, conn: asyncpg.Connection):
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> None:
        await self._conn.execute(sql, *_storable(args))

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        return await self._conn.fetch(sql, *_storable(args))

    async def fetchrow(self, sql: str, *args: Any) -> Any | None:
        return await self._conn.fetchrow(sql, *_storable(args))

    async def next_case_number(self) -> int:
        return await self._conn.fetchval("SELECT nextval('case_number')")

    async def lock_customer(self, customer_id: int) -> None:
        await self._conn.execute("SELECT id FROM customers WHERE id = $1 FOR UPDATE", customer_id)

    async def claim_due_outbound(self, now: datetime, lease_until: datetime, limit: int) -> list[Outbound]:
        rows = await self._conn.fetch(
            "UPDATE outbox SET status = 'sending', claimed_until = $2 WHERE id IN (SELECT id FROM outbox "
            "WHERE (status = 'pending' AND next_attempt_at <= $1) OR (status = 'sending' AND claimed_until < $1) "
            f"ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING {OUTBOX_COLUMNS}",
            now,
            lease_until,
            limit,
        )
        return sorted((outbound_from_row(r) for r in rows), key=lambda o: o.id)


# PostgreSQL's text and jsonb cannot hold U+0000, which a customer's odd mail or an API client may send: it is
# stored as U+FFFD (the replacement character) instead of failing the write. (SQLite could keep it; the
# dispatcher replaces it in inbound messages already, so that both stores read back the same.)
def _storable(args: tuple[Any, ...]) -> tuple[Any, ...]:
    for value in args:
        if type(value) is str and "\x00" in value:
            return tuple(v.replace("\x00", "\ufffd") if type(v) is str else v for v in args)
    return args


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nul(v) for v in value]
    return value


def _jsonb(value: Any) -> str:
    text = json.dumps(value)
    return json.dumps(_without_nul(value)) if "\\u0000" in text else text


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=_jsonb, decoder=json.loads, schema="pg_catalog")


class PostgresStore(Store):
    backend = "postgres"

    def __init__(self, dsn: str, *, min_connections: int = 2, max_connections: int = 10):
        self.dsn = dsn
        self.min_connections = min_connections
        self.max_connections = max_connections
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self.min_connections,
                max_size=self.max_connections,
                init=_init_connection,
                command_timeout=30,
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
        async with self._pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
            try:
                await self._migrate(conn)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, sql in migrations("postgres"):
            if version in done:
                continue
            log.info("applying PostgreSQL migration %04d", version)
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, now())", version)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def write(self, unit: Unit[Any]) -> Any:
        """Units may run more than once (after a lost race or connection); every core unit is written for that:
        it re-reads what it depends on inside its transaction, so a second run sees the first one's commit."""
        return await self._run(unit, readonly=False)

    async def read(self, unit: Unit[Any]) -> Any:
        return await self._run(unit, readonly=True)

    async def _run(self, unit: Unit[Any], *, readonly: bool) -> Any:
        pool = self._require_pool()
        verb = "read" if readonly else "written"
        for attempt in range(RETRIES):
            last = attempt == RETRIES - 1
            committing = False
            try:
                async with pool.acquire() as conn:
                    if readonly:
                        async with conn.transaction(isolation="repeatable_read", readonly=True):
                            return await unit(PostgresTx(conn))
                    transaction = conn.transaction()
                    await transaction.start()
                    try:
                        result = await unit(PostgresTx(conn))
                    except BaseException:
                        if not conn.is_closed():
                            await transaction.rollback()
                        raise
                    committing = True
                    await transaction.commit()
                    return result
            except _RACE:
                if last:
                    raise
            except _CONNECTION_LOST as exc:
                if committing:
                    # The COMMIT went out and no answer came back: it may have been stored. Running the unit
                    # again could store it twice, so the caller is told, and acknowledges nothing; a client's
                    # retry is then recognised as the duplicate it may be.
                    raise StoreUnavailable(f"the connection was lost while committing ({exc}); the write may or "
                                           "may not have been stored") from exc
                if last:
                    raise StoreUnavailable(f"the database could not be {verb}: {exc}") from exc
                log.info("PostgreSQL connection lost (%s); retrying on a fresh one", type(exc).__name__)
            except _REFUSED as exc:
                raise StoreUnavailable(f"the database could not be {verb}: {exc}") from exc
            await asyncio.sleep(0.005 * (attempt + 1))
        raise AssertionError("unreachable")

    def _require_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailable("the store is not open")
        return self._pool
