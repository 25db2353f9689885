"""The agent workspace over HTTP, as people use it: signing in, the live stream (and catching up after a
reconnect), reading and working cases, who may do what, transfers, merges, links, notes, failed deliveries,
CSAT surveys and the supervisor's views. Real stores (both backends), a real server and a real webhook."""
from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
from datetime import timedelta

import pytest

from router.core.assigner import ASSIGNER
from router.core.clock import ManualClock
from tests.conftest import TOKEN, auth, make_config, webhook_integration
from tests.core.test_assignment import MONDAY, agent, sections

PASSWORD = "correct horse battery"


def workspace_config(receiver_url="http://127.0.0.1:9/unused", **over):
    import os

    os.environ["SB_TEST_ANNA_PASSWORD"] = PASSWORD
    data = sections([agent("anna"), agent("bruno"), agent("carla", teams=("quality",)),
                     agent("dario", teams=("general",), lines=("courier",))])
    data["teams"]["quality"] = {"tier": "L1"}
    data["integrations"] = [webhook_integration(receiver_url, scopes=["ingest", "read", "supervise"])]
    data["accounts"] = [
        {"id": "anna", "name": "Anna", "password": {"$env": "SB_TEST_ANNA_PASSWORD"}},
        {"id": "bruno", "name": "Bruno"},
        {"id": "carla", "name": "Carla"},
        {"id": "dario", "name": "Dario"},
        {"id": "pia", "name": "Pia", "role": "supervisor", "lines": ["poster"]},
        {"id": "cora", "name": "Cora", "role": "supervisor", "lines": ["courier"]},
    ]
    data.update(over)
    return make_config(**data)


class Desk:
    """The test's seat at the workspace: tokens for everyone, customers writing in, streams to read."""

    def __init__(self, h, receiver):
        self.h, self.sb, self.client, self.receiver = h, h.sb, h.client, receiver
        self.tokens: dict[str, str] = {}
        self.n = 0

    async def setup(self):
        for account in ("anna", "bruno", "carla", "dario", "pia", "cora"):
            self.tokens[account] = await self.sb.accounts.issue(account, "api", "tests")
        return self

    def as_(self, account):
        return auth(self.tokens[account])

    async def online(self, *agents):
        for name in agents:
            response = await self.client.put("/api/v1/me/presence", headers=self.as_(name), json={"presence": "online"})
            assert response.status == 200, await response.text()

    async def customer_writes(self, text="My payout did not arrive", sender="ada@example.com", role="poster",
                              **extra):
        self.n += 1
        response = await self.client.post("/api/v1/messages", headers=auth(TOKEN), json={
            "external_id": f"m{self.n}", "sender": {"kind": "email", "value": sender}, "text": text,
            "language": "en", "context": {"role": role}, **extra})
        assert response.status in (200, 202), await response.text()
        await self.settle()
        return (await response.json())["case"]["ref"]

    async def settle(self):
        await self.sb.stash[ASSIGNER].settle()

    def offer_of(self, ref):
        assigner = self.sb.stash[ASSIGNER]
        return next(o for o in assigner.offers.values() if assigner.cases[o.case_id].case.ref == ref)

    async def take(self, name, ref):
        """`name` accepts the offer of `ref` (which must be theirs)."""
        offer = self.offer_of(ref)
        assert offer.agent_id == name, f"{ref} was offered to {offer.agent_id}, not {name}"
        response = await self.client.post(f"/api/v1/offers/{offer.id}/accept", headers=self.as_(name), json={})
        assert response.status == 200, await response.text()

    async def resolved_and_surveyed(self, name="anna"):
        """A case `name` took and resolved, whose satisfaction survey reached the customer."""
        ref = await self.customer_writes()
        await self.take(name, ref)
        resolved = await self.client.post(f"/api/v1/cases/{ref}/status", headers=self.as_(name),
                                          json={"status": "resolved"})
        assert resolved.status == 200, await resolved.text()
        await self.deliveries("csat")
        return ref

    async def case(self, ref, who="pia"):
        response = await self.client.get(f"/api/v1/cases/{ref}", headers=self.as_(who))
        assert response.status == 200, await response.text()
        return await response.json()

    async def deliveries(self, kind, count=1):
        """Webhook bodies of this kind, once `count` of them arrived (the server's outbox delivers them)."""
        for _ in range(200):
            await self.sb.outbox.run_once()
            found = [b for b in (json.loads(r["body"]) for r in self.receiver.requests) if b["kind"] == kind]
            if len(found) >= count:
                return found
            await asyncio.sleep(0.02)
        raise AssertionError(f"no {kind} delivery arrived; got {[r['body'][:80] for r in self.receiver.requests]}")


@pytest.fixture
async def desk(http_factory, webhook_receiver):
    h = await http_factory(workspace_config(webhook_receiver.url), clock=ManualClock(MONDAY))
    return await Desk(h, webhook_receiver).setup()


