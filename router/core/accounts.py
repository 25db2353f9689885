"""People's accounts: agents, supervisors and admins, their passwords and their tokens.

Passwords are hashed with argon2 (argon2-cffi). Tokens — API tokens people create for scripts, and the session
tokens a console log-in gets — are random, shown once, and stored as their SHA-256: a copy of the database
lets nobody sign in. Integration tokens (config `integrations`) are separate: they belong to systems, not
people, and are checked in :meth:`router.app.Switchboard.integration_for_token`.

Accounts listed in config (`accounts`) are written to the store at start-up; accounts made with the CLI live in
the store only. An account changed through the CLI keeps the CLI's version (source ``cli``) over config's.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import secrets
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

if TYPE_CHECKING:  # pragma: no cover
    from router.app import Switchboard
    from router.core.store import Store

ROLES = ("agent", "supervisor", "admin")
# What each role may do; integrations carry their scopes in config instead.
ROLE_SCOPES = {
    "agent": frozenset({"agent"}),
    "supervisor": frozenset({"read", "agent", "supervise"}),
    "admin": frozenset({"read", "agent", "supervise", "admin"}),
}
TOKEN_PREFIX = {"api": "sbp_", "session": "sbs_"}
CACHE_SECONDS = 30.0  # how long a node trusts a token it checked (a revocation elsewhere takes this long)

_hasher = PasswordHasher()
# A hash computed once, verified against when the account does not exist, so a wrong name costs the same time
# as a wrong password and does not tell which accounts exist.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


class AccountError(Exception):
    def __init__(self, status: int, code: str, detail: str):
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a person (account) or a system (integration)."""

    kind: str  # "account" | "integration"
    id: str
    name: str
    role: str  # agent | supervisor | admin | integration
    scopes: frozenset[str]
    agent_id: str | None = None
    lines: tuple[str, ...] = ()
    teams: tuple[str, ...] = ()
    token_kind: str | None = None  # "api" | "session" for accounts

    @property
    def actor(self) -> str:
        """How the event log names this caller."""
        if self.kind == "integration":
            return f"integration:{self.id}"
        return self.agent_id or self.id

    @property
    def is_person(self) -> bool:
        return self.kind == "account"

    def covers(self, line: str | None, team: str | None) -> bool:
        """Whether a supervisor's scope includes a case on this line and team (no lines and no teams: all)."""
        if self.case_scope is None:
            return True
        return (line is not None and line in self.lines) or (team is not None and team in self.teams)

    @property
    def case_scope(self) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        """(lines, teams) of the cases this caller may see, as the store's queries take it; None for all cases."""
        if self.kind == "integration" or self.role == "admin" or (not self.lines and not self.teams):
            return None
        return self.lines, self.teams

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "role": self.role, "agent_id": self.agent_id,
                "lines": list(self.lines), "teams": list(self.teams)}


def hash_password(password: str) -> str:
    if len(password) < 8:
        raise AccountError(400, "weak_password", "a password needs at least 8 characters")
    return _hasher.hash(password)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def principal_of(row: dict[str, Any], token_kind: str | None = None) -> Principal:
    return Principal(kind="account", id=row["id"], name=row["name"], role=row["role"], scopes=ROLE_SCOPES[row["role"]],
                     agent_id=row["agent_id"], lines=tuple(row["lines"]), teams=tuple(row["teams"]),
                     token_kind=token_kind)


