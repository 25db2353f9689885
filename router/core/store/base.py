"""The store interface: atomic, durable units of work over a transaction; backends implement it."""
from __future__ import annotations

import abc
import json
from datetime import datetime
from importlib import resources
from typing import Any, Awaitable, Callable, Sequence, TypeVar

from router.core.model import (
    Case,
    CaseStatus,
    Customer,
    Direction,
    Event,
    Identity,
    Message,
    Outbound,
    OutboundStatus,
)

T = TypeVar("T")


class StoreUnavailable(Exception):
    """The store cannot accept writes right now (locked, disk full, database down): nothing was written."""


class Conflict(Exception):
    """A write lost a race with another writer; running the unit again will see the winner's result."""


def migrations(backend: str) -> list[tuple[int, str]]:
    """(version, SQL) pairs shipped for a backend, in order."""
    folder = resources.files("router.core.store").joinpath("migrations", backend)
    out = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            out.append((int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8")))
    return sorted(out)


# Columns read back into model objects. Kept here so every backend reads rows the same way.
CASE_COLUMNS = (
    "id, ref, customer_id, status, channel, account, subject, language, line, team, tier, priority, order_id, "
    "related_case_id, route, created_at, updated_at, last_inbound_at, resolved_at, merged_into"
)
MESSAGE_COLUMNS = "id, case_id, direction, channel, account, external_id, sender, text, meta, created_at"
OUTBOX_COLUMNS = (
    "id, case_id, message_id, channel, account, recipient_kind, recipient_value, kind, text, subject, status, "
    "attempts, next_attempt_at, created_at, last_error, provider_id, meta"
)
EVENT_COLUMNS = "id, case_id, type, actor, data, at"


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def case_from_row(row: Any) -> Case:
    return Case(
        id=row["id"],
        ref=row["ref"],
        customer_id=row["customer_id"],
        status=CaseStatus(row["status"]),
        channel=row["channel"],
        account=row["account"],
        subject=row["subject"],
        language=row["language"],
        line=row["line"],
        team=row["team"],
        tier=row["tier"],
        priority=row["priority"],
        order_id=row["order_id"],
        related_case_id=row["related_case_id"],
        route=_json(row["route"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        last_inbound_at=row["last_inbound_at"],
        resolved_at=row["resolved_at"],
        merged_into=row["merged_into"],
    )


def message_from_row(row: Any) -> Message:
    return Message(
        id=row["id"],
        case_id=row["case_id"],
        direction=Direction(row["direction"]),
        channel=row["channel"],
        account=row["account"],
        external_id=row["external_id"],
        sender=row["sender"],
        text=row["text"],
        meta=_json(row["meta"]),
        created_at=row["created_at"],
    )


def outbound_from_row(row: Any) -> Outbound:
    return Outbound(
        id=row["id"],
        case_id=row["case_id"],
        message_id=row["message_id"],
        channel=row["channel"],
        account=row["account"],
        recipient=Identity(kind=row["recipient_kind"], value=row["recipient_value"]),
        kind=row["kind"],
        text=row["text"],
        subject=row["subject"],
        status=OutboundStatus(row["status"]),
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        created_at=row["created_at"],
        last_error=row["last_error"],
        provider_id=row["provider_id"],
        meta=_json(row["meta"]),
    )


def event_from_row(row: Any) -> Event:
    return Event(
        id=row["id"], case_id=row["case_id"], type=row["type"], actor=row["actor"], data=_json(row["data"]), at=row["at"]
    )


class Tx(abc.ABC):
    """One transaction. Every query the core needs, written once over `$n` placeholders."""

    # -- primitives each backend provides -------------------------------------------------------------------
    @abc.abstractmethod
    async def execute(self, sql: str, *args: Any) -> None: ...

    @abc.abstractmethod
    async def fetch(self, sql: str, *args: Any) -> list[Any]: ...

    @abc.abstractmethod
    async def fetchrow(self, sql: str, *args: Any) -> Any | None: ...

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchrow(sql, *args)
        return None if row is None else row[0]

    @abc.abstractmethod
    async def next_case_number(self) -> int: ...

    @abc.abstractmethod
    async def lock_customer(self, customer_id: int) -> None:
        """Serialise writers working on one customer until this transaction ends."""

    @abc.abstractmethod
    async def claim_due_outbound(self, now: datetime, lease_until: datetime, limit: int) -> list[Outbound]:
        """Take up to `limit` due outbox rows for this node until `lease_until`; others skip them meanwhile."""

    # -- customers and identities -----------------------------------------------------------------------------
    async def customers_for_identities(self, identities: Sequence[Identity]) -> dict[Identity, int]:
        found: dict[Identity, int] = {}
        for identity in identities:
            customer_id = await self.fetchval(
                "SELECT customer_id FROM identities WHERE kind = $1 AND value = $2", identity.kind, identity.value
            )
            if customer_id is not None:
                found[identity] = customer_id
        return found

    async def insert_customer(self, role: str | None, display_name: str | None, language: str | None, at: datetime) -> int:
        return await self.fetchval(
            "INSERT INTO customers (role, display_name, language, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
            role,
            display_name,
            language,
            at,
        )

    async def add_identity(self, customer_id: int, identity: Identity, verified: bool, at: datetime) -> None:
        await self.execute(
            "INSERT INTO identities (customer_id, kind, value, verified, created_at) VALUES ($1, $2, $3, $4, $5)",
            customer_id,
            identity.kind,
            identity.value,
            verified,
            at,
        )

    async def merge_customers(self, keep: int, drop: int) -> None:
        """Everything of `drop` becomes `keep`'s; `drop` remains as a tombstone pointing at `keep`."""
        await self.execute("UPDATE identities SET customer_id = $1 WHERE customer_id = $2", keep, drop)
        await self.execute("UPDATE cases SET customer_id = $1 WHERE customer_id = $2", keep, drop)
        await self.execute("UPDATE customers SET merged_into = $1 WHERE id = $2", keep, drop)

    async def update_customer(self, customer_id: int, **fields: Any) -> None:
        await self._update("customers", customer_id, fields, {"role", "display_name", "language"})

    async def get_customer(self, customer_id: int, *, identities: bool = True) -> Customer | None:
        row = await self.fetchrow(
            "SELECT id, role, display_name, language, created_at, merged_into FROM customers WHERE id = $1",
            customer_id,
        )
        if row is None:
            return None
        return Customer(
            id=row["id"],
            role=row["role"],
            display_name=row["display_name"],
            language=row["language"],
            created_at=row["created_at"],
            identities=await self.identities_of(customer_id) if identities else [],
            merged_into=row["merged_into"],
        )

    async def identities_of(self, customer_id: int) -> list[Identity]:
        rows = await self.fetch("SELECT kind, value FROM identities WHERE customer_id = $1 ORDER BY id", customer_id)
        return [Identity(kind=r["kind"], value=r["value"]) for r in rows]

    # -- cases ----------------------------------------------------------------------------------------------
    async def case_by_id(self, case_id: int) -> Case | None:
        row = await self.fetchrow(f"SELECT {CASE_COLUMNS} FROM cases WHERE id = $1", case_id)
        return None if row is None else case_from_row(row)

    async def case_by_ref(self, ref: str) -> Case | None:
        row = await self.fetchrow(f"SELECT {CASE_COLUMNS} FROM cases WHERE ref = $1", ref)
        return None if row is None else case_from_row(row)

    async def case_for_external_ids(self, channel: str, external_ids: Sequence[str]) -> Case | None:
        """The case holding the newest of these messages (e.g. an email's In-Reply-To and References)."""
        for external_id in reversed(external_ids):
            row = await self.fetchrow(
                f"SELECT {CASE_COLUMNS} FROM cases WHERE id = "
                "(SELECT case_id FROM messages WHERE channel = $1 AND external_id = $2)",
                channel,
                external_id,
            )
            if row is not None:
                return case_from_row(row)
        return None

    async def case_for_conversation(self, customer_id: int, channel: str, conversation: str) -> Case | None:
        row = await self.fetchrow(
            f"SELECT {CASE_COLUMNS} FROM cases WHERE id = (SELECT m.case_id FROM messages m "
            "JOIN cases c ON c.id = m.case_id WHERE m.channel = $1 AND m.conversation = $2 AND c.customer_id = $3 "
            "ORDER BY m.id DESC LIMIT 1)",
            channel,
            conversation,
            customer_id,
        )
        return None if row is None else case_from_row(row)

    async def latest_case(self, customer_id: int, channel: str | None = None) -> Case | None:
        if channel is None:
            row = await self.fetchrow(
                f"SELECT {CASE_COLUMNS} FROM cases WHERE customer_id = $1 ORDER BY updated_at DESC, id DESC LIMIT 1",
                customer_id,
            )
        else:
            row = await self.fetchrow(
                f"SELECT {CASE_COLUMNS} FROM cases WHERE customer_id = $1 AND channel = $2 "
                "ORDER BY updated_at DESC, id DESC LIMIT 1",
                customer_id,
                channel,
            )
        return None if row is None else case_from_row(row)

    async def insert_case(self, case: Case) -> int:
        return await self.fetchval(
            "INSERT INTO cases (ref, customer_id, status, channel, account, subject, language, line, team, tier, "
            "priority, order_id, related_case_id, route, created_at, updated_at, last_inbound_at, resolved_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) RETURNING id",
            case.ref,
            case.customer_id,
            case.status.value,
            case.channel,
            case.account,
            case.subject,
            case.language,
            case.line,
            case.team,
            case.tier,
            case.priority,
            case.order_id,
            case.related_case_id,
            case.route,
            case.created_at,
            case.updated_at,
            case.last_inbound_at,
            case.resolved_at,
        )

    _CASE_FIELDS = frozenset(
        {"status", "subject", "language", "line", "team", "tier", "priority", "order_id", "related_case_id", "route",
         "updated_at", "last_inbound_at", "resolved_at", "merged_into", "resolved_by"}
    )

    async def update_case(self, case_id: int, **fields: Any) -> None:
        if isinstance(fields.get("status"), CaseStatus):
            fields["status"] = fields["status"].value
        await self._update("cases", case_id, fields, self._CASE_FIELDS)

    async def _update(self, table: str, row_id: int, fields: dict[str, Any], allowed: frozenset[str] | set[str]) -> None:
        unknown = set(fields) - set(allowed)
        if unknown:
            raise ValueError(f"cannot update {table}.{sorted(unknown)}")
        if not fields:
            return
        names = list(fields)
        assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(names, start=2))
        await self.execute(f"UPDATE {table} SET {assignments} WHERE id = $1", row_id, *(fields[n] for n in names))

    async def list_cases(
        self, *, status: str | None = None, customer_id: int | None = None, limit: int = 50, before_id: int | None = None,
        scope: tuple[Sequence[str], Sequence[str]] | None = None,
    ) -> list[Case]:
        """Newest first, `limit` at most, ids below `before_id`. `scope` = (lines, teams) keeps the cases on one of
        those lines or teams (a supervisor's view), inside the query, so that every page is full while more exist."""
        clauses: list[str] = []
        args: list[Any] = []
        for column, value in (("status", status), ("customer_id", customer_id)):
            if value is not None:
                args.append(value)
                clauses.append(f"{column} = ${len(args)}")
        if scope is not None:
            either = []
            for column, values in zip(("line", "team"), scope):
                if values:
                    args.extend(values)
                    marks = ", ".join(f"${n}" for n in range(len(args) - len(values) + 1, len(args) + 1))
                    either.append(f"{column} IN ({marks})")
            clauses.append(f"({' OR '.join(either)})" if either else "1 = 0")
        if before_id is not None:
            args.append(before_id)
            clauses.append(f"id < ${len(args)}")
        where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
        args.append(limit)
        rows = await self.fetch(f"SELECT {CASE_COLUMNS} FROM cases {where}ORDER BY id DESC LIMIT ${len(args)}", *args)
        return [case_from_row(r) for r in rows]

    async def count_cases_by_status(self) -> dict[str, int]:
        rows = await self.fetch("SELECT status, COUNT(*) AS n FROM cases GROUP BY status")
        return {r["status"]: r["n"] for r in rows}

    # -- messages -------------------------------------------------------------------------------------------
    async def find_message(self, channel: str, external_id: str) -> tuple[int, int] | None:
        """(message id, case id) of a message already stored under this channel and external id."""
        row = await self.fetchrow(
            "SELECT id, case_id FROM messages WHERE channel = $1 AND external_id = $2", channel, external_id
        )
        return None if row is None else (row["id"], row["case_id"])

    async def insert_message(
        self,
        *,
        case_id: int,
        direction: Direction,
        channel: str,
        account: str,
        external_id: str | None,
        conversation: str | None,
        sender: str | None,
        text: str,
        meta: dict[str, Any],
        at: datetime,
    ) -> int:
        return await self.fetchval(
            "INSERT INTO messages (case_id, direction, channel, account, external_id, conversation, sender, text, "
            "meta, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
            case_id,
            direction.value,
            channel,
            account,
            external_id,
            conversation,
            sender,
            text,
            meta,
            at,
        )

    async def insert_attachment(
        self,
        message_id: int,
        *,
        filename: str,
        content_type: str,
        size: int | None,
        url: str | None,
        inline: bool,
        content: bytes | None,
    ) -> int:
        return await self.fetchval(
            "INSERT INTO attachments (message_id, filename, content_type, size, url, inline, content) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            message_id,
            filename,
            content_type,
            size,
            url,
            inline,
            content,
        )

    async def messages_for_case(self, case_id: int) -> list[Message]:
        rows = await self.fetch(f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE case_id = $1 ORDER BY id", case_id)
        messages = [message_from_row(r) for r in rows]
        if messages:
            attachments = await self.fetch(
                "SELECT a.id, a.message_id, a.filename, a.content_type, a.size, a.url, a.inline FROM attachments a "
                "JOIN messages m ON m.id = a.message_id WHERE m.case_id = $1 ORDER BY a.id",
                case_id,
            )
            by_message = {m.id: m for m in messages}
            for a in attachments:
                by_message[a["message_id"]].attachments.append(
                    {
                        "id": a["id"],
                        "filename": a["filename"],
                        "content_type": a["content_type"],
                        "size": a["size"],
                        "url": a["url"],
                        "inline": bool(a["inline"]),
                    }
                )
        return messages

    async def attachment_contents(self, message_id: int) -> list[tuple[str, str, bytes]]:
        """(filename, content type, bytes) of a message's attachments that are stored in the database."""
        rows = await self.fetch(
            "SELECT filename, content_type, content FROM attachments WHERE message_id = $1 AND content IS NOT NULL "
            "ORDER BY id", message_id,
        )
        return [(r["filename"], r["content_type"], bytes(r["content"])) for r in rows]

    async def last_inbound(self, case_id: int) -> tuple[Message, str | None] | None:
        """The case's latest inbound message and its conversation id: where a reply goes back to."""
        row = await self.fetchrow(
            f"SELECT {MESSAGE_COLUMNS}, conversation FROM messages WHERE case_id = $1 AND direction = 'in' "
            "ORDER BY id DESC LIMIT 1",
            case_id,
        )
        return None if row is None else (message_from_row(row), row["conversation"])

    async def count_messages(self, channel: str, external_id: str) -> int:
        return await self.fetchval(
            "SELECT COUNT(*) FROM messages WHERE channel = $1 AND external_id = $2", channel, external_id
        )

    # -- events ---------------------------------------------------------------------------------------------
    async def append_event(self, case_id: int | None, type: str, actor: str, data: dict[str, Any], at: datetime) -> Event:
        event_id = await self.fetchval(
            "INSERT INTO events (case_id, type, actor, data, at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
            case_id,
            type,
            actor,
            data,
            at,
        )
        return Event(id=event_id, case_id=case_id, type=type, at=at, actor=actor, data=data)

    async def append_events(
        self, rows: Sequence[tuple[int | None, str, dict[str, Any]]], actor: str, at: datetime
    ) -> list[Event]:
        """Several events in one statement; they get increasing ids in the order given."""
        if not rows:
            return []
        values, args = [], []
        for case_id, type, data in rows:
            n = len(args)
            values.append(f"(${n + 1}, ${n + 2}, ${n + 3}, ${n + 4}, ${n + 5})")
            args.extend((case_id, type, actor, data, at))
        returned = await self.fetch(
            f"INSERT INTO events (case_id, type, actor, data, at) VALUES {', '.join(values)} RETURNING id", *args
        )
        # RETURNING promises no order; ids are assigned in VALUES order, so sorting restores it.
        ids = sorted(r["id"] for r in returned)
        return [Event(id=i, case_id=c, type=t, at=at, actor=actor, data=d) for i, (c, t, d) in zip(ids, rows)]

    async def events_for_case(self, case_id: int) -> list[Event]:
        rows = await self.fetch(f"SELECT {EVENT_COLUMNS} FROM events WHERE case_id = $1 ORDER BY id", case_id)
        return [event_from_row(r) for r in rows]

    async def events_after(self, after_id: int, limit: int = 500) -> list[Event]:
        rows = await self.fetch(f"SELECT {EVENT_COLUMNS} FROM events WHERE id > $1 ORDER BY id LIMIT $2", after_id, limit)
        return [event_from_row(r) for r in rows]

    # -- outbox ---------------------------------------------------------------------------------------------
    async def enqueue_outbound(
        self,
        *,
        case_id: int,
        message_id: int | None,
        channel: str,
        account: str,
        recipient: Identity,
        kind: str,
        text: str,
        subject: str | None,
        meta: dict[str, Any],
        at: datetime,
    ) -> int:
        return await self.fetchval(
            "INSERT INTO outbox (case_id, message_id, channel, account, recipient_kind, recipient_value, kind, text, "
            "subject, status, attempts, next_attempt_at, meta, created_at, updated_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, $11, $12, $11, $11) RETURNING id",
            case_id,
            message_id,
            channel,
            account,
            recipient.kind,
            recipient.value,
            kind,
            text,
            subject,
            OutboundStatus.PENDING.value,
            at,
            meta,
        )

    async def get_outbound(self, outbound_id: int) -> Outbound | None:
        row = await self.fetchrow(f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE id = $1", outbound_id)
        return None if row is None else outbound_from_row(row)

    async def outbound_for_case(self, case_id: int) -> list[Outbound]:
        rows = await self.fetch(f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE case_id = $1 ORDER BY id", case_id)
        return [outbound_from_row(r) for r in rows]

    async def finish_outbound(
        self,
        outbound_id: int,
        *,
        status: OutboundStatus,
        attempts: int,
        next_attempt_at: datetime,
        last_error: str | None,
        provider_id: str | None,
        at: datetime,
    ) -> None:
        await self.execute(
            "UPDATE outbox SET status = $2, attempts = $3, next_attempt_at = $4, last_error = $5, provider_id = $6, "
            "claimed_until = NULL, updated_at = $7 WHERE id = $1",
            outbound_id,
            status.value,
            attempts,
            next_attempt_at,
            last_error,
            provider_id,
            at,
        )

    async def finish_claimed_outbound(
        self,
        outbound_id: int,
        *,
        claimed_until: datetime,
        status: OutboundStatus,
        next_attempt_at: datetime,
        last_error: str | None,
        provider_id: str | None,
        at: datetime,
    ) -> bool:
        """Record an attempt made under the claim that set `claimed_until`, if that claim still holds the row
        (nobody re-claimed it after the lease ran out, no delivery report decided meanwhile). False otherwise,
        and nothing is changed: the attempt is only counted (`count_outbound_attempt`). Attempts are counted in
        the row (`attempts + 1`), so a superseded attempt counted meanwhile is not lost."""
        found = await self.fetchval(
            "UPDATE outbox SET status = $3, attempts = attempts + 1, next_attempt_at = $4, last_error = $5, "
            "provider_id = $6, claimed_until = NULL, updated_at = $7 "
            "WHERE id = $1 AND status = 'sending' AND claimed_until = $2 RETURNING id",
            outbound_id, claimed_until, status.value, next_attempt_at, last_error, provider_id, at,
        )
        return found is not None

    async def count_outbound_attempt(self, outbound_id: int, provider_id: str | None, at: datetime) -> None:
        """An attempt whose claim no longer held: counted, its provider id kept if none is known; no status."""
        await self.execute(
            "UPDATE outbox SET attempts = attempts + 1, provider_id = COALESCE(provider_id, $2), updated_at = $3 "
            "WHERE id = $1", outbound_id, provider_id, at,
        )

    async def next_outbound_due(self) -> datetime | None:
        value = await self.fetchval("SELECT MIN(next_attempt_at) FROM outbox WHERE status = 'pending'")
        return datetime.fromisoformat(value) if isinstance(value, str) else value


    async def count_outbound_since(self, channel: str, recipient: str, kinds: Sequence[str], since: datetime,
                                   before_id: int) -> int:
        """How many messages of these kinds went to `recipient` since `since`, by when they went (not when they
        were queued: mail held up by an outage does not all go at once when it ends): sent ones, ones that left
        and failed later (a bounce: they have a provider id), and ones older than `before_id` still being sent
        (so that a batch delivered at once counts its own earlier members)."""
        marks = ", ".join(f"${i}" for i in range(5, 5 + len(kinds)))
        return await self.fetchval(
            f"SELECT COUNT(*) FROM outbox WHERE channel = $1 AND recipient_value = $2 AND kind IN ({marks}) AND ("
            "(updated_at >= $3 AND (status IN ('sent', 'delivered') OR (status = 'failed' AND provider_id IS NOT NULL)))"
            " OR (status = 'sending' AND id < $4))",
            channel, recipient, since, before_id, *kinds,
        )

    # -- raw payloads, quarantine and channel state (channel plugins) ---------------------------------------
    async def insert_raw_payload(self, channel: str, content: bytes, at: datetime) -> int:
        return await self.fetchval(
            "INSERT INTO raw_payloads (channel, content, created_at) VALUES ($1, $2, $3) RETURNING id", channel, content, at
        )

    async def raw_payload(self, payload_id: int) -> bytes | None:
        value = await self.fetchval("SELECT content FROM raw_payloads WHERE id = $1", payload_id)
        return None if value is None else bytes(value)

    async def known_external_ids(self, channel: str, external_ids: Sequence[str]) -> dict[str, tuple[int, str]]:
        """Which of these external ids are stored already: {external id: (case id, receiving account)}."""
        found: dict[str, tuple[int, str]] = {}
        ids = list(dict.fromkeys(external_ids))
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ", ".join(f"${i}" for i in range(2, 2 + len(chunk)))
            rows = await self.fetch(
                f"SELECT external_id, case_id, account FROM messages WHERE channel = $1 AND external_id IN ({marks})",
                channel, *chunk,
            )
            found.update({r["external_id"]: (r["case_id"], r["account"]) for r in rows})
        return found

    async def quarantine_message(
        self, *, channel: str, account: str, source_key: str, reason: str, raw: bytes, meta: dict[str, Any], at: datetime
    ) -> tuple[int, bool]:
        """Keep a message that could not be taken, with why; (id, whether it is new). The same source twice is
        one entry: a mailbox fetched again after a crash does not quarantine a message twice."""
        new_id = await self.fetchval(
            "INSERT INTO quarantine (channel, account, source_key, reason, raw, meta, status, attempts, created_at, "
            "updated_at) VALUES ($1, $2, $3, $4, $5, $6, 'held', 1, $7, $7) "
            "ON CONFLICT (channel, source_key) DO NOTHING RETURNING id",
            channel, account, source_key, reason, raw, meta, at,
        )
        if new_id is not None:
            return new_id, True
        return await self.fetchval(
            "SELECT id FROM quarantine WHERE channel = $1 AND source_key = $2", channel, source_key
        ), False

    _QUARANTINE_COLUMNS = "id, channel, account, source_key, reason, meta, status, attempts, case_id, created_at, updated_at"

    async def list_quarantine(self, status: str | None = "held", limit: int = 100) -> list[dict[str, Any]]:
        where = "WHERE status = $2 " if status else ""
        args: list[Any] = [limit] + ([status] if status else [])
        rows = await self.fetch(f"SELECT {self._QUARANTINE_COLUMNS} FROM quarantine {where}ORDER BY id LIMIT $1", *args)
        return [{**{k: r[k] for k in r.keys()}, "meta": _json(r["meta"])} for r in rows]

    async def get_quarantined(self, item_id: int) -> dict[str, Any] | None:
        row = await self.fetchrow(f"SELECT {self._QUARANTINE_COLUMNS}, raw FROM quarantine WHERE id = $1", item_id)
        if row is None:
            return None
        return {**{k: row[k] for k in row.keys()}, "meta": _json(row["meta"]), "raw": bytes(row["raw"])}

    async def update_quarantined(self, item_id: int, *, status: str, reason: str, attempts: int, case_id: int | None,
                                 at: datetime) -> None:
        await self.execute(
            "UPDATE quarantine SET status = $2, reason = $3, attempts = $4, case_id = $5, updated_at = $6 WHERE id = $1",
            item_id, status, reason, attempts, case_id, at,
        )

    async def channel_state(self, channel: str, key: str) -> dict[str, Any] | None:
        """A channel plugin's own durable state under `key` (e.g. a mailbox's UIDVALIDITY and last UID)."""
        return _json(await self.fetchval("SELECT state FROM channel_state WHERE channel = $1 AND key = $2", channel, key))

    async def put_channel_state(self, channel: str, key: str, state: dict[str, Any], at: datetime) -> None:
        await self.execute(
            "INSERT INTO channel_state (channel, key, state, updated_at) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (channel, key) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
            channel, key, state, at,
        )

    async def mark_identity_failing(self, identity: Identity, reason: str | None, at: datetime) -> bool:
        """Record that messages to `identity` fail (a bounce), or with `reason` None that they work again.
        False when no customer has this identity."""
        done = await self.fetchval(
            "UPDATE identities SET failing = $3, failing_at = $4 WHERE kind = $1 AND value = $2 RETURNING id",
            identity.kind, identity.value, reason, at if reason else None,
        )
        return done is not None

    async def identity_failing(self, identity: Identity) -> str | None:
        """Why messages to `identity` fail, or None when nothing is known against it."""
        return await self.fetchval(
            "SELECT failing FROM identities WHERE kind = $1 AND value = $2", identity.kind, identity.value
        )

    # -- agents, offers and assignment state (router.core.assigner) -----------------------------------------
    async def agents(self) -> list[dict[str, Any]]:
        rows = await self.fetch(
            "SELECT id, definition, source, presence, presence_at, last_assigned_at, updated_at FROM agents ORDER BY id"
        )
        return [{**{key: row[key] for key in row.keys()}, "definition": _json(row["definition"])} for row in rows]

    async def upsert_agent(self, agent_id: str, definition: dict[str, Any], source: str, at: datetime) -> None:
        """Create an agent (offline) or replace its definition; presence and history are kept."""
        await self.execute(
            "INSERT INTO agents (id, definition, source, presence, presence_at, updated_at) "
            "VALUES ($1, $2, $3, 'offline', $4, $4) "
            "ON CONFLICT (id) DO UPDATE SET definition = excluded.definition, source = excluded.source, "
            "updated_at = excluded.updated_at",
            agent_id, definition, source, at,
        )

    async def delete_agent(self, agent_id: str) -> None:
        await self.execute("DELETE FROM agents WHERE id = $1", agent_id)

    async def set_agent_presence(self, agent_id: str, presence: str, at: datetime) -> None:
        await self.execute("UPDATE agents SET presence = $2, presence_at = $3 WHERE id = $1", agent_id, presence, at)

    async def set_agent_assigned(self, agent_id: str, at: datetime) -> None:
        await self.execute("UPDATE agents SET last_assigned_at = $2 WHERE id = $1", agent_id, at)

    async def insert_offer(self, case_id: int, agent_id: str, channel: str, at: datetime, expires_at: datetime) -> int:
        return await self.fetchval(
            "INSERT INTO offers (case_id, agent_id, channel, status, created_at, expires_at) "
            "VALUES ($1, $2, $3, 'pending', $4, $5) RETURNING id",
            case_id, agent_id, channel, at, expires_at,
        )

    async def finish_offer(self, offer_id: int, status: str, at: datetime, reason: str | None) -> bool:
        """Close a pending offer; False when it was no longer pending (someone else decided first)."""
        done = await self.fetchval(
            "UPDATE offers SET status = $2, decided_at = $3, reason = $4 WHERE id = $1 AND status = 'pending' "
            "RETURNING id",
            offer_id, status, at, reason,
        )
        return done is not None

    async def pending_offers(self) -> list[Any]:
        return await self.fetch(
            "SELECT id, case_id, agent_id, channel, status, created_at, expires_at FROM offers "
            "WHERE status = 'pending' ORDER BY id"
        )

    async def offers_for_case(self, case_id: int) -> list[Any]:
        return await self.fetch(
            "SELECT id, case_id, agent_id, channel, status, created_at, expires_at, decided_at, reason FROM offers "
            "WHERE case_id = $1 ORDER BY id",
            case_id,
        )

    async def put_case_work(self, case_id: int, agent_id: str | None, queued_at: datetime, state: dict[str, Any],
                            at: datetime) -> None:
        await self.execute(
            "INSERT INTO case_work (case_id, agent_id, queued_at, state, updated_at) VALUES ($1, $2, $3, $4, $5) "
            "ON CONFLICT (case_id) DO UPDATE SET agent_id = excluded.agent_id, queued_at = excluded.queued_at, "
            "state = excluded.state, updated_at = excluded.updated_at",
            case_id, agent_id, queued_at, state, at,
        )

    async def case_work(self, case_id: int) -> dict[str, Any] | None:
        row = await self.fetchrow(
            "SELECT case_id, agent_id, queued_at, state, updated_at FROM case_work WHERE case_id = $1", case_id
        )
        return None if row is None else {**{key: row[key] for key in row.keys()}, "state": _json(row["state"])}

    async def open_cases_for_assignment(self) -> list[tuple[Case, Any | None]]:
        """Every open case that has been routed, with its assignment state (None when it has none yet)."""
        columns = ", ".join(f"c.{c.strip()}" for c in CASE_COLUMNS.split(","))
        rows = await self.fetch(
            f"SELECT {columns}, w.agent_id AS w_agent_id, w.queued_at AS w_queued_at, w.state AS w_state "
            "FROM cases c LEFT JOIN case_work w ON w.case_id = c.id "
            "WHERE c.status IN ('queued', 'offered', 'assigned', 'waiting_customer') ORDER BY c.id"
        )
        out = []
        for row in rows:
            work = None
            if row["w_queued_at"] is not None:
                work = {"agent_id": row["w_agent_id"], "queued_at": row["w_queued_at"], "state": _json(row["w_state"])}
            out.append((case_from_row(row), work))
        return out

    # -- people: accounts and their tokens (router.core.accounts) --------------------------------------------
    _ACCOUNT_COLUMNS = "id, name, role, agent_id, lines, teams, password_hash, source, disabled_at, created_at, updated_at"

    def _account(self, row: Any) -> dict[str, Any]:
        return {**{k: row[k] for k in row.keys()}, "lines": _json(row["lines"]), "teams": _json(row["teams"])}

    async def accounts(self) -> list[dict[str, Any]]:
        rows = await self.fetch(f"SELECT {self._ACCOUNT_COLUMNS} FROM accounts ORDER BY id")
        return [self._account(r) for r in rows]

    async def account(self, account_id: str) -> dict[str, Any] | None:
        row = await self.fetchrow(f"SELECT {self._ACCOUNT_COLUMNS} FROM accounts WHERE id = $1", account_id)
        return None if row is None else self._account(row)

    async def put_account(self, account_id: str, *, name: str, role: str, agent_id: str | None, lines: list[str],
                          teams: list[str], password_hash: str | None, source: str, at: datetime) -> None:
        """Create or replace an account; `password_hash` None keeps the stored one."""
        await self.execute(
            "INSERT INTO accounts (id, name, role, agent_id, lines, teams, password_hash, source, created_at, "
            "updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) "
            "ON CONFLICT (id) DO UPDATE SET name = excluded.name, role = excluded.role, agent_id = excluded.agent_id, "
            "lines = excluded.lines, teams = excluded.teams, source = excluded.source, updated_at = excluded.updated_at, "
            "password_hash = COALESCE(excluded.password_hash, accounts.password_hash)",
            account_id, name, role, agent_id, lines, teams, password_hash, source, at,
        )

    async def set_account_disabled(self, account_id: str, at: datetime | None, *, source: str | None = None) -> bool:
        """Disable (at a time) or enable (None) an account; its tokens stop working while it is disabled. With
        `source`, the account is also marked as changed there (``cli``: configuration no longer overrides it)."""
        return await self.fetchval(
            "UPDATE accounts SET disabled_at = $2, source = COALESCE($3, source) WHERE id = $1 RETURNING id",
            account_id, at, source) is not None

    async def insert_token(self, account_id: str, kind: str, name: str | None, token_hash: str, at: datetime,
                           expires_at: datetime | None) -> int:
        return await self.fetchval(
            "INSERT INTO account_tokens (account_id, kind, name, token_hash, created_at, expires_at) "
            "VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            account_id, kind, name, token_hash, at, expires_at,
        )

    async def token_owner(self, token_hash: str) -> dict[str, Any] | None:
        """The account a token belongs to, with the token's id, kind and expiry; None if unknown or revoked."""
        row = await self.fetchrow(
            "SELECT t.id AS token_id, t.kind AS token_kind, t.expires_at AS token_expires_at, "
            + ", ".join(f"a.{c.strip()}" for c in self._ACCOUNT_COLUMNS.split(","))
            + " FROM account_tokens t JOIN accounts a ON a.id = t.account_id "
            "WHERE t.token_hash = $1 AND t.revoked_at IS NULL",
            token_hash,
        )
        return None if row is None else self._account(row)

    async def revoke_token(self, *, token_hash: str | None = None, token_id: int | None = None,
                           account_id: str | None = None, at: datetime) -> int:
        """Revoke one token (by hash or id) or every token of an account; how many were revoked."""
        if token_hash is not None:
            clause, arg = "token_hash = $1", token_hash
        elif token_id is not None:
            clause, arg = "id = $1", token_id
        else:
            clause, arg = "account_id = $1", account_id
        rows = await self.fetch(
            f"UPDATE account_tokens SET revoked_at = $2 WHERE {clause} AND revoked_at IS NULL RETURNING id", arg, at)
        return len(rows)

    async def tokens_of(self, account_id: str) -> list[dict[str, Any]]:
        rows = await self.fetch(
            "SELECT id, kind, name, created_at, expires_at, last_used_at, revoked_at FROM account_tokens "
            "WHERE account_id = $1 ORDER BY id", account_id)
        return [{k: r[k] for k in r.keys()} for r in rows]

    # -- the agent workspace: links, merges, notes, surveys, reports ----------------------------------------
    async def link_cases(self, case_id: int, other_id: int, relation: str, by: str, at: datetime) -> bool:
        """Link two cases both ways; False when they were linked already."""
        added = await self.fetchval(
            "INSERT INTO case_links (case_id, other_id, relation, created_by, created_at) VALUES ($1, $2, $3, $4, $5) "
            "ON CONFLICT (case_id, other_id) DO NOTHING RETURNING case_id", case_id, other_id, relation, by, at)
        await self.execute(
            "INSERT INTO case_links (case_id, other_id, relation, created_by, created_at) VALUES ($1, $2, $3, $4, $5) "
            "ON CONFLICT (case_id, other_id) DO NOTHING", other_id, case_id, relation, by, at)
        return added is not None

    async def linked_cases(self, case_id: int) -> list[tuple[str, Case]]:
        """(relation, case) for every case linked to this one."""
        columns = ", ".join(f"c.{c.strip()}" for c in CASE_COLUMNS.split(","))
        rows = await self.fetch(
            f"SELECT l.relation AS relation, {columns} FROM case_links l JOIN cases c ON c.id = l.other_id "
            "WHERE l.case_id = $1 ORDER BY c.id", case_id)
        return [(r["relation"], case_from_row(r)) for r in rows]

    async def move_messages(self, from_case: int, to_case: int) -> int:
        """Move every message (and so its attachments) of one case to another: a merge. How many moved."""
        rows = await self.fetch("UPDATE messages SET case_id = $2 WHERE case_id = $1 RETURNING id", from_case, to_case)
        await self.execute("UPDATE outbox SET case_id = $2 WHERE case_id = $1", from_case, to_case)
        return len(rows)

    async def last_inbound_from(self, customer_id: int, sender: str | None = None) -> tuple[Message, str | None] | None:
        """The customer's latest message (any case), or latest from one of their identities: where a reply goes."""
        columns = ", ".join("m." + c.strip() for c in MESSAGE_COLUMNS.split(","))
        by_sender = "AND m.sender = $2 " if sender is not None else ""
        row = await self.fetchrow(
            f"SELECT {columns}, m.conversation FROM messages m JOIN cases c ON c.id = m.case_id "
            f"WHERE c.customer_id = $1 {by_sender}AND m.direction = 'in' ORDER BY m.id DESC LIMIT 1",
            customer_id, *([sender] if sender is not None else []))
        return None if row is None else (message_from_row(row), row["conversation"])

    async def mark_first_response(self, case_id: int, agent_id: str, at: datetime) -> None:
        await self.execute(
            "UPDATE cases SET first_response_at = $2, first_response_by = $3 "
            "WHERE id = $1 AND first_response_at IS NULL", case_id, at, agent_id)

    async def insert_survey(self, case_id: int, outbound_id: int | None, channel: str, language: str | None,
                            at: datetime) -> int:
        return await self.fetchval(
            "INSERT INTO surveys (case_id, outbound_id, channel, language, sent_at) VALUES ($1, $2, $3, $4, $5) "
            "RETURNING id", case_id, outbound_id, channel, language, at)

    _SURVEY_COLUMNS = "id, case_id, outbound_id, channel, language, sent_at, score, comment, answered_at, followup_case_id"

    async def latest_survey(self, case_id: int) -> dict[str, Any] | None:
        row = await self.fetchrow(
            f"SELECT {self._SURVEY_COLUMNS} FROM surveys WHERE case_id = $1 ORDER BY id DESC LIMIT 1", case_id)
        return None if row is None else {k: row[k] for k in row.keys()}

    async def answer_survey(self, survey_id: int, score: int, comment: str | None, at: datetime,
                            followup_case_id: int | None) -> bool:
        """Record an answer once; False when the survey was answered already."""
        return await self.fetchval(
            "UPDATE surveys SET score = $2, comment = $3, answered_at = $4, followup_case_id = $5 "
            "WHERE id = $1 AND answered_at IS NULL RETURNING id",
            survey_id, score, comment, at, followup_case_id) is not None

    async def retry_outbound(self, outbound_id: int, at: datetime) -> Outbound | None:
        """Put a failed outbound message back in the queue, due now, with a fresh count of attempts."""
        row = await self.fetchrow(
            f"UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = $2, claimed_until = NULL, "
            f"updated_at = $2 WHERE id = $1 AND status = 'failed' RETURNING {OUTBOX_COLUMNS}", outbound_id, at)
        return None if row is None else outbound_from_row(row)

    async def report_rows(self, since: datetime, until: datetime) -> list[dict[str, Any]]:
        """One row per case created in [since, until): what the service reports are computed from."""
        rows = await self.fetch(
            "SELECT c.id, c.ref, c.line, c.team, c.channel, c.status, c.created_at, c.first_response_at, "
            "c.first_response_by, c.resolved_at, c.resolved_by, w.agent_id AS holder, "
            "(SELECT s.score FROM surveys s WHERE s.case_id = c.id AND s.score IS NOT NULL "
            " ORDER BY s.id DESC LIMIT 1) AS csat "
            "FROM cases c LEFT JOIN case_work w ON w.case_id = c.id "
            "WHERE c.created_at >= $1 AND c.created_at < $2 AND c.merged_into IS NULL ORDER BY c.id",
            since, until)
        return [{k: r[k] for k in r.keys()} for r in rows]

    async def cases_of_agent(self, agent_id: str, limit: int = 50) -> list[Case]:
        """Cases an agent holds or last held (open ones first, then the latest), for 'my cases' views."""
        columns = ", ".join(f"c.{c.strip()}" for c in CASE_COLUMNS.split(","))
        rows = await self.fetch(
            f"SELECT {columns} FROM cases c JOIN case_work w ON w.case_id = c.id WHERE w.agent_id = $1 "
            "ORDER BY c.updated_at DESC LIMIT $2", agent_id, limit)
        return [case_from_row(r) for r in rows]


Unit = Callable[[Tx], Awaitable[T]]


class Store(abc.ABC):
    """Durable storage. `write` runs a unit atomically and returns only once it is durable."""

    backend: str = "?"

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and bring the schema up to date."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def write(self, unit: Unit[T]) -> T:
        """Run `unit` in one transaction; when this returns, its writes survive a crash or power loss.

        Raises :class:`StoreUnavailable` when nothing could be written, or whatever `unit` raised (after rolling
        back only its own writes).
        """

    @abc.abstractmethod
    async def read(self, unit: Unit[T]) -> T:
        """Run a read-only `unit` against a consistent snapshot."""

    async def schema_version(self) -> int:
        return await self.read(lambda tx: tx.fetchval("SELECT MAX(version) FROM schema_migrations"))