class Stream:
    """A live stream read like a browser's EventSource does: frames with ids, resumable with Last-Event-ID."""

    def __init__(self, response):
        self.response = response
        self.buffer = b""

    @classmethod
    async def open(cls, client, headers, last_id=None):
        if last_id is not None:
            headers = {**headers, "Last-Event-ID": str(last_id)}
        response = await client.get("/api/v1/stream", headers=headers)
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/event-stream")
        return cls(response)

    async def next(self, timeout=5.0):
        while b"\n\n" not in self.buffer:
            self.buffer += await asyncio.wait_for(self.response.content.readany(), timeout)
        raw, self.buffer = self.buffer.split(b"\n\n", 1)
        fields = dict(line.split(": ", 1) for line in raw.decode().splitlines() if not line.startswith(":")
                      and ": " in line)
        if "data" not in fields:  # the greeting (retry: ...) and comments carry no event
            return await self.next(timeout)
        return {"id": int(fields["id"]) if "id" in fields else None, "event": fields.get("event"),
                "data": json.loads(fields["data"]) if "data" in fields else None}

    async def until(self, event_type, timeout=5.0, **match):
        seen = []
        while True:
            frame = await self.next(timeout)
            seen.append(frame)
            if frame["event"] == event_type and all(frame["data"]["data"].get(k) == v for k, v in match.items()):
                return frame, seen

    def close(self):
        self.response.close()


# -- signing in ---------------------------------------------------------------------------------------------------
async def test_login_sets_a_session_that_works_until_logout(desk):
    client = desk.client
    wrong = await client.post("/api/v1/auth/login", json={"account": "anna", "password": "nope-nope"})
    nobody = await client.post("/api/v1/auth/login", json={"account": "ghost", "password": "nope-nope"})
    assert wrong.status == nobody.status == 401
    assert (await wrong.json())["detail"] == (await nobody.json())["detail"] == "wrong account or password"
    no_password = await client.post("/api/v1/auth/login", json={"account": "bruno", "password": "anything-at-all"})
    assert no_password.status == 401  # an account without a password cannot sign in with one

    ok = await client.post("/api/v1/auth/login", json={"account": "anna", "password": PASSWORD, "token": True})
    assert ok.status == 200
    assert "sb_session" in ok.cookies and ok.cookies["sb_session"]["httponly"]
    me = await (await client.get("/api/v1/me")).json()  # the cookie jar carries the session
    assert me["account"]["role"] == "agent" and me["agent"]["presence"] == "offline"
    # A change made with the cookie but without the console's header is refused (cross-site request forgery).
    forged = await client.put("/api/v1/me/presence", json={"presence": "online"})
    assert forged.status == 403 and "X-Requested-With" in (await forged.json())["detail"]
    honest = await client.put("/api/v1/me/presence", json={"presence": "online"},
                              headers={"X-Requested-With": "switchboard"})
    assert honest.status == 200 and (await honest.json())["presence"] == "online"
    out = await client.post("/api/v1/auth/logout", headers={"X-Requested-With": "switchboard"})
    assert out.status == 204
    token = (await ok.json())["token"]
    after = await client.get("/api/v1/me", headers=auth(token))
    assert after.status == 401  # the session was revoked, not only the cookie dropped


async def test_tokens_stop_working_when_revoked_or_the_account_is_disabled(desk):
    client = desk.client
    assert (await client.get("/api/v1/me", headers=desk.as_("bruno"))).status == 200
    await desk.sb.store.write(lambda tx: tx.set_account_disabled("bruno", desk.sb.clock.now()))
    desk.sb.accounts._cache.clear()  # another node would notice within the cache time; this one at once
    assert (await client.get("/api/v1/me", headers=desk.as_("bruno"))).status == 401
    assert (await client.get("/api/v1/me", headers=auth("sbp_made-up"))).status == 401


# -- the live stream -----------------------------------------------------------------------------------------------------
async def test_an_offer_arrives_on_the_agents_stream_and_nobody_elses(desk):
    await desk.online("anna")
    anna = await Stream.open(desk.client, desk.as_("anna"))
    bruno = await Stream.open(desk.client, desk.as_("bruno"))
    ref = await desk.customer_writes()
    frame, _ = await anna.until("offer.created")
    assert frame["data"]["case"]["ref"] == ref and frame["data"]["data"]["chosen"] == "anna"
    assert frame["data"]["case"]["subject"] is None and frame["data"]["case"]["line"] == "poster"
    with pytest.raises(asyncio.TimeoutError):  # bruno is offline and was offered nothing: he sees nothing of it
        while True:
            got = await bruno.next(timeout=0.3)
            assert got["data"]["case"] is None or got["data"]["case"]["ref"] != ref
    anna.close()
    bruno.close()


async def test_a_reconnecting_stream_gets_what_it_missed_once_and_in_order(desk):
    await desk.online("anna")
    stream = await Stream.open(desk.client, desk.as_("anna"))
    first = await desk.customer_writes(sender="one@example.com")
    offer, _ = await stream.until("offer.created")
    stream.close()  # the laptop sleeps; meanwhile the case is accepted elsewhere and the customer writes again
    await desk.take("anna", first)
    await desk.customer_writes("Any news?", sender="one@example.com")
    second = await desk.customer_writes(sender="two@example.com")
    again = await Stream.open(desk.client, desk.as_("anna"), last_id=offer["id"])
    accepted, before = await again.until("assignment.accepted")
    received, _ = await again.until("message.received")
    new_offer, _ = await again.until("offer.created")
    assert new_offer["data"]["case"]["ref"] == second
    ids = [f["id"] for f in [*before, received, new_offer]]
    assert ids == sorted(set(ids)) and ids[0] > offer["id"]  # nothing twice, nothing older, in log order
    assert received["data"]["case"]["ref"] == first
    # Live events still follow the replay.
    await desk.client.post(f"/api/v1/cases/{first}/notes", headers=desk.as_("anna"), json={"text": "checking"})
    note, _ = await again.until("note.added")
    assert note["id"] > new_offer["id"]
    again.close()


