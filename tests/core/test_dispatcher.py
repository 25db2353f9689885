"""Dispatcher behaviour a customer or agent would notice, on both store backends."""
from __future__ import annotations

from datetime import timedelta

import pytest

from router import hookimpl
from router.channels import Channel
from router.core.dispatcher import InvalidInbound
from router.core.model import CaseStatus, IngestOutcome
from tests.conftest import make_config

EMAIL = {"kind": "email", "value": "anna@example.com"}


async def test_new_message_opens_a_queued_case_with_a_reference(harness):
    result = await harness.ingest(external_id="m1", sender=EMAIL, text="My tasker did not show up")
    assert result.outcome is IngestOutcome.CREATED
    assert result.case.ref == "TK-1001"
    assert result.case.status is CaseStatus.QUEUED
    stored = await harness.read(lambda tx: tx.case_by_ref("TK-1001"))
    assert stored.status is CaseStatus.QUEUED and stored.route["rule"] == "default"
    events = await harness.read(lambda tx: tx.events_for_case(stored.id))
    assert [e.type for e in events] == ["case.created", "case.routed", "message.received", "outbound.queued"]


async def test_redelivery_returns_the_same_case_and_writes_nothing(harness):
    first = await harness.ingest(external_id="m1", sender=EMAIL, text="hello")
    again = await harness.ingest(external_id="m1", sender=EMAIL, text="hello")
    assert again.outcome is IngestOutcome.DUPLICATE
    assert (again.case.ref, again.message_id) == (first.case.ref, first.message_id)
    assert await harness.read(lambda tx: tx.count_messages("api", "m1")) == 1
    events = await harness.read(lambda tx: tx.events_for_case(first.case.id))
    assert len([e for e in events if e.type == "message.received"]) == 1


async def test_follow_up_joins_the_open_case_without_a_second_acknowledgement(harness):
    first = await harness.ingest(external_id="m1", sender=EMAIL, text="hello")
    second = await harness.ingest(external_id="m2", sender=EMAIL, text="any news?")
    assert second.outcome is IngestOutcome.APPENDED
    assert second.case.id == first.case.id
    assert second.outbound_ids == []
    outbound = await harness.read(lambda tx: tx.outbound_for_case(first.case.id))
    assert [o.kind for o in outbound] == ["ack"]


async def test_acknowledgement_is_in_the_customers_language_with_the_reference(harness):
    result = await harness.ingest(external_id="m1", sender=EMAIL, text="ciao", language="it")
    [outbound] = await harness.read(lambda tx: tx.outbound_for_case(result.case.id))
    assert "TK-1001" in outbound.text and "Grazie" in outbound.text
    assert outbound.recipient.value == "anna@example.com"
    russian = await harness.ingest(external_id="m2", sender={"kind": "email", "value": "ivan@example.ru"},
                                   text="привет", language="ru")
    [ack] = await harness.read(lambda tx: tx.outbound_for_case(russian.case.id))
    assert "обращения" in ack.text and russian.case.ref in ack.text


async def test_machine_generated_messages_are_not_acknowledged(harness):
    result = await harness.ingest(external_id="m1", sender=EMAIL, text="Out of office", auto_generated=True)
    assert result.outcome is IngestOutcome.CREATED
    assert await harness.read(lambda tx: tx.outbound_for_case(result.case.id)) == []


async def test_phone_numbers_are_stored_in_e164_and_found_again(harness):
    first = await harness.ingest(external_id="s1", sender={"kind": "phone", "value": "347 123 4567"}, text="hi")
    second = await harness.ingest(external_id="s2", sender={"kind": "phone", "value": "+39 347-123-4567"}, text="hi")
    assert second.customer_id == first.customer_id
    customer = await harness.read(lambda tx: tx.get_customer(first.customer_id))
    assert [str(i) for i in customer.identities] == ["phone:+393471234567"]


async def test_invalid_phone_number_is_refused_naming_the_field(harness):
    with pytest.raises(InvalidInbound) as info:
        await harness.ingest(external_id="s1", sender={"kind": "phone", "value": "call me maybe"}, text="hi")
    assert info.value.field == "sender.value"


async def test_trusted_source_links_identities_across_channels(harness):
    by_email = await harness.ingest(external_id="m1", sender=EMAIL, text="hello", trusted=True)
    by_app = await harness.ingest(
        external_id="a1", sender={"kind": "app", "value": "user-42"}, text="from the app", trusted=True,
        linked_identities=[EMAIL], context={"role": "poster"},
    )
    assert by_app.customer_id == by_email.customer_id
    assert by_app.case.id == by_email.case.id  # the same need, now on two channels
    customer = await harness.read(lambda tx: tx.get_customer(by_email.customer_id))
    assert {str(i) for i in customer.identities} == {"email:anna@example.com", "app:user-42"}
    assert customer.role == "poster"


