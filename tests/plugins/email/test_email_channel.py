"""The email channel against real servers: Dovecot over IMAP in, an SMTP server out, the whole path through
Switchboard's public surfaces (config, HTTP API), and every way mail goes wrong."""
from __future__ import annotations

import asyncio
import json
import os
import uuid
from datetime import timedelta

import pytest

from plugins.email import MAILBOXES
from router.core.clock import ManualClock
from router.core.model import Identity
from router.core.quarantine import REPROCESSED, QuarantineError
from tests.conftest import READER_TOKEN, TOKEN, auth
from tests.core.test_assignment import MONDAY
from tests.plugins.email.conftest import email_config, mail
from plugins.email.parse import content_hash_id
from tests.plugins.email.test_parse import sample
from tests.test_assignment_api import AGENT_TOKEN, settle


async def started(harness_factory, config, *names):
    h = await harness_factory(config, clock=ManualClock(MONDAY))
    boxes = h.sb.stash[MAILBOXES]
    for name in names or boxes:
        await boxes[name].connect()
    return h, boxes


async def case_of(h, external_id):
    async def unit(tx):
        found = await tx.find_message("email", external_id)
        return None if found is None else await tx.case_by_id(found[1])
    return await h.read(unit)


async def wait_for(predicate, timeout=15.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError("timed out waiting")


def flags(dovecot, user, folder="INBOX"):
    client = dovecot.client(user)
    try:
        client.select_folder(folder, readonly=True)
        uids = client.search(["ALL"])
        return {uid: data[b"FLAGS"] for uid, data in client.fetch(uids, ["FLAGS"]).items()} if uids else {}
    finally:
        client.logout()


# -- the whole path ----------------------------------------------------------------------------------------------
async def test_mail_in_reply_out_and_the_customers_answer_threads_back(http_factory, dovecot, smtp, addresses):
    """Append over IMAP → case on the posters line (IDLE wakes the mailbox) → acknowledgement over SMTP →
    agent accepts and replies through the API → reply over SMTP with threading headers → the customer's answer
    comes back in over IMAP into the same case."""
    os.environ["SB_TEST_AGENT_TOKEN"] = AGENT_TOKEN
    config = email_config(dovecot, smtp.port, {"posters": addresses["posters"]}, integrations=[
        {"name": "desk", "token": {"$env": "SB_TEST_AGENT_TOKEN"}, "scopes": ["agent", "read"]}])
    h = await http_factory(config, clock=ManualClock(MONDAY))
    client = h.client
    await client.put("/api/v1/agents/anna/presence", headers=auth(AGENT_TOKEN), json={"presence": "online"})
    first = mail("Ada Lovelace <ada@example.com>", "Payout missing", "My payout did not arrive.\n\n-- \nAda Lovelace",
                 message_id="first-1@example.com", to=addresses["posters"])
    await asyncio.to_thread(dovecot.append, addresses["posters"], first)
    case = await wait_for(lambda: case_of(h, "first-1@example.com"))
    assert case.line == "poster" and case.channel == "email" and case.account == addresses["posters"]
    ack = (await wait_for(lambda: asyncio.sleep(0, smtp.received)))[0].message
    assert ack["To"] == "ada@example.com" and addresses["posters"] in ack["From"]
    assert ack["Subject"] == f"Payout missing [#{case.ref}]" and ack["Auto-Submitted"] == "auto-replied"
    assert ack["In-Reply-To"] == "<first-1@example.com>" and case.ref in ack.get_content()
    # The agent takes the case and answers.
    await settle(h)
    anna = await (await client.get("/api/v1/agents/anna", headers=auth(READER_TOKEN))).json()
    [offer] = anna["offers"]
    await client.post(f"/api/v1/offers/{offer['id']}/accept", headers=auth(AGENT_TOKEN), json={"agent": "anna"})
    sent = await client.post(f"/api/v1/cases/{case.ref}/replies", headers=auth(AGENT_TOKEN),
                             json={"agent": "anna", "text": "Il bonifico è partito oggi.", "waiting_customer": True})
    assert sent.status == 201, await sent.text()
    reply = (await wait_for(lambda: asyncio.sleep(0, len(smtp.received) >= 2 and smtp.received)))[1].message
    assert reply["Subject"] == f"Re: Payout missing [#{case.ref}]" and reply["Auto-Submitted"] is None
    assert reply["In-Reply-To"] == "<first-1@example.com>" and reply["References"] == "<first-1@example.com>"
    assert reply.get_content().strip() == "Il bonifico è partito oggi."
    assert reply["Reply-To"].addresses[0].username.startswith(addresses["posters"].split("@")[0] + "+" + case.ref)
    # The customer answers from their mail client: In-Reply-To the reply, to the tokenised reply address.
    answer = mail("ada@example.com", f"Re: {reply['Subject']}", "Thanks, it arrived.\n\nOn Mon, Anna wrote:\n> Il bonifico",
                  message_id="answer-1@example.com", to=str(reply["Reply-To"]),
                  headers={"In-Reply-To": reply["Message-ID"], "References": f"<first-1@example.com> {reply['Message-ID']}"})
    await asyncio.to_thread(dovecot.append, addresses["posters"], answer)
    again = await wait_for(lambda: case_of(h, "answer-1@example.com"))
    assert again.ref == case.ref and again.status.value == "assigned"  # back from waiting on the customer
    body = await (await client.get(f"/api/v1/cases/{case.ref}", headers=auth(READER_TOKEN))).json()
    inbound = [m for m in body["messages"] if m["direction"] == "in"]
    assert [m["text"] for m in inbound] == ["My payout did not arrive.", "Thanks, it arrived."]
    assert inbound[1]["meta"]["details"]["full_text"].endswith("> Il bonifico")
    assert inbound[0]["meta"]["raw_ref"].startswith("raw_payloads/")
    # Both mails are marked seen on the server once stored.
    assert all(b"\\Seen" in f for f in flags(dovecot, addresses["posters"]).values())
    async def counted():  # the mailbox counts a mail once its write returned, a moment after it is readable
        status = await (await client.get("/api/v1/email/mailboxes", headers=auth(READER_TOKEN))).json()
        [box] = status["mailboxes"]
        return box if box["counts"].get("appended") else None

    box = await wait_for(counted)
    assert box["connected"] and box["counts"]["created"] == 1 and box["counts"]["appended"] == 1


# -- threading -----------------------------------------------------------------------------------------------------
async def test_threading_by_references_then_subject_tag_and_a_new_mail_opens_a_new_case(
        harness_factory, dovecot, smtp, addresses):
    h, boxes = await started(harness_factory, email_config(dovecot, smtp.port, {"posters": addresses["posters"]}))
    box = boxes["posters"]
    user = addresses["posters"]
    dovecot.append(user, mail(message_id="t1@example.com"))
    await box.sync()
    case = await case_of(h, "t1@example.com")
    dovecot.append(
        user,
        # A reply to the customer's own first mail (References), a reply quoting the case tag with a new subject,
        # a tag of someone else's case (ignored), and a fresh mail: a new case.
        mail(message_id="t2@example.com", subject="more", headers={"References": "<t1@example.com>"}),
        mail(message_id="t3@example.com", subject=f"Update on [#{case.ref}]"),
        mail("eve@example.com", message_id="t4@example.com", subject=f"[#{case.ref}] let me in"),
        mail(message_id="t5@example.com", subject="Another problem"),
    )
    counts = await box.sync()
    assert counts == {"appended": 2, "created": 2}
    assert (await case_of(h, "t2@example.com")).id == case.id
    assert (await case_of(h, "t3@example.com")).id == case.id
    assert (await case_of(h, "t4@example.com")).id != case.id
    assert (await case_of(h, "t5@example.com")).id not in (case.id, (await case_of(h, "t4@example.com")).id)


# -- bad input -----------------------------------------------------------------------------------------------------
async def test_a_poison_mail_is_quarantined_and_the_rest_of_the_mailbox_flows(http_factory, dovecot, smtp, addresses):
    user = addresses["posters"]
    config = email_config(dovecot, smtp.port, {"posters": user}, supervise=True)
    dovecot.append(user, mail(message_id="p1@example.com"), b"garbage without any header\r\n\r\n\x00\xff",
                   mail("no-address-here", message_id="p3@example.com"), mail(message_id="p4@example.com"))
    h = await http_factory(config, clock=ManualClock(MONDAY))
    assert await wait_for(lambda: case_of(h, "p4@example.com"))
    assert await case_of(h, "p1@example.com")
    listed = await wait_for(lambda: _quarantine(h, 2))
    reasons = " | ".join(item["reason"] for item in listed)
    assert "not an email message" in reasons and "no sender address" in reasons
    assert all(item["account"] == user and item["status"] == "held" for item in listed)
    # Every message, the poison ones included, is done with on the server: none blocks the mailbox.
    assert all(b"\\Seen" in f for f in flags(dovecot, user).values()) and len(flags(dovecot, user)) == 4
    detail = await (await h.client.get(f"/api/v1/quarantine/{listed[0]['id']}", headers=auth(TOKEN))).json()
    assert detail["raw_preview"].startswith("garbage without any header")
    # Reprocessing cannot fix a mail with no sender: it stays held, the attempt counted.
    again = await h.client.post(f"/api/v1/quarantine/{listed[1]['id']}/reprocess", headers=auth(TOKEN))
    assert again.status == 422 and (await again.json())["attempts"] == 2
    denied = await h.client.post(f"/api/v1/quarantine/{listed[1]['id']}/reprocess", headers=auth(READER_TOKEN))
    assert denied.status == 403


async def _quarantine(h, n):
    response = await h.client.get("/api/v1/quarantine", headers=auth(TOKEN))
    items = (await response.json())["quarantine"]
    return items if len(items) >= n else None


async def test_a_quarantined_mail_is_reprocessed_into_a_case_once_it_can_be_read(harness_factory, dovecot, smtp,
                                                                                 addresses):
    h, boxes = await started(harness_factory, email_config(dovecot, smtp.port, {"posters": addresses["posters"]}))
    # Held earlier (a parser bug, say), now readable: reprocessing makes it a case, once.
    big = mail(message_id="huge-text@example.com", body="x" * 50)
    item_id = await h.sb.quarantine.hold(channel="email", account=addresses["posters"], source_key="posters/1/99",
                                         reason="parser crashed: test", raw=big, meta={"mailbox": "posters"})
    done = await h.sb.quarantine.reprocess(item_id)
    assert done["status"] == REPROCESSED and done["case_ref"]
    assert (await case_of(h, "huge-text@example.com")).ref == done["case_ref"]
    with pytest.raises(QuarantineError, match="already reprocessed"):
        await h.sb.quarantine.reprocess(item_id)


async def test_same_mail_in_two_mailboxes_is_one_case_and_the_second_delivery_is_noted(
        harness_factory, dovecot, smtp, addresses):
    h, boxes = await started(harness_factory, email_config(
        dovecot, smtp.port, {"posters": addresses["posters"], "taskers": addresses["taskers"]}))
    both = mail(message_id="cc-1@example.com", to=f"{addresses['posters']}, {addresses['taskers']}")
    no_id = mail(message_id=None, body="No id here")
    for user in (addresses["posters"], addresses["taskers"]):
        dovecot.append(user, both, no_id)
    assert await boxes["posters"].sync() == {"created": 2}  # neither refers to anything: two new cases
    assert await boxes["taskers"].sync() == {"duplicate": 2}
    noted = await h.read(lambda tx: tx.fetch("SELECT case_id, data FROM events WHERE type = 'message.duplicate_delivery'"))
    cases = {(await case_of(h, "cc-1@example.com")).id, (await case_of(h, content_hash_id(no_id))).id}
    # Each second delivery is noted on its case: one by Message-ID at the header stage, one by content hash.
    assert {row["case_id"] for row in noted} == cases
    assert {json.loads(row["data"])["account"] if isinstance(row["data"], str) else row["data"]["account"]
            for row in noted} == {addresses["taskers"]}
    count = await h.read(lambda tx: tx.fetchval("SELECT COUNT(*) FROM messages WHERE channel = 'email'"))
    assert count == 2 + 2  # two mails stored once each, plus the acknowledgements of the two cases


async def test_refetching_after_a_crash_or_a_uidvalidity_change_duplicates_nothing(
        harness_factory, dovecot, smtp, addresses):
    user = addresses["posters"]
    h, boxes = await started(harness_factory, email_config(
        dovecot, smtp.port, {"posters": user}, posters_options={"after_ingest": "leave"}))
    box = boxes["posters"]
    dovecot.append(user, *(mail(message_id=f"r{i}@example.com") for i in range(5)), mail(message_id=None, body="anon"))
    assert sum((await box.sync()).values()) == 6
    # A crash after the mail was stored but before the last UID was: the state is older than the store.
    await h.sb.store.write(lambda tx: tx.execute("DELETE FROM channel_state"))
    assert await box.sync() == {"duplicate": 6}
    # The server renumbers the folder (UIDVALIDITY changes): a full resync that still stores nothing twice.
    await h.sb.store.write(lambda tx: tx.put_channel_state("email", "posters", {"uidvalidity": 1, "last_uid": 6},
                                                           h.clock.now()))
    assert await box.sync() == {"duplicate": 6} and box.status.counts["resyncs"] == 1
    stored = await h.read(lambda tx: tx.fetchval("SELECT COUNT(*) FROM messages WHERE direction = 'in'"))
    assert stored == 6
    assert all(b"\\Seen" not in f for f in flags(dovecot, user).values())  # after_ingest: leave


async def test_a_rebuilt_folder_keeps_one_quarantine_entry_per_mail(harness_factory, dovecot, smtp, addresses):
    user = addresses["posters"]
    client = dovecot.client(user)
    client.create_folder("Support")
    client.logout()
    mails = [b"garbage without headers\r\n\r\nxx", mail(message_id="big@example.com", body="y" * 10_000),
             mail(message_id="ok@example.com")]
    dovecot.append(user, *mails, folder="Support")
    h, boxes = await started(harness_factory, email_config(
        dovecot, smtp.port, {"posters": user}, limits={"max_message_bytes": 4096},
        posters_options={"imap": {**dovecot.imap_settings(user), "folder": "Support"}}))
    box = boxes["posters"]
    first = await box.sync()
    assert first == {"quarantined": 1, "too_large": 1, "created": 1}, first
    before = box.status.uidvalidity
    await asyncio.sleep(1.1)  # Dovecot derives UIDVALIDITY from the clock: the rebuilt folder gets a new one
    client = dovecot.client(user)
    client.select_folder("INBOX")
    client.delete_folder("Support")
    client.create_folder("Support")
    client.logout()
    dovecot.append(user, *mails, folder="Support")  # the server rebuilt the folder: same mails, new UIDs
    second = await box.sync()
    assert box.status.uidvalidity != before and second.get("duplicate") == 1, second
    items = await h.read(lambda tx: tx.list_quarantine())
    assert len(items) == 2 and sorted(i["reason"][:9] for i in items) == ["Unparseab", "message o"]
    assert await h.read(lambda tx: tx.fetchval("SELECT COUNT(*) FROM messages WHERE direction = 'in'")) == 1


async def test_oversized_mail_is_left_on_the_server_and_shown_in_the_quarantine(harness_factory, dovecot, smtp,
                                                                                addresses):
    user = addresses["posters"]
    h, boxes = await started(harness_factory, email_config(
        dovecot, smtp.port, {"posters": user}, limits={"max_message_bytes": 4096, "max_attachment_bytes": 100}))
    dovecot.append(user, mail(message_id="big@example.com", body="y" * 10_000), mail(message_id="ok@example.com"))
    assert await boxes["posters"].sync() == {"too_large": 1, "created": 1}
    [item] = await h.read(lambda tx: tx.list_quarantine())
    assert "over limits.max_message_bytes" in item["reason"] and "UID 1" in item["reason"]
    assert flags(dovecot, user) == {1: (), 2: (b"\\Seen",)}  # the big one untouched on the server
    retried = await h.sb.quarantine.reprocess(item["id"])
    assert retried["status"] == "held" and "still on the server" in retried["reason"]


async def test_move_after_ingest_puts_stored_mail_in_the_folder(harness_factory, dovecot, smtp, addresses):
    user = addresses["posters"]
    h, boxes = await started(harness_factory, email_config(
        dovecot, smtp.port, {"posters": user}, posters_options={"after_ingest": "move", "move_to": "Switchboard"}))
    dovecot.append(user, mail(), mail())
    await boxes["posters"].sync()
    assert flags(dovecot, user) == {} and len(flags(dovecot, user, "Switchboard")) == 2


async def test_a_mailbox_that_is_down_does_not_stop_the_others(http_factory, dovecot, smtp, addresses):
    config = email_config(dovecot, smtp.port, {"posters": addresses["posters"], "taskers": addresses["taskers"]},
                          taskers_options={"imap": {**dovecot.imap_settings(addresses["taskers"]), "port": 9}})
    dovecot.append(addresses["posters"], mail(message_id="up-1@example.com"))
    h = await http_factory(config, clock=ManualClock(MONDAY))
    assert await wait_for(lambda: case_of(h, "up-1@example.com"))
    status = await wait_for(lambda: _failing_status(h))
    assert "ConnectionRefusedError" in status["last_error"] or "Errno 111" in status["last_error"]


async def _failing_status(h):
    body = await (await h.client.get("/api/v1/email/mailboxes", headers=auth(READER_TOKEN))).json()
    failing = [m for m in body["mailboxes"] if m["name"] == "taskers" and m["failures"] >= 1]
    return failing[0] if failing else None


# -- loops, bounces and failures out -------------------------------------------------------------------------------
async def test_machine_mail_gets_no_acknowledgement_and_automatic_mail_is_rate_limited(
        harness_factory, dovecot, smtp, addresses):
    user = addresses["posters"]
    h, boxes = await started(harness_factory, email_config(
        dovecot, smtp.port, {"posters": user}, auto_mail_limit={"count": 2, "per": "1h"}))
    dovecot.append(user, mail("ooo@example.com", "Out of office", "Back Monday", headers={"Auto-Submitted": "auto-replied"}),
                   mail("list@example.com", "News", "Newsletter", headers={"List-Id": "<news.example.com>"}))
    await boxes["posters"].sync()
    outbox = await h.read(lambda tx: tx.fetch("SELECT id FROM outbox"))
    assert outbox == []  # cases exist, nobody was answered automatically
    # Three new cases from one address in an hour: the third acknowledgement is held back as a likely loop.
    dovecot.append(user, *(mail("loop@example.com", f"Problem {i}") for i in range(3)))
    await boxes["posters"].sync()
    await h.sb.outbox.run_once()
    rows = await h.read(lambda tx: tx.fetch("SELECT status, last_error FROM outbox ORDER BY id"))
    assert [r["status"] for r in rows] == ["sent", "sent", "failed"]
    assert "2 automatic mails went to loop@example.com in the last 1h" in rows[2]["last_error"]
    assert len(smtp.received) == 2


async def test_automatic_mail_held_up_by_an_outage_counts_when_it_went_out(
        harness_factory, dovecot, smtp, addresses):
    user = addresses["posters"]
    h, boxes = await started(harness_factory, email_config(
        dovecot, smtp.port, {"posters": user}, auto_mail_limit={"count": 2, "per": "1h"}))
    smtp.refuse["loop@example.com"] = (451, "4.3.0 mailbox busy")  # the outage: every attempt is retried
    dovecot.append(user, *(mail("loop@example.com", f"Problem {i}") for i in range(2)))
    await boxes["posters"].sync()
    await h.sb.outbox.run_once()
    held = await h.read(lambda tx: tx.fetch("SELECT status FROM outbox ORDER BY id"))
    assert [r["status"] for r in held] == ["pending"] * 2
    h.clock.advance(timedelta(hours=2))  # longer than the limit's window: queued 2 h ago, sent only now
    del smtp.refuse["loop@example.com"]
    await h.sb.outbox.run_once()
    assert len(smtp.received) == 2
    h.clock.advance(timedelta(minutes=1))
    dovecot.append(user, mail("loop@example.com", "Problem 3"))  # a third within the hour: held back
    await boxes["posters"].sync()
    await h.sb.outbox.run_once()
    rows = await h.read(lambda tx: tx.fetch("SELECT status, last_error FROM outbox ORDER BY id"))
    assert [r["status"] for r in rows] == ["sent", "sent", "failed"] and len(smtp.received) == 2
    assert "2 automatic mails went to loop@example.com in the last 1h" in rows[2]["last_error"]


async def _acknowledged(harness_factory, dovecot, smtp, addresses, sender: str, message_id: str):
    """A customer's mail became a case and its acknowledgement went out: (harness, mailboxes, mailbox user,
    case, the acknowledgement's Message-ID)."""
    user = addresses["posters"]
    h, boxes = await started(harness_factory, email_config(dovecot, smtp.port, {"posters": user}))
    dovecot.append(user, mail(sender, message_id=message_id))
    await boxes["posters"].sync()
    await h.sb.outbox.run_once()
    [ack] = smtp.received
    return h, boxes, user, await case_of(h, message_id), ack.message["Message-ID"].strip("<>")


def _report(original_id: str, final: str = "gone@example.org", action: str = "failed", status: str = "5.1.1") -> bytes:
    """A delivery status report (the recorded sample) about `original_id`, naming `final` as the recipient."""
    return (sample("dsn_bounce.eml").replace(b"{ORIGINAL_ID}", original_id.encode())
            .replace(b"bounce-1@", f"bounce-{uuid.uuid4().hex[:6]}@".encode())
            .replace(b"Final-Recipient: rfc822; gone@example.org", f"Final-Recipient: rfc822; {final}".encode())
            .replace(b"Action: failed", f"Action: {action}".encode())
            .replace(b"Status: 5.1.1", f"Status: {status}".encode()))


async def test_a_bounce_lands_in_the_case_and_marks_the_address_failing(harness_factory, dovecot, smtp, addresses):
    h, boxes, user, case, original = await _acknowledged(harness_factory, dovecot, smtp, addresses,
                                                         "gone@example.org", "g1@example.org")
    dovecot.append(user, _report(original))
    assert await boxes["posters"].sync() == {"bounce": 1}
    messages = await h.read(lambda tx: tx.messages_for_case(case.id))
    assert messages[-1].meta["details"]["bounce"]["status"] == "5.1.1"
    [row] = await h.read(lambda tx: tx.outbound_for_case(case.id))
    assert row.status.value == "failed" and "5.1.1" in row.last_error
    failing = await h.read(lambda tx: tx.identity_failing(Identity(kind="email", value="gone@example.org")))
    assert "User unknown" in failing
    events = [e.type for e in await h.read(lambda tx: tx.events_for_case(case.id))]
    assert "outbound.bounced" in events and "identity.failing" in events
    # No more automatic mail to an address that bounces.
    dovecot.append(user, mail("gone@example.org", "Another thing", message_id="g2@example.org"))
    await boxes["posters"].sync()
    await h.sb.outbox.run_once()
    rows = await h.read(lambda tx: tx.fetch("SELECT status, last_error FROM outbox ORDER BY id"))
    assert rows[-1]["status"] == "failed" and "marked failing" in rows[-1]["last_error"] and len(smtp.received) == 1


async def test_a_bounce_from_a_forwarding_address_lands_in_the_case_it_bounced_from(
        harness_factory, dovecot, smtp, addresses):
    h, boxes, user, case, original = await _acknowledged(harness_factory, dovecot, smtp, addresses,
                                                         "Ada Lovelace <ada@company.example>", "f1@example.org")
    # ada@company.example forwards to a mailbox that no longer exists: the report names that one
    dovecot.append(user, _report(original, "ada.old@gmail.example"))
    assert await boxes["posters"].sync() == {"bounce": 1}
    messages = await h.read(lambda tx: tx.messages_for_case(case.id))
    assert messages[-1].meta["details"]["bounce"]["recipients"] == ["ada.old@gmail.example"]
    assert messages[-1].sender == "email:ada@company.example"
    [row] = await h.read(lambda tx: tx.outbound_for_case(case.id))
    assert row.status.value == "failed"
    customer = await h.read(lambda tx: tx.get_customer(case.customer_id))
    assert customer.display_name == "Ada Lovelace"  # not "Mail Delivery System"
    assert await h.read(lambda tx: tx.fetchval("SELECT COUNT(*) FROM customers")) == 1


@pytest.mark.parametrize("action, status", [("delayed", "4.4.7"), ("delivered", "2.0.0")])
async def test_delay_and_success_notices_do_not_fail_the_mail(harness_factory, dovecot, smtp, addresses,
                                                              action, status):
    h, boxes, user, case, original = await _acknowledged(harness_factory, dovecot, smtp, addresses,
                                                         "slow@example.org", "d1@example.org")
    dovecot.append(user, _report(original, "slow@example.org", action, status))
    await boxes["posters"].sync()
    [row] = await h.read(lambda tx: tx.outbound_for_case(case.id))
    assert row.status.value == "sent" and row.last_error is None
    assert await h.read(lambda tx: tx.identity_failing(Identity(kind="email", value="slow@example.org"))) is None
    messages = await h.read(lambda tx: tx.messages_for_case(case.id))
    assert messages[-1].meta["details"]["bounce"]["action"] == action  # the notice is kept on the case
    assert await h.read(lambda tx: tx.fetchval("SELECT COUNT(*) FROM cases")) == 1


@pytest.mark.parametrize("code, status", [(550, "failed"), (451, "pending")])
async def test_smtp_refusals_fail_or_retry_visibly(harness_factory, dovecot, smtp, addresses, code, status):
    user = addresses["posters"]
    h, boxes = await started(harness_factory, email_config(dovecot, smtp.port, {"posters": user}))
    smtp.refuse["nobody@example.net"] = (code, "5.1.1 no such user" if code == 550 else "4.7.1 try later")
    dovecot.append(user, mail("nobody@example.net"))
    await boxes["posters"].sync()
    await h.sb.outbox.run_once()
    [row] = await h.read(lambda tx: tx.fetch("SELECT status, last_error FROM outbox"))
    assert row["status"] == status and str(code) in row["last_error"]


# -- the server side misbehaving --------------------------------------------------------------------------------------
async def _sync_until_done(box, attempts=6):
    """What the mailbox's own loop does: sync, and after a failure reconnect and sync again."""
    outcomes: dict[str, int] = {}
    for _ in range(attempts):
        try:
            for outcome, n in (await box.sync()).items():
                outcomes[outcome] = outcomes.get(outcome, 0) + n
            return outcomes
        except Exception:  # noqa: BLE001 - as Mailbox.run: an IMAP failure means reconnect and go on
            await box.session.close()
            await box.connect()
    raise AssertionError(f"the mailbox never got past the failure: {outcomes}")


async def test_a_message_the_server_cannot_return_is_quarantined_and_the_rest_flows(
        harness_factory, dovecot, smtp, addresses):
    import pwd

    user = addresses["posters"]
    dovecot.append(user, *(mail(message_id=f"u{i}@example.com", body=f"body {i} " * 50) for i in range(3)))
    h, boxes = await started(harness_factory, email_config(dovecot, smtp.port, {"posters": user}))
    folder = dovecot.root / "mail" / user
    [damaged] = sorted((folder / "new").iterdir()) [:1] or sorted((folder / "cur").iterdir())[:1]
    os.chmod(damaged, 0)  # a file the server can no longer read (a damaged disk, wrong ownership)
    if os.geteuid() == 0:
        os.chown(damaged, pwd.getpwnam("root").pw_uid, 0)
    outcomes = await _sync_until_done(boxes["posters"])
    stored = [bool(await h.read(lambda tx, i=i: tx.find_message("email", f"u{i}@example.com"))) for i in range(3)]
    assert stored.count(True) == 2 and outcomes.get("created") == 2, (stored, outcomes)
    [item] = await h.read(lambda tx: tx.list_quarantine())
    assert "failed 3 times to return this message" in item["reason"] and item["meta"]["unfetchable"] is True
    assert await boxes["posters"].sync() in ({}, {"unfetchable": 1})  # later syncs go past it
    assert len(await h.read(lambda tx: tx.list_quarantine())) == 1
    again = await h.sb.quarantine.reprocess(item["id"])  # headers alone are no case: it stays held, saying why
    assert again["status"] == "held" and "server could not return this message" in again["reason"]


async def test_a_large_folder_is_searched_in_windows(harness_factory, dovecot, smtp, addresses, monkeypatch):
    import plugins.email.mailbox as mailbox_module

    monkeypatch.setattr(mailbox_module, "SEARCH_WINDOW", 2)  # as with 50,000 UIDs a window on a huge folder
    user = addresses["posters"]
    dovecot.append(user, *(mail(message_id=f"w{i}@example.com") for i in range(5)))
    h, boxes = await started(harness_factory, email_config(dovecot, smtp.port, {"posters": user}))
    assert await boxes["posters"].sync() == {"created": 5}
    dovecot.append(user, mail(message_id="w5@example.com"))
    assert await boxes["posters"].sync() == {"created": 1}
    assert await h.read(lambda tx: tx.fetchval("SELECT COUNT(*) FROM messages WHERE direction = 'in'")) == 6


async def test_the_safety_net_poll_syncs_a_mailbox_without_idle(dovecot, smtp, addresses, store_factory):
    from router.app import Switchboard
    from router.plugins import build_plugin_manager

    user = addresses["posters"]
    config = email_config(dovecot, smtp.port, {"posters": user},
                          posters_options={"idle": False, "poll_interval": "1s"})
    sb = Switchboard(config, plugin_manager=build_plugin_manager((), entry_points=False), store=await store_factory(),
                     clock=ManualClock(MONDAY))
    await sb.start()  # in the background, as `switchboard run`: the mailbox's task and the poll job
    try:
        await asyncio.sleep(1.5)  # the first sync ran at start; the mail comes after it
        dovecot.append(user, mail(message_id="poll1@example.com"))
        for _ in range(60):  # the mailbox waits on its own for its poll interval too: the job is what wakes it
            if await sb.store.read(lambda tx: tx.find_message("email", "poll1@example.com")):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the poll never synced the mailbox")
        jobs = {job.id: job.next_run_time for job in sb.scheduler.get_jobs()}
        assert jobs["email-poll-posters"] is not None  # scheduled, not paused
    finally:
        await sb.stop()


def test_moving_mail_into_the_folder_it_is_read_from_is_refused(dovecot):
    from router.config import ConfigError

    from plugins.email import settings_of

    config = email_config(dovecot, None, {"posters": "p@taskly.example"},
                          posters_options={"after_ingest": "move", "move_to": "inbox"})
    with pytest.raises(ConfigError, match="is the folder read"):
        settings_of(config)


async def test_stopping_does_not_wait_on_a_server_that_trickles(dovecot, smtp, addresses, store_factory):
    from router.app import Switchboard
    from router.plugins import build_plugin_manager
    from tests.plugins.email.trickling_imap import TricklingImap

    server = TricklingImap(every=2.0)  # one byte of the FETCH answer every 2 s: each read beats the 3 s timeout
    user = addresses["posters"]
    imap = {**dovecot.imap_settings(user), "port": server.port, "security": "none", "timeout": "3s"}
    config = email_config(dovecot, smtp.port, {"posters": user}, posters_options={"imap": imap})
    sb = Switchboard(config, plugin_manager=build_plugin_manager((), entry_points=False), store=await store_factory(),
                     clock=ManualClock(MONDAY))
    await sb.start()
    try:
        for _ in range(100):
            if server.fetching.is_set():
                break
            await asyncio.sleep(0.05)
        assert server.fetching.is_set(), "the mailbox never fetched"
        # A hang detector, not a timing target: the fetch would go on for half an hour.
        await asyncio.wait_for(sb.stop(), 20)
    finally:
        server.close()


async def test_oversized_mails_without_a_message_id_are_each_their_own_entry(harness_factory, dovecot, smtp,
                                                                             addresses):
    user = addresses["posters"]
    h, boxes = await started(harness_factory, email_config(dovecot, smtp.port, {"posters": user},
                                                           limits={"max_message_bytes": 4096}))
    dovecot.append(user, mail(message_id=None, body="y" * 10_000), mail(message_id=None, body="z" * 12_000))
    assert await boxes["posters"].sync() == {"too_large": 2}
    assert len(await h.read(lambda tx: tx.list_quarantine())) == 2