async def test_a_supervisor_streams_their_lines_only(desk):
    await desk.online("anna", "dario")
    pia = await Stream.open(desk.client, desk.as_("pia"))
    courier = await desk.customer_writes(sender="c@example.com", role="courier")
    poster = await desk.customer_writes(sender="p@example.com", role="poster")
    frame, seen = await pia.until("offer.created")
    assert frame["data"]["case"]["ref"] == poster
    assert all((f["data"]["case"] or {}).get("ref") != courier for f in seen)
    pia.close()


# -- working a case ---------------------------------------------------------------------------------------------------------
async def test_agent_reads_the_whole_case_replies_with_a_file_and_notes_stay_inside(desk):
    await desk.online("anna")
    ref = await desk.customer_writes()
    await desk.take("anna", ref)
    await desk.customer_writes("Also my invoice is wrong")  # same customer, same open case
    note = await desk.client.post(f"/api/v1/cases/{ref}/notes", headers=desk.as_("anna"),
                                  json={"text": "Customer is a gold member, be gentle"})
    assert note.status == 201
    pdf = b"%PDF-1.4 receipt"
    reply = await desk.client.post(f"/api/v1/cases/{ref}/replies", headers=desk.as_("anna"), json={
        "text": "Here is your receipt.", "attachments": [
            {"filename": "receipt.pdf", "content_type": "application/pdf", "content": base64.b64encode(pdf).decode()}]})
    assert reply.status == 201, await reply.text()
    [sent] = await desk.deliveries("reply")
    assert sent["text"] == "Here is your receipt."
    assert [(a["filename"], base64.b64decode(a["content"])) for a in sent["attachments"]] == [("receipt.pdf", pdf)]
    assert all("gold member" not in r["body"].decode() for r in desk.receiver.requests)  # the note was not sent
    case = await desk.case(ref, who="anna")
    directions = [m["direction"] for m in case["messages"]]
    assert directions == ["in", "out", "in", "note", "out"]  # message, acknowledgement, message, note, reply
    assert case["messages"][4]["attachments"][0]["filename"] == "receipt.pdf"
    reply_out = next(o for o in case["outbound"] if o["kind"] == "reply")
    assert reply_out["status"] == "sent" and reply_out["message_id"] == case["messages"][4]["id"]
    types = [e["type"] for e in case["events"]]
    assert "note.added" in types and "message.sent" in types
    attachment_id = case["messages"][4]["attachments"][0]["id"]
    download = await desk.client.get(f"/api/v1/cases/{ref}/attachments/{attachment_id}", headers=desk.as_("anna"))
    assert download.status == 200 and await download.read() == pdf


async def test_someone_elses_case_is_refused_with_a_reason(desk):
    await desk.online("anna")
    ref = await desk.customer_writes()
    await desk.take("anna", ref)
    client = desk.client
    read = await client.get(f"/api/v1/cases/{ref}", headers=desk.as_("bruno"))
    assert read.status == 403 and "not yours" in (await read.json())["detail"]
    reply = await client.post(f"/api/v1/cases/{ref}/replies", headers=desk.as_("bruno"), json={"text": "hi"})
    body = await reply.json()
    assert reply.status == 403 and "held by anna" in body["detail"]
    as_anna = await client.post(f"/api/v1/cases/{ref}/replies", headers=desk.as_("bruno"),
                                json={"text": "hi", "agent": "anna"})
    assert as_anna.status == 403  # nobody acts in a colleague's name
    cora = await client.post(f"/api/v1/cases/{ref}/status", headers=desk.as_("cora"), json={"status": "resolved"})
    assert cora.status == 403  # a courier-line supervisor has no say on a poster case
    pia = await client.post(f"/api/v1/cases/{ref}/status", headers=desk.as_("pia"), json={"status": "resolved"})
    assert pia.status == 200  # the poster-line supervisor does
    listing = await client.get("/api/v1/cases", headers=desk.as_("anna"))
    assert listing.status == 403  # agents see their own cases, not the whole store


async def test_a_line_supervisor_pages_through_exactly_the_cases_of_their_line(desk):
    couriers = []
    for n in range(7):  # poster and courier cases interleaved, posters the majority
        await desk.customer_writes(sender=f"poster{n}@example.com", role="poster")
        if n % 2:
            couriers.append(await desk.customer_writes(sender=f"courier{n}@example.com", role="courier"))
    seen, url, pages = [], "/api/v1/cases?limit=2", 0
    while url:
        response = await desk.client.get(url, headers=desk.as_("cora"))
        assert response.status == 200, await response.text()
        page = await response.json()
        pages += 1
        if "next" in page:  # every page but the last is full, however many poster cases lie between
            assert len(page["cases"]) == 2
        seen += [c["ref"] for c in page["cases"]]
        url = page.get("next")
    assert seen == couriers[::-1] and pages == 2
    everything = await (await desk.client.get("/api/v1/cases?limit=500", headers=desk.as_("pia"))).json()
    assert len(everything["cases"]) == 7 and all(c["line"] == "poster" for c in everything["cases"])


async def test_stale_actions_answer_409_with_the_current_state(desk):
    await desk.online("anna")
    ref = await desk.customer_writes()
    offer = desk.offer_of(ref)
    desk.h.clock.advance(timedelta(minutes=2))  # the offer times out (60 s)
    await desk.sb.stash[ASSIGNER].tick()
    late = await desk.client.post(f"/api/v1/offers/{offer.id}/accept", headers=desk.as_("anna"), json={})
    assert late.status == 409 and "not pending" in (await late.json())["detail"]


