"""The contract every store backend keeps; the same tests run on SQLite and on PostgreSQL."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from router.core.model import Case, CaseStatus, Direction, Identity, OutboundStatus
from router.core.store.base import migrations

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)


async def _customer_and_case(tx, ref: str = "TK-1", at: datetime = T0) -> tuple[int, int]:
    customer_id = await tx.insert_customer("poster", "Anna", "it", at)
    case = Case(id=0, ref=ref, customer_id=customer_id, status=CaseStatus.NEW, channel="api", account="backend",
                subject="Привет", language="ru", line=None, team=None, tier=None, priority=3, created_at=at,
                updated_at=at, route={"reasons": ["über", "日本"]})
    return customer_id, await tx.insert_case(case)


async def test_migrations_are_applied_once_and_reopening_keeps_data(store_factory):
    first = await store_factory()
    await first.open()
    shipped = [version for version, _ in migrations(first.backend)]
    assert shipped == list(range(1, len(shipped) + 1))  # numbered without gaps
    assert await first.schema_version() == shipped[-1]
    await first.write(lambda tx: _customer_and_case(tx))
    await first.close()
    second = await store_factory()
    await second.open()
    assert await second.schema_version() == shipped[-1]
    assert (await second.read(lambda tx: tx.case_by_ref("TK-1"))).subject == "Привет"


async def test_values_round_trip_exactly(store):
    _, case_id = await store.write(lambda tx: _customer_and_case(tx))
    case = await store.read(lambda tx: tx.case_by_id(case_id))
    assert case.created_at == T0 and case.created_at.tzinfo is not None
    assert case.route == {"reasons": ["über", "日本"]}
    assert case.status is CaseStatus.NEW


async def test_case_numbers_are_unique_and_increasing_under_concurrency(store):
    numbers = await asyncio.gather(*(store.write(lambda tx: tx.next_case_number()) for _ in range(50)))
    assert len(set(numbers)) == 50
    assert sorted(numbers) == list(range(min(numbers), min(numbers) + 50))


async def test_a_failing_unit_writes_nothing_and_does_not_affect_others(store):
    async def good(tx, n):
        return await tx.insert_customer(None, f"good-{n}", None, T0)

    async def bad(tx):
        await tx.insert_customer(None, "half-written", None, T0)
        raise RuntimeError("unit failed midway")

    # Queued together, so on SQLite they share one group commit.
    results = await asyncio.gather(store.write(lambda tx: good(tx, 1)), store.write(bad),
                                   store.write(lambda tx: good(tx, 2)), return_exceptions=True)
    assert isinstance(results[1], RuntimeError)
    names = await store.read(lambda tx: tx.fetch("SELECT display_name FROM customers ORDER BY id"))
    assert [r["display_name"] for r in names] == ["good-1", "good-2"]


async def test_an_external_id_is_stored_once_per_channel(store):
    _, case_id = await store.write(lambda tx: _customer_and_case(tx))

    async def insert(tx, channel):
        return await tx.insert_message(case_id=case_id, direction=Direction.INBOUND, channel=channel,
                                       account="a", external_id="dup", conversation=None, sender="email:x@y.z",
                                       text="t", meta={}, at=T0)

    await store.write(lambda tx: insert(tx, "api"))
    await store.write(lambda tx: insert(tx, "chat"))  # another channel may reuse the id
    with pytest.raises(Exception):
        await store.write(lambda tx: insert(tx, "api"))
    assert await store.read(lambda tx: tx.count_messages("api", "dup")) == 1
    assert await store.read(lambda tx: tx.find_message("chat", "dup")) is not None


async def test_an_identity_belongs_to_one_customer(store):
    async def claim(tx, name):
        customer_id = await tx.insert_customer(None, name, None, T0)
        await tx.add_identity(customer_id, Identity(kind="email", value="a@b.c"), True, T0)
        return customer_id

    first = await store.write(lambda tx: claim(tx, "first"))
    with pytest.raises(Exception):
        await store.write(lambda tx: claim(tx, "second"))
    found = await store.read(lambda tx: tx.customers_for_identities([Identity(kind="email", value="a@b.c")]))
    assert list(found.values()) == [first]
    # the failed unit's customer row was rolled back with it
    assert await store.read(lambda tx: tx.fetchval("SELECT COUNT(*) FROM customers")) == 1


async def test_merging_customers_moves_identities_and_cases(store):
    async def setup(tx):
        keep, case_a = await _customer_and_case(tx, "TK-1")
        drop, case_b = await _customer_and_case(tx, "TK-2")
        await tx.add_identity(drop, Identity(kind="phone", value="+393471234567"), True, T0)
        await tx.merge_customers(keep, drop)
        return keep

    keep = await store.write(setup)
    customer = await store.read(lambda tx: tx.get_customer(keep))
    assert [str(i) for i in customer.identities] == ["phone:+393471234567"]
    assert len(await store.read(lambda tx: tx.list_cases(customer_id=keep))) == 2


async def test_outbox_claims_are_leased_and_expired_leases_are_reclaimed(store):
    async def setup(tx):
        _, case_id = await _customer_and_case(tx)
        ids = []
        for n in range(3):
            ids.append(await tx.enqueue_outbound(
                case_id=case_id, message_id=None, channel="api", account="backend",
                recipient=Identity(kind="email", value="a@b.c"), kind="ack", text=f"t{n}", subject=None,
                meta={"n": n}, at=T0 + timedelta(seconds=n)))
        return ids

    ids = await store.write(setup)
    now = T0 + timedelta(minutes=1)
    first = await store.write(lambda tx: tx.claim_due_outbound(now, now + timedelta(minutes=2), 2))
    second = await store.write(lambda tx: tx.claim_due_outbound(now, now + timedelta(minutes=2), 10))
    assert [o.id for o in first] == ids[:2] and [o.id for o in second] == [ids[2]]
    assert all(o.status is OutboundStatus.SENDING for o in first + second)
    assert await store.write(lambda tx: tx.claim_due_outbound(now, now + timedelta(minutes=2), 10)) == []
    later = now + timedelta(minutes=3)  # the node that claimed them died: the lease ran out
    reclaimed = await store.write(lambda tx: tx.claim_due_outbound(later, later + timedelta(minutes=2), 10))
    assert sorted(o.id for o in reclaimed) == ids
    assert reclaimed[0].meta == {"n": 0}


async def _one_outbound(tx) -> int:
    """A case with one acknowledgement queued for a@b.c; its outbox id."""
    _, case_id = await _customer_and_case(tx)
    return await tx.enqueue_outbound(
        case_id=case_id, message_id=None, channel="api", account="backend",
        recipient=Identity(kind="email", value="a@b.c"), kind="ack", text="t", subject=None, meta={}, at=T0)


async def test_finished_outbound_is_not_claimed_again_and_pending_waits_its_turn(store):
    outbound_id = await store.write(_one_outbound)
    retry_at = T0 + timedelta(minutes=10)
    await store.write(lambda tx: tx.finish_outbound(outbound_id, status=OutboundStatus.PENDING, attempts=1,
                                                    next_attempt_at=retry_at, last_error="503", provider_id=None,
                                                    at=T0))
    assert await store.read(lambda tx: tx.next_outbound_due()) == retry_at
    assert await store.write(lambda tx: tx.claim_due_outbound(T0 + timedelta(minutes=9), retry_at, 10)) == []
    [due] = await store.write(lambda tx: tx.claim_due_outbound(retry_at, retry_at + timedelta(minutes=1), 10))
    assert due.attempts == 1 and due.last_error == "503"
    await store.write(lambda tx: tx.finish_outbound(outbound_id, status=OutboundStatus.SENT, attempts=2,
                                                    next_attempt_at=retry_at, last_error=None, provider_id="p-1",
                                                    at=retry_at))
    far = retry_at + timedelta(days=1)
    assert await store.write(lambda tx: tx.claim_due_outbound(far, far, 10)) == []
    assert (await store.read(lambda tx: tx.get_outbound(outbound_id))).provider_id == "p-1"


async def test_only_the_claim_that_holds_an_outbound_row_records_its_outcome(store):
    outbound_id = await store.write(_one_outbound)
    first_lease, second_lease = T0 + timedelta(minutes=2), T0 + timedelta(minutes=5)
    assert len(await store.write(lambda tx: tx.claim_due_outbound(T0, first_lease, 10))) == 1
    assert len(await store.write(lambda tx: tx.claim_due_outbound(T0 + timedelta(minutes=3), second_lease, 10))) == 1

    def finish(lease, status, provider_id=None):
        return store.write(lambda tx: tx.finish_claimed_outbound(
            outbound_id, claimed_until=lease, status=status, next_attempt_at=T0, last_error=None,
            provider_id=provider_id, at=T0 + timedelta(minutes=4)))

    assert await finish(first_lease, OutboundStatus.PENDING) is False  # its lease ran out and was taken over
    await store.write(lambda tx: tx.count_outbound_attempt(outbound_id, None, T0))
    assert await finish(second_lease, OutboundStatus.SENT, "p-2") is True
    row = await store.read(lambda tx: tx.get_outbound(outbound_id))
    assert (row.status, row.attempts, row.provider_id) == (OutboundStatus.SENT, 2, "p-2")
    assert await finish(second_lease, OutboundStatus.FAILED) is False  # once recorded, the claim is spent


async def test_event_log_is_ordered_and_readable_from_a_position(store):
    async def setup(tx):
        _, case_id = await _customer_and_case(tx)
        for n in range(5):
            await tx.append_event(case_id, f"e{n}", "system", {"n": n}, T0)
        return case_id

    case_id = await store.write(setup)
    events = await store.read(lambda tx: tx.events_for_case(case_id))
    assert [e.type for e in events] == ["e0", "e1", "e2", "e3", "e4"]
    after = await store.read(lambda tx: tx.events_after(events[2].id))
    assert [e.data["n"] for e in after] == [3, 4]


async def test_many_concurrent_writes_are_all_durable(store_factory):
    store = await store_factory()
    await store.open()
    ids = await asyncio.gather(*(store.write(lambda tx, n=n: tx.insert_customer(None, f"c{n}", None, T0))
                                 for n in range(300)))
    assert len(set(ids)) == 300
    await store.close()
    reopened = await store_factory()
    await reopened.open()
    assert await reopened.read(lambda tx: tx.fetchval("SELECT COUNT(*) FROM customers")) == 300


async def test_case_listing_pages_newest_first(store):
    async def setup(tx):
        customer_id, _ = await _customer_and_case(tx, "TK-1")
        for n in range(2, 6):
            await tx.insert_case(Case(id=0, ref=f"TK-{n}", customer_id=customer_id, status=CaseStatus.QUEUED,
                                      channel="api", account="a", subject=None, language=None, line=None, team=None,
                                      tier=None, priority=3, created_at=T0, updated_at=T0))

    await store.write(setup)
    page = await store.read(lambda tx: tx.list_cases(limit=2))
    assert [c.ref for c in page] == ["TK-5", "TK-4"]
    rest = await store.read(lambda tx: tx.list_cases(limit=10, before_id=page[-1].id))
    assert [c.ref for c in rest] == ["TK-3", "TK-2", "TK-1"]
    queued = await store.read(lambda tx: tx.list_cases(status="queued"))
    assert len(queued) == 4
    assert await store.read(lambda tx: tx.count_cases_by_status()) == {"new": 1, "queued": 4}


async def test_case_listing_within_a_scope_of_lines_and_teams(store):
    async def setup(tx):
        customer_id, _ = await _customer_and_case(tx, "TK-1")  # no line, no team
        for n, (line, team) in enumerate([("poster", "general"), ("courier", "general"), ("courier", "billing"),
                                          ("poster", "billing"), ("poster", "safety")], start=2):
            await tx.insert_case(Case(id=0, ref=f"TK-{n}", customer_id=customer_id, status=CaseStatus.QUEUED,
                                      channel="api", account="a", subject=None, language=None, line=line, team=team,
                                      tier=None, priority=3, created_at=T0, updated_at=T0))

    await store.write(setup)

    async def refs(**kwargs):
        return [c.ref for c in await store.read(lambda tx: tx.list_cases(**kwargs))]

    assert await refs(scope=(["courier"], [])) == ["TK-4", "TK-3"]
    assert await refs(scope=([], ["billing", "safety"])) == ["TK-6", "TK-5", "TK-4"]
    assert await refs(scope=(["courier"], ["safety"])) == ["TK-6", "TK-4", "TK-3"]
    assert await refs(scope=(["courier"], ["billing"]), limit=2) == ["TK-5", "TK-4"]  # the limit counts what matches
    ids = {c.ref: c.id for c in await store.read(lambda tx: tx.list_cases())}
    assert await refs(scope=(["poster"], []), status="queued", before_id=ids["TK-6"]) == ["TK-5", "TK-2"]
    assert await refs(scope=([], [])) == []
    assert len(ids) == 6 and await refs(scope=None) == [f"TK-{n}" for n in range(6, 0, -1)]


async def test_channel_state_raw_payloads_and_known_ids(store):
    async def unit(tx):
        _, case_id = await _customer_and_case(tx)
        await tx.insert_message(case_id=case_id, direction=Direction.INBOUND, channel="email", account="a@x",
                                external_id="m1@x", conversation=None, sender="email:c@x", text="hi", meta={}, at=T0)
        payload = await tx.insert_raw_payload("email", b"\x00\xffraw", T0)
        await tx.put_channel_state("email", "support", {"uidvalidity": 7, "last_uid": 3}, T0)
        await tx.put_channel_state("email", "support", {"uidvalidity": 7, "last_uid": 9}, T0)
        return case_id, payload

    case_id, payload = await store.write(unit)
    assert await store.read(lambda tx: tx.raw_payload(payload)) == b"\x00\xffraw"
    assert await store.read(lambda tx: tx.channel_state("email", "support")) == {"uidvalidity": 7, "last_uid": 9}
    assert await store.read(lambda tx: tx.channel_state("email", "other")) is None
    known = await store.read(lambda tx: tx.known_external_ids("email", ["m1@x", "m2@x", "m1@x"]))
    assert known == {"m1@x": (case_id, "a@x")}


async def test_quarantine_holds_a_source_once(store):
    first = await store.write(lambda tx: tx.quarantine_message(
        channel="email", account="a@x", source_key="box/1/5", reason="no sender", raw=b"x", meta={"uid": 5}, at=T0))
    again = await store.write(lambda tx: tx.quarantine_message(
        channel="email", account="a@x", source_key="box/1/5", reason="other", raw=b"y", meta={}, at=T0))
    assert first[1] is True and again == (first[0], False)
    [item] = await store.read(lambda tx: tx.list_quarantine())
    assert (item["reason"], item["meta"], item["attempts"]) == ("no sender", {"uid": 5}, 1)
    await store.write(lambda tx: tx.update_quarantined(first[0], status="reprocessed", reason="no sender",
                                                       attempts=2, case_id=None, at=T0))
    assert await store.read(lambda tx: tx.list_quarantine()) == []
    assert (await store.read(lambda tx: tx.get_quarantined(first[0])))["raw"] == b"x"


async def test_failing_identities_and_automatic_mail_counts(store):
    ada = Identity(kind="email", value="ada@x")

    async def unit(tx):
        customer_id, case_id = await _customer_and_case(tx)
        await tx.add_identity(customer_id, ada, verified=True, at=T0)
        ids = []
        for kind in ("ack", "ack", "reply"):
            ids.append(await tx.enqueue_outbound(case_id=case_id, message_id=None, channel="email", account="a@x",
                                                 recipient=ada, kind=kind, text="t", subject=None, meta={}, at=T0))
        await tx.finish_outbound(ids[0], status=OutboundStatus.SENT, attempts=1, next_attempt_at=T0,
                                 last_error=None, provider_id=None, at=T0)
        await tx.execute("UPDATE outbox SET status = 'sending' WHERE id = $1", ids[1])
        return ids

    ids = await store.write(unit)
    count = lambda before, since=T0: store.read(  # noqa: E731
        lambda tx: tx.count_outbound_since("email", "ada@x", ["ack"], since, before))
    assert await count(ids[1]) == 1  # the sent one
    assert await count(ids[1] + 1) == 2  # and the one being sent before it
    assert await count(ids[1] + 1, T0 + timedelta(seconds=1)) == 1  # sent before the window; in flight now
    # a mail counts from when it went out, and still counts when it bounced afterwards (it has a provider id)
    later = T0 + timedelta(hours=2)

    async def went_out_late(tx):
        await tx.finish_outbound(ids[0], status=OutboundStatus.FAILED, attempts=2, next_attempt_at=later,
                                 last_error="bounced: 5.1.1", provider_id="m1@x", at=later)
        await tx.finish_outbound(ids[1], status=OutboundStatus.FAILED, attempts=1, next_attempt_at=later,
                                 last_error="refused", provider_id=None, at=later)

    await store.write(went_out_late)
    assert await count(ids[1], later) == 1 and await count(ids[2] + 1, later) == 1  # refused: it never left
    assert await store.write(lambda tx: tx.mark_identity_failing(ada, "550 user unknown", T0)) is True
    assert await store.read(lambda tx: tx.identity_failing(ada)) == "550 user unknown"
    await store.write(lambda tx: tx.mark_identity_failing(ada, None, T0))
    assert await store.read(lambda tx: tx.identity_failing(ada)) is None
    nobody = Identity(kind="email", value="nobody@x")
    assert await store.write(lambda tx: tx.mark_identity_failing(nobody, "x", T0)) is False


async def test_accounts_and_tokens(store):
    async def unit(tx):
        await tx.put_account("anna", name="Anna", role="agent", agent_id="anna", lines=["poster"], teams=[],
                             password_hash="$argon2id$x", source="config", at=T0)
        await tx.put_account("anna", name="Anna P.", role="supervisor", agent_id="anna", lines=[], teams=["billing"],
                             password_hash=None, source="cli", at=T0)  # None keeps the stored hash
        return await tx.insert_token("anna", "api", "laptop", "digest-1", T0, None)

    token_id = await store.write(unit)
    account = await store.read(lambda tx: tx.account("anna"))
    assert (account["name"], account["role"], account["teams"], account["password_hash"], account["source"]) == (
        "Anna P.", "supervisor", ["billing"], "$argon2id$x", "cli")
    owner = await store.read(lambda tx: tx.token_owner("digest-1"))
    assert (owner["id"], owner["token_id"], owner["token_kind"], owner["token_expires_at"]) == (
        "anna", token_id, "api", None)
    assert await store.read(lambda tx: tx.token_owner("digest-2")) is None
    assert await store.write(lambda tx: tx.revoke_token(account_id="anna", at=T0)) == 1
    assert await store.write(lambda tx: tx.revoke_token(token_hash="digest-1", at=T0)) == 0  # revoked already
    assert await store.read(lambda tx: tx.token_owner("digest-1")) is None
    assert await store.write(lambda tx: tx.set_account_disabled("anna", T0))
    assert (await store.read(lambda tx: tx.account("anna")))["disabled_at"] == T0
    assert not await store.write(lambda tx: tx.set_account_disabled("nobody", T0))


async def test_links_merges_surveys_and_report_rows(store):
    async def unit(tx):
        customer_id, first = await _customer_and_case(tx, "TK-1")
        _, second = await _customer_and_case(tx, "TK-2")
        for case_id, text in ((first, "a"), (second, "b")):
            await tx.insert_message(case_id=case_id, direction=Direction.INBOUND, channel="api", account="backend",
                                    external_id=f"x-{text}", conversation=None, sender="email:a@b.c", text=text,
                                    meta={}, at=T0)
        assert await tx.link_cases(first, second, "other_side", "anna", T0)
        assert not await tx.link_cases(second, first, "other_side", "anna", T0)  # linked both ways already
        moved = await tx.move_messages(second, first)
        await tx.update_case(second, merged_into=first, status=CaseStatus.CLOSED)
        await tx.mark_first_response(first, "anna", T0 + timedelta(minutes=5))
        await tx.mark_first_response(first, "bruno", T0 + timedelta(minutes=9))  # only the first counts
        await tx.update_case(first, resolved_at=T0 + timedelta(hours=1), resolved_by="anna", status=CaseStatus.RESOLVED)
        survey = await tx.insert_survey(first, None, "api", "en", T0 + timedelta(hours=1))
        assert await tx.answer_survey(survey, 2, "slow", T0 + timedelta(hours=2), None)
        assert not await tx.answer_survey(survey, 5, None, T0 + timedelta(hours=3), None)
        return customer_id, first, second, moved

    customer_id, first, second, moved = await store.write(unit)
    assert moved == 1
    assert [(r, c.ref) for r, c in await store.read(lambda tx: tx.linked_cases(first))] == [("other_side", "TK-2")]
    assert [m.text for m in await store.read(lambda tx: tx.messages_for_case(first))] == ["a", "b"]
    assert (await store.read(lambda tx: tx.case_by_id(second))).merged_into == first
    latest, _ = await store.read(lambda tx: tx.last_inbound_from(customer_id))
    assert latest.text == "b"
    assert await store.read(lambda tx: tx.last_inbound_from(customer_id, "email:other@b.c")) is None
    survey = await store.read(lambda tx: tx.latest_survey(first))
    assert (survey["score"], survey["comment"]) == (2, "slow")
    [row] = await store.read(lambda tx: tx.report_rows(T0, T0 + timedelta(days=1)))  # the merged case is left out
    assert (row["ref"], row["first_response_by"], row["resolved_by"], row["csat"]) == ("TK-1", "anna", "anna", 2)
    assert row["first_response_at"] == T0 + timedelta(minutes=5)


async def test_only_a_failed_outbound_can_be_retried(store):
    async def unit(tx):
        _, case_id = await _customer_and_case(tx)
        return await tx.enqueue_outbound(case_id=case_id, message_id=None, channel="api", account="backend",
                                         recipient=Identity(kind="email", value="a@b.c"), kind="reply", text="hi",
                                         subject=None, meta={}, at=T0)

    outbound_id = await store.write(unit)
    assert await store.write(lambda tx: tx.retry_outbound(outbound_id, T0)) is None  # pending: nothing to retry
    await store.write(lambda tx: tx.finish_outbound(outbound_id, status=OutboundStatus.FAILED, attempts=8,
                                                    next_attempt_at=T0, last_error="550", provider_id=None, at=T0))
    again = await store.write(lambda tx: tx.retry_outbound(outbound_id, T0 + timedelta(minutes=1)))
    assert (again.status, again.attempts) == (OutboundStatus.PENDING, 0)
    [claimed] = await store.write(lambda tx: tx.claim_due_outbound(T0 + timedelta(minutes=1),
                                                                   T0 + timedelta(minutes=3), 10))
    assert claimed.id == outbound_id


async def test_text_and_json_with_a_nul_character_are_written(store):
    """A NUL (U+0000) from an odd mail or an API client never fails a write: SQLite keeps it, PostgreSQL (whose
    text and jsonb cannot hold it) stores U+FFFD; a literal backslash-u0000 in the text is left alone."""
    async def unit(tx):
        _, case_id = await _customer_and_case(tx)
        await tx.insert_message(case_id=case_id, direction=Direction.NOTE, channel="api", account="backend",
                                external_id=None, conversation=None, sender="anna", text="a\x00b \\u0000",
                                meta={"k\x00": ["v\x00", {"n": "\x00"}], "literal": "\\u0000"}, at=T0)
        return case_id

    case_id = await store.write(unit)
    [note] = await store.read(lambda tx: tx.messages_for_case(case_id))
    nul = "\x00" if store.backend == "sqlite" else "\ufffd"
    assert note.text == f"a{nul}b \\u0000"
    assert note.meta == {f"k{nul}": [f"v{nul}", {"n": nul}], "literal": "\\u0000"}
