"""The SQLite store's group-commit writer when things go wrong: nobody waiting on a write is left waiting, what
was committed is reported as committed, and one odd unit does not end the writer. A real SQLite file."""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest

from router.core.store.base import StoreUnavailable
from router.core.store.sqlite import SqliteStore

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)


@pytest.fixture
async def store(tmp_path):
    opened = SqliteStore(tmp_path / "writer.db")
    await opened.open()
    yield opened
    await opened.close()


def customer(name):
    return lambda tx: tx.insert_customer(None, name, None, T0)


async def names(path) -> list[str]:
    again = SqliteStore(path)
    await again.open()
    try:
        return sorted(r[0] for r in await again.read(lambda tx: tx.fetch("SELECT display_name FROM customers")))
    finally:
        await again.close()


async def test_a_unit_that_cancels_itself_fails_alone_and_the_writer_goes_on(store):
    async def cancels(tx):
        await tx.insert_customer(None, "half", None, T0)
        raise asyncio.CancelledError  # e.g. something it awaited was cancelled

    results = await asyncio.wait_for(asyncio.gather(store.write(customer("a")), store.write(cancels),
                                                    store.write(customer("b")), return_exceptions=True), 5)
    assert isinstance(results[1], StoreUnavailable) and "cancelled" in str(results[1])
    assert isinstance(results[0], int) and isinstance(results[2], int)
    assert await asyncio.wait_for(store.write(customer("later")), 5)  # the writer is alive
    assert await names(store.path) == ["a", "b", "later"]  # nothing of the cancelled unit was kept


async def test_closing_the_store_answers_every_waiting_write(store):
    writes = [asyncio.ensure_future(store.write(customer(f"n{i}"))) for i in range(50)]
    await asyncio.sleep(0)  # the writer takes a batch and starts on it
    await asyncio.wait_for(store.close(), 10)
    done, waiting = await asyncio.wait(writes, timeout=5)
    assert waiting == set()  # nobody hangs
    committed = sorted(f"n{i}" for i, w in enumerate(writes) if w.exception() is None)
    assert all(isinstance(w.exception(), StoreUnavailable) for w in writes if w.exception() is not None)
    assert await names(store.path) == committed  # an answered write is stored; a refused one is not
