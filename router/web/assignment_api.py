"""HTTP API for agents, supervisors and operators: presence, offers, replies, status, transfer, escalation,
the queue and explanations. Integrations call it with scopes: `read` to look, `agent` to act for agents,
`supervise` to change agents and move cases. (The agent workspace adds agents' own log-in on top.)"""
from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from router.core.assigner import ASSIGNER, Assigner
from router.core.explain import explain_case
from router.core.model import CaseStatus
from router.routing_config import AgentConfig
from router.web.api import require_integration, switchboard_of
from router.web.errors import HTTPProblem


def _assigner(request: web.Request) -> Assigner:
    assigner = switchboard_of(request).stash.get(ASSIGNER)
    if assigner is None:
        raise HTTPProblem(503, "unavailable", "assignment is not running (is the core.assignment plugin blocked?)")
    return assigner


async def _body(request: web.Request, *required: str) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HTTPProblem(400, "bad_request", "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise HTTPProblem(400, "bad_request", "the body must be a JSON object")
    missing = [name for name in required if not isinstance(body.get(name), str) or not body[name].strip()]
    if missing:
        raise HTTPProblem(400, "bad_request", f"missing field{'s' * (len(missing) > 1)}: {', '.join(missing)}",
                          fields=[{"field": m, "problem": "required, a non-empty string"} for m in missing])
    return body


def _offer_id(request: web.Request) -> int:
    try:
        return int(request.match_info["offer_id"])
    except ValueError:
        raise HTTPProblem(404, "not_found", "offer ids are whole numbers") from None


# -- agents ------------------------------------------------------------------------------------------------------
async def list_agents(request: web.Request) -> web.Response:
    require_integration(request, "read")
    assigner = _assigner(request)
    return web.json_response({"agents": [assigner.agent_view(a.id) for a in sorted(assigner.workforce,
                                                                                key=lambda a: a.id)]})


async def get_agent(request: web.Request) -> web.Response:
    require_integration(request, "read")
    return web.json_response(_assigner(request).agent_view(request.match_info["agent_id"]))


async def put_agent(request: web.Request) -> web.Response:
    integration = require_integration(request, "supervise")
    agent_id = request.match_info["agent_id"]
    body = await _body(request)
    if body.setdefault("id", agent_id) != agent_id:
        raise HTTPProblem(400, "bad_request", f"the body's id {body['id']!r} is not the path's {agent_id!r}")
    try:
        definition = AgentConfig.model_validate(body)
    except ValidationError as exc:
        fields = [{"field": ".".join(str(p) for p in e["loc"]) or "body", "problem": e["msg"]} for e in exc.errors()]
        raise HTTPProblem(400, "invalid_agent", "; ".join(f"{f['field']}: {f['problem']}" for f in fields),
                          fields=fields) from None
    assigner = _assigner(request)
    created = agent_id not in assigner.workforce
    await assigner.put_agent(definition, by=f"integration:{integration.name}")
    return web.json_response(assigner.agent_view(agent_id), status=201 if created else 200)


async def delete_agent(request: web.Request) -> web.Response:
    integration = require_integration(request, "supervise")
    await _assigner(request).remove_agent(request.match_info["agent_id"], by=f"integration:{integration.name}")
    return web.Response(status=204)


async def put_presence(request: web.Request) -> web.Response:
    require_integration(request, "agent")
    body = await _body(request, "presence")
    assigner = _assigner(request)
    agent_id = request.match_info["agent_id"]
    await assigner.set_presence(agent_id, body["presence"], by=agent_id)
    return web.json_response(assigner.agent_view(agent_id))


# -- offers --------------------------------------------------------------------------------------------------------
async def accept_offer(request: web.Request) -> web.Response:
    require_integration(request, "agent")
    body = await _body(request, "agent")
    work = await _assigner(request).accept(_offer_id(request), body["agent"])
    return web.json_response({"case": work.case.ref, "status": work.case.status.value, "agent": work.agent_id})


async def decline_offer(request: web.Request) -> web.Response:
    require_integration(request, "agent")
    body = await _body(request, "agent")
    reason = body.get("reason") if isinstance(body.get("reason"), str) else None
    await _assigner(request).decline(_offer_id(request), body["agent"], reason)
    return web.json_response({"declined": _offer_id(request)})


# -- cases ---------------------------------------------------------------------------------------------------------
async def reply(request: web.Request) -> web.Response:
    require_integration(request, "agent")
    body = await _body(request, "agent", "text")
    assigner = _assigner(request)
    work = assigner.work_for(request.match_info["ref"].upper())
    waiting = body.get("waiting_customer", False)
    if not isinstance(waiting, bool):
        raise HTTPProblem(400, "bad_request", "waiting_customer must be true or false",
                          fields=[{"field": "waiting_customer", "problem": "a boolean"}])
    outbound_id = await assigner.reply(work, body["agent"], body["text"], waiting_customer=waiting)
    return web.json_response({"case": work.case.ref, "status": work.case.status.value,
                              "outbound_id": outbound_id or None}, status=201)


async def set_status(request: web.Request) -> web.Response:
    require_integration(request, "agent")
    body = await _body(request, "agent", "status")
    assigner = _assigner(request)
    work = assigner.work_for(request.match_info["ref"].upper())
    allowed = {"resolved": CaseStatus.RESOLVED, "closed": CaseStatus.CLOSED}
    if body["status"] not in allowed:
        raise HTTPProblem(400, "bad_request", f"status must be one of {sorted(allowed)} (to wait on the customer, "
                                              "reply with waiting_customer: true)")
    if work.agent_id not in (None, body["agent"]):
        raise HTTPProblem(403, "forbidden", f"{work.case.ref} is held by another agent")
    await assigner.finish(work, allowed[body["status"]], by=body["agent"])  # refuses someone else's offer
    return web.json_response({"case": work.case.ref, "status": body["status"]})


async def transfer(request: web.Request) -> web.Response:
    require_integration(request, "supervise")
    body = await _body(request, "by", "reason")
    assigner = _assigner(request)
    work = assigner.work_for(request.match_info["ref"].upper())
    priority = body.get("priority")
    if priority is not None and (type(priority) is not int or not 1 <= priority <= 5):
        raise HTTPProblem(400, "bad_request", "priority must be a whole number from 1 to 5")
    wrong = [name for name in ("line", "team", "tier") if body.get(name) is not None and not isinstance(body[name], str)]
    if wrong:
        raise HTTPProblem(400, "bad_request", f"{', '.join(wrong)} must be {'names' if len(wrong) > 1 else 'a name'}",
                          fields=[{"field": name, "problem": "a string"} for name in wrong])
    await assigner.transfer(work, by=body["by"], reason=body["reason"], line=body.get("line"),
                            team=body.get("team"), tier=body.get("tier"), priority=priority)
    return web.json_response(_case_summary(work))


async def escalate(request: web.Request) -> web.Response:
    require_integration(request, "agent")
    body = await _body(request, "by", "reason")
    assigner = _assigner(request)
    work = assigner.work_for(request.match_info["ref"].upper())
    await assigner.escalate(work, by=body["by"], reason=body["reason"])
    return web.json_response(_case_summary(work))


def _case_summary(work) -> dict[str, Any]:
    case = work.case
    return {"case": case.ref, "status": case.status.value, "line": case.line, "team": case.team, "tier": case.tier,
            "priority": case.priority, "offered_to": work.offer.agent_id if work.offer else None}


# -- reading -------------------------------------------------------------------------------------------------------
async def queue(request: web.Request) -> web.Response:
    require_integration(request, "read")
    return web.json_response({"queue": _assigner(request).queue_view()})


async def explain(request: web.Request) -> web.Response:
    require_integration(request, "read")
    ref = request.match_info["ref"].upper()
    found = await explain_case(switchboard_of(request).store, ref)
    if found is None:
        raise HTTPProblem(404, "not_found", f"no case {ref}")
    return web.json_response(found)


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/v1/agents", list_agents),
        web.get("/api/v1/agents/{agent_id}", get_agent),
        web.put("/api/v1/agents/{agent_id}", put_agent),
        web.delete("/api/v1/agents/{agent_id}", delete_agent),
        web.put("/api/v1/agents/{agent_id}/presence", put_presence),
        web.post("/api/v1/offers/{offer_id}/accept", accept_offer),
        web.post("/api/v1/offers/{offer_id}/decline", decline_offer),
        web.post("/api/v1/cases/{ref}/replies", reply),
        web.post("/api/v1/cases/{ref}/status", set_status),
        web.post("/api/v1/cases/{ref}/transfer", transfer),
        web.post("/api/v1/cases/{ref}/escalate", escalate),
        web.get("/api/v1/cases/{ref}/explain", explain),
        web.get("/api/v1/queue", queue),
    ]


__all__ = ["routes"]
