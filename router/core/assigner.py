"""Assignment: the queue of routed cases, offers to agents, SLA clocks and escalation, all explainable.

One :class:`Assigner` per running Switchboard (in the stash, made by the ``core.assignment`` plugin). It keeps
the working set in memory — agents in a :class:`~router.core.workforce.Workforce` index, every open routed
case as a :class:`CaseWork` — and writes every decision to the store in one transaction with its event before
changing memory, so a restart rebuilds the same state from the store (:meth:`Assigner.load`).

Flow: the dispatcher routes a case and commits; the ``case.routed`` event reaches :meth:`Assigner.notice`; the
background task (:meth:`settle`) picks the case up, queues it and offers it to the fairest eligible agent
(``switchboard_choose_agent``). The agent accepts or declines through the API; a decline, a timeout or the
agent going away puts the case back in the queue with its original age and without that agent. A periodic
:meth:`tick` (every second) expires offers, applies escalation steps, raises SLA warnings and breaches, and
follows agents' schedules. Every change that can free an agent or widen a case runs the queue again.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from router.core.calendar import BusinessCalendar
from router.core.model import (
    Attachment,
    Case,
    CaseStatus,
    Direction,
    Event,
    Identity,
    Route,
    check_transition,
    tagged_subject,
)
from router.core.requirements import Widening, agent_skills, next_tier, requirement_for
from router.core.sla import FIRST_RESPONSE, NEXT_RESPONSE, RESOLUTION, SlaClocks, targets_for
from router.core.store.base import StoreUnavailable
from router.core.tasks import cancel_and_wait
from router.core.workforce import ONLINE, PRESENCES, AgentState, Requirement, Selection, Workforce, satisfies
from router.routing_config import AgentConfig, BreachAction
from router.stash import StashKey

if TYPE_CHECKING:  # pragma: no cover
    from router.app import Switchboard

log = logging.getLogger(__name__)

ASSIGNER = StashKey["Assigner"]()
ACTOR = "assigner"
WAITING_STATUSES = frozenset({CaseStatus.QUEUED})
HELD_STATUSES = frozenset({CaseStatus.ASSIGNED, CaseStatus.WAITING_CUSTOMER})


class AssignmentError(Exception):
    """An action that cannot be done as asked (unknown agent or offer, offer no longer pending...)."""

    def __init__(self, status: int, code: str, detail: str):
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


@dataclasses.dataclass(slots=True)
class Offer:
    id: int
    case_id: int
    agent_id: str
    channel: str
    created_at: datetime
    expires_at: datetime


@dataclasses.dataclass(slots=True)
class CaseWork:
    """An open, routed case as assignment sees it; `state` is what is persisted in case_work.state."""

    case: Case
    queued_at: datetime  # when it first waited: its age, kept across declines and timeouts
    agent_id: str | None = None  # who holds it (assigned or waiting on customer)
    offer: Offer | None = None
    widening: Widening = Widening()
    step: int = 0  # escalation steps applied
    excluded: list[str] = dataclasses.field(default_factory=list)  # declined or let the offer expire
    sla: SlaClocks | None = None
    explained: Any = None  # the last "waiting" explanation written, so an unchanged one is not repeated
    excluded_at: datetime | None = None  # when the last agent was excluded
    step_base: datetime | None = None  # escalation steps count from here (queued_at until a transfer resets it)
    requirement: tuple[tuple, Requirement] | None = None  # (what it was computed from, requirement)

    @property
    def route(self) -> dict[str, Any]:
        return self.case.route

    @property
    def safety_lane(self) -> bool:
        return bool(self.case.route.get("safety_lane"))

    def state(self) -> dict[str, Any]:
        return {"widening": self.widening.as_dict(), "step": self.step, "excluded": self.excluded,
                "excluded_at": _iso(self.excluded_at), "step_base": _iso(self.step_base),
                "sla": self.sla.as_dict() if self.sla else {}, "sla_policy": self.sla.policy if self.sla else None}


@functools.lru_cache(maxsize=4096)
def _iso_of(value: datetime) -> str:
    return value.isoformat()


def _iso(value: datetime | None) -> str | None:
    # Memoised: the offers of one pass share one `now`, so explanations repeat the same few instants.
    return _iso_of(value) if value else None


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def requirement_text(req: Requirement) -> list[list[str]]:
    """A requirement as operators write it: [["team:billing", "team:general"], ["lang:it>=3"]]."""
    return [list(group) for group in _requirement_text(req)]  # a copy: callers put it in events


@functools.lru_cache(maxsize=1024)
def _requirement_text(req: Requirement) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(sorted(f"{name}>={level}" if level > 1 else name for name, level in group)) for group in req)



@contextlib.contextmanager
def _clocks_back_on_failure(work: "CaseWork", before: dict[str, Any] | None) -> Iterator[None]:
    """Around the write of a change that moved a case's SLA clocks in memory (stopped, paused, checked): if the
    write fails, nothing changed, so the clocks go back to `before` and keep running as they were."""
    try:
        yield
    except BaseException:
        if work.sla is not None and before is not None:
            work.sla = work.sla.copy(before)
        raise

class Assigner:
    def __init__(self, switchboard: "Switchboard"):
        self.sb = switchboard
        self.config = switchboard.config
        self.workforce = Workforce()
        self.definitions: dict[str, AgentConfig] = {}
        self.sources: dict[str, str] = {}
        self.schedules: dict[str, BusinessCalendar] = {}
        self.schedule_change: dict[str, datetime | None] = {}
        self.cases: dict[int, CaseWork] = {}
        self.offers: dict[int, Offer] = {}
        self.calendars = {name: BusinessCalendar(c) for name, c in self.config.calendars.items()}
        self._inbox: list[Event] = []
        self._pending: set[int] = set()  # cases the next pass must try
        self._all = True  # the next pass must walk the whole queue
        self._explanations: list[tuple[int, str, dict[str, Any]]] = []  # "waiting" events of the current pass
        self._staged: list[tuple] = []  # offers chosen in the current pass, written together at its end
        self._requirements: dict[tuple, Requirement] = {}
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def load(self) -> None:
        """Seed agents from config (unless changed through the API since) and rebuild state from the store."""
        now = self.sb.clock.now()

        async def seed(tx):
            stored = {row["id"]: row for row in await tx.agents()}
            configured = {agent.id for agent in self.config.agents}
            for agent in self.config.agents:
                row = stored.get(agent.id)
                if row is None or row["source"] == "config":  # "api": changed at run time; "deleted": removed
                    await tx.upsert_agent(agent.id, agent.model_dump(mode="json"), "config", now)
            for agent_id, row in stored.items():
                if row["source"] == "config" and agent_id not in configured:
                    await tx.delete_agent(agent_id)  # taken out of agents.yaml
            agents = [row for row in await tx.agents() if row["source"] != "deleted"]
            return agents, await tx.pending_offers(), await tx.open_cases_for_assignment()

        agents, offers, cases = await self.sb.store.write(seed)
        for row in agents:
            definition = AgentConfig.model_validate(row["definition"])
            self._index_agent(definition, row["source"], presence=row["presence"],
                              last_assigned_at=row["last_assigned_at"], now=now)
        pending = [Offer(r["id"], r["case_id"], r["agent_id"], r["channel"], r["created_at"], r["expires_at"])
                   for r in offers]
        by_case = {o.case_id: o for o in pending}
        fresh = []
        resumed = []
        for case, work in cases:
            if work is None or (work["state"].get("finished") and case.status == CaseStatus.QUEUED):
                # Routed (or reopened after being finished), but the process stopped before assignment saw it.
                fresh.append(case.id)
                continue
            item = self._case_work(case, work["queued_at"], work["agent_id"], work["state"])
            wrote = min(case.last_inbound_at, now) if case.last_inbound_at else now
            if case.status == CaseStatus.ASSIGNED and item.sla is not None and any(
                    c["paused_since"] and not c["stopped"] for c in item.sla.clocks.values()):
                item.sla.resume(wrote)  # the customer replied while the process was down: from when they wrote
                resumed.append(item)
            if case.status == CaseStatus.ASSIGNED and item.sla is not None and self._unanswered(item, wrote):
                # A customer message stored just before the process stopped, before this assigner saw it.
                item.sla.start(NEXT_RESPONSE, self._targets(case).get(NEXT_RESPONSE), wrote)
                if item not in resumed:
                    resumed.append(item)
            item.offer = by_case.get(case.id)
            self.cases[case.id] = item
            if item.offer is not None:
                self.offers[item.offer.id] = item.offer
                self._add_load(item.offer.agent_id, case.channel, +1)
            elif case.status in HELD_STATUSES and item.agent_id:
                self._add_load(item.agent_id, case.channel, +1)
        # Agents taken out of agents.yaml while the server was down: what they were offered or held goes back to
        # the queue, as remove_agent does at run time (else the case would wait on someone who no longer exists).
        for agent_id in sorted({o.agent_id for o in self.offers.values()} - set(self.definitions)):
            await self._rescind_offers(agent_id, "agent removed", actor=ACTOR)
        for item in [w for w in self.cases.values() if w.agent_id is not None and w.offer is None
                     and w.case.status in HELD_STATUSES and w.agent_id not in self.definitions]:
            await self._requeue(item, "case.requeued", {"reason": "agent removed", "agent": item.agent_id},
                                actor=ACTOR)
        for case_id in fresh:
            await self._take_in(case_id)
        for item in resumed:
            if item.case.id in self.cases and self.cases[item.case.id] is item:
                await self._persist(item, [])

    @staticmethod
    def _unanswered(work: CaseWork, wrote: datetime) -> bool:
        """Whether the customer wrote after the last answer while no response clock runs for it."""
        clocks = work.sla.clocks  # the caller has checked that the case has clocks
        if not work.sla.stopped(FIRST_RESPONSE) or (NEXT_RESPONSE in clocks and clocks[NEXT_RESPONSE]["stopped"] is None):
            return False
        answered = max(datetime.fromisoformat(c["stopped"]) for name, c in clocks.items()
                       if name in (FIRST_RESPONSE, NEXT_RESPONSE) and c["stopped"])
        return wrote > answered

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="assigner")
        self.wake()

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.settle()
            except Exception:  # noqa: BLE001 - the loop must survive; the next wake or tick retries
                log.exception("assignment pass failed")
                await asyncio.sleep(1)
                self.wake()

    # -- inputs ---------------------------------------------------------------------------------------------
    def notice(self, event: Event) -> None:
        """Called for every committed case event (switchboard_case_event): queue what assignment must react to."""
        if event.type in ("case.routed", "message.received", "case.status_changed"):
            self._inbox.append(event)
            self.wake()

    async def settle(self) -> None:
        """Take in what happened, then offer waiting cases to free agents until nothing more can be done."""
        async with self._lock:
            inbox, self._inbox = self._inbox, []
            routed = [e.case_id for e in inbox if e.type == "case.routed"]
            if routed:  # a burst of new cases is taken in with one write
                try:
                    await self._take_in_many(routed)
                except StoreUnavailable:
                    self._inbox[:0] = inbox
                    raise
                except Exception:  # noqa: BLE001 - a bad case must not cost the burst: one at a time, isolated
                    log.exception("taking in %d routed cases at once failed; taking them one by one", len(routed))
                    for case_id in routed:
                        try:
                            await self._take_in(case_id)
                        except StoreUnavailable:
                            self._inbox[:0] = inbox  # retried on the next pass; taken-in cases are skipped
                            raise
                        except Exception:  # noqa: BLE001 - picked up again at the next start (load)
                            log.exception("assignment could not take in case %s", case_id)
                inbox = [e for e in inbox if e.type != "case.routed"]
            for i, event in enumerate(inbox):
                try:
                    await self._react(event)
                except StoreUnavailable:
                    self._inbox[:0] = inbox[i:]  # not lost: retried on the next pass
                    raise
                except Exception:  # noqa: BLE001 - one bad event must not hold up the others
                    log.exception("assignment could not take in %s of case %s", event.type, event.case_id)
            await self._drain()

    async def tick(self) -> None:
        """Periodic: expire offers, follow schedules, escalate, warn and breach SLAs; then run the queue."""
        async with self._lock:
            now = self.sb.clock.now()
            for offer in [o for o in self.offers.values() if o.expires_at <= now]:
                await self._close_offer(offer, "expired", "offer timed out", actor=ACTOR)
            self._follow_schedules(now)
            for work in list(self.cases.values()):
                if work.excluded_at is not None and work.case.status in WAITING_STATUSES \
                        and now - work.excluded_at >= self.config.offers.timeout_for(work.case.channel):
                    self._touch(work.case.id)  # its cool-down after declines is over: try it again
                try:
                    await self._escalate_if_due(work, now)
                    await self._check_sla(work, now)
                except StoreUnavailable:
                    raise
                except Exception:  # noqa: BLE001 - one case must not stop the clocks of the others
                    log.exception("escalation or SLA check of %s failed", work.case.ref)
            await self._drain()

    async def _react(self, event: Event) -> None:
        """A customer's message or status change on a case already taken in (routed ones go to _take_in_many)."""
        work = self.cases.get(event.case_id)
        if work is None:
            return
        now = self.sb.clock.now()
        changed = False
        if (event.type == "case.status_changed" and event.data.get("to") == CaseStatus.ASSIGNED.value
                and work.case.status == CaseStatus.WAITING_CUSTOMER):
            work.case = dataclasses.replace(work.case, status=CaseStatus.ASSIGNED)  # the customer replied
            if work.sla:
                work.sla.resume(now)
                changed = True
        if event.type == "message.received" and event.data.get("outcome") == "appended" and work.sla \
                and not event.data.get("auto_generated") and work.case.status != CaseStatus.WAITING_CUSTOMER \
                and work.sla.stopped(FIRST_RESPONSE):
            changed |= work.sla.start(NEXT_RESPONSE, self._targets(work.case).get(NEXT_RESPONSE), now)
        if changed:  # a follow-up while the clocks already run changes nothing worth a write
            await self._persist(work, [])

    async def _take_in(self, case_id: int) -> None:
        await self._take_in_many([case_id])

    async def _take_in_many(self, case_ids: list[int]) -> None:
        """Cases were (re)routed: open their assignment state and SLA clocks, and queue them (one write)."""
        now = self.sb.clock.now()

        async def unit(tx):
            taken, events = [], []
            for case_id in case_ids:
                work, written = await one(tx, case_id)
                if work is not None:
                    taken.append(work)
                    events.extend(written)
            return taken, events

        async def one(tx, case_id):
            if case_id in self.cases:
                return None, []  # already taken in (a retried burst): keep its age and state
            case = await tx.case_by_id(case_id)
            if case is None or case.status != CaseStatus.QUEUED:
                return None, []
            before = await tx.case_work(case.id)  # a reopened case has its earlier clocks
            sla = self._sla_for(case, previous=before["state"].get("sla") if before else None)
            targets = self._targets(case)
            answered = sla.stopped(FIRST_RESPONSE)
            # From when the case was (re)queued, i.e. routed or reopened (its last update): the same instant in
            # normal running, the right one at start-up for a case routed just before the process stopped; not
            # last_inbound_at, which for a case an agent reopens days later lies days back.
            since = min(case.updated_at, now) if case.updated_at else now
            # A reopened case that was answered before waits for the next response, not a first one.
            sla.start(NEXT_RESPONSE if answered else FIRST_RESPONSE,
                      targets.get(NEXT_RESPONSE if answered else FIRST_RESPONSE), since)
            sla.start(RESOLUTION, targets.get(RESOLUTION), since)
            work = CaseWork(case=case, queued_at=since, sla=sla)
            await tx.put_case_work(case.id, None, work.queued_at, work.state(), now)
            due = {name: sla.clocks[name]["due"] for name in sla.clocks if sla.clocks[name]["stopped"] is None}
            events = await tx.append_events(
                [(case.id, "assignment.queued", {"queue_order": self._order_name(), "sla_policy": sla.policy,
                                                  "sla_due": due})], ACTOR, now)
            return work, events

        taken, events = await self.sb.store.write(unit)
        for work in taken:
            self.cases[work.case.id] = work
            self._touch(work.case.id)
        await self.sb.after_write(events)

    # -- agents ---------------------------------------------------------------------------------------------
    def _index_agent(self, definition: AgentConfig, source: str, *, presence: str,
                     last_assigned_at: datetime | None, now: datetime) -> None:
        previous = self.workforce.get(definition.id)
        schedule = BusinessCalendar.from_schedule(definition.schedule, self.config.calendars)
        self.definitions[definition.id] = definition
        self.sources[definition.id] = source
        self.schedules[definition.id] = schedule
        self.schedule_change[definition.id] = schedule.next_change(now)
        skills = agent_skills(lines=definition.lines, teams=definition.teams, tier=definition.tier,
                              languages=definition.languages, skills=definition.skills)
        self.workforce.upsert(AgentState(
            id=definition.id, name=definition.name, skills=skills, capacity=dict(definition.capacity),
            presence=presence, in_schedule=schedule.is_open(now),
            load=dict(previous.load) if previous else {},
            last_assigned_at=previous.last_assigned_at if previous else last_assigned_at,
        ))

    def _follow_schedules(self, now: datetime) -> None:
        for agent_id, change in list(self.schedule_change.items()):
            if change is not None and change <= now:
                schedule = self.schedules[agent_id]
                self.workforce.set_in_schedule(agent_id, schedule.is_open(now))
                self._touch()
                self.schedule_change[agent_id] = schedule.next_change(now)

    def _add_load(self, agent_id: str, channel: str, delta: int) -> None:
        if agent_id in self.workforce:
            self.workforce.add_load(agent_id, channel, delta)

    def agent_view(self, agent_id: str,
                   visible: Callable[[str | None, str | None], bool] | None = None) -> dict[str, Any]:
        """What an agent is doing; `visible(line, team)` keeps the refs of cases the reader may see (a line
        supervisor does not learn the references of other lines' cases from the workforce views)."""
        agent = self.workforce.get(agent_id)
        if agent is None:
            raise AssignmentError(404, "not_found", f"no agent {agent_id!r}")
        definition = self.definitions[agent_id]
        return {
            "id": agent.id, "name": agent.name, "presence": agent.presence, "in_schedule": agent.in_schedule,
            "load": dict(agent.load), "capacity": dict(agent.capacity),
            "last_assigned_at": _iso(agent.last_assigned_at), "source": self.sources[agent_id],
            "definition": definition.model_dump(mode="json"),
            "offers": [{"id": o.id, "case": self.cases[o.case_id].case.ref, "expires_at": o.expires_at.isoformat()}
                       for o in self.offers.values() if o.agent_id == agent_id and o.case_id in self.cases
                       and (visible is None or visible(self.cases[o.case_id].case.line,
                                                       self.cases[o.case_id].case.team))],
            "cases": sorted(w.case.ref for w in self.cases.values() if w.agent_id == agent_id
                            and (visible is None or visible(w.case.line, w.case.team))),
        }

    async def put_agent(self, definition: AgentConfig, *, by: str) -> None:
        """Create or change an agent at run time; from now on the store's copy wins over config."""
        from router.core.references import check_agent

        problems = check_agent(self.config, definition)
        if problems:
            raise AssignmentError(400, "invalid_agent", "; ".join(problems))
        async with self._lock:
            now = self.sb.clock.now()

            current = self.workforce.get(definition.id)
            presence = current.presence if current else "offline"

            async def unit(tx):
                await tx.upsert_agent(definition.id, definition.model_dump(mode="json"), "api", now)
                # The stored presence follows: an agent removed while online and defined again is offline, and
                # stays so after a restart.
                await tx.set_agent_presence(definition.id, presence, now)
                return await tx.append_events([(None, "agent.changed", {"agent": definition.id, "by": by})], by, now)

            events = await self.sb.store.write(unit)
            self._index_agent(definition, "api", presence=presence, last_assigned_at=None, now=now)
            if current is not None:  # offers the new definition no longer qualifies for go back to the queue
                await self._rescind_unqualified(definition.id, by)
            self._touch()
            await self.sb.after_write(events)
            await self._drain()

    async def remove_agent(self, agent_id: str, *, by: str) -> None:
        """Take an agent out: pending offers are rescinded, cases they held go back to the queue."""
        async with self._lock:
            if agent_id not in self.workforce:
                raise AssignmentError(404, "not_found", f"no agent {agent_id!r}")
            await self._rescind_offers(agent_id, "agent removed", actor=by)
            for work in [w for w in self.cases.values() if w.agent_id == agent_id]:
                await self._requeue(work, "case.requeued", {"reason": "agent removed", "agent": agent_id}, actor=by)
            now = self.sb.clock.now()

            from_config = agent_id in {a.id for a in self.config.agents}

            async def unit(tx):
                if from_config:  # remembered, so the next start does not bring the agent back from agents.yaml
                    await tx.upsert_agent(agent_id, self.definitions[agent_id].model_dump(mode="json"), "deleted", now)
                else:
                    await tx.delete_agent(agent_id)
                return await tx.append_events([(None, "agent.removed", {"agent": agent_id, "by": by})], by, now)

            events = await self.sb.store.write(unit)
            self.workforce.remove(agent_id)
            for table in (self.definitions, self.sources, self.schedules, self.schedule_change):
                table.pop(agent_id, None)
            await self.sb.after_write(events)
            await self._drain()

    async def set_presence(self, agent_id: str, presence: str, *, by: str) -> None:
        if presence not in PRESENCES:
            raise AssignmentError(400, "bad_request", f"presence must be one of {sorted(PRESENCES)}, not {presence!r}")
        async with self._lock:
            agent = self.workforce.get(agent_id)
            if agent is None:
                raise AssignmentError(404, "not_found", f"no agent {agent_id!r}")
            if agent.presence == presence:
                return
            now = self.sb.clock.now()
            before = agent.presence

            async def unit(tx):
                await tx.set_agent_presence(agent_id, presence, now)
                return await tx.append_events(
                    [(None, "agent.presence", {"agent": agent_id, "from": before, "to": presence, "by": by})], by, now)

            events = await self.sb.store.write(unit)
            self.workforce.set_presence(agent_id, presence)
            self._touch()
            await self.sb.after_write(events)
            if presence != ONLINE:
                await self._rescind_offers(agent_id, f"agent went {presence}", actor=by)
            await self._drain()

    # -- offers ---------------------------------------------------------------------------------------------
    async def accept(self, offer_id: int, agent_id: str) -> CaseWork:
        async with self._lock:
            offer = self._offer_for(offer_id, agent_id)
            work = self.cases[offer.case_id]
            now = self.sb.clock.now()
            check_transition(work.case.status, CaseStatus.ASSIGNED)

            async def unit(tx):
                if not await tx.finish_offer(offer.id, "accepted", now, None):
                    raise AssignmentError(409, "conflict", f"offer {offer.id} is no longer pending")
                await tx.update_case(work.case.id, status=CaseStatus.ASSIGNED, updated_at=now)
                await tx.put_case_work(work.case.id, agent_id, work.queued_at, work.state(), now)
                waited = (now - work.queued_at).total_seconds()
                return await tx.append_events(
                    [(work.case.id, "assignment.accepted", {"agent": agent_id, "offer": offer.id,
                                                           "waited_seconds": waited})], agent_id, now)

            events = await self.sb.store.write(unit)
            self.offers.pop(offer.id, None)
            work.offer = None
            work.agent_id = agent_id
            work.case = dataclasses.replace(work.case, status=CaseStatus.ASSIGNED, updated_at=now)
            await self.sb.after_write(events)
            return work

    async def decline(self, offer_id: int, agent_id: str, reason: str | None = None) -> None:
        async with self._lock:
            offer = self._offer_for(offer_id, agent_id, accepting=False)
            await self._close_offer(offer, "declined", reason or "declined", actor=agent_id)
            await self._drain()

    def _offer_for(self, offer_id: int, agent_id: str, *, accepting: bool = True) -> Offer:
        offer = self.offers.get(offer_id)
        if offer is None:
            raise AssignmentError(409, "conflict", f"offer {offer_id} is not pending (taken, declined or expired)")
        if offer.agent_id != agent_id:
            raise AssignmentError(403, "forbidden", f"offer {offer_id} was made to another agent")
        if accepting and self.sb.clock.now() >= offer.expires_at:  # expired; the next tick takes it back
            raise AssignmentError(409, "conflict", f"offer {offer_id} expired at {offer.expires_at.isoformat()}")
        return offer

    async def _close_offer(self, offer: Offer, status: str, reason: str, *, actor: str) -> None:
        """Decline, expiry or rescission: the case goes back to the queue without this agent, keeping its age."""
        work = self.cases[offer.case_id]
        now = self.sb.clock.now()
        excluded = work.excluded + ([offer.agent_id] if offer.agent_id not in work.excluded else [])

        async def unit(tx):
            if not await tx.finish_offer(offer.id, status, now, reason):
                return []
            await tx.update_case(work.case.id, status=CaseStatus.QUEUED, updated_at=now)
            state = dataclasses.replace(work, excluded=excluded).state()
            await tx.put_case_work(work.case.id, None, work.queued_at, state, now)
            return await tx.append_events(
                [(work.case.id, f"offer.{status}", {"agent": offer.agent_id, "offer": offer.id, "reason": reason})],
                actor, now)

        events = await self.sb.store.write(unit)
        self.offers.pop(offer.id, None)
        work.offer = None
        work.excluded = excluded
        work.excluded_at = now
        work.explained = None
        self._touch()  # the agent's capacity is free again, and the case is back
        work.case = dataclasses.replace(work.case, status=CaseStatus.QUEUED, updated_at=now)
        self._add_load(offer.agent_id, work.case.channel, -1)
        await self.sb.after_write(events)

    async def _rescind_unqualified(self, agent_id: str, actor: str) -> None:
        """After an agent's definition changed: offers whose requirement their skills no longer meet go back."""
        agent = self.workforce.get(agent_id)
        for offer in [o for o in self.offers.values() if o.agent_id == agent_id]:
            if agent is None or not satisfies(agent.skills, self.requirement(self.cases[offer.case_id])):
                await self._close_offer(offer, "rescinded", "the agent's skills changed", actor=actor)

    async def _rescind_offers(self, agent_id: str, reason: str, *, actor: str) -> None:
        for offer in [o for o in self.offers.values() if o.agent_id == agent_id]:
            await self._close_offer(offer, "rescinded", reason, actor=actor)

    # -- the queue ------------------------------------------------------------------------------------------
    def _order_name(self) -> str:
        return self.config.offers.queue_order

    def queue_key(self, work: CaseWork) -> tuple:
        """Safety lane first; then priority and age, or SLA due time (offers.queue_order)."""
        lane = 0 if work.safety_lane else 1
        if self._order_name() == "sla_due" and work.sla is not None:
            due = work.sla.earliest_due()
            return (lane, 0 if due else 1, due or work.queued_at, work.queued_at, work.case.id)
        return (lane, work.case.priority, work.queued_at, work.case.id)

    def waiting(self) -> list[CaseWork]:
        """Cases waiting for an agent, in the order they will be offered."""
        return sorted((w for w in self.cases.values() if w.case.status in WAITING_STATUSES), key=self.queue_key)

    def requirement(self, work: CaseWork) -> Requirement:
        route = work.route
        key = (work.case.line, work.case.team, work.case.tier, work.widening,
               tuple(route.get("required_skills") or ()), tuple(route.get("preferred_skills") or ()))
        if work.requirement is not None and work.requirement[0] == key:
            return work.requirement[1]  # parsing skills costs more than this comparison
        req = self._requirements.get(key)  # cases routed alike share one (a burst of new cases: one parse)
        if req is None:
            if len(self._requirements) > 10_000:
                self._requirements.clear()
            req = self._requirements[key] = self._requirement(work)
        work.requirement = (key, req)
        return req

    def _requirement(self, work: CaseWork) -> Requirement:
        route = work.route
        overflow = work.widening.overflow_team
        overflow_tier = self.config.teams[overflow].tier if overflow and overflow in self.config.teams else None
        return requirement_for(line=work.case.line, team=work.case.team, tier=work.case.tier,
                               required_skills=route.get("required_skills") or (),
                               preferred_skills=route.get("preferred_skills") or (),
                               tiers=self.config.tiers, widening=work.widening, overflow_tier=overflow_tier)

    def candidates(self, work: CaseWork, req: Requirement | None = None) -> tuple[Requirement, Selection]:
        req = req or self.requirement(work)
        selection = self.workforce.select(req, work.case.channel, limit=self.config.offers.candidate_limit,
                                          exclude=work.excluded, ignore_capacity=work.safety_lane)
        return req, selection

    def _touch(self, case_id: int | None = None) -> None:
        """Note what the next pass must look at: one case (new or widened), or everything (an agent became
        available: online, capacity freed, schedule opened). Only then is the whole queue walked again."""
        if case_id is None:
            self._all = True
        else:
            self._pending.add(case_id)

    async def _drain(self) -> None:
        if self._all:
            waiting = self.waiting()
        else:
            waiting = sorted((w for w in (self.cases.get(i) for i in self._pending)
                              if w is not None and w.case.status in WAITING_STATUSES), key=self.queue_key)
        self._all, self._pending = False, set()
        hopeless: dict[tuple, Selection] = {}  # (requirement, channel, lane) that found nobody in this pass
        now = self.sb.clock.now()
        try:
            for work in waiting:
                if self.cases.get(work.case.id) is not work or work.case.status not in WAITING_STATUSES:
                    continue  # taken or changed by an earlier step of this pass
                try:
                    await self._try_assign(work, hopeless, now)
                except StoreUnavailable:
                    self._touch(work.case.id)
                    raise
                except Exception:  # noqa: BLE001 - one case (or a strategy plugin) failing must not stall the queue
                    log.exception("assignment of %s failed; it stays queued", work.case.ref)
        finally:
            await self._flush(now)

    async def _flush(self, now: datetime) -> None:
        """Write the pass's offers and "waiting" explanations in one transaction, then make the offers real.
        Agents were chosen in memory (their load counted at once, so one pass never over-fills anybody); one
        commit for a whole burst of offers instead of one each is what keeps offers fast under load."""
        staged, self._staged = self._staged, []
        rows, self._explanations = self._explanations, []
        if not staged and not rows:
            return

        async def unit(tx):
            offer_ids = []
            for work, agent_id, channel, expires, data, _previous in staged:
                offer_id = await tx.insert_offer(work.case.id, agent_id, channel, now, expires)
                await tx.update_case(work.case.id, status=CaseStatus.OFFERED, updated_at=now)
                await tx.set_agent_assigned(agent_id, now)
                data["offer"] = offer_id
                offer_ids.append(offer_id)
            created = [(work.case.id, "offer.created", data) for work, _a, _c, _e, data, _p in staged]
            return offer_ids, await tx.append_events(created + rows, ACTOR, now)

        try:
            offer_ids, events = await self.sb.store.write(unit)
        except BaseException:
            for work, agent_id, channel, _expires, data, previous in reversed(staged):  # not written: undone
                data.pop("offer", None)
                self.workforce.assign(agent_id, channel, previous, -1)
                self._touch(work.case.id)
            for case_id, _type, _data in rows:  # say it again on the next pass
                if case_id in self.cases:
                    self.cases[case_id].explained = None
            raise
        for (work, agent_id, channel, expires, _data, _previous), offer_id in zip(staged, offer_ids):
            offer = Offer(offer_id, work.case.id, agent_id, channel, now, expires)
            self.offers[offer_id] = offer
            work.offer = offer
            work.explained = None
            work.case = dataclasses.replace(work.case, status=CaseStatus.OFFERED, updated_at=now)
        await self.sb.after_write(events)

    async def _try_assign(self, work: CaseWork, hopeless: dict[tuple, Selection], now: datetime) -> None:
        req = self.requirement(work)
        signature = (req, work.case.channel, work.safety_lane)
        if signature in hopeless and not work.excluded:
            await self._explain_waiting(work, req, hopeless[signature])
            return
        req, selection = self.candidates(work, req)
        if not selection.candidates and work.excluded and work.excluded_at is not None \
                and now - work.excluded_at >= self.config.offers.timeout_for(work.case.channel):
            # Everyone who could take it has passed on it, and a whole offer timeout has gone by since: ask
            # them again rather than let the case wait for ever (escalation, if any, would also widen it).
            cleared = list(work.excluded)
            work.excluded, work.excluded_at = [], None
            await self._persist(work, [(work.case.id, "assignment.exclusions_cleared", {"agents": cleared})])
            req, selection = self.candidates(work, req)
        if not selection.candidates:
            if not work.excluded:
                hopeless[signature] = selection
            await self._explain_waiting(work, req, selection)
            return
        route = Route(**{k: v for k, v in work.route.items() if k in Route.__dataclass_fields__})
        chosen = self.sb.hooks.choose_agent(case=work.case, route=route, candidates=selection.candidates)
        if chosen is None:
            await self._explain_waiting(work, req, selection, note="the assignment strategy chose nobody")
            return
        self._offer(work, chosen, req, selection, now)

    def explanation(self, work: CaseWork, req: Requirement, selection: Selection) -> dict[str, Any]:
        return {
            "requirement": requirement_text(req), "channel": work.case.channel, "widening": work.widening.as_dict(),
            "safety_lane": work.safety_lane, "excluded": list(work.excluded),
            "candidates": [{"agent": agent_id, "load": load, "last_assigned_at": _iso(last)}
                           for agent_id, load, last in selection.scores],
            "passed_over": dict(selection.passed_over), "examples": {k: v for k, v in selection.examples.items() if v},
        }

    async def _explain_waiting(self, work: CaseWork, req: Requirement, selection: Selection, note: str = "") -> None:
        """Record why a case waits, once per distinct reason (not on every pass)."""
        key = (requirement_text(req).__repr__(), tuple(sorted(selection.passed_over.items())), note)
        if work.explained == key:
            return
        work.explained = key
        data = self.explanation(work, req, selection)
        data["chosen"] = None
        if note:
            data["note"] = note
        self._explanations.append((work.case.id, "assignment.waiting", data))  # written at the end of the pass

    def _offer(self, work: CaseWork, agent: AgentState, req: Requirement, selection: Selection,
               now: datetime) -> None:
        """Choose `agent` for `work`: counted against their capacity now, written with the pass (_flush)."""
        channel = work.case.channel
        expires = now + self.config.offers.timeout_for(channel)
        data = self.explanation(work, req, selection)
        data["chosen"] = agent.id
        data["expires_at"] = expires.isoformat()
        if work.safety_lane and agent.load.get(channel, 0) >= agent.capacity_for(channel):
            data["over_capacity"] = True
        self._staged.append((work, agent.id, channel, expires, data, agent.last_assigned_at))
        self.workforce.assign(agent.id, channel, now)

    # -- case actions from agents and supervisors ----------------------------------------------------------
    def _live(self, work: CaseWork) -> None:
        """Inside the lock: the case must still be the one the caller looked up (not resolved or replaced
        meanwhile by a concurrent request)."""
        if self.cases.get(work.case.id) is not work:
            raise AssignmentError(409, "conflict", f"{work.case.ref} changed meanwhile (resolved, closed or reopened)")

    def work_for(self, ref: str) -> CaseWork:
        for work in self.cases.values():
            if work.case.ref == ref:
                return work
        raise AssignmentError(404, "not_found", f"no open, routed case {ref}")

    async def reply(self, work: CaseWork, agent_id: str, text: str, *, waiting_customer: bool = False,
                    attachments: Sequence[Attachment] = (), to: Identity | None = None) -> int:
        """The agent holding a case answers: the reply goes out on the channel the customer last wrote on (or,
        with `to`, on the channel the customer last used from that identity of theirs), response clocks stop
        and, with `waiting_customer`, the case waits on the customer (clocks paused).
        Returns the outbound id, or 0 when the channel cannot be written back to (the reply is still kept)."""
        if not text.strip() and not attachments:
            raise AssignmentError(400, "bad_request", "a reply needs text or an attachment")
        async with self._lock:
            self._live(work)
            if work.agent_id != agent_id or work.case.status not in HELD_STATUSES:
                raise AssignmentError(409, "conflict", f"{work.case.ref} is not held by {agent_id!r}; accept it first")
            now = self.sb.clock.now()
            sla_before = work.sla.as_dict() if work.sla else None
            rows = self._stop_clocks(work, (FIRST_RESPONSE, NEXT_RESPONSE), by=agent_id, now=now)
            if work.sla and waiting_customer:
                work.sla.pause(now)
            now_waiting = waiting_customer and work.case.status != CaseStatus.WAITING_CUSTOMER
            status = CaseStatus.WAITING_CUSTOMER if now_waiting else None
            if status is not None:
                rows.append((work.case.id, "case.status_changed",
                             {"from": work.case.status.value, "to": status.value, "by": agent_id}))
            case = work.case

            async def unit(tx):
                if to is not None:
                    found = await tx.last_inbound_from(case.customer_id, str(to))
                    if found is None:
                        raise AssignmentError(400, "bad_request", f"the customer never wrote from {to}, so there is "
                                                                  "no channel to answer them on there")
                else:  # the case's last message; a case opened by Switchboard (a follow-up): the customer's
                    found = await tx.last_inbound(case.id) or await tx.last_inbound_from(case.customer_id)
                last, conversation = found if found else (None, None)
                channel, account = (last.channel, last.account) if last else (case.channel, case.account)
                message_id = await tx.insert_message(
                    case_id=case.id, direction=Direction.OUTBOUND, channel=channel, account=account, external_id=None,
                    conversation=conversation, sender=f"agent:{agent_id}",
                    text=text, meta={"kind": "reply", "agent": agent_id, "language": case.language}, at=now)
                for item in attachments:
                    await tx.insert_attachment(message_id, filename=item.filename, content_type=item.content_type,
                                               size=len(item.content or b""), url=item.url, inline=item.inline,
                                               content=item.content)
                outbound_id = 0
                registered = self.sb.channels.get(channel)
                if last is not None and last.sender and registered is not None and registered.can_send(account):
                    kind, _, value = last.sender.partition(":")
                    same_case = last.case_id == case.id
                    outbound_id = await tx.enqueue_outbound(
                        case_id=case.id, message_id=message_id, channel=channel, account=account,
                        recipient=Identity(kind=kind, value=value), kind="reply", text=text,
                        subject=tagged_subject(case.subject, case.ref, reply=True),
                        meta={"in_reply_to": last.external_id if same_case else None,
                              "references": last.meta.get("references", []) if same_case else [],
                              "case_ref": case.ref, "agent": agent_id, "conversation": conversation,
                              "language": case.language}, at=now)
                sent = {"message_id": message_id, "agent": agent_id, "channel": channel, "outbound_id": outbound_id}
                if not outbound_id:
                    sent["note"] = f"channel {channel!r} cannot write back to account {account!r}: kept, not sent"
                if status is not None:
                    await tx.update_case(case.id, status=status, updated_at=now)
                await tx.mark_first_response(case.id, agent_id, now)
                await tx.put_case_work(case.id, work.agent_id, work.queued_at, work.state(), now)
                events = await tx.append_events([(case.id, "message.sent", sent), *rows], agent_id, now)
                return outbound_id, events

            with _clocks_back_on_failure(work, sla_before):
                outbound_id, events = await self.sb.store.write(unit)
            if status is not None:
                work.case = dataclasses.replace(work.case, status=status, updated_at=now)
            await self.sb.after_write(events, wake_outbox=bool(outbound_id))
            return outbound_id

    async def wait_on_customer(self, work: CaseWork, agent_id: str) -> None:
        """Without replying: the ball is in the customer's court (SLA clocks pause until they write)."""
        async with self._lock:
            self._live(work)
            if work.case.status == CaseStatus.WAITING_CUSTOMER:
                return
            check_transition(work.case.status, CaseStatus.WAITING_CUSTOMER)
            if work.agent_id is None or work.case.status != CaseStatus.ASSIGNED:
                raise AssignmentError(409, "conflict", f"{work.case.ref} is {work.case.status.value}: only a case "
                                                       "someone holds can wait on the customer")
            now = self.sb.clock.now()
            before = work.sla.as_dict() if work.sla else None
            if work.sla:
                work.sla.pause(now)
            with _clocks_back_on_failure(work, before):
                await self._persist(work, [(work.case.id, "case.status_changed",
                                            {"from": work.case.status.value,
                                             "to": CaseStatus.WAITING_CUSTOMER.value, "by": agent_id})],
                                    case_changes={"status": CaseStatus.WAITING_CUSTOMER}, actor=agent_id)

    async def finish(self, work: CaseWork, status: CaseStatus, *, by: str, supervisor: bool = False) -> None:
        """Resolve or close: the agent's capacity is freed and the resolution clock stops."""
        async with self._lock:
            self._live(work)
            if work.offer is not None and work.offer.agent_id != by and not supervisor:
                raise AssignmentError(403, "forbidden", f"{work.case.ref} is offered to another agent")
            check_transition(work.case.status, status)
            now = self.sb.clock.now()
            sla_before = work.sla.as_dict() if work.sla else None
            data = self._stop_clocks(work, (RESOLUTION,), by=by, now=now)
            if work.sla:
                for name in list(work.sla.clocks):  # the response clocks end with the case, unrecorded
                    work.sla.stop(name, now)
            data.append((work.case.id, "case.status_changed",
                         {"from": work.case.status.value, "to": status.value, "by": by, "agent": work.agent_id}))
            offer = work.offer
            if offer is not None:
                data.insert(0, (work.case.id, "offer.rescinded",
                                {"agent": offer.agent_id, "offer": offer.id, "reason": f"case {status.value}"}))
            finished_state = {**work.state(), "finished": status.value}

            async def unit(tx):
                if offer is not None:
                    await tx.finish_offer(offer.id, "rescinded", now, f"case {status.value}")
                await tx.update_case(work.case.id, status=status, updated_at=now,
                                     resolved_at=now if status == CaseStatus.RESOLVED else work.case.resolved_at,
                                     resolved_by=by if status == CaseStatus.RESOLVED else None)
                await tx.put_case_work(work.case.id, work.agent_id, work.queued_at, finished_state, now)
                return await tx.append_events(data, by, now)

            with _clocks_back_on_failure(work, sla_before):  # not written: the case is open, its clocks run
                events = await self.sb.store.write(unit)
            self._release(work)
            if offer is not None:
                self.offers.pop(offer.id, None)
            del self.cases[work.case.id]
            work.case = dataclasses.replace(work.case, status=status, updated_at=now)
            await self.sb.after_write(events)
            await self._drain()

    @staticmethod
    def _stop_clocks(work: CaseWork, names: tuple[str, ...], *, by: str,
                     now: datetime) -> list[tuple[int, str, dict[str, Any]]]:
        """Stop these SLA clocks; an event for each that was running: met in time, or late."""
        rows: list[tuple[int, str, dict[str, Any]]] = []
        for name in names:
            clock = work.sla.stop(name, now) if work.sla else None
            if clock is not None:
                rows.append((work.case.id, "sla.met" if clock["met"] else "sla.met_late",
                             {"clock": name, "due": clock["due"], "by": by}))
        return rows

    def _release(self, work: CaseWork) -> None:
        holder = work.offer.agent_id if work.offer is not None else work.agent_id
        if holder is not None and (work.offer is not None or work.case.status in HELD_STATUSES):
            self._add_load(holder, work.case.channel, -1)
            self._touch()

    async def transfer(self, work: CaseWork, *, by: str, reason: str, line: str | None = None,
                       team: str | None = None, tier: str | None = None, priority: int | None = None) -> None:
        """Move a case to another line/team/tier (manual): it goes back to the queue there, widening reset."""
        problems = [f"unknown {kind} {value!r}" for kind, value, known in
                    (("line", line, self.config.lines), ("team", team, self.config.teams),
                     ("tier", tier, self.config.tiers)) if value is not None and value not in known]
        if problems:
            raise AssignmentError(400, "bad_request", "; ".join(problems))
        async with self._lock:
            self._live(work)
            changes = {k: v for k, v in (("line", line), ("team", team), ("tier", tier), ("priority", priority))
                       if v is not None}
            if not changes:
                raise AssignmentError(400, "bad_request", "give at least one of line, team, tier, priority")
            before = {k: getattr(work.case, k) for k in changes}
            await self._requeue(work, "case.transferred", {"from": before, "to": changes, "reason": reason, "by": by},
                                actor=by, changes=changes, reset=True)
            await self._drain()

    async def transfer_to_agent(self, work: CaseWork, target: str, *, by: str, reason: str) -> None:
        """Hand a case straight to one agent (a colleague, a specialist): they hold it at once, whatever its
        queue. The agent must exist and not be offline; capacity is theirs to manage."""
        async with self._lock:
            self._live(work)
            agent = self.workforce.get(target)
            if agent is None:
                raise AssignmentError(404, "not_found", f"no agent {target!r}")
            if agent.presence == "offline":
                raise AssignmentError(409, "conflict", f"{target} is offline; transfer {work.case.ref} to their "
                                                       "team or line instead")
            if work.agent_id == target and work.offer is None:
                raise AssignmentError(409, "conflict", f"{work.case.ref} is already held by {target}")
            now = self.sb.clock.now()
            offer = work.offer
            previous = offer.agent_id if offer is not None else work.agent_id
            status = work.case.status
            to_status = CaseStatus.ASSIGNED if status != CaseStatus.ASSIGNED else None
            if to_status is not None:
                check_transition(status, to_status)
            sla = work.sla.copy() if work.sla else None
            if sla is not None and status == CaseStatus.WAITING_CUSTOMER:
                sla.resume(now)
            state = dataclasses.replace(work, agent_id=target, offer=None, sla=sla).state()
            rows = [(work.case.id, "case.transferred",
                     {"from": {"agent": previous}, "to": {"agent": target}, "reason": reason, "by": by,
                      "agent": target, "from_agent": previous})]
            if offer is not None:
                rows.insert(0, (work.case.id, "offer.rescinded",
                                {"agent": offer.agent_id, "offer": offer.id, "reason": "case.transferred"}))

            async def unit(tx):
                if offer is not None:
                    await tx.finish_offer(offer.id, "rescinded", now, "case.transferred")
                if to_status is not None:
                    await tx.update_case(work.case.id, status=to_status, updated_at=now)
                await tx.put_case_work(work.case.id, target, work.queued_at, state, now)
                return await tx.append_events(rows, by, now)

            events = await self.sb.store.write(unit)
            self._release(work)
            if offer is not None:
                self.offers.pop(offer.id, None)
            work.agent_id, work.offer, work.sla, work.explained = target, None, sla, None
            self._add_load(target, work.case.channel, +1)
            if to_status is not None:
                work.case = dataclasses.replace(work.case, status=to_status, updated_at=now)
            await self.sb.after_write(events)
            await self._drain()

    async def reopen(self, ref: str, *, by: str, reason: str) -> Case:
        """A resolved case back to work: queued again on its route, its earlier SLA clocks kept."""
        async with self._lock:
            now = self.sb.clock.now()

            async def unit(tx):
                case = await self._closed_case(tx, ref, CaseStatus.RESOLVED, "reopened")
                await tx.update_case(case.id, status=CaseStatus.QUEUED, resolved_at=None, resolved_by=None,
                                     updated_at=now)
                events = await tx.append_events(
                    [(case.id, "case.reopened", {"by": by, "reason": reason, "manual": True}),
                     (case.id, "case.routed", {"route": case.route, "labels": case.route.get("labels", {}),
                                               "reopened": True})], by, now)
                return dataclasses.replace(case, status=CaseStatus.QUEUED, resolved_at=None, updated_at=now), events

            case, events = await self.sb.store.write(unit)
            await self.sb.after_write(events)
            return case

    async def close_resolved(self, ref: str, *, by: str) -> None:
        """Close a resolved case for good (a later message then opens a new, linked case)."""
        now = self.sb.clock.now()

        async def unit(tx):
            case = await self._closed_case(tx, ref, CaseStatus.RESOLVED, "closed")
            await tx.update_case(case.id, status=CaseStatus.CLOSED, updated_at=now)
            return await tx.append_events([(case.id, "case.status_changed",
                                            {"from": "resolved", "to": "closed", "by": by})], by, now)

        await self.sb.after_write(await self.sb.store.write(unit))

    @staticmethod
    async def _closed_case(tx, ref: str, expected: CaseStatus, verb: str) -> Case:
        case = await tx.case_by_ref(ref)
        if case is None:
            raise AssignmentError(404, "not_found", f"no case {ref}")
        # The customer's lock, as ingest takes it: a message reopening this case at the same moment (another
        # node, PostgreSQL) is either fully before this change or sees it.
        await tx.lock_customer(case.customer_id)
        case = await tx.case_by_id(case.id)
        if case.merged_into is not None:
            into = await tx.case_by_id(case.merged_into)
            raise AssignmentError(409, "conflict", f"{ref} was merged into {into.ref if into else case.merged_into}")
        if case.status != expected:
            raise AssignmentError(409, "conflict", f"{ref} is {case.status.value}: only a {expected.value} case "
                                                   f"can be {verb} this way")
        return case

    async def merge(self, ref: str, into: str, *, by: str) -> Case:
        """Merge one case of a customer into another of theirs: its messages move there and it is closed.
        Both must belong to the same customer; the target must not be closed, nor resolved when the source is open."""
        if ref == into:
            raise AssignmentError(400, "bad_request", "a case cannot be merged into itself")
        async with self._lock:
            now = self.sb.clock.now()

            async def unit(tx):
                source, target = await tx.case_by_ref(ref), await tx.case_by_ref(into)
                for wanted, case in ((ref, source), (into, target)):
                    if case is None:
                        raise AssignmentError(404, "not_found", f"no case {wanted}")
                await tx.lock_customer(source.customer_id)  # no message lands on the source while it moves
                source, target = await tx.case_by_id(source.id), await tx.case_by_id(target.id)
                for case in (source, target):
                    if case.merged_into is not None:
                        raise AssignmentError(409, "conflict", f"{case.ref} was merged already")
                    if case.status == CaseStatus.CLOSED:
                        raise AssignmentError(409, "conflict", f"{case.ref} is closed; closed cases are not merged")
                if source.customer_id != target.customer_id:
                    raise AssignmentError(409, "conflict", f"{ref} and {into} belong to different customers; "
                                                           "link them instead")
                if source.is_open and not target.is_open:  # its unanswered messages would wait in a resolved case
                    raise AssignmentError(409, "conflict", f"{into} is {target.status.value} and {ref} is open; "
                                                           f"reopen {into} first, or merge it into {ref}")
                work = self.cases.get(source.id)
                offer = work.offer if work is not None else None
                if offer is not None:
                    await tx.finish_offer(offer.id, "rescinded", now, "case.merged")
                moved = await tx.move_messages(source.id, target.id)
                await tx.update_case(source.id, status=CaseStatus.CLOSED, merged_into=target.id, updated_at=now)
                await tx.update_case(target.id, updated_at=now)
                if work is not None:
                    await tx.put_case_work(source.id, work.agent_id, work.queued_at,
                                           {**work.state(), "finished": "merged"}, now)
                rows = [(source.id, "case.merged", {"into": target.ref, "messages": moved, "by": by,
                                                    "agent": work.agent_id if work else None}),
                        (source.id, "case.status_changed", {"from": source.status.value, "to": "closed", "by": by}),
                        (target.id, "case.merged", {"from": source.ref, "messages": moved, "by": by})]
                if offer is not None:
                    rows.insert(0, (source.id, "offer.rescinded",
                                    {"agent": offer.agent_id, "offer": offer.id, "reason": "case.merged"}))
                return target, work, await tx.append_events(rows, by, now)

            target, work, events = await self.sb.store.write(unit)
            if work is not None:
                self._release(work)
                if work.offer is not None:
                    self.offers.pop(work.offer.id, None)
                self.cases.pop(work.case.id, None)
            await self.sb.after_write(events)
            await self._drain()
            return target

    async def escalate(self, work: CaseWork, *, by: str, reason: str) -> None:
        """Manual escalation: the next tier, one step more urgent, back to the queue."""
        async with self._lock:
            self._live(work)
            # Read under the lock: a transfer or another escalation may have moved the case meanwhile.
            above = next_tier(work.case.tier, self.config.tiers)
            if above is None:
                raise AssignmentError(409, "conflict", f"{work.case.ref} is already at the top tier ({work.case.tier})")
            changes = {"tier": above, "priority": max(1, work.case.priority - 1)}
            await self._requeue(work, "case.escalated",
                                {"from": {"tier": work.case.tier, "priority": work.case.priority}, "to": changes,
                                 "reason": reason, "by": by, "manual": True},
                                actor=by, changes=changes, reset=True)
            await self._drain()

    async def _requeue(self, work: CaseWork, event_type: str, data: dict[str, Any], *, actor: str,
                       changes: dict[str, Any] | None = None, reset: bool = False) -> None:
        """Back to the queue (from wherever it is), keeping its age; with `changes` to line/team/tier/priority."""
        now = self.sb.clock.now()
        changes = dict(changes or {})
        route = dict(work.case.route)
        route.update({k: v for k, v in changes.items()})
        offer = work.offer
        status_changes: dict[str, Any] = {}
        if work.case.status != CaseStatus.QUEUED:
            check_transition(work.case.status, CaseStatus.QUEUED)
            status_changes["status"] = CaseStatus.QUEUED
        sla = work.sla.copy() if work.sla else None
        if sla is not None and work.case.status == CaseStatus.WAITING_CUSTOMER:
            sla.resume(now)  # back in the queue: the customer no longer has the ball
        new = dataclasses.replace(work, agent_id=None, offer=None, sla=sla,
                                  widening=Widening() if reset else work.widening,
                                  excluded=[] if reset else work.excluded,
                                  step=0 if reset else work.step, step_base=now if reset else work.step_base)
        holder = offer.agent_id if offer is not None else work.agent_id
        if holder is not None and "from_agent" not in data:
            data = {**data, "from_agent": holder}  # the live feed tells them the case left them
        rows = [(work.case.id, event_type, data)]
        if offer is not None:
            rows.insert(0, (work.case.id, "offer.rescinded",
                            {"agent": offer.agent_id, "offer": offer.id, "reason": event_type}))

        async def unit(tx):
            if offer is not None:
                await tx.finish_offer(offer.id, "rescinded", now, event_type)
            await tx.update_case(work.case.id, **changes, **status_changes, route=route, updated_at=now)
            await tx.put_case_work(work.case.id, None, work.queued_at, new.state(), now)
            return await tx.append_events(rows, actor, now)

        events = await self.sb.store.write(unit)
        self._release(work)
        if offer is not None:
            self.offers.pop(offer.id, None)
        work.agent_id, work.offer, work.widening, work.excluded = None, None, new.widening, new.excluded
        work.sla, work.step, work.step_base = new.sla, new.step, new.step_base
        work.explained = None
        self._touch(work.case.id)
        work.case = dataclasses.replace(work.case, **changes, **status_changes, route=route, updated_at=now)
        await self.sb.after_write(events)

    # -- escalation and SLAs ---------------------------------------------------------------------------------
    def _policy(self, work: CaseWork):
        name = work.route.get("escalation")
        return self.config.escalation_policies.get(name) if name else None

    async def _escalate_if_due(self, work: CaseWork, now: datetime) -> None:
        policy = self._policy(work)
        if policy is None or work.case.status not in WAITING_STATUSES or work.step >= len(policy.steps):
            return
        step = policy.steps[work.step]
        if now - (work.step_base or work.queued_at) < step.after:
            return
        widening = Widening(
            drop_preferred=work.widening.drop_preferred or step.drop_preferred_skills,
            allow_next_tier=work.widening.allow_next_tier or step.allow_next_tier,
            overflow_team=step.overflow_team or work.widening.overflow_team,
        )
        priority = max(1, work.case.priority - step.raise_priority)
        data = {"step": work.step + 1, "policy": work.route.get("escalation"), "after": step.after.total_seconds(),
                "widening": widening.as_dict(), "priority": {"from": work.case.priority, "to": priority},
                "excluded_cleared": list(work.excluded)}
        before = (work.step, work.widening, work.excluded, work.excluded_at)
        work.step += 1
        work.widening = widening
        work.excluded, work.excluded_at = [], None  # a wider target: those who passed may be asked again
        work.explained = None
        changes = {"priority": priority} if priority != work.case.priority else {}
        try:
            await self._persist(work, [(work.case.id, "case.escalated", data)], case_changes=changes)
        except BaseException:
            work.step, work.widening, work.excluded, work.excluded_at = before  # not written: not done
            raise
        self._touch(work.case.id)

    async def _check_sla(self, work: CaseWork, now: datetime) -> None:
        if work.sla is None:
            return
        snapshot = work.sla.as_dict()
        alerts = work.sla.check(now)
        if not alerts:
            return
        rows = [(work.case.id, f"sla.{'warning' if a.kind == 'warning' else 'breached'}",
                 {"clock": a.clock, "due": a.due.isoformat(), "policy": work.sla.policy}) for a in alerts]
        changes: dict[str, Any] = {}
        policy = self._policy(work)
        if any(a.kind == "breach" for a in alerts):
            # Without an escalation policy the default action applies: next tier and tell the supervisors.
            action = policy.on_breach if policy is not None else BreachAction()
            data: dict[str, Any] = {"reason": "sla breached", "clocks": [a.clock for a in alerts if a.kind == "breach"]}
            above = next_tier(work.case.tier, self.config.tiers) if action.next_tier else None
            if above:
                changes["tier"] = above
            if action.raise_priority:
                changes["priority"] = max(1, work.case.priority - action.raise_priority)
            data["to"] = changes
            rows.append((work.case.id, "case.escalated", data))
            if action.notify_supervisors:
                rows.append((work.case.id, "supervisors.notified",
                             {"reason": f"SLA breached on {work.case.ref}", "clocks": data["clocks"]}))
        # A case an agent already holds stays with them; the new tier counts if it goes back to the queue.
        # Not recorded: the warning or breach must be raised again by the next tick, not forgotten.
        with _clocks_back_on_failure(work, snapshot):
            await self._persist(work, rows, case_changes=changes)
        if changes:
            work.explained = None
            self._touch(work.case.id)  # a queued case now needs another tier's agents: look for them now

    async def _persist(self, work: CaseWork, rows: list[tuple[int, str, dict[str, Any]]], *,
                       case_changes: dict[str, Any] | None = None, actor: str = ACTOR) -> None:
        now = self.sb.clock.now()
        changes = dict(case_changes or {})
        routed = {k: v for k, v in changes.items() if k in Route.__dataclass_fields__}
        route = {**work.case.route, **routed} if routed else work.case.route

        async def unit(tx):
            if changes:
                await tx.update_case(work.case.id, **changes, route=route, updated_at=now)
            await tx.put_case_work(work.case.id, work.agent_id, work.queued_at, work.state(), now)
            return await tx.append_events(rows, actor, now)

        events = await self.sb.store.write(unit)
        if changes:
            work.case = dataclasses.replace(work.case, **changes, route=route, updated_at=now)
        await self.sb.after_write(events)

    def _sla_policy(self, case: Case):
        name = case.route.get("sla_policy")
        return name, (self.config.sla_policies.get(name) if name else None)

    def _sla_for(self, case: Case, previous: dict[str, Any] | None = None) -> SlaClocks:
        name, policy = self._sla_policy(case)
        calendar_name = (policy.calendar if policy else None) or (
            self.config.lines[case.line].calendar if case.line in self.config.lines else None)
        calendar = self.calendars.get(calendar_name) if calendar_name else None
        return SlaClocks(name, calendar or BusinessCalendar(None),
                         policy.warn_before if policy else timedelta(0), previous)

    def _targets(self, case: Case) -> dict[str, timedelta]:
        _name, policy = self._sla_policy(case)
        if policy is None:
            return {}
        return targets_for(policy, channel=case.channel, line=case.line, team=case.team, priority=case.priority)

    def _case_work(self, case: Case, queued_at: datetime, agent_id: str | None, state: dict[str, Any]) -> CaseWork:
        sla = self._sla_for(case, state.get("sla"))
        return CaseWork(case=case, queued_at=queued_at, agent_id=agent_id,
                        widening=Widening.from_dict(state.get("widening")), step=int(state.get("step", 0)),
                        excluded=list(state.get("excluded", [])), sla=sla,
                        excluded_at=_parse(state.get("excluded_at")), step_base=_parse(state.get("step_base")))

    # -- reading --------------------------------------------------------------------------------------------
    def queue_view(self) -> list[dict[str, Any]]:
        out = []
        for position, work in enumerate(self.waiting(), start=1):
            req, selection = self.candidates(work)
            out.append({
                "position": position, "ref": work.case.ref, "priority": work.case.priority, "line": work.case.line,
                "team": work.case.team, "tier": work.case.tier, "channel": work.case.channel,
                "queued_at": work.queued_at.isoformat(), "safety_lane": work.safety_lane,
                "sla_due": _iso(work.sla.earliest_due()) if work.sla else None, "escalation_step": work.step,
                "explanation": self.explanation(work, req, selection),
            })
        return out