class Accounts:
    """Sign-in and token checks for one running Switchboard (``switchboard.accounts``)."""

    def __init__(self, switchboard: "Switchboard"):
        self.sb = switchboard
        self._cache: dict[str, tuple[float, Principal, datetime | None]] = {}

    async def seed(self) -> None:
        """Write config's accounts to the store (passwords hashed; unchanged ones are not hashed again)."""
        now = self.sb.clock.now()
        stored = {row["id"]: row for row in await self.sb.store.read(lambda tx: tx.accounts())}
        # Accounts changed with the CLI since keep the store's copy.
        wanted = [a for a in self.sb.config.accounts if stored.get(a.id) is None or stored[a.id]["source"] == "config"]

        async def password_hash(account) -> str | None:
            if account.password is None:
                return account.password_hash
            password, row = account.password.get(), stored.get(account.id)
            if row is not None and await asyncio.to_thread(_verifies, row["password_hash"], password):
                return None  # unchanged: keep the stored hash
            return await asyncio.to_thread(hash_password, password)

        hashes = await asyncio.gather(*(password_hash(a) for a in wanted))
        configured = {a.id for a in self.sb.config.accounts}
        # Taken out of the configuration: signed out and disabled (kept, so the log's names stay meaningful).
        removed = [row["id"] for row in stored.values() if row["source"] == "config" and row["id"] not in configured
                   and row["disabled_at"] is None]

        async def unit(tx):
            for account, hashed in zip(wanted, hashes):
                agent = account.agent or (account.id if account.role == "agent" else None)
                previous = stored.get(account.id)
                if previous is not None and hashed is not None and previous["password_hash"]:
                    await tx.revoke_token(account_id=account.id, at=now)  # a new password ends old sessions
                await tx.put_account(account.id, name=account.name, role=account.role, agent_id=agent,
                                     lines=account.lines, teams=account.teams, password_hash=hashed, source="config",
                                     at=now)
                if previous is not None and previous["disabled_at"] is not None and previous["source"] == "config":
                    await tx.set_account_disabled(account.id, None)  # back in the configuration
            for account_id in removed:
                await tx.revoke_token(account_id=account_id, at=now)
                await tx.set_account_disabled(account_id, now)

        if wanted or removed:
            await self.sb.store.write(unit)

    async def login(self, account_id: str, password: str) -> tuple[str, Principal]:
        """Check a password; a new session token (shown once) and who it is for. 401 for any mismatch."""
        row = await self.sb.store.read(lambda tx: tx.account(account_id))
        stored_hash = row["password_hash"] if row is not None and row["password_hash"] else _DUMMY_HASH
        # argon2 takes a tenth of a second on purpose: off the event loop, so streams and offers do not wait.
        if not await asyncio.to_thread(_verifies, stored_hash, password) or row is None \
                or row["disabled_at"] is not None:
            raise AccountError(401, "unauthorized", "wrong account or password")
        if _hasher.check_needs_rehash(stored_hash):  # stronger parameters since: re-hash while we know it
            rehashed = await asyncio.to_thread(_hasher.hash, password)
            await self.sb.store.write(lambda tx: tx.put_account(
                row["id"], name=row["name"], role=row["role"], agent_id=row["agent_id"], lines=row["lines"],
                teams=row["teams"], password_hash=rehashed, source=row["source"], at=self.sb.clock.now()))
        token = await self.issue(account_id, "session", None)
        return token, principal_of(row, "session")

    async def issue(self, account_id: str, kind: str, name: str | None) -> str:
        """A new token for an account; only its digest is kept."""
        token = TOKEN_PREFIX[kind] + secrets.token_urlsafe(32)
        now = self.sb.clock.now()
        expires = now + self.sb.config.console.session_ttl if kind == "session" else None
        await self.sb.store.write(lambda tx: tx.insert_token(account_id, kind, name, token_digest(token), now, expires))
        return token

    async def authenticate(self, token: str) -> Principal | None:
        """The person a token belongs to, or None (unknown, revoked, expired, or the account disabled)."""
        digest = token_digest(token)
        cached = self._cache.get(digest)
        now = self.sb.clock.now()
        if cached is not None and time.monotonic() < cached[0]:
            expires = cached[2]
            return cached[1] if expires is None or now < expires else None
        row = await self.sb.store.read(lambda tx: tx.token_owner(digest))
        if row is None or row["disabled_at"] is not None:
            self._cache.pop(digest, None)
            return None
        principal = principal_of(row, row["token_kind"])
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (time.monotonic() + CACHE_SECONDS, principal, row["token_expires_at"])
        expires = row["token_expires_at"]
        return principal if expires is None or now < expires else None

    async def revoke(self, token: str) -> None:
        digest = token_digest(token)
        self._cache.pop(digest, None)
        await self.sb.store.write(lambda tx: tx.revoke_token(token_hash=digest, at=self.sb.clock.now()))


def _verifies(stored_hash: str | None, password: str) -> bool:
    if not stored_hash:
        return False
    try:
        return _hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


async def put_account(store: "Store", account_id: str, *, name: str, role: str, agent_id: str | None,
                      lines: list[str], teams: list[str], password: str | None, at: datetime,
                      source: str = "cli") -> None:
    """Create or change an account outside a running server (the CLI)."""
    if role not in ROLES:
        raise AccountError(400, "bad_request", f"role must be one of {list(ROLES)}, not {role!r}")
    password_hash = hash_password(password) if password is not None else None
    await store.write(lambda tx: tx.put_account(account_id, name=name, role=role, agent_id=agent_id, lines=lines,
                                                teams=teams, password_hash=password_hash, source=source, at=at))
