"""Storage behind one interface: SQLite embedded by default, PostgreSQL for several nodes."""
from __future__ import annotations

from pathlib import Path

from router.config import Config
from router.core.store.base import Conflict, Store, StoreUnavailable, Tx


def make_store(config: Config, data_dir: Path) -> Store:
    """The store the configuration asks for; a relative SQLite path lives under `data_dir`."""
    if config.store.backend == "postgres":
        from router.core.store.postgres import PostgresStore

        pg = config.store.postgres
        assert pg is not None  # validated by the config
        return PostgresStore(pg.dsn.get(), min_connections=pg.min_connections, max_connections=pg.max_connections)
    from router.core.store.sqlite import SqliteStore

    sqlite = config.store.sqlite
    path = Path(sqlite.path)
    if not path.is_absolute():
        path = data_dir / path
    return SqliteStore(path, busy_timeout_ms=sqlite.busy_timeout_ms, max_batch=sqlite.max_batch)


__all__ = ["Conflict", "Store", "StoreUnavailable", "Tx", "make_store"]
