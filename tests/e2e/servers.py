"""Helpers for end-to-end tests: configuration folders, `switchboard` server processes, an HTTP load driver and
read-only views of what the servers stored."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import aiohttp
import asyncpg
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = REPO_ROOT / "config"
INTEGRATION = "e2e"  # the integration name: the API channel stores external ids as "e2e/<id>"
TOKEN_ENV = "SB_E2E_TOKEN"
TOKEN = "e2e-secret-token-7f3a9c"
PG_DSN_ENV = "SB_E2E_PG_DSN"
SQLITE_FILE = "switchboard.db"

# Variables that would change what the CLI does if the developer running the tests happens to have them set.
_SCRUBBED_ENV = ("SWITCHBOARD_CONFIG", "SWITCHBOARD_DATA", "SWITCHBOARD_BLOCK_PLUGINS", "SWITCHBOARD_LOG",
                 "SWITCHBOARD_DEMO_TOKEN", TOKEN_ENV, PG_DSN_ENV)


def switchboard_command() -> list[str]:
    """The installed console script next to the running interpreter, else `python -m router.cli`."""
    script = Path(sys.executable).with_name("switchboard")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "router.cli"]


def cli_env(**extra: str) -> dict[str, str]:
    """A clean environment for a `switchboard` subprocess, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run `switchboard ARGS` to completion from the repository root; returns its exit code and output."""
    return subprocess.run(
        [*switchboard_command(), *args], cwd=REPO_ROOT, env=env if env is not None else cli_env(),
        capture_output=True, text=True, timeout=timeout,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(directory: Path, *, backend: str = "sqlite", trusted: bool = False,
                 extra: dict[str, Any] | None = None) -> Path:
    """A deployment folder with one integration (token from $SB_E2E_TOKEN, with a default) and the chosen store.

    PostgreSQL's DSN comes from $SB_E2E_PG_DSN, which the caller sets for the server process. A `trusted`
    integration may link identities (and so merge customers).
    """
    directory.mkdir(parents=True, exist_ok=True)
    store: dict[str, Any] = {"backend": backend}
    if backend == "postgres":
        store["postgres"] = {"dsn": {"$env": PG_DSN_ENV}, "min_connections": 2, "max_connections": 10}
    data: dict[str, Any] = {
        "instance": {"name": "E2E Support", "case_ref_prefix": "TK", "default_region": "IT"},
        "store": store,
        "integrations": [
            {"name": INTEGRATION, "token": {"$env": TOKEN_ENV, "default": TOKEN}, "scopes": ["ingest", "read"],
             "trusted": trusted},
        ],
    }
    data.update(extra or {})
    (directory / "switchboard.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return directory


# -- server processes --------------------------------------------------------------------------------------------
class ServerProcess:
    """One `switchboard run` subprocess; its output goes to files under `logs` so a full pipe never blocks it."""

    def __init__(self, config_dir: Path, data_dir: Path, logs: Path, *, port: int | None = None,
                 env: dict[str, str] | None = None, name: str = "server", log_level: str | None = "WARNING"):
        self.config_dir = config_dir
        self.data_dir = data_dir
        self.port = port or free_port()
        self.env = cli_env(**(env or {}))
        self.logs = logs
        self.name = name
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.stdout_path = logs / f"{name}.0.out"  # per run, once started
        self.stderr_path = logs / f"{name}.0.err"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> "ServerProcess":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.runs += 1
        self.logs.mkdir(parents=True, exist_ok=True)
        self.stdout_path = self.logs / f"{self.name}.{self.runs}.out"
        self.stderr_path = self.logs / f"{self.name}.{self.runs}.err"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [*switchboard_command(), "run", "--config", str(self.config_dir), "--data", str(self.data_dir),
                 "--port", str(self.port), *(["--log-level", self.log_level] if self.log_level else [])],
                cwd=REPO_ROOT, env=self.env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
            )
        return self

    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace") if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace") if self.stderr_path.exists() else ""

    def describe(self) -> str:
        return f"{self.name} (run {self.runs}) stdout:\n{self.stdout()}\nstderr:\n{self.stderr()}"

    async def wait_healthy(self, timeout: float = 20) -> dict[str, Any]:
        """Poll GET /healthz until it answers 200; fail early, with the server's output, if the process exits."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"server exited with {self.proc.returncode} before it was healthy\n"
                                         + self.describe())
                try:
                    async with session.get(f"{self.url}/healthz") as response:
                        if response.status == 200:
                            return await response.json()
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"server not healthy after {timeout}s\n" + self.describe())
                await asyncio.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to flush, close or answer anything."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 15) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def ensure_stopped(self) -> None:
        """Cleanup: make sure this (and only this) process is gone."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


# -- the HTTP side -----------------------------------------------------------------------------------------------
def message(external_id: str, sender: str, text: str, **extra: Any) -> dict[str, Any]:
    """A POST /api/v1/messages body from an e-mail sender, without thread hints unless given in `extra`."""
    return {"external_id": external_id, "sender": {"kind": "email", "value": sender}, "text": text, **extra}


@dataclass
class Answer:
    """What the server said to one POST: a status and body, or the connection error it died of."""

    status: int | None = None
    body: dict[str, Any] | None = None
    error: str | None = None

    @property
    def acknowledged(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def case_ref(self) -> str | None:
        return (self.body or {}).get("case", {}).get("ref") if self.acknowledged else None

    @property
    def outcome(self) -> str | None:
        return (self.body or {}).get("outcome") if self.acknowledged else None


def client_session(limit: int = 64, token: str = TOKEN) -> aiohttp.ClientSession:
    """An HTTP client that authenticates as the integration on every request."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit),
        timeout=aiohttp.ClientTimeout(total=30),
        headers={"Authorization": f"Bearer {token}"},
    )


