"""Assignment scenarios on a controllable clock, over both stores: offers, fairness, capacity, schedules, SLAs,
escalation and the safety lane — each checked through what agents and operators see (offers, events, queue)."""
from __future__ import annotations

import contextlib
import sqlite3
from datetime import datetime, timedelta, timezone
from itertools import count

import pytest

from router.core.assigner import ASSIGNER, AssignmentError
from router.core.clock import ManualClock
from router.core.model import CaseStatus
from tests.conftest import make_config

# A Monday, 10:00 UTC: 11:00 in Rome, 15:00 in Tashkent.
MONDAY = datetime(2026, 11, 23, 10, 0, tzinfo=timezone.utc)
EMAIL = {"kind": "email", "value": "ada@example.com"}
_ids = count(1)


def agent(agent_id, *, teams=("general",), tier="L1", languages=None, capacity=None, schedule=None, skills=None,
          lines=()):
    data = {"id": agent_id, "name": agent_id.title(), "teams": list(teams), "tier": tier, "lines": list(lines),
            "languages": languages or {"en": 5}, "capacity": capacity or {"default": 3}}
    if schedule:
        data["schedule"] = schedule
    if skills:
        data["skills"] = skills
    return data


def config(agents, **over):
    return make_config(**sections(agents, **over))


def sections(agents, **over):
    data = {
        "skills": ["vip"],
        "calendars": {
            "always": {"always_open": True},
            "rome": {"timezone": "Europe/Rome", "hours": {"mon-fri": ["09:00-18:00"]}},
            "tashkent": {"timezone": "Asia/Tashkent", "hours": {"mon-fri": ["09:00-18:00"]}},
        },
        "lines": {"poster": {"roles": ["poster"]}, "courier": {"roles": ["courier"], "calendar": "always"}},
        "teams": {"general": {"tier": "L1"}, "billing": {"tier": "L2"}, "safety": {"tier": "L2"},
                  "seniors": {"tier": "L3"}},
        "sla_policies": {"standard": {"first_response": "10m", "next_response": "10m", "resolution": "1h",
                                      "warn_before": "2m"}},
        "escalation_policies": {"standard": {
            "steps": [{"after": "5m", "drop_preferred_skills": True},
                      {"after": "10m", "allow_next_tier": True, "raise_priority": 1}],
            "on_breach": {"next_tier": True, "notify_supervisors": True, "raise_priority": 1}}},
        "offers": {"timeout": {"default": "60s", "email": "5m"}},
        "classification": {"safety": {"en": ["accident", "assault"]},
                           "topics": {"refund": {"keywords": {"en": ["refund*"]}},
                                      "vip": {"keywords": {"en": ["gold member"]}}}},
        "routing": {
            "rules": [
                {"name": "safety", "when": {"urgency": "safety"},
                 "route": {"team": "safety", "priority": 1, "safety_lane": True, "sla": "standard"}},
                {"name": "refunds", "when": {"topic": "refund"},
                 "route": {"team": "billing", "priority": 2, "sla": "standard", "escalation": "standard"}},
                {"name": "vip", "when": {"topic": "vip"},
                 "route": {"team": "general", "preferred_skills": ["vip"], "sla": "standard",
                           "escalation": "standard"}},
            ],
            "default": {"team": "general", "tier": "L1", "priority": 3, "sla": "standard",
                        "escalation": "standard"},
        },
        "agents": agents,
    }
    data.update(over)
    return data


