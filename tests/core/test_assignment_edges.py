"""Assignment at its edges: restarts after the configuration changed, writes that fail, machine mail on a waiting
case, breaches that move a case, offers past their time, agents redefined while they hold offers, merges into
resolved cases. Real stores (both backends), a controllable clock."""
from __future__ import annotations

from datetime import timedelta

import pytest

from router.core.assigner import AssignmentError
from router.core.model import CaseStatus
from router.core.store.base import StoreUnavailable
from router.routing_config import AgentConfig
from tests.core.test_assignment import (  # noqa: F401
    Floor,
    agent,
    config,
    floor_factory,
    writes_refused,
)


async def test_a_case_held_by_an_agent_taken_out_of_the_config_goes_back_to_the_queue_at_start(
        floor_factory, harness_factory):  # noqa: F811
    floor = await floor_factory([agent("anna"), agent("bruno")])
    await floor.online("anna")
    held = await floor.message()
    await floor.accept(held)
    offered = await floor.message()  # anna has room for more: offered, not yet accepted
    assert floor.holder(offered) == "anna"
    await floor.sb.stop()
    again = Floor(await harness_factory(config([agent("bruno")]), clock=floor.clock))  # anna left agents.yaml
    for ref in (held, offered):
        work = again.assigner.work_for(ref)
        assert work.agent_id is None and (work.offer is None or work.offer.agent_id != "anna")
    assert [e.data["reason"] for e in await again.events(held, "case.requeued")] == ["agent removed"]
    assert [e.data["reason"] for e in await again.events(offered, "offer.rescinded")] == ["agent removed"]
    await again.online("bruno")
    assert again.holder(held) == "bruno" and again.holder(offered) == "bruno"


async def test_a_resolve_the_store_refused_leaves_the_clocks_running(floor_factory, backend):  # noqa: F811
    floor = await floor_factory([agent("anna")])
    await floor.online("anna")
    ref = await floor.message()
    await floor.accept(ref)
    work = floor.assigner.work_for(ref)
    with writes_refused(floor, backend), pytest.raises(StoreUnavailable):
        await floor.assigner.finish(work, CaseStatus.RESOLVED, by="anna")
    assert await floor.status(ref) is CaseStatus.ASSIGNED
    assert work.sla.due("resolution") is not None  # still running, so it still breaches
    await floor.advance(minutes=61)
    assert "resolution" in [e.data["clock"] for e in await floor.events(ref, "sla.breached")]
    await floor.assigner.finish(floor.assigner.work_for(ref), CaseStatus.RESOLVED, by="anna")
    assert await floor.status(ref) is CaseStatus.RESOLVED


async def _held_by_anna(floor_factory, address: str):  # noqa: F811
    """Anna alone on the floor, holding the case of the customer writing from `address`."""
    floor = await floor_factory([agent("anna")])
    await floor.online("anna")
    sender = {"kind": "email", "value": address}
    ref = await floor.message(sender=sender)
    await floor.accept(ref)
    return floor, ref, sender


async def test_an_out_of_office_reply_owes_no_response(floor_factory):  # noqa: F811
    floor, ref, sender = await _held_by_anna(floor_factory, "away@example.com")
    await floor.assigner.reply(floor.assigner.work_for(ref), "anna", "Which order?", waiting_customer=True)
    await floor.h.ingest(external_id="ooo-1", text="I am out of office", language="en", sender=sender,
                         auto_generated=True, thread={"case_ref": ref})
    await floor.assigner.settle()
    work = floor.assigner.work_for(ref)
    assert work.case.status is CaseStatus.WAITING_CUSTOMER and work.sla.due("next_response") is None
    await floor.advance(minutes=30)
    assert await floor.events(ref, "sla.breached") == []
    await floor.h.ingest(external_id="back-1", text="Order 42", language="en", sender=sender,
                         thread={"case_ref": ref})  # the person answers: now a response is owed
    await floor.assigner.settle()
    assert floor.assigner.work_for(ref).sla.due("next_response") is not None


async def test_a_breach_that_moves_a_waiting_case_up_a_tier_offers_it_there_at_once(floor_factory):  # noqa: F811
    floor = await floor_factory([agent("lena", tier="L2")],
                                routing={"default": {"team": "general", "tier": "L1", "sla": "standard"}})
    await floor.online("lena")
    ref = await floor.message()
    assert floor.holder(ref) is None  # nobody at L1
    await floor.advance(minutes=10)  # first response breached: the case goes to L2
    assert (await floor.h.read(lambda tx: tx.case_by_ref(ref))).tier == "L2"
    assert floor.holder(ref) == "lena"  # in the same tick, not whenever something else wakes the queue


async def test_an_offer_cannot_be_accepted_after_it_expired(floor_factory):  # noqa: F811
    floor = await floor_factory([agent("anna"), agent("bruno")])
    await floor.online("anna", "bruno")
    ref = await floor.message()
    agent_id, offer_id = floor.offer_of(ref)
    floor.clock.advance(timedelta(seconds=90))  # offers time out after 60 s; no tick has run yet
    with pytest.raises(AssignmentError) as refused:
        await floor.assigner.accept(offer_id, agent_id)
    assert refused.value.status == 409 and "expired" in refused.value.detail
    await floor.assigner.decline(offer_id, agent_id, "too late anyway")  # declining it is still fine
    await floor.assigner.tick()
    other = floor.holder(ref)
    assert other is not None and other != agent_id


