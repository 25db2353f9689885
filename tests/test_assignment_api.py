"""The assignment HTTP API end to end: an integration posts a message, an agent comes online, accepts the offer,
replies (delivered as a signed webhook), resolves; supervisors change agents and move cases; everyone can ask why."""
from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest

from router.core.assigner import ASSIGNER
from router.core.clock import ManualClock
from tests.conftest import READER_TOKEN, TOKEN, auth, make_config, webhook_integration
from tests.core.test_assignment import MONDAY, agent, sections

AGENT_TOKEN = "agent-token"


def api_config(receiver_url="http://127.0.0.1:9/unused", agents=None):
    import os

    os.environ["SB_TEST_AGENT_TOKEN"] = AGENT_TOKEN
    data = sections(agents if agents is not None else [agent("anna"), agent("bruno")])
    data["integrations"] = [
        webhook_integration(receiver_url, scopes=["ingest", "read", "supervise"]),
        {"name": "reader", "token": {"$env": "SB_TEST_READER_TOKEN"}, "scopes": ["read"]},
        {"name": "desk", "token": {"$env": "SB_TEST_AGENT_TOKEN"}, "scopes": ["agent", "read"]},
    ]
    return make_config(**data)


async def settle(h):
    await h.sb.stash[ASSIGNER].settle()


async def post_message(h, text="My payout did not arrive", external_id="m1", **extra):
    response = await h.client.post("/api/v1/messages", headers=auth(TOKEN), json={
        "external_id": external_id, "sender": {"kind": "email", "value": "ada@example.com"}, "text": text,
        "language": "en", **extra})
    assert response.status == 202, await response.text()
    await settle(h)
    return (await response.json())["case"]["ref"]


@pytest.fixture
async def desk(http_factory):
    return await http_factory(api_config(), clock=ManualClock(MONDAY))


async def test_agent_works_a_case_through_the_api(http_factory, webhook_receiver):
    h = await http_factory(api_config(webhook_receiver.url), clock=ManualClock(MONDAY))
    client = h.client
    response = await client.put("/api/v1/agents/anna/presence", headers=auth(AGENT_TOKEN), json={"presence": "online"})
    assert response.status == 200 and (await response.json())["presence"] == "online"
    ref = await post_message(h, thread={"conversation": "chat-77"})
    anna = await (await client.get("/api/v1/agents/anna", headers=auth(READER_TOKEN))).json()
    [offer] = anna["offers"]
    assert offer["case"] == ref
    # Accepting someone else's offer is refused; accepting one's own assigns the case.
    wrong = await client.post(f"/api/v1/offers/{offer['id']}/accept", headers=auth(AGENT_TOKEN), json={"agent": "bruno"})
    assert wrong.status == 403 and (await wrong.json())["error"] == "forbidden"
    accepted = await client.post(f"/api/v1/offers/{offer['id']}/accept", headers=auth(AGENT_TOKEN), json={"agent": "anna"})
    assert (await accepted.json()) == {"case": ref, "status": "assigned", "agent": "anna"}
    again = await client.post(f"/api/v1/offers/{offer['id']}/accept", headers=auth(AGENT_TOKEN), json={"agent": "anna"})
    assert again.status == 409
    reply = await client.post(f"/api/v1/cases/{ref}/replies", headers=auth(AGENT_TOKEN),
                              json={"agent": "anna", "text": "Your payout left today.", "waiting_customer": True})
    assert reply.status == 201 and (await reply.json())["status"] == "waiting_customer"
    delivered: list[dict] = []
    for _ in range(100):  # the server's own outbox worker delivers it (the acknowledgement went first)
        await h.sb.outbox.run_once()
        delivered = [b for b in (json.loads(r["body"]) for r in webhook_receiver.requests) if b["kind"] == "reply"]
        if delivered:
            break
        await asyncio.sleep(0.05)
    assert [d["text"] for d in delivered] == ["Your payout left today."]
    # It goes back into the customer's conversation, with the case's language, like the acknowledgement.
    assert (delivered[0]["conversation"], delivered[0]["language"], delivered[0]["in_reply_to"]) == (
        "chat-77", "en", "m1")
    done = await client.post(f"/api/v1/cases/{ref}/status", headers=auth(AGENT_TOKEN),
                             json={"agent": "anna", "status": "resolved"})
    assert done.status == 200
    anna = await (await client.get("/api/v1/agents/anna", headers=auth(READER_TOKEN))).json()
    assert anna["cases"] == [] and sum(anna["load"].values()) == 0
    explained = await (await client.get(f"/api/v1/cases/{ref}/explain", headers=auth(READER_TOKEN))).json()
    types = [d["type"] for d in explained["decisions"]]
    assert types[:4] == ["case.created", "case.routed", "assignment.queued", "offer.created"]
    assert {"assignment.accepted", "sla.met"} <= set(types)
    assert explained["offers"][0]["status"] == "accepted"


async def test_scopes_and_bad_requests_get_clear_errors(desk):
    client = desk.client
    nobody = await client.put("/api/v1/agents/anna/presence", json={"presence": "online"})
    assert nobody.status == 401
    reader = await client.put("/api/v1/agents/anna/presence", headers=auth(READER_TOKEN), json={"presence": "online"})
    assert reader.status == 403 and "agent" in (await reader.json())["detail"]
    odd = await client.put("/api/v1/agents/anna/presence", headers=auth(AGENT_TOKEN), json={"presence": "asleep"})
    assert odd.status == 400 and "online" in (await odd.json())["detail"]
    missing = await client.put("/api/v1/agents/zed/presence", headers=auth(AGENT_TOKEN), json={"presence": "online"})
    assert missing.status == 404
    no_field = await client.post("/api/v1/offers/1/accept", headers=auth(AGENT_TOKEN), json={})
    assert no_field.status == 400 and (await no_field.json())["fields"][0]["field"] == "agent"
    not_json = await client.post("/api/v1/offers/1/accept", headers=auth(AGENT_TOKEN), data=b"{nope")
    assert not_json.status == 400
    unknown_case = await client.post("/api/v1/cases/TK-9/escalate", headers=auth(AGENT_TOKEN),
                                     json={"by": "anna", "reason": "x"})
    assert unknown_case.status == 404