async def test_transfer_to_a_colleague_reopen_and_close(desk):
    await desk.online("anna", "bruno")
    ref = await desk.customer_writes()
    holder = desk.offer_of(ref).agent_id
    other = "bruno" if holder == "anna" else "anna"
    await desk.take(holder, ref)
    stream = await Stream.open(desk.client, desk.as_(other))
    moved = await desk.client.post(f"/api/v1/cases/{ref}/transfer", headers=desk.as_(holder),
                                   json={"agent": other, "reason": "speaks the customer's dialect"})
    assert moved.status == 200 and (await moved.json())["agent"] == other
    frame, _ = await stream.until("case.transferred")
    assert frame["data"]["data"]["from_agent"] == holder
    stream.close()
    gone = await desk.client.post(f"/api/v1/cases/{ref}/replies", headers=desk.as_(holder), json={"text": "x"})
    assert gone.status == 403
    await desk.client.put("/api/v1/me/presence", headers=desk.as_(holder), json={"presence": "offline"})
    offline = await desk.client.post(f"/api/v1/cases/{ref}/transfer", headers=desk.as_(other),
                                     json={"agent": holder, "reason": "back"})
    assert offline.status == 409 and "offline" in (await offline.json())["detail"]
    resolved = await desk.client.post(f"/api/v1/cases/{ref}/status", headers=desk.as_(other),
                                      json={"status": "resolved"})
    assert resolved.status == 200
    again = await desk.client.post(f"/api/v1/cases/{ref}/replies", headers=desk.as_(other), json={"text": "x"})
    assert again.status == 409 and "reopen it first" in (await again.json())["detail"]
    reopened = await desk.client.post(f"/api/v1/cases/{ref}/reopen", headers=desk.as_(other),
                                      json={"reason": "customer called back"})
    assert reopened.status == 200 and (await reopened.json())["status"] == "queued"
    await desk.settle()
    assert desk.offer_of(ref).agent_id == other  # back in the queue and offered again
    await desk.client.post(f"/api/v1/cases/{ref}/status", headers=desk.as_("pia"), json={"status": "resolved"})
    closed = await desk.client.post(f"/api/v1/cases/{ref}/status", headers=desk.as_("pia"), json={"status": "closed"})
    assert closed.status == 200 and (await desk.case(ref))["case"]["status"] == "closed"


async def test_merge_two_cases_of_one_customer_and_refuse_strangers(desk):
    await desk.online("anna")
    first = await desk.customer_writes("My payout is late", thread={"new_conversation": True})
    second = await desk.customer_writes("Also the app crashes", thread={"new_conversation": True})
    stranger = await desk.customer_writes("Hello", sender="zed@example.com")
    assert len({first, second, stranger}) == 3
    refused = await desk.client.post(f"/api/v1/cases/{second}/merge", headers=desk.as_("pia"), json={"into": stranger})
    assert refused.status == 409 and "different customers" in (await refused.json())["detail"]
    merged = await desk.client.post(f"/api/v1/cases/{second}/merge", headers=desk.as_("pia"), json={"into": first})
    assert merged.status == 200, await merged.text()
    target = await desk.case(first)
    texts = [m["text"] for m in target["messages"] if m["direction"] == "in"]
    assert texts == ["My payout is late", "Also the app crashes"]
    source = await desk.case(second)
    assert source["case"]["status"] == "closed" and source["case"]["merged_into"] == first
    late = await desk.client.post(f"/api/v1/cases/{second}/replies", headers=desk.as_("pia"), json={"text": "x"})
    assert late.status == 409 and first in (await late.json())["detail"]
    # The customer quoting the old reference lands in the merged case.
    await desk.customer_writes("About my request", thread={"case_ref": second})
    assert [m["text"] for m in (await desk.case(first))["messages"] if m["direction"] == "in"][-1] == "About my request"


async def test_linked_sides_of_an_order_see_each_other(desk):
    await desk.online("anna", "dario")
    order = {"order_id": "T-77"}
    poster = await desk.customer_writes("The tasker never came", sender="poster@example.com",
                                        context={"role": "poster", **order})
    courier = await desk.customer_writes("Customer was not home", sender="driver@example.com",
                                         context={"role": "courier", **order})
    await desk.take(desk.offer_of(poster).agent_id, poster)
    await desk.take("dario", courier)
    poster_agent = (await desk.case(poster))["case"]["agent"]
    before = await desk.client.get(f"/api/v1/cases/{courier}", headers=desk.as_(poster_agent))
    assert before.status == 403
    link = await desk.client.post(f"/api/v1/cases/{poster}/links", headers=desk.as_(poster_agent),
                                  json={"case": courier, "relation": "other_side"})
    assert link.status == 201
    after = await desk.client.get(f"/api/v1/cases/{courier}", headers=desk.as_(poster_agent))
    assert after.status == 200
    assert (await after.json())["links"][0]["ref"] == poster
    assert [link["ref"] for link in (await desk.case(poster, who="dario"))["links"]] == [courier]
    desk.receiver.script = [400]  # dario's reply is refused by the integration
    await desk.client.post(f"/api/v1/cases/{courier}/replies", headers=desk.as_("dario"), json={"text": "On it"})
    failed = await _failed_reply(desk, courier, "dario")
    reading = await desk.client.post(f"/api/v1/outbound/{failed['id']}/retry", headers=desk.as_(poster_agent))
    assert reading.status == 403  # reading the other side is not working it
    assert (await desk.client.post(f"/api/v1/outbound/{failed['id']}/retry", headers=desk.as_("dario"))).status == 200