class Floor:
    """The test's view of the contact centre: send messages, move the clock, act as agents, read the record."""

    def __init__(self, harness):
        self.h = harness
        self.sb = harness.sb
        self.clock: ManualClock = harness.clock
        self.assigner = self.sb.stash[ASSIGNER]

    async def message(self, text="Hello, I need help", channel="api", sender=None):
        result = await self.h.ingest(external_id=f"m{next(_ids)}", channel=channel, text=text, language="en",
                                     sender=sender or {"kind": "email", "value": f"c{next(_ids)}@example.com"})
        await self.assigner.settle()
        return result.case.ref

    async def online(self, *agent_ids):
        for agent_id in agent_ids:
            await self.assigner.set_presence(agent_id, "online", by=agent_id)
        await self.assigner.settle()

    async def advance(self, **delta):
        self.clock.advance(timedelta(**delta))
        await self.assigner.tick()

    def offer_of(self, ref):
        work = self.assigner.work_for(ref)
        return (work.offer.agent_id, work.offer.id) if work.offer else None

    def holder(self, ref):
        return self.offer_of(ref)[0] if self.offer_of(ref) else None

    async def accept(self, ref):
        agent_id, offer_id = self.offer_of(ref)
        await self.assigner.accept(offer_id, agent_id)
        return agent_id

    async def events(self, ref, prefix=""):
        async def unit(tx):
            case = await tx.case_by_ref(ref)
            return await tx.events_for_case(case.id)
        return [e for e in await self.h.read(unit) if e.type.startswith(prefix)]

    async def status(self, ref):
        return (await self.h.read(lambda tx: tx.case_by_ref(ref))).status