async def test_an_agent_removed_and_defined_again_stays_offline_after_a_restart(floor_factory, harness_factory):  # noqa: F811
    floor = await floor_factory([agent("anna"), agent("bruno")])
    await floor.online("anna")
    await floor.assigner.remove_agent("anna", by="sup")
    await floor.assigner.put_agent(AgentConfig.model_validate(agent("anna")), by="sup")
    assert floor.assigner.workforce.get("anna").presence == "offline"
    await floor.sb.stop()
    again = Floor(await harness_factory(floor.sb.config, clock=floor.clock))
    assert again.assigner.workforce.get("anna").presence == "offline"
    ref = await again.message()
    assert again.holder(ref) is None  # nobody online: nothing offered to an agent who is not there


async def test_an_agent_moved_to_another_team_loses_the_offers_of_the_old_one(floor_factory):  # noqa: F811
    floor = await floor_factory([agent("anna"), agent("bruno")])
    await floor.online("anna")
    ref = await floor.message()
    assert floor.holder(ref) == "anna"
    await floor.assigner.put_agent(AgentConfig.model_validate(agent("anna", teams=("billing",), tier="L2")), by="sup")
    assert floor.holder(ref) is None
    assert [e.data["reason"] for e in await floor.events(ref, "offer.rescinded")] == ["the agent's skills changed"]
    await floor.online("bruno")
    assert floor.holder(ref) == "bruno"


async def test_an_open_case_is_not_merged_into_a_resolved_one(floor_factory):  # noqa: F811
    floor, first, sender = await _held_by_anna(floor_factory, "m@example.com")
    await floor.assigner.finish(floor.assigner.work_for(first), CaseStatus.RESOLVED, by="anna")
    floor.clock.advance(timedelta(days=30))  # past the reopen window: a new case
    second = await floor.message(text="Another problem entirely", sender=sender)
    with pytest.raises(AssignmentError) as refused:
        await floor.assigner.merge(second, first, by="sup")
    assert refused.value.status == 409 and "reopen" in refused.value.detail
    assert await floor.status(second) is not CaseStatus.CLOSED
    target = await floor.assigner.merge(first, second, by="sup")  # the other way round is fine
    assert target.ref == second and await floor.status(first) is CaseStatus.CLOSED


# -- restarts: what was stored just before a crash is timed from when it happened ----------------------------------
async def _stored_then_crashed(floor: Floor, **message):
    """The dispatcher's durable write of a message, then the process dies before anything hears of it (the
    assigner is told only after the commit)."""
    from router.core.model import InboundMessage

    sb = floor.sb
    inbound = sb.dispatcher.normalise(InboundMessage.model_validate(
        {"channel": "api", "account": "backend", "language": "en", **message}))
    result = await sb.store.write(lambda tx: sb.dispatcher._ingest(tx, inbound))
    await sb.stop()
    return result


async def _restarted(harness_factory, floor: Floor) -> Floor:
    return Floor(await harness_factory(floor.sb.config, clock=floor.clock))


async def test_a_case_routed_just_before_a_crash_is_timed_from_its_message(floor_factory, harness_factory):  # noqa: F811
    floor = await floor_factory([agent("anna")])
    written = floor.clock.now()
    result = await _stored_then_crashed(floor, external_id="x1", text="help",
                                        sender={"kind": "email", "value": "z@example.com"})
    floor.clock.advance(timedelta(hours=2))
    again = await _restarted(harness_factory, floor)
    work = again.assigner.work_for(result.case.ref)
    assert work.queued_at == written and work.sla.due("first_response") == written + timedelta(minutes=10)
    await again.advance(seconds=1)
    assert "first_response" in [e.data["clock"] for e in await again.events(result.case.ref, "sla.breached")]


@pytest.mark.parametrize("waiting", [True, False], ids=["reply-to-a-waiting-case", "follow-up-after-an-answer"])
async def test_a_customer_message_stored_just_before_a_crash_is_timed_from_when_it_came(
        floor_factory, harness_factory, waiting):  # noqa: F811
    floor, ref, sender = await _held_by_anna(floor_factory, "w@example.com")
    await floor.assigner.reply(floor.assigner.work_for(ref), "anna", "Which order?", waiting_customer=waiting)
    floor.clock.advance(timedelta(minutes=1))
    wrote = floor.clock.now()
    await _stored_then_crashed(floor, external_id="late", text="Order 42, still broken", sender=sender,
                               thread={"case_ref": ref})
    floor.clock.advance(timedelta(hours=1))
    again = await _restarted(harness_factory, floor)
    assert again.assigner.work_for(ref).sla.due("next_response") == wrote + timedelta(minutes=10)
    await again.advance(seconds=1)
    assert "next_response" in [e.data["clock"] for e in await again.events(ref, "sla.breached")]


async def test_a_case_reopened_days_later_is_timed_from_the_reopening(floor_factory):  # noqa: F811
    floor, ref, _ = await _held_by_anna(floor_factory, "r@example.com")
    await floor.assigner.finish(floor.assigner.work_for(ref), CaseStatus.RESOLVED, by="anna")
    floor.clock.advance(timedelta(days=3))
    reopened_at = floor.clock.now()
    await floor.assigner.reopen(ref, by="anna", reason="the customer called")
    await floor.assigner.settle()
    work = floor.assigner.work_for(ref)
    assert work.queued_at == reopened_at and work.sla.due("resolution") == reopened_at + timedelta(hours=1)
    await floor.advance(seconds=1)
    assert await floor.events(ref, "sla.breached") == []  # not three days late at once