async def post_message(session: aiohttp.ClientSession, base_url: str, payload: dict[str, Any]) -> Answer:
    try:
        async with session.post(f"{base_url}/api/v1/messages", json=payload) as response:
            try:
                body = await response.json(content_type=None)
            except ValueError:
                body = {"raw": await response.text()}
            return Answer(status=response.status, body=body)
    except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as exc:
        return Answer(error=f"{type(exc).__name__}: {exc}")


@dataclass
class Load:
    """Sends messages from several concurrent client tasks; optionally stops taking new work on `stop`."""

    session: aiohttp.ClientSession
    base_url: str
    concurrency: int = 32
    answers: dict[str, Answer] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    acked: int = 0
    acked_event: asyncio.Event = field(default_factory=asyncio.Event)
    ack_threshold: int | None = None

    async def run(self, payloads: Sequence[dict[str, Any]]) -> dict[str, Answer]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for payload in payloads:
            queue.put_nowait(payload)

        async def worker() -> None:
            while not self.stop.is_set():
                try:
                    payload = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                answer = await post_message(self.session, self.base_url, payload)
                self.answers[payload["external_id"]] = answer
                if answer.acknowledged:
                    self.acked += 1
                    if self.ack_threshold is not None and self.acked >= self.ack_threshold:
                        self.acked_event.set()

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        return self.answers


# -- what was stored ---------------------------------------------------------------------------------------------
STORED_INBOUND_SQL = (
    "SELECT m.external_id AS external_id, c.ref AS ref, c.customer_id AS customer_id FROM messages m "
    "JOIN cases c ON c.id = m.case_id WHERE m.channel = 'api' AND m.direction = 'in'"
)
DUPLICATE_ROWS_SQL = (
    "SELECT channel, external_id, COUNT(*) AS n FROM messages WHERE external_id IS NOT NULL "
    "GROUP BY channel, external_id HAVING COUNT(*) > 1"
)


@dataclass
class Stored:
    """Inbound API messages as the database holds them: external id (without namespace) → case ref."""

    rows: list[tuple[str, str, int]]  # (external id as the integration sent it, case ref, customer id)
    duplicate_rows: list[tuple[str, str, int]]
    inbound_total: int

    def case_of(self) -> dict[str, str]:
        return {external_id: ref for external_id, ref, _ in self.rows}

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for external_id, _, _ in self.rows:
            out[external_id] = out.get(external_id, 0) + 1
        return out


def _strip_namespace(external_id: str) -> str:
    prefix = f"{INTEGRATION}/"
    assert external_id.startswith(prefix), f"API external id {external_id!r} is not namespaced by {INTEGRATION!r}"
    return external_id[len(prefix):]


def stored_in_sqlite(path: Path) -> Stored:
    """Open the database file read-only (the server must be stopped or idle) and read the inbound messages."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = [(_strip_namespace(e), r, c) for e, r, c in conn.execute(STORED_INBOUND_SQL)]
        dupes = [tuple(r) for r in conn.execute(DUPLICATE_ROWS_SQL)]
        total = conn.execute("SELECT COUNT(*) FROM messages WHERE direction = 'in'").fetchone()[0]
    finally:
        conn.close()
    return Stored(rows, dupes, total)  # type: ignore[arg-type]


async def stored_in_postgres(dsn: str) -> Stored:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        rows = [(_strip_namespace(r["external_id"]), r["ref"], r["customer_id"])
                for r in await conn.fetch(STORED_INBOUND_SQL)]
        dupes = [tuple(r) for r in await conn.fetch(DUPLICATE_ROWS_SQL)]
        total = await conn.fetchval("SELECT COUNT(*) FROM messages WHERE direction = 'in'")
    finally:
        await conn.close()
    return Stored(rows, dupes, total)  # type: ignore[arg-type]


async def pg_fetch(dsn: str, sql: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def summarise_errors(answers: Iterable[Answer], limit: int = 5) -> str:
    """A few examples of what went wrong, for assertion messages."""
    bad = [a for a in answers if not a.acknowledged]
    return "; ".join(f"{a.status} {a.body}" if a.status else str(a.error) for a in bad[:limit])