async def _failed_reply(desk, ref, who):
    for _ in range(100):
        await desk.sb.outbox.run_once()
        case = await desk.case(ref, who=who)
        failed = [o for o in case["outbound"] if o["kind"] == "reply" and o["status"] == "failed"]
        if failed:
            return failed[0]
        await asyncio.sleep(0.02)
    raise AssertionError(f"no failed reply on {ref}")


async def test_a_rejected_delivery_shows_as_failed_and_can_be_retried(desk):
    await desk.online("anna")
    ref = await desk.customer_writes()
    await desk.deliveries("ack")
    await desk.take("anna", ref)
    desk.receiver.script = [400]  # the integration refuses the reply: a permanent failure
    await desk.client.post(f"/api/v1/cases/{ref}/replies", headers=desk.as_("anna"), json={"text": "Fixed!"})
    failed = [await _failed_reply(desk, ref, "anna")]
    assert "400" in failed[0]["last_error"]
    assert "outbound.failed" in [e["type"] for e in (await desk.case(ref, who="anna"))["events"]]
    retry = await desk.client.post(f"/api/v1/outbound/{failed[0]['id']}/retry", headers=desk.as_("anna"), json={})
    assert retry.status == 200 and (await retry.json())["status"] == "pending"
    twice = await desk.client.post(f"/api/v1/outbound/{failed[0]['id']}/retry", headers=desk.as_("anna"), json={})
    assert twice.status == 409
    [delivered] = [d for d in await desk.deliveries("reply", 2) if d["delivery_id"] == failed[0]["id"]][-1:]
    assert delivered["text"] == "Fixed!"


async def test_reply_on_another_identity_of_the_customer(desk):
    await desk.online("anna")
    ref = await desk.customer_writes(sender="ada@example.com",
                                     linked_identities=[{"kind": "email", "value": "ada.work@example.com"}])
    await desk.customer_writes("from work", sender="ada.work@example.com", thread={"case_ref": ref})
    await desk.take("anna", ref)
    unknown = await desk.client.post(f"/api/v1/cases/{ref}/replies", headers=desk.as_("anna"),
                                     json={"text": "hi", "to": "email:someone@else.com"})
    assert unknown.status == 400 and "never wrote from" in (await unknown.json())["detail"]
    ok = await desk.client.post(f"/api/v1/cases/{ref}/replies", headers=desk.as_("anna"),
                                json={"text": "hi home", "to": "email:ada@example.com"})
    assert ok.status == 201
    [sent] = await desk.deliveries("reply")
    assert sent["recipient"] == {"kind": "email", "value": "ada@example.com"}  # not the last one written from


# -- CSAT ---------------------------------------------------------------------------------------------------------------------
async def test_a_low_score_is_recorded_and_opens_a_quality_follow_up(desk):
    await desk.online("anna", "carla")
    ref = await desk.customer_writes()
    await desk.take(desk.offer_of(ref).agent_id, ref)
    agent_id = (await desk.case(ref))["case"]["agent"]
    await desk.client.post(f"/api/v1/cases/{ref}/replies", headers=desk.as_(agent_id), json={"text": "Done."})
    await desk.client.post(f"/api/v1/cases/{ref}/status", headers=desk.as_(agent_id), json={"status": "resolved"})
    [survey] = await desk.deliveries("csat")
    assert ref in survey["text"] and "1" in survey["text"] and "5" in survey["text"]
    await desk.customer_writes("2 - it took far too long")
    case = await desk.case(ref)
    assert case["case"]["status"] == "resolved"  # an answer does not reopen the case
    assert case["survey"]["score"] == 2 and case["survey"]["comment"] == "it took far too long"
    [link] = case["links"]
    assert link["relation"] == "followup"
    follow = await desk.case(link["ref"])
    assert (follow["case"]["team"], follow["case"]["related_case"]) == ("quality", ref)
    assert "rated" in follow["messages"][0]["text"] and follow["messages"][0]["direction"] == "note"
    await desk.settle()
    assert desk.offer_of(link["ref"]).agent_id == "carla"  # the quality team gets it
    # The quality agent can read the rated case through the link, and reach the customer from the follow-up.
    await desk.take("carla", link["ref"])
    assert (await desk.client.get(f"/api/v1/cases/{ref}", headers=desk.as_("carla"))).status == 200
    reply = await desk.client.post(f"/api/v1/cases/{link['ref']}/replies", headers=desk.as_("carla"),
                                   json={"text": "Sorry about the wait."})
    assert (await reply.json())["outbound_id"] is not None
    # Another "5" is no answer any more: a normal message, which joins the customer's open (follow-up) case.
    await desk.customer_writes("5")
    assert (await desk.case(ref))["survey"]["score"] == 2
    assert [m["text"] for m in (await desk.case(link["ref"]))["messages"] if m["direction"] == "in"] == ["5"]


async def test_a_good_score_opens_nothing_and_text_reopens(desk):
    await desk.online("anna")
    ref = await desk.resolved_and_surveyed("anna")
    await desk.customer_writes("5 stars, thanks!")
    case = await desk.case(ref)
    assert case["survey"]["score"] == 5 and case["links"] == [] and case["case"]["status"] == "resolved"
    assert "csat.answered" in [e["type"] for e in case["events"]]