async def test_an_identity_linked_twice_under_two_spellings_is_claimed_once(harness):
    spellings = [{"kind": "phone", "value": "+39 347 123 4567"}, {"kind": "phone", "value": "3471234567"},
                 {"kind": "app", "value": "user-42"}]
    new = await harness.ingest(external_id="a1", sender={"kind": "app", "value": "user-42"}, text="hi", trusted=True,
                               linked_identities=spellings)
    again = await harness.ingest(external_id="a2", sender=EMAIL, text="and by mail", trusted=True,
                                 linked_identities=[*spellings, EMAIL])
    assert again.customer_id == new.customer_id
    customer = await harness.read(lambda tx: tx.get_customer(new.customer_id))
    assert sorted(str(i) for i in customer.identities) == ["app:user-42", "email:anna@example.com",
                                                           "phone:+393471234567"]


async def test_untrusted_source_cannot_link_identities_or_set_roles(harness):
    by_email = await harness.ingest(external_id="m1", sender=EMAIL, text="hello", trusted=True)
    stranger = await harness.ingest(
        external_id="x1", sender={"kind": "app", "value": "mallory"}, text="I am Anna", trusted=False,
        linked_identities=[EMAIL], context={"role": "courier"},
    )
    assert stranger.customer_id != by_email.customer_id
    customer = await harness.read(lambda tx: tx.get_customer(stranger.customer_id))
    assert customer.role is None and [str(i) for i in customer.identities] == ["app:mallory"]


async def test_trusted_link_merges_two_known_customers(harness):
    email = await harness.ingest(external_id="m1", sender=EMAIL, text="by mail")
    phone = await harness.ingest(external_id="s1", sender={"kind": "phone", "value": "+393471234567"}, text="by sms")
    assert email.customer_id != phone.customer_id
    linked = await harness.ingest(
        external_id="a1", sender={"kind": "app", "value": "user-42"}, text="app", trusted=True,
        linked_identities=[EMAIL, {"kind": "phone", "value": "+393471234567"}],
    )
    keep = min(email.customer_id, phone.customer_id)
    assert linked.customer_id == keep
    cases = await harness.read(lambda tx: tx.list_cases(customer_id=keep))
    assert {c.id for c in cases} >= {email.case.id, phone.case.id}


async def test_quoted_case_reference_of_another_customer_is_ignored(harness):
    anna = await harness.ingest(external_id="m1", sender=EMAIL, text="hello")
    other = await harness.ingest(external_id="m2", sender={"kind": "email", "value": "bob@example.com"},
                                 text="about TK-1001", thread={"case_ref": anna.case.ref})
    assert other.case.id != anna.case.id and other.outcome is IngestOutcome.CREATED


async def test_reply_within_window_reopens_and_later_opens_a_linked_case(harness):
    first = await harness.ingest(external_id="m1", sender=EMAIL, text="hello")
    now = harness.clock.now()
    await harness.sb.store.write(
        lambda tx: tx.update_case(first.case.id, status=CaseStatus.RESOLVED, resolved_at=now)
    )
    harness.clock.advance(timedelta(hours=71))
    reopened = await harness.ingest(external_id="m2", sender=EMAIL, text="still broken",
                                    thread={"case_ref": first.case.ref})
    assert reopened.outcome is IngestOutcome.REOPENED and reopened.case.id == first.case.id
    assert reopened.case.status is CaseStatus.QUEUED
    outbound = await harness.read(lambda tx: tx.outbound_for_case(first.case.id))
    assert [o.kind for o in outbound] == ["ack", "ack"] and "reopened" in outbound[-1].text

    resolved_at = harness.clock.now()
    await harness.sb.store.write(
        lambda tx: tx.update_case(first.case.id, status=CaseStatus.RESOLVED, resolved_at=resolved_at)
    )
    harness.clock.advance(timedelta(hours=73))
    later = await harness.ingest(external_id="m3", sender=EMAIL, text="new problem",
                                 thread={"case_ref": first.case.ref})
    assert later.outcome is IngestOutcome.CREATED
    assert later.case.related_case_id == first.case.id


async def test_new_conversation_hint_opens_a_separate_case(harness):
    first = await harness.ingest(external_id="m1", sender=EMAIL, text="payment failed")
    second = await harness.ingest(external_id="m2", sender=EMAIL, text="another topic",
                                  thread={"new_conversation": True})
    assert second.outcome is IngestOutcome.CREATED and second.case.id != first.case.id


class SecondChannel:
    """A test plugin adding a channel, so that cross-channel threading can be observed."""

    @hookimpl
    def switchboard_register_channels(self, registry):
        registry.add(Channel(name="chat", title="Chat"))


@pytest.mark.parametrize(
    ("policy", "joins"), [("any_channel", True), ("same_channel", False), ("never", False)]
)
async def test_open_case_policy_decides_cross_channel_threading(harness_factory, policy, joins):
    h = await harness_factory(make_config(threading={"attach_to_open_case": policy}), plugins=(SecondChannel(),))
    first = await h.ingest(external_id="m1", sender=EMAIL, text="by api")
    other = await h.ingest(channel="chat", account="web", external_id="c1", sender=EMAIL, text="by chat")
    assert (other.case.id == first.case.id) is joins


