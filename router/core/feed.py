"""The live feed: every committed event, fanned out to the people (and integrations) allowed to see it.

The event log is the source of truth; the feed only carries it to open streams. Each event is encoded once as
a Server-Sent Events frame (``id`` is the event id) and put on the queue of every subscriber in its audience:

- an agent sees offers made to them, and everything on the cases they hold;
- a supervisor sees every case event on their lines and teams, and agents' presence;
- an admin, or an integration with the ``read`` scope, sees everything.

A stream that reconnects says the last id it saw (``Last-Event-ID``); :meth:`Feed.backlog` replays what it
missed from the store with the same audience rules, so nothing is lost across reconnects. A subscriber that
falls too far behind (its queue is full) gets a ``reset`` and is dropped: it reconnects and catches up from
the store, and one slow browser never holds up the others.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
from typing import TYPE_CHECKING, Any

import orjson

from router.core.accounts import Principal
from router.core.model import Event

if TYPE_CHECKING:  # pragma: no cover
    from router.app import Switchboard

QUEUE_SIZE = 2000
KNOWN_CASES = 50_000
# Events that concern people other than whoever the event names; customer.* events are for full readers only.
AGENT_EVENTS = ("agent.presence", "agent.changed", "agent.removed")


@dataclasses.dataclass(slots=True)
class CaseInfo:
    ref: str
    subject: str | None
    status: str
    channel: str
    line: str | None
    team: str | None
    tier: str | None
    priority: int
    holder: str | None

    def as_json(self) -> dict[str, Any]:
        return {"ref": self.ref, "subject": self.subject, "status": self.status, "channel": self.channel,
                "line": self.line, "team": self.team, "tier": self.tier, "priority": self.priority}


CLOSE = b""  # queued to end a stream without a reset (server shutting down)


class Subscriber:
    __slots__ = ("principal", "queue", "dropped")

    def __init__(self, principal: Principal):
        self.principal = principal
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_SIZE)
        self.dropped = False

    def push(self, frame: bytes) -> None:
        if self.dropped:
            return
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            # The stream ends with a reset; the client resumes after the last frame it *received*, so the
            # frames still queued are dropped (the store replays them), never some of them.
            self._end(None)

    def closing(self) -> None:
        self._end(CLOSE)

    def _end(self, sentinel: bytes | None) -> None:
        self.dropped = True
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(sentinel)


def frame(event: Event, case: CaseInfo | None) -> bytes:
    body = orjson.dumps({"id": event.id, "type": event.type, "case_id": event.case_id,
                         "case": case.as_json() if case else None, "actor": event.actor, "data": event.data,
                         "at": event.at.isoformat()})
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.id, event.type.encode(), body)


def reset_frame(reason: str) -> bytes:
    return b"event: reset\ndata: %s\n\n" % orjson.dumps({"reason": reason})


@functools.cache
def _assigner_key():
    from router.core.assigner import ASSIGNER  # the assigner imports the web-facing model; the feed is below it

    return ASSIGNER


# Events after which a case may be on another line or team, or with nobody: its last seen state is stale.
RELOCATING = frozenset({"case.created", "case.reopened", "case.routed", "case.transferred", "case.escalated",
                        "case.merged", "case.requeued"})


class Feed:
    def __init__(self, switchboard: "Switchboard"):
        self.sb = switchboard
        self.by_agent: dict[str, set[Subscriber]] = collections.defaultdict(set)
        self.broad: set[Subscriber] = set()  # supervisors, admins, integrations
        self._cases: collections.OrderedDict[int, CaseInfo] = collections.OrderedDict()
        self._order = asyncio.Lock()

    # -- subscribers ------------------------------------------------------------------------------------------
    def subscribe(self, principal: Principal) -> Subscriber:
        sub = Subscriber(principal)
        if principal.agent_id is not None:  # their own offers and cases, whatever else they watch
            self.by_agent[principal.agent_id].add(sub)
        if principal.role != "agent":
            self.broad.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.broad.discard(sub)
        subs = self.by_agent.get(sub.principal.agent_id or "")
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self.by_agent[sub.principal.agent_id or ""]

    def close_all(self) -> None:
        """The server is stopping: every stream ends now (with no reset: the client reconnects and resumes)."""
        for sub in self._all():
            sub.closing()

    def _all(self) -> set[Subscriber]:
        return {*self.broad, *(s for subs in self.by_agent.values() for s in subs)}

    @property
    def count(self) -> int:
        return len(self._all())

    # -- audience -----------------------------------------------------------------------------------------------
    def case_info(self, case_id: int | None) -> CaseInfo | None:
        """What the feed knows of a case: from assignment's working set when open, else the last seen."""
        if case_id is None:
            return None
        assigner = self.sb.stash.get(_assigner_key())
        work = assigner.cases.get(case_id) if assigner is not None else None
        if work is not None:
            case = work.case
            holder = work.offer.agent_id if work.offer is not None else work.agent_id
            info = CaseInfo(case.ref, case.subject, case.status.value, case.channel, case.line, case.team, case.tier,
                            case.priority, holder)
            self._remember(case_id, info)
            return info
        return self._cases.get(case_id)

    def _remember(self, case_id: int, info: CaseInfo) -> None:
        self._cases[case_id] = info
        self._cases.move_to_end(case_id)
        if len(self._cases) > KNOWN_CASES:
            self._cases.popitem(last=False)

    @staticmethod
    def agents_named(event: Event, case: CaseInfo | None) -> set[str]:
        """The agents an event is about: whoever it names, and whoever holds (or is offered) its case."""
        data = event.data
        named = {value for key in ("agent", "chosen", "by", "from_agent") if isinstance(value := data.get(key), str)}
        if case is not None and case.holder:
            named.add(case.holder)
        return named

    @staticmethod
    def visible(principal: Principal, event: Event, case: CaseInfo | None, named: set[str]) -> bool:
        if principal.agent_id is not None and principal.agent_id in named:
            return True
        if principal.role == "agent":
            return False
        if principal.kind == "integration":
            return "read" in principal.scopes
        if principal.role == "admin" or (not principal.lines and not principal.teams):
            return True
        if event.case_id is None:
            return event.type in AGENT_EVENTS
        return case is not None and principal.covers(case.line, case.team)

    # -- publishing ---------------------------------------------------------------------------------------------
    async def publish(self, events: list[Event]) -> None:
        """Called after every committed write, in commit order (kept: a publish waiting for a read holds the
        next one back, so a stream never gets a later event before an earlier one)."""
        async with self._order:
            if self.broad:
                # Supervisors see cases before assignment takes them in: read what the feed lacks. And a case
                # that assignment does not hold but that was just created, reopened or moved is read again: what
                # the feed last saw of it (a resolved case's old line) no longer says which supervisors see it.
                assigner = self.sb.stash.get(_assigner_key())
                held = assigner.cases if assigner is not None else {}
                unknown = {e.case_id for e in events if e.case_id is not None and (
                    (e.type in RELOCATING and e.case_id not in held) or self.case_info(e.case_id) is None)}
                if unknown:
                    await self._learn(unknown)
            self._push(events)

    def _push(self, events: list[Event]) -> None:
        for event in events:
            case = self.case_info(event.case_id)
            if case is not None and event.type == "case.status_changed":
                case.status = str(event.data.get("to", case.status))
            if not self.broad and not self.by_agent:
                continue
            named = self.agents_named(event, case)
            encoded: bytes | None = None
            for agent_id in named:
                for sub in self.by_agent.get(agent_id, ()):
                    encoded = encoded or frame(event, case)
                    sub.push(encoded)
            for sub in self.broad:
                if sub.principal.agent_id in named:
                    continue  # a supervisor who also works cases: pushed above already
                if self.visible(sub.principal, event, case, named):
                    encoded = encoded or frame(event, case)
                    sub.push(encoded)

    async def _learn(self, case_ids: set[int]) -> None:
        async def unit(tx):
            found = []
            for case_id in case_ids:
                case = await tx.case_by_id(case_id)
                if case is not None:
                    work = await tx.case_work(case_id) if case.is_open else None
                    found.append((case, work["agent_id"] if work else None))
            return found

        for case, holder in await self.sb.store.read(unit):
            self._remember(case.id, CaseInfo(case.ref, case.subject, case.status.value, case.channel, case.line,
                                             case.team, case.tier, case.priority, holder))

    async def backlog(self, principal: Principal, after_id: int) -> tuple[list[bytes], int, bool]:
        """Frames a reconnecting stream missed since `after_id`: (frames, last id read, complete). Not complete
        when more than ``console.stream_backlog`` events went by: the client must reload its state."""
        limit = self.sb.config.console.stream_backlog
        frames: list[bytes] = []
        last = after_id
        read = 0
        while True:
            page = await self.sb.store.read(lambda tx: tx.events_after(last, 500))
            unknown = {e.case_id for e in page if e.case_id is not None and self.case_info(e.case_id) is None}
            if unknown:
                await self._learn(unknown)
            for event in page:
                case = self.case_info(event.case_id)
                if self.visible(principal, event, case, self.agents_named(event, case)):
                    frames.append(frame(event, case))
            if page:
                last = page[-1].id
            read += len(page)
            if len(page) < 500:
                return frames, last, True
            if read >= limit:
                return frames, last, False

    async def latest_id(self) -> int:
        return await self.sb.store.read(lambda tx: tx.fetchval("SELECT COALESCE(MAX(id), 0) FROM events"))