async def test_csat_can_be_switched_off_per_line(http_factory, webhook_receiver):
    h = await http_factory(workspace_config(webhook_receiver.url, csat={"lines": {"poster": {"enabled": False}}}),
                           clock=ManualClock(MONDAY))
    desk = await Desk(h, webhook_receiver).setup()
    await desk.online("anna")
    ref = await desk.customer_writes()
    await desk.take("anna", ref)
    await desk.client.post(f"/api/v1/cases/{ref}/status", headers=desk.as_("anna"), json={"status": "resolved"})
    await desk.deliveries("ack")
    assert (await desk.case(ref))["survey"] is None
    await desk.customer_writes("3")  # no survey was sent: a "3" is just a message and reopens the case
    case = await desk.case(ref)
    assert case["case"]["status"] in ("queued", "offered") and "case.reopened" in [e["type"] for e in case["events"]]


# -- supervisors -----------------------------------------------------------------------------------------------------
async def test_overview_and_metrics_for_a_supervisor(desk):
    await desk.online("anna")
    answered = await desk.customer_writes(sender="a@example.com")
    await desk.take("anna", answered)
    desk.h.clock.advance(timedelta(minutes=4))
    await desk.client.post(f"/api/v1/cases/{answered}/replies", headers=desk.as_("anna"), json={"text": "On it"})
    desk.h.clock.advance(timedelta(minutes=6))
    await desk.client.post(f"/api/v1/cases/{answered}/status", headers=desk.as_("anna"), json={"status": "resolved"})
    await desk.deliveries("csat")
    await desk.customer_writes("4", sender="a@example.com")
    for sender in ("b@example.com", "c@example.com", "d@example.com", "e@example.com"):
        await desk.customer_writes(sender=sender)  # anna holds 3 at most: some wait
    await desk.customer_writes(sender="f@example.com", role="courier")
    desk.h.clock.advance(timedelta(minutes=9))  # the standard SLA warns 2 minutes before 10
    await desk.sb.stash[ASSIGNER].tick()

    view = await (await desk.client.get("/api/v1/supervisor/overview", headers=desk.as_("pia"))).json()
    assert {q["line"] for q in view["queues"]} == {"poster"}  # pia's line only
    assert view["totals"]["waiting"] == 4  # three offered to anna (not accepted yet) and one queued
    assert view["totals"]["at_risk"] >= 1 and view["totals"]["oldest_wait_seconds"] >= 9 * 60
    assert [a["id"] for a in view["agents"]] == ["anna", "bruno", "carla"]  # dario works couriers only
    agents = await desk.client.get("/api/v1/supervisor/overview", headers=desk.as_("anna"))
    assert agents.status == 403

    metrics = await (await desk.client.get("/api/v1/reports/metrics?by=agent", headers=desk.as_("pia"))).json()
    row = next(r for r in metrics["rows"] if r["key"] == "anna")
    assert row["first_response_median_seconds"] == 240.0 and row["resolution_median_seconds"] == 600.0
    assert row["csat_average"] == 4.0 and row["csat_responses"] == 1 and row["resolved"] == 1
    total = metrics["rows"][-1]
    assert total["key"] == "(all)" and total["created"] == 5 and total["resolution_rate"] == 0.2
    as_csv = await desk.client.get("/api/v1/reports/metrics?by=line&format=csv", headers=desk.as_("pia"))
    assert as_csv.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(await as_csv.text())))
    assert rows[0]["line"] == "poster" and rows[0]["created"] == "5" and rows[0]["csat_average"] == "4.0"
    volume = await (await desk.client.get("/api/v1/reports/volume?bucket=hour", headers=desk.as_("pia"))).json()
    assert sum(b["created"] for b in volume["buckets"]) == 5 and len(volume["buckets"]) == 25


async def test_the_integration_reports_a_delivery_failure_that_the_agent_sees(desk):
    await desk.online("anna")
    ref = await desk.customer_writes()
    await desk.take("anna", ref)
    reply = await desk.client.post(f"/api/v1/cases/{ref}/replies", headers=desk.as_("anna"), json={"text": "Hi"})
    outbound_id = (await reply.json())["outbound_id"]
    await desk.deliveries("reply")
    stream = await Stream.open(desk.client, desk.as_("anna"))
    report = await desk.client.post(f"/api/v1/deliveries/{outbound_id}", headers=auth(TOKEN),
                                    json={"status": "failed", "error": "push token expired"})
    assert report.status == 200
    frame, _ = await stream.until("outbound.bounced")
    assert frame["data"]["data"]["error"] == "push token expired"
    stream.close()
    [out] = [o for o in (await desk.case(ref, who="anna"))["outbound"] if o["id"] == outbound_id]
    assert (out["status"], out["last_error"]) == ("failed", "push token expired")
    foreign = await desk.client.post("/api/v1/deliveries/999999", headers=auth(TOKEN), json={"status": "delivered"})
    assert foreign.status == 404
    person = await desk.client.post(f"/api/v1/deliveries/{outbound_id}", headers=desk.as_("anna"),
                                    json={"status": "delivered"})
    assert person.status == 401  # delivery reports come from the integration, not from people