async def test_conversation_id_threads_even_when_open_cases_are_not_joined(harness_factory):
    h = await harness_factory(make_config(threading={"attach_to_open_case": "never"}))
    first = await h.ingest(external_id="m1", sender=EMAIL, text="hi", thread={"conversation": "conv-9"})
    second = await h.ingest(external_id="m2", sender=EMAIL, text="again", thread={"conversation": "conv-9"})
    third = await h.ingest(external_id="m3", sender=EMAIL, text="other", thread={"conversation": "conv-10"})
    assert second.case.id == first.case.id and third.case.id != first.case.id


async def test_customer_reply_moves_a_waiting_case_back_to_its_agent(harness):
    first = await harness.ingest(external_id="m1", sender=EMAIL, text="hello")
    await harness.sb.store.write(
        lambda tx: tx.update_case(first.case.id, status=CaseStatus.WAITING_CUSTOMER)
    )
    reply = await harness.ingest(external_id="m2", sender=EMAIL, text="here is the photo")
    assert reply.case.status is CaseStatus.ASSIGNED


async def test_an_out_of_office_answer_neither_reopens_nor_ends_the_wait(harness):
    first = await harness.ingest(external_id="m1", sender=EMAIL, text="hello")
    before = (await harness.read(lambda tx: tx.case_by_id(first.case.id))).last_inbound_at
    await harness.sb.store.write(lambda tx: tx.update_case(first.case.id, status=CaseStatus.WAITING_CUSTOMER))
    harness.clock.advance(timedelta(minutes=5))
    away = await harness.ingest(external_id="m2", sender=EMAIL, text="I am away until Monday", auto_generated=True,
                                thread={"case_ref": first.case.ref})
    case = await harness.read(lambda tx: tx.case_by_id(first.case.id))
    assert away.outcome is IngestOutcome.APPENDED and case.status is CaseStatus.WAITING_CUSTOMER
    assert case.last_inbound_at == before  # the customer has still not answered

    resolved_at = harness.clock.now()
    await harness.sb.store.write(
        lambda tx: tx.update_case(first.case.id, status=CaseStatus.RESOLVED, resolved_at=resolved_at))
    harness.clock.advance(timedelta(hours=1))
    again = await harness.ingest(external_id="m3", sender=EMAIL, text="Automatic reply: away", auto_generated=True,
                                 thread={"in_reply_to": ["no-such-id"], "case_ref": first.case.ref})
    case = await harness.read(lambda tx: tx.case_by_id(first.case.id))
    assert again.outcome is IngestOutcome.APPENDED and again.case.id == first.case.id
    assert case.status is CaseStatus.RESOLVED
    assert [o.kind for o in await harness.read(lambda tx: tx.outbound_for_case(first.case.id))] == ["ack"]
    person = await harness.ingest(external_id="m4", sender=EMAIL, text="I am back, still broken",
                                  thread={"case_ref": first.case.ref})
    assert person.outcome is IngestOutcome.REOPENED  # a person's answer still reopens


async def test_a_nul_character_is_stored_as_the_replacement_character(harness):
    result = await harness.ingest(external_id="m1", sender=EMAIL, text="photo\x00attached",
                                  subject="odd\x00subject", display_name="An\x00na")
    message = (await harness.read(lambda tx: tx.messages_for_case(result.case.id)))[0]
    assert message.text == "photo\ufffdattached" and result.case.subject == "odd\ufffdsubject"
    customer = await harness.read(lambda tx: tx.get_customer(result.customer_id))
    assert customer.display_name == "An\ufffdna"


async def test_message_needs_text_or_attachment(harness):
    with pytest.raises(InvalidInbound) as info:
        await harness.ingest(external_id="m1", sender=EMAIL, text="   ")
    assert info.value.field == "text"


async def test_attachments_are_stored_with_name_type_and_size(harness):
    result = await harness.ingest(
        external_id="m1", sender=EMAIL, text="",
        attachments=[{"filename": "receipt.pdf", "content_type": "application/pdf", "content": b"%PDF-1.4 test"}],
    )
    [message] = [m for m in await harness.read(lambda tx: tx.messages_for_case(result.case.id)) if m.direction.value == "in"]
    assert message.attachments[0]["filename"] == "receipt.pdf"
    assert message.attachments[0]["size"] == len(b"%PDF-1.4 test")


async def test_unknown_role_is_refused(harness):
    with pytest.raises(InvalidInbound) as info:
        await harness.ingest(external_id="m1", sender=EMAIL, text="hi", context={"role": "astronaut"})
    assert info.value.field == "context.role"


def test_route_as_dict_is_the_whole_route():
    """Route.as_dict is written out by hand for speed: it must still hold every field, copied."""
    import dataclasses

    from router.core.model import Route

    route = Route(line="poster", team="billing", tier="L2", priority=1, required_skills=["lang:it"],
                  preferred_skills=["vip"], sla_policy="standard", escalation="standard", safety_lane=True,
                  rule="refunds", reasons=["topic refund"])
    as_dict = route.as_dict()
    assert as_dict == dataclasses.asdict(route)
    as_dict["reasons"].append("changed")
    assert route.reasons == ["topic refund"]
