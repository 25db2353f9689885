"""A PostgreSQL connection lost while its COMMIT is in flight (the server committed, the answer never came):
the unit is not run a second time, and the caller is told the write may or may not have been stored. A real
PostgreSQL behind a TCP proxy that drops the connection at that moment."""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest

from router.core.store.base import StoreUnavailable
from router.core.store.postgres import PostgresStore
from tests.conftest import PG_HOST, PG_PORT

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)


class CuttingProxy:
    """TCP proxy to PostgreSQL; when armed, forwards the next COMMIT and then drops the client connection
    without forwarding the server's answer."""
    def __init__(self):
        self.armed = False
        self.cuts = 0

    async def start(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def handle(self, cr, cw):
        sr, sw = await asyncio.open_connection(PG_HOST, PG_PORT)
        cut = asyncio.Event()

        async def c2s():
            try:
                while data := await cr.read(65536):
                    if self.armed and b"COMMIT" in data:
                        self.armed = False
                        self.cuts += 1
                        cut.set()  # from now on the server's answers are dropped
                        sw.write(data)
                        await sw.drain()
                        await asyncio.sleep(0.2)  # the server commits and answers
                        return
                    sw.write(data)
                    await sw.drain()
            except Exception:  # noqa: BLE001 - a dropped connection ends this direction
                pass

        async def s2c():
            try:
                while data := await sr.read(65536):
                    if cut.is_set():
                        return
                    # hold back answers that arrive after a COMMIT was forwarded while armed
                    await asyncio.sleep(0)
                    if cut.is_set():
                        return
                    cw.write(data)
                    await cw.drain()
            except Exception:  # noqa: BLE001 - a dropped connection ends this direction
                pass

        t1, t2 = asyncio.create_task(c2s()), asyncio.create_task(s2c())
        await asyncio.wait({t1, t2}, return_when=asyncio.FIRST_COMPLETED)  # either side closing ends both
        for task in (t1, t2):
            task.cancel()
        cw.transport.abort()
        sw.transport.abort()


@pytest.fixture
async def proxied(pg_database):
    proxy = CuttingProxy()
    await proxy.start()
    dsn = pg_database.replace(f"{PG_HOST}:{PG_PORT}", f"127.0.0.1:{proxy.port}")
    store = PostgresStore(dsn, min_connections=1, max_connections=2)
    await store.open()
    yield proxy, store
    await store.close()
    proxy.server.close()


async def test_a_commit_whose_answer_is_lost_is_not_run_again(proxied):
    proxy, store = proxied
    runs = 0

    async def unit(tx):
        nonlocal runs
        runs += 1
        return await tx.insert_customer(None, "once", None, T0)

    proxy.armed = True
    with pytest.raises(StoreUnavailable, match="may or may not have been stored"):
        await store.write(unit)
    assert proxy.cuts == 1 and runs == 1
    rows = await store.read(lambda tx: tx.fetch("SELECT display_name FROM customers"))
    assert [r["display_name"] for r in rows] == ["once"]  # stored once: the server had committed
    assert await store.write(lambda tx: tx.insert_customer(None, "next", None, T0))  # the store goes on
