"""Shared fixtures: real stores (SQLite files, fresh PostgreSQL databases), a controllable clock, a real webhook
receiver on loopback, and a guard that keeps tests off every network but loopback."""
from __future__ import annotations

import asyncio
import json
import concurrent.futures
import ipaddress
import os
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from router.app import Switchboard
from router.config import Config, validate_config
from router.core.clock import ManualClock
from router.core.store.postgres import PostgresStore
from router.core.store.sqlite import SqliteStore
from router.plugins import build_plugin_manager
from router.web.app import create_app

PG_HOST = os.environ.get("SWITCHBOARD_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("SWITCHBOARD_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("SWITCHBOARD_TEST_PG_USER", "postgres")
TOKEN = "test-token"
READER_TOKEN = "reader-token"
WEBHOOK_SECRET = "whsec-test"


# -- network guard -------------------------------------------------------------------------------------------------
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _check_address(sock: socket.socket, address: Any) -> None:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    host = address[0]
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        if host == "localhost":
            return
    raise ConnectionRefusedError(f"tests may only reach loopback, not {host!r}")


def _guarded_connect(self: socket.socket, address: Any) -> Any:
    _check_address(self, address)
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> Any:
    _check_address(self, address)
    return _real_connect_ex(self, address)


@pytest.fixture(autouse=True, scope="session")
def _loopback_only():
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
    yield
    socket.socket.connect = _real_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _real_connect_ex  # type: ignore[method-assign]


# -- configuration ---------------------------------------------------------------------------------------------------
def make_config(**sections: Any) -> Config:
    """A valid configuration with two integrations; keyword arguments replace whole top-level sections."""
    os.environ.setdefault("SB_TEST_TOKEN", TOKEN)
    os.environ.setdefault("SB_TEST_READER_TOKEN", READER_TOKEN)
    os.environ.setdefault("SB_TEST_WEBHOOK_SECRET", WEBHOOK_SECRET)
    data: dict[str, Any] = {
        "instance": {"name": "Taskly Support", "case_ref_prefix": "TK", "default_region": "IT"},
        "integrations": [
            # Port 9 (discard) on loopback: acknowledgements are queued; only outbox tests deliver, to a receiver.
            webhook_integration("http://127.0.0.1:9/unused"),
            {"name": "reader", "token": {"$env": "SB_TEST_READER_TOKEN"}, "scopes": ["read"]},
        ],
    }
    data.update(sections)
    return validate_config(data)


def webhook_integration(url: str, name: str = "backend", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "token": {"$env": "SB_TEST_TOKEN"},
        "scopes": ["ingest", "read"],
        "trusted": True,
        "webhook": {"url": url, "secret": {"$env": "SB_TEST_WEBHOOK_SECRET"}, "timeout": "2s"},
        **extra,
    }


# -- PostgreSQL ------------------------------------------------------------------------------------------------------
def pg_dsn(database: str) -> str:
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"


def run_sync(coro: Any) -> Any:
    """Run a coroutine to completion on a private event loop in another thread (usable from any fixture)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(pg_dsn("postgres"), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A brand-new, empty PostgreSQL database for one test; dropped afterwards. Yields its DSN."""
    name = f"sb_test_{uuid.uuid4().hex[:12]}"
    try:
        run_sync(_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL is not usable at {PG_HOST}:{PG_PORT} ({exc}); ./dev test starts it")
    yield pg_dsn(name)
    run_sync(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# -- stores and applications -----------------------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def store_factory(backend: str, tmp_path: Path, request: pytest.FixtureRequest):
    """Makes stores of the parametrised backend that all point at the same database (like several nodes)."""
    made: list[Any] = []
    dsn = request.getfixturevalue("pg_database") if backend == "postgres" else None

    async def factory():
        if backend == "sqlite":
            store = SqliteStore(tmp_path / "switchboard.db", busy_timeout_ms=2000)
        else:
            store = PostgresStore(dsn, min_connections=1, max_connections=8)
        made.append(store)
        return store

    yield factory
    for store in made:
        await store.close()


@pytest.fixture
async def store(store_factory):
    store = await store_factory()
    await store.open()
    return store


@dataclass
class Harness:
    """A Switchboard built like production but driven by the test: manual clock, outbox run on demand."""

    sb: Switchboard
    clock: ManualClock
    client: TestClient | None = None

    async def ingest(self, **fields: Any):
        from router.core.model import InboundMessage

        fields.setdefault("channel", "api")
        fields.setdefault("account", "backend")
        return await self.sb.dispatcher.ingest(InboundMessage.model_validate(fields))

    async def read(self, unit: Callable[..., Any]) -> Any:
        return await self.sb.store.read(unit)


@pytest.fixture
async def harness_factory(store_factory):
    """Builds started Switchboards over the parametrised store; `plugins` are registered before start."""
    built: list[Switchboard] = []

    async def factory(config: Config | None = None, *, plugins: tuple[Any, ...] = (), clock: ManualClock | None = None,
                      blocked: tuple[str, ...] = ()) -> Harness:
        config = config or make_config()
        clock = clock or ManualClock()
        pm = build_plugin_manager(blocked, entry_points=False)
        for plugin in plugins:  # named as an entry point names it, when the test plugin says its name
            pm.register(plugin, name=getattr(plugin, "name", None))
        sb = Switchboard(config, plugin_manager=pm, store=await store_factory(), clock=clock)
        await sb.start(background=False)
        built.append(sb)
        return Harness(sb, clock)

    yield factory
    for sb in built:
        if sb.started:
            await sb.stop()


@pytest.fixture
async def harness(harness_factory) -> Harness:
    return await harness_factory()


@pytest.fixture
async def http_factory(store_factory):
    """Serves a full Switchboard application (routes, lifecycle) on loopback; returns a client for it."""
    clients: list[TestClient] = []

    async def factory(config: Config | None = None, *, plugins: tuple[Any, ...] = (),
                      clock: ManualClock | None = None) -> Harness:
        config = config or make_config()
        pm = build_plugin_manager(config.blocked_plugins, entry_points=False)
        for plugin in plugins:
            pm.register(plugin)
        clock = clock or ManualClock()
        sb = Switchboard(config, plugin_manager=pm, store=await store_factory(), clock=clock)
        client = TestClient(TestServer(create_app(sb), host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return Harness(sb, clock, client)

    yield factory
    for client in clients:
        await client.close()


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- a real webhook receiver -----------------------------------------------------------------------------------------
@dataclass
class WebhookReceiver:
    """An HTTP server on loopback standing in for an integration's webhook endpoint."""

    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    # Statuses to answer with, in order; when exhausted, 200.
    script: list[int] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    # Called with each parsed body before answering, as an integration that acts on a webhook before replying.
    before_answer: Callable[[dict[str, Any]], Awaitable[None]] | None = None
    answer: dict[str, Any] | None = None  # the JSON of a 200 answer (default: {"id": "ext-<n>"})

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append({"headers": dict(request.headers), "body": body})
        self.arrived.set()
        if self.before_answer is not None:
            await self.before_answer(json.loads(body))
        status = self.script.pop(0) if self.script else 200
        if status == 200:
            return web.json_response(self.answer or {"id": f"ext-{len(self.requests)}"})
        return web.Response(status=status, text=f"scripted {status}")


@pytest.fixture
async def webhook_receiver() -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    receiver.url = f"http://127.0.0.1:{port}/hook"
    yield receiver
    await runner.cleanup()


# -- a real IMAP server ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def dovecot():
    """One throwaway Dovecot for the session (tests/mailservers.py); any address logs in, so each test takes
    fresh addresses of its own."""
    from tests.mailservers import Dovecot, dovecot_available

    missing = dovecot_available()
    if missing:
        pytest.fail(missing)
    server = Dovecot().start()
    yield server
    server.stop()