async def test_a_delivery_report_that_arrives_before_the_webhook_answer_is_kept(desk):
    await desk.online("anna")
    ref = await desk.customer_writes()
    await desk.take("anna", ref)
    reports = []

    async def report_first(body):  # the integration pushes to the phone and reports, then answers the webhook
        if body["kind"] == "reply":
            response = await desk.client.post(f"/api/v1/deliveries/{body['delivery_id']}", headers=auth(TOKEN),
                                              json={"status": "failed", "error": "app uninstalled"})
            reports.append(response.status)

    desk.receiver.before_answer = report_first
    reply = await desk.client.post(f"/api/v1/cases/{ref}/replies", headers=desk.as_("anna"), json={"text": "Hi"})
    outbound_id = (await reply.json())["outbound_id"]
    await desk.deliveries("reply")
    case = await desk.case(ref, who="anna")
    [out] = [o for o in case["outbound"] if o["id"] == outbound_id]
    assert reports == [200]
    assert (out["status"], out["last_error"], out["attempts"]) == ("failed", "app uninstalled", 1)
    types = [e["type"] for e in case["events"] if e["data"].get("outbound_id") == outbound_id]
    assert types == ["message.sent", "outbound.bounced", "outbound.sent"]
    await desk.sb.outbox.run_once()  # nothing is due again: the report's word stands
    assert len([r for r in desk.receiver.requests if json.loads(r["body"])["kind"] == "reply"]) == 1


async def _frames_until_marker(stream, marker_ref):
    """Every frame up to the creation of the case `marker_ref` (an event this stream is sure to get)."""
    _, seen = await stream.until("case.created", ref=marker_ref)
    return seen


async def test_a_reopened_case_routed_to_another_line_streams_to_that_line_only(desk):
    await desk.online("anna", "dario")
    ref = await desk.customer_writes(sender="sam@example.com", role="poster")
    await desk.take("anna", ref)
    done = await desk.client.post(f"/api/v1/cases/{ref}/status", headers=desk.as_("anna"), json={"status": "resolved"})
    assert done.status == 200
    pia = await Stream.open(desk.client, desk.as_("pia"))  # the poster line's supervisor
    cora = await Stream.open(desk.client, desk.as_("cora"))  # the courier line's
    again = await desk.customer_writes("I deliver for you now, and my payout is wrong", sender="sam@example.com",
                                       role="courier", thread={"case_ref": ref})
    assert again == ref
    frame, seen_by_cora = await cora.until("case.routed")
    assert frame["data"]["case"]["ref"] == ref and frame["data"]["case"]["line"] == "courier"
    reopened = next(f["id"] for f in seen_by_cora if f["event"] == "case.reopened")
    marker = await desk.customer_writes(sender="someone.else@example.com", role="poster")
    seen_by_pia = await _frames_until_marker(pia, marker)
    # (the survey sent when it was resolved, a poster case then, may reach pia: it is older than the reopening)
    assert [(f["event"], f["data"]["case"]) for f in seen_by_pia
            if f["data"]["case_id"] == frame["data"]["case_id"] and f["id"] >= reopened] == []
    pia.close()
    cora.close()


async def test_the_agent_is_told_when_a_supervisor_moves_their_case(desk):
    await desk.online("anna")
    ref = await desk.customer_writes()
    await desk.take("anna", ref)
    anna = await Stream.open(desk.client, desk.as_("anna"))
    moved = await desk.client.post(f"/api/v1/cases/{ref}/transfer", headers=desk.as_("pia"),
                                   json={"team": "quality", "reason": "a review dispute"})
    assert moved.status == 200, await moved.text()
    frame, _ = await anna.until("case.transferred")
    assert frame["data"]["data"]["from_agent"] == "anna" and frame["data"]["case"]["ref"] == ref
    anna.close()
    listing = await (await desk.client.get("/api/v1/me/cases", headers=desk.as_("anna"))).json()
    assert ref not in [c["ref"] for c in listing["cases"]]


async def test_the_overview_names_only_the_cases_of_the_supervisors_lines(desk):
    await desk.online("dario")
    courier = await desk.customer_writes(sender="c1@example.com", role="courier")
    await desk.take("dario", courier)
    await desk.online("anna")
    poster = await desk.customer_writes(sender="p1@example.com", role="poster")
    await desk.take("anna", poster)
    view = await (await desk.client.get("/api/v1/supervisor/overview", headers=desk.as_("pia"))).json()
    named = {ref for a in view["agents"] for ref in a["cases"] + [o["case"] for o in a["offers"]]}
    assert poster in named and courier not in named
    listing = await (await desk.client.get("/api/v1/agents", headers=desk.as_("pia"))).json()
    assert courier not in [ref for a in listing["agents"] for ref in a["cases"]]
    own = await (await desk.client.get("/api/v1/agents/dario", headers=desk.as_("dario"))).json()
    assert own["cases"] == [courier]  # an agent sees their own in full


async def test_signing_in_takes_json_only(desk):
    form = await desk.client.post("/api/v1/auth/login", data='{"account": "anna", "password": "%s"}' % PASSWORD,
                                  headers={"Content-Type": "text/plain"})
    assert form.status == 415 and "sb_session" not in form.cookies
    ok = await desk.client.post("/api/v1/auth/login", json={"account": "anna", "password": PASSWORD})
    assert ok.status == 200


async def test_streams_end_quietly_when_the_browser_leaves_or_the_server_stops(http_factory, webhook_receiver,
                                                                              caplog):
    h = await http_factory(workspace_config(webhook_receiver.url, console={"stream_heartbeat": "1s"}),
                           clock=ManualClock(MONDAY))
    desk = await Desk(h, webhook_receiver).setup()
    gone = await Stream.open(desk.client, desk.as_("anna"))
    gone.close()  # the laptop lid closes: the next heartbeat finds nobody
    staying = await Stream.open(desk.client, desk.as_("bruno"))
    await asyncio.sleep(2.5)
    assert desk.sb.feed.count == 1  # the closed stream was let go, the open one kept
    assert not [r for r in caplog.records if r.levelname == "ERROR"], [r.getMessage() for r in caplog.records]
    desk.sb.feed.close_all()  # what the application does when it stops
    rest = await asyncio.wait_for(staying.response.content.read(), 5)  # the stream ends (read() returns)...
    assert b"reset" not in rest  # ...without telling the console to reload: it reconnects and resumes
    assert desk.sb.feed.count == 0