async def test_supervisors_change_agents_at_run_time(desk):
    client = desk.client
    bad = await client.put("/api/v1/agents/zoe", headers=auth(TOKEN),
                           json={"name": "Zoe", "teams": ["astronauts"], "languages": {"xx": 3}})
    body = await bad.json()
    assert bad.status == 400 and "unknown team" in body["detail"] and "unknown language" in body["detail"]
    invalid = await client.put("/api/v1/agents/zoe", headers=auth(TOKEN), json={"name": "Zoe", "capacity": {"chat": -1}})
    assert invalid.status == 400 and (await invalid.json())["fields"][0]["field"] == "capacity.chat"
    created = await client.put("/api/v1/agents/zoe", headers=auth(TOKEN),
                               json={"name": "Zoe", "teams": ["general"], "languages": {"en": 4}})
    assert created.status == 201 and (await created.json())["source"] == "api"
    forbidden = await client.put("/api/v1/agents/zoe", headers=auth(AGENT_TOKEN), json={"name": "Zoe"})
    assert forbidden.status == 403
    await client.put("/api/v1/agents/zoe/presence", headers=auth(AGENT_TOKEN), json={"presence": "online"})
    ref = await post_message(desk)
    agents = await (await client.get("/api/v1/agents", headers=auth(READER_TOKEN))).json()
    assert [a["offers"][0]["case"] for a in agents["agents"] if a["id"] == "zoe"] == [ref]
    removed = await client.delete("/api/v1/agents/zoe", headers=auth(TOKEN))
    assert removed.status == 204
    queue = await (await client.get("/api/v1/queue", headers=auth(READER_TOKEN))).json()
    assert [q["ref"] for q in queue["queue"]] == [ref]  # the offer went with her; the case waits, visibly
    assert queue["queue"][0]["explanation"]["passed_over"]["offline"] == 2


async def test_transfer_and_escalate_through_the_api(desk):
    client = desk.client
    for name in ("anna", "bruno"):
        await client.put(f"/api/v1/agents/{name}/presence", headers=auth(AGENT_TOKEN), json={"presence": "online"})
    ref = await post_message(desk)
    moved = await client.post(f"/api/v1/cases/{ref}/transfer", headers=auth(TOKEN),
                              json={"by": "sup", "reason": "payout question", "team": "billing"})
    assert moved.status == 200 and (await moved.json())["team"] == "billing"
    bad = await client.post(f"/api/v1/cases/{ref}/transfer", headers=auth(TOKEN),
                            json={"by": "sup", "reason": "x", "priority": 9})
    assert bad.status == 400
    up = await client.post(f"/api/v1/cases/{ref}/escalate", headers=auth(AGENT_TOKEN), json={"by": "anna", "reason": "legal"})
    summary = await up.json()
    assert up.status == 200 and summary["tier"] == "L2" and summary["priority"] == 2
    desk.clock.advance(timedelta(seconds=1))
    explained = await (await client.get(f"/api/v1/cases/{ref}/explain", headers=auth(READER_TOKEN))).json()
    kinds = [d["type"] for d in explained["decisions"]]
    assert "case.transferred" in kinds and "case.escalated" in kinds


async def test_wrong_types_and_someone_elses_offer_are_refused(desk):
    client = desk.client
    await client.put("/api/v1/agents/anna/presence", headers=auth(AGENT_TOKEN), json={"presence": "online"})
    ref = await post_message(desk)  # offered to anna
    as_list = await client.post(f"/api/v1/cases/{ref}/transfer", headers=auth(TOKEN),
                                json={"by": "sup", "reason": "x", "team": ["billing"]})
    assert as_list.status == 400 and (await as_list.json())["fields"][0]["field"] == "team"
    as_bool = await client.post(f"/api/v1/cases/{ref}/transfer", headers=auth(TOKEN),
                                json={"by": "sup", "reason": "x", "priority": True})
    assert as_bool.status == 400
    other = await client.post(f"/api/v1/cases/{ref}/status", headers=auth(AGENT_TOKEN),
                              json={"agent": "bruno", "status": "closed"})
    assert other.status == 403  # bruno cannot close the case offered to anna
    anna = await (await client.get("/api/v1/agents/anna", headers=auth(READER_TOKEN))).json()
    offer_id = anna["offers"][0]["id"]
    await client.post(f"/api/v1/offers/{offer_id}/accept", headers=auth(AGENT_TOKEN), json={"agent": "anna"})
    text_flag = await client.post(f"/api/v1/cases/{ref}/replies", headers=auth(AGENT_TOKEN),
                                  json={"agent": "anna", "text": "ok", "waiting_customer": "false"})
    assert text_flag.status == 400 and "true or false" in (await text_flag.json())["detail"]
    case = await (await client.get(f"/api/v1/cases/{ref}", headers=auth(READER_TOKEN))).json()
    assert case["case"]["status"] == "assigned" and case["case"]["team"] == "general"  # nothing changed