@contextlib.contextmanager
def writes_refused(floor: Floor, backend: str):
    """The database refuses writes for a while (another process holds it, or it went read-only)."""
    from tests.conftest import run_sync
    from tests.plugins.api.test_api_channel import _read_only

    store = floor.sb.store
    if backend == "sqlite":
        store._writer.execute("PRAGMA busy_timeout = 200")
        blocker = sqlite3.connect(store.path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
    else:
        run_sync(_read_only(store.dsn, True))
        try:
            yield
        finally:
            run_sync(_read_only(store.dsn, False))


@pytest.fixture
def floor_factory(harness_factory):
    async def make(agents, start=MONDAY, **over):
        # The built-in email channel (no mailboxes configured: it receives, cannot send) is the second channel
        # that shows capacity per channel.
        return Floor(await harness_factory(config(agents, **over), clock=ManualClock(start)))
    return make


# -- fairness ------------------------------------------------------------------------------------------------------
async def test_agents_coming_online_at_different_times_share_the_work(floor_factory):
    floor = await floor_factory([agent("anna"), agent("bruno"), agent("carla")])
    await floor.online("anna")
    first = await floor.message()
    assert floor.holder(first) == "anna"
    await floor.accept(first)
    await floor.advance(minutes=1)
    await floor.online("bruno")
    await floor.advance(minutes=1)
    await floor.online("carla")
    refs = [await floor.message() for _ in range(2)]
    # anna already carries a case: the two newcomers get the next two, not the agent who was online first.
    assert sorted(floor.holder(r) for r in refs) == ["bruno", "carla"]
    for ref in refs:
        await floor.accept(ref)
    # Everyone carries one now: the next goes to whoever has waited longest since their last offer (anna).
    assert floor.holder(await floor.message()) == "anna"


async def test_offer_explains_candidates_and_everyone_passed_over(floor_factory):
    floor = await floor_factory([
        agent("anna"), agent("bruno"), agent("luca", teams=["billing"], tier="L2"),
        agent("omar", languages={"ru": 5}), agent("sami", schedule={"calendar": "tashkent"}),
    ])
    await floor.online("anna", "bruno", "luca")
    ref = await floor.message()
    [offer] = await floor.events(ref, "offer.created")
    data = offer.data
    assert data["chosen"] == "anna" and [c["agent"] for c in data["candidates"]] == ["anna", "bruno"]
    assert data["requirement"] == [["team:general"], ["tier:L1"]]
    # luca has the wrong team (missing skill); omar and sami have the skills but are offline.
    assert data["passed_over"]["missing_skill"] == 1 and data["examples"]["missing_skill"] == ["luca"]
    assert data["passed_over"]["offline"] == 2
    [routed] = await floor.events(ref, "case.routed")
    assert routed.data["route"]["rule"] == "default"


# -- offers: decline, timeout, going offline -----------------------------------------------------------------------
async def test_decline_offers_the_case_to_the_next_agent_and_keeps_its_age(floor_factory):
    floor = await floor_factory([agent("anna"), agent("bruno")])
    await floor.online("anna", "bruno")
    ref = await floor.message()
    queued_at = floor.assigner.work_for(ref).queued_at
    agent_id, offer_id = floor.offer_of(ref)
    other = "bruno" if agent_id == "anna" else "anna"
    with pytest.raises(AssignmentError) as refused:
        await floor.assigner.decline(offer_id, other)  # not their offer
    assert refused.value.status == 403
    await floor.advance(seconds=20)
    await floor.assigner.decline(offer_id, agent_id, "on a call")
    assert floor.holder(ref) == other
    assert floor.assigner.work_for(ref).queued_at == queued_at
    declined = await floor.events(ref, "offer.declined")
    assert [(e.data["agent"], e.data["reason"]) for e in declined] == [(agent_id, "on a call")]
    with pytest.raises(AssignmentError) as stale:
        await floor.assigner.accept(offer_id, agent_id)  # the declined offer cannot be taken back
    assert stale.value.status == 409


async def test_offer_times_out_per_channel_and_moves_on(floor_factory):
    floor = await floor_factory([agent("anna"), agent("bruno")])
    await floor.online("anna", "bruno")
    chat = await floor.message(channel="api")
    first = floor.holder(chat)
    await floor.advance(seconds=59)
    assert floor.holder(chat) == first  # default timeout 60 s
    await floor.advance(seconds=1)
    assert floor.holder(chat) not in (None, first)
    [expired] = await floor.events(chat, "offer.expired")
    assert expired.data["agent"] == first and expired.data["reason"] == "offer timed out"


async def test_an_agent_who_lets_every_offer_lapse_leaves_the_case_waiting_visibly(floor_factory):
    floor = await floor_factory([agent("anna")])
    await floor.online("anna")
    ref = await floor.message()
    await floor.advance(seconds=61)
    assert floor.holder(ref) is None and await floor.status(ref) == CaseStatus.QUEUED
    [entry] = floor.assigner.queue_view()
    assert entry["ref"] == ref and entry["explanation"]["passed_over"]["excluded"] == 1
    waiting = await floor.events(ref, "assignment.waiting")
    assert waiting and waiting[-1].data["excluded"] == ["anna"]


async def test_going_offline_rescinds_pending_offers(floor_factory):
    floor = await floor_factory([agent("anna"), agent("bruno")])
    await floor.online("anna")
    ref = await floor.message()
    assert floor.holder(ref) == "anna"
    await floor.assigner.set_presence("anna", "offline", by="anna")
    assert floor.holder(ref) is None
    [rescinded] = await floor.events(ref, "offer.rescinded")
    assert rescinded.data["reason"] == "agent went offline"
    await floor.online("bruno")  # coming online runs the queue again
    assert floor.holder(ref) == "bruno"


# -- capacity --------------------------------------------------------------------------------------------------------
async def test_capacity_is_per_channel_and_freed_capacity_runs_the_queue(floor_factory):
    floor = await floor_factory([agent("anna", capacity={"api": 1, "email": 2})])
    await floor.online("anna")
    chat1 = await floor.message(channel="api")
    await floor.accept(chat1)
    chat2 = await floor.message(channel="api")
    assert floor.holder(chat2) is None  # one conversation at a time on this channel
    [waiting] = await floor.events(chat2, "assignment.waiting")
    assert waiting.data["passed_over"]["no_capacity"] == 1
    email = await floor.message(channel="email")
    assert floor.holder(email) == "anna"  # another channel, its own capacity
    await floor.assigner.finish(floor.assigner.work_for(chat1), CaseStatus.RESOLVED, by="anna")
    assert floor.holder(chat2) == "anna"


# -- schedules across time zones -----------------------------------------------------------------------------------
async def test_schedules_follow_each_agents_time_zone(floor_factory):
    floor = await floor_factory(
        [agent("giulia", schedule={"calendar": "rome"}, capacity={"default": 1}),
         agent("dilshod", schedule={"calendar": "tashkent"})],
        start=MONDAY.replace(hour=5),  # 06:00 in Rome, 10:00 in Tashkent
    )
    await floor.online("giulia", "dilshod")
    early = await floor.message()
    assert floor.holder(early) == "dilshod"
    [offer] = await floor.events(early, "offer.created")
    assert offer.data["passed_over"]["outside_schedule"] == 1 and offer.data["examples"]["outside_schedule"] == ["giulia"]
    await floor.accept(early)
    await floor.advance(hours=3)  # 08:00 UTC: 09:00 in Rome, giulia's day starts
    second = await floor.message()
    assert floor.holder(second) == "giulia"
    await floor.accept(second)
    await floor.advance(hours=6)  # 14:00 UTC: 19:00 in Tashkent, dilshod's day is over
    late = await floor.message()
    assert floor.holder(late) is None  # giulia is full, dilshod off duty: it waits, and says why
    [waiting] = await floor.events(late, "assignment.waiting")
    assert waiting.data["passed_over"]["outside_schedule"] == 1 and waiting.data["passed_over"]["no_capacity"] == 1


async def test_business_hours_rule_routes_by_the_lines_calendar(floor_factory):
    rules = [{"name": "after-hours", "when": {"line": "poster", "business_hours": "closed"},
              "route": {"team": "general", "priority": 4}}]
    floor = await floor_factory([], routing={"rules": rules, "default": {"team": "general", "tier": "L1"}},
                                lines={"poster": {"roles": ["poster"], "calendar": "rome"}})
    sender = {"kind": "app", "value": "u1"}
    inside = await floor.h.ingest(external_id="bh1", text="hi", sender=sender, context={"role": "poster"},
                                  trusted=True)
    assert inside.case.route["rule"] == "default"  # Monday 11:00 in Rome
    floor.clock.set(MONDAY.replace(hour=20))  # 21:00 in Rome
    outside = await floor.h.ingest(external_id="bh2", text="hi", sender={"kind": "app", "value": "u2"},
                                   context={"role": "poster"}, trusted=True)
    assert outside.case.route["rule"] == "after-hours" and outside.case.priority == 4
    assert "outside business hours" in outside.case.route["reasons"][0]


# -- SLAs --------------------------------------------------------------------------------------------------------------
async def test_sla_warns_then_breaches_each_once_and_escalates_on_breach(floor_factory):
    floor = await floor_factory([])  # nobody to take it
    ref = await floor.message()
    await floor.advance(minutes=7, seconds=59)
    assert await floor.events(ref, "sla.") == []
    await floor.advance(seconds=1)  # 2 minutes before the 10-minute first response
    await floor.advance(seconds=30)
    [warning] = await floor.events(ref, "sla.")
    assert (warning.type, warning.data["clock"]) == ("sla.warning", "first_response")
    await floor.advance(minutes=1, seconds=30)
    await floor.advance(minutes=1)
    kinds = [(e.type, e.data["clock"]) for e in await floor.events(ref, "sla.")]
    assert kinds == [("sla.warning", "first_response"), ("sla.breached", "first_response")]
    escalations = [e.data for e in await floor.events(ref, "case.escalated")]
    breach = [e for e in escalations if e.get("reason") == "sla breached"]
    assert len(breach) == 1 and breach[0]["to"]["tier"] == "L2"
    assert len(await floor.events(ref, "supervisors.notified")) == 1
    case = await floor.h.read(lambda tx: tx.case_by_ref(ref))
    assert case.tier == "L2"


async def test_sla_clock_pauses_while_waiting_on_the_customer(floor_factory):
    floor = await floor_factory([agent("anna")])
    await floor.online("anna")
    sender = {"kind": "email", "value": "pause@example.com"}
    ref = await floor.message(sender=sender)
    await floor.accept(ref)
    await floor.advance(minutes=5)
    work = floor.assigner.work_for(ref)
    await floor.assigner.reply(work, "anna", "Could you send a photo?", waiting_customer=True)
    met = await floor.events(ref, "sla.met")
    assert [e.data["clock"] for e in met] == ["first_response"]
    assert work.sla.due("resolution") is None  # paused: no deadline while the customer has the ball
    await floor.advance(hours=2)  # longer than the 1 h resolution target, but paused
    assert [e for e in await floor.events(ref, "sla.") if e.type == "sla.breached"] == []
    await floor.h.ingest(external_id="pause-2", text="Here is the photo", language="en", sender=sender)
    await floor.assigner.settle()
    assert await floor.status(ref) == CaseStatus.ASSIGNED
    due = work.sla.due("resolution")
    assert due == MONDAY + timedelta(hours=3)  # the 1 h target, plus the 2 h it was paused
    assert work.sla.due("next_response") == floor.clock.now() + timedelta(minutes=10)


# -- escalation --------------------------------------------------------------------------------------------------------
async def test_escalation_steps_drop_preferred_skills_then_open_the_next_tier(floor_factory):
    floor = await floor_factory([agent("anna"), agent("elena", tier="L2", skills={"vip": 5})])
    await floor.online("anna", "elena")
    ref = await floor.message(text="I am a gold member and my booking failed")
    # Preferred vip: only elena has it, but she is L2 and the case is L1.
    assert floor.holder(ref) is None
    await floor.advance(minutes=5)  # step 1: preferred skills dropped → anna qualifies
    assert floor.holder(ref) == "anna"
    step = (await floor.events(ref, "case.escalated"))[0].data
    assert step["step"] == 1 and step["widening"]["drop_preferred"] is True
    offer = (await floor.events(ref, "offer.created"))[-1].data
    assert offer["requirement"] == [["team:general"], ["tier:L1"]]


async def test_next_tier_step_raises_priority_and_reaches_seniors(floor_factory):
    slow = {"standard": {"first_response": "1h", "resolution": "8h"}}  # no SLA breach in the way
    floor = await floor_factory([agent("rustam", teams=["general"], tier="L2")], sla_policies=slow)
    await floor.online("rustam")
    ref = await floor.message()
    assert floor.holder(ref) is None
    await floor.advance(minutes=5)
    assert floor.holder(ref) is None  # dropping preferred skills is not enough
    await floor.advance(minutes=5)
    assert floor.holder(ref) == "rustam"
    steps = [e.data for e in await floor.events(ref, "case.escalated")]
    assert [s["step"] for s in steps] == [1, 2] and steps[1]["priority"] == {"from": 3, "to": 2}
    assert (await floor.h.read(lambda tx: tx.case_by_ref(ref))).priority == 2


async def test_manual_transfer_and_escalation(floor_factory):
    floor = await floor_factory([agent("anna"), agent("luca", teams=["billing"], tier="L2"),
                                 agent("elena", teams=["billing"], tier="L3")])
    await floor.online("anna", "luca", "elena")
    ref = await floor.message()
    await floor.accept(ref)
    work = floor.assigner.work_for(ref)
    await floor.assigner.transfer(work, by="anna", reason="it is about a payout", team="billing", tier="L2")
    assert floor.holder(ref) == "luca" and floor.assigner.workforce.get("anna").load.get("api", 0) == 0
    await floor.accept(ref)
    await floor.assigner.escalate(work, by="luca", reason="legal threat")
    assert floor.holder(ref) == "elena"
    case = await floor.h.read(lambda tx: tx.case_by_ref(ref))
    assert (case.team, case.tier, case.priority) == ("billing", "L3", 2)
    with pytest.raises(AssignmentError) as top:
        await floor.assigner.escalate(work, by="elena", reason="again")
    assert top.value.status == 409
    with pytest.raises(AssignmentError) as unknown:
        await floor.assigner.transfer(work, by="elena", reason="x", team="nope")
    assert unknown.value.status == 400


# -- the safety lane ---------------------------------------------------------------------------------------------------
async def test_safety_lane_jumps_the_queue_and_may_exceed_capacity(floor_factory):
    floor = await floor_factory([agent("tom", teams=["general", "safety"], tier="L2", capacity={"default": 1})])
    routine = await floor.message()  # L1 general: tom is L2, it waits
    await floor.online("tom")
    first = await floor.message(text="My refund is missing")  # billing L2: tom lacks the team, waits too
    safety = await floor.message(text="There was an accident, the tasker is hurt")
    assert floor.holder(safety) == "tom"
    await floor.accept(safety)
    second = await floor.message(text="Someone threatened me, assault at the door")
    assert floor.holder(second) == "tom"  # at capacity 1 already, but the safety lane may exceed it
    [offer] = await floor.events(second, "offer.created")
    assert offer.data["over_capacity"] is True and offer.data["safety_lane"] is True
    queue = [e["ref"] for e in floor.assigner.queue_view()]
    assert queue == [first, routine]  # priority 2 before priority 3, whatever their age
    assert (await floor.h.read(lambda tx: tx.case_by_ref(safety))).priority == 1


# -- restart -------------------------------------------------------------------------------------------------------------
async def test_a_restart_rebuilds_offers_loads_and_clocks_from_the_store(floor_factory, harness_factory):
    floor = await floor_factory([agent("anna", capacity={"default": 1}), agent("bruno")])
    await floor.online("anna")
    held = await floor.message()
    await floor.accept(held)
    pending = await floor.message()
    assert floor.holder(pending) is None  # anna is full; bruno offline
    await floor.online("bruno")
    assert floor.holder(pending) == "bruno"
    await floor.sb.stop()

    again = Floor(await harness_factory(floor.sb.config, clock=floor.clock))
    assert again.assigner.workforce.get("anna").load == {"api": 1}
    assert again.holder(pending) == "bruno" and again.assigner.workforce.get("bruno").presence == "online"
    await again.advance(seconds=61)  # the offer made before the restart still times out
    assert again.holder(pending) is None
    assert [e.type for e in await again.events(pending, "offer.")] == ["offer.created", "offer.expired"]


# -- races, recovery and the never-stuck rules ---------------------------------------------------------------------
async def test_two_requests_resolving_the_same_case_leave_loads_right(floor_factory):
    import asyncio

    floor = await floor_factory([agent("anna")])
    await floor.online("anna")
    first, second = await floor.message(), await floor.message()
    await floor.accept(first)
    await floor.accept(second)
    work = floor.assigner.work_for(first)
    results = await asyncio.gather(floor.assigner.finish(work, CaseStatus.RESOLVED, by="anna"),
                                   floor.assigner.finish(work, CaseStatus.RESOLVED, by="anna"),
                                   return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["AssignmentError", "NoneType"]
    assert floor.assigner.workforce.get("anna").load == {"api": 1}  # still holds the second case
    assert len([e for e in await floor.events(first, "case.status_changed") if e.data["to"] == "resolved"]) == 1
    with pytest.raises(AssignmentError) as late:
        await floor.assigner.transfer(work, by="sup", reason="too late", team="billing")
    assert late.value.status == 409


async def test_cases_everyone_passed_on_are_offered_again_after_a_timeout(floor_factory):
    floor = await floor_factory([agent("anna")], routing={"default": {"team": "general", "tier": "L1"}})
    await floor.online("anna")
    ref = await floor.message()  # no escalation policy: only the cool-down can bring anna back
    await floor.advance(seconds=60)
    assert floor.holder(ref) is None  # she let it lapse: excluded for now
    await floor.advance(seconds=59)
    assert floor.holder(ref) is None
    await floor.advance(seconds=1)
    assert floor.holder(ref) == "anna"
    [cleared] = await floor.events(ref, "assignment.exclusions_cleared")
    assert cleared.data["agents"] == ["anna"]


async def test_every_waiting_case_says_why(floor_factory):
    floor = await floor_factory([agent("anna")])
    refs = [await floor.message() for _ in range(3)]  # anna offline: identical requirements, nobody available
    for ref in refs:
        [waiting] = await floor.events(ref, "assignment.waiting")
        assert waiting.data["passed_over"]["offline"] == 1


async def test_transfer_restarts_escalation_and_the_paused_sla_clock(floor_factory):
    floor = await floor_factory([agent("anna"), agent("luca", teams=["billing"], tier="L2")])
    await floor.online("anna")
    ref = await floor.message()
    await floor.accept(ref)
    work = floor.assigner.work_for(ref)
    await floor.assigner.reply(work, "anna", "Which order?", waiting_customer=True)
    assert work.sla.due("resolution") is None
    await floor.advance(minutes=30)
    await floor.assigner.transfer(work, by="anna", reason="billing question", team="billing", tier="L2")
    assert work.sla.due("resolution") is not None  # queued again: the clock runs
    await floor.advance(minutes=4)
    assert [e for e in await floor.events(ref, "case.escalated") if "step" in e.data] == []  # counted from the transfer
    await floor.advance(minutes=1)
    assert [e.data["step"] for e in await floor.events(ref, "case.escalated") if "step" in e.data] == [1]


async def test_a_breach_without_an_escalation_policy_still_escalates(floor_factory):
    floor = await floor_factory([], routing={"default": {"team": "general", "tier": "L1", "sla": "standard"}})
    ref = await floor.message()
    await floor.advance(minutes=10)
    assert len(await floor.events(ref, "supervisors.notified")) == 1
    assert (await floor.h.read(lambda tx: tx.case_by_ref(ref))).tier == "L2"


async def test_restart_takes_in_a_case_reopened_while_down_and_honours_agent_removals(floor_factory, harness_factory):
    floor = await floor_factory([agent("anna"), agent("bruno")])
    await floor.online("anna")
    sender = {"kind": "email", "value": "back@example.com"}
    ref = await floor.message(sender=sender)
    await floor.accept(ref)
    await floor.assigner.reply(floor.assigner.work_for(ref), "anna", "Done, your refund is on its way")
    await floor.assigner.finish(floor.assigner.work_for(ref), CaseStatus.RESOLVED, by="anna")
    await floor.assigner.remove_agent("bruno", by="sup")
    # The customer writes again; the process dies before the assigner sees the reopening.
    floor.assigner.notice = lambda event: None
    floor.clock.advance(timedelta(minutes=5))
    await floor.h.ingest(external_id="back-2", text="It has not arrived", language="en", sender=sender)
    await floor.sb.stop()
    agents = [agent("anna")]  # bruno stays deleted (API); carla is no longer configured at all
    again = Floor(await harness_factory(config(agents), clock=floor.clock))
    work = again.assigner.work_for(ref)
    assert work.agent_id is None and work.queued_at > MONDAY and again.holder(ref) is None  # anna is offline now
    assert work.sla.due("next_response") is not None and work.sla.due("resolution") is not None
    assert "bruno" not in again.assigner.workforce


async def test_a_breach_the_store_could_not_record_is_recorded_by_the_next_tick(floor_factory, backend):
    from router.core.store.base import StoreUnavailable

    floor = await floor_factory([], routing={"default": {"team": "general", "tier": "L1", "sla": "standard"}})
    ref = await floor.message()
    floor.clock.advance(timedelta(minutes=10))  # the first response is due now (warning and breach at once)
    with writes_refused(floor, backend), pytest.raises(StoreUnavailable):
        await floor.assigner.tick()
    assert await floor.events(ref, "sla.breached") == []
    await floor.advance(seconds=1)
    await floor.advance(seconds=1)
    assert [(e.type, e.data["clock"]) for e in await floor.events(ref, "sla.")] == [
        ("sla.breached", "first_response")]  # once, though the first attempt to record it failed
    assert len(await floor.events(ref, "supervisors.notified")) == 1