async def test_linking_needs_both_cases_and_a_working_supervisor_gets_their_offers(desk):
    """A link opens each side to the other's agent, so an agent cannot link (and so read) a stranger's case
    about another order;
    and a supervisor who also works cases gets their own offers on their stream."""
    await desk.online("anna", "dario")
    mine = await desk.customer_writes(sender="p@example.com", role="poster")
    theirs = await desk.customer_writes(sender="c@example.com", role="courier")
    await desk.take(desk.offer_of(mine).agent_id, mine)
    holder = (await desk.case(mine))["case"]["agent"]
    sneaky = await desk.client.post(f"/api/v1/cases/{mine}/links", headers=desk.as_(holder), json={"case": theirs})
    assert sneaky.status == 403
    assert (await desk.client.get(f"/api/v1/cases/{theirs}", headers=desk.as_(holder))).status == 403
    # An empty body is fine where nothing is needed (declining an offer).
    offer = desk.offer_of(theirs)
    declined = await desk.client.post(f"/api/v1/offers/{offer.id}/decline", headers=desk.as_("dario"))
    assert declined.status == 200


async def test_a_supervisor_who_works_cases_streams_their_own_offers(http_factory, webhook_receiver):
    h = await http_factory(make_config(**{**sections([agent("lena", lines=("courier",))]),
                                          "integrations": [webhook_integration(webhook_receiver.url,
                                                                               scopes=["ingest", "read"])],
                                          "accounts": [{"id": "lena", "name": "Lena", "role": "supervisor",
                                                        "agent": "lena", "lines": ["poster"]}]}),
                           clock=ManualClock(MONDAY))
    desk = Desk(h, webhook_receiver)
    desk.tokens["lena"] = await h.sb.accounts.issue("lena", "api", "tests")
    await desk.online("lena")
    stream = await Stream.open(h.client, desk.as_("lena"))
    ref = await desk.customer_writes(role="courier")  # she supervises posters, but takes courier cases herself
    frame, seen = await stream.until("offer.created")
    assert frame["data"]["case"]["ref"] == ref and frame["data"]["data"]["chosen"] == "lena"
    assert len([f for f in seen if f["event"] == "offer.created"]) == 1  # once, not once per role
    stream.close()


# -- review findings: streams follow the credential, supervisors see new cases, surveys after closing -------------
async def test_a_stream_ends_when_its_session_is_signed_out(http_factory, webhook_receiver):
    h = await http_factory(workspace_config(webhook_receiver.url, console={"stream_heartbeat": "1s"}),
                           clock=ManualClock(MONDAY))
    login = await h.client.post("/api/v1/auth/login", json={"account": "anna", "password": PASSWORD, "token": True})
    session = auth((await login.json())["token"])
    stream = await Stream.open(h.client, session)
    out = await h.client.post("/api/v1/auth/logout", headers=session)
    assert out.status == 204
    rest = await asyncio.wait_for(stream.response.content.read(), 5)  # ends at the next check, ~1 s
    assert b"offer.created" not in rest
    assert h.sb.feed.count == 0


async def test_a_line_supervisor_sees_a_new_case_from_its_first_event(desk):
    pia = await Stream.open(desk.client, desk.as_("pia"))
    ref = await desk.customer_writes(role="poster")  # nobody online: the case only waits
    created, _ = await pia.until("case.created")
    assert created["data"]["case"]["ref"] == ref and created["data"]["case"]["line"] == "poster"
    pia.close()


async def test_a_score_after_the_case_was_closed_is_still_an_answer(desk):
    await desk.online("anna")
    ref = await desk.resolved_and_surveyed("anna")
    closed = await desk.client.post(f"/api/v1/cases/{ref}/status", headers=desk.as_("anna"), json={"status": "closed"})
    assert closed.status == 200
    again = await desk.customer_writes("5")
    assert again == ref  # recorded on the closed case, not a new case
    case = await desk.case(ref)
    assert case["survey"]["score"] == 5 and case["case"]["status"] == "closed"


async def test_a_resume_point_this_store_never_gave_resets_the_console(desk):
    stream = await Stream.open(desk.client, desk.as_("anna"), last_id=10**9)
    frame = await stream.next()
    assert frame["event"] == "reset"
    stream.close()


async def test_accounts_taken_out_of_the_configuration_are_disabled(store_factory):
    from router.app import Switchboard
    from router.plugins import build_plugin_manager

    async def start(accounts):
        config = workspace_config(accounts=accounts)
        sb = Switchboard(config, plugin_manager=build_plugin_manager(entry_points=False),
                         store=await store_factory(), clock=ManualClock(MONDAY))
        await sb.start(background=False)
        return sb

    first = await start([{"id": "anna", "name": "Anna"}, {"id": "pia", "name": "Pia", "role": "supervisor"}])
    token = await first.accounts.issue("pia", "api", "laptop")
    assert (await first.accounts.authenticate(token)).role == "supervisor"
    await first.stop()
    second = await start([{"id": "anna", "name": "Anna"}])
    assert await second.accounts.authenticate(token) is None
    assert (await second.store.read(lambda tx: tx.account("pia")))["disabled_at"] is not None
    await second.stop()
