"""HTTP API for agents, supervisors and operators: presence, offers, replies, status, transfer, escalation,
the queue and explanations.

People call it signed in (router.web.auth): an agent acts as themselves on the cases they hold, a supervisor on
any case of their lines and teams. Integrations call it with scopes — `read` to look, `agent` to act for an
agent they name in the body, `supervise` to change agents and move cases."""
from __future__ import annotations

import base64
import binascii
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from router.core.accounts import Principal
from router.core.assigner import ASSIGNER, Assigner, AssignmentError, CaseWork
from router.core.explain import explain_case
from router.core.model import Attachment, CaseStatus, Identity, InvalidIdentity
from router.routing_config import AgentConfig
from router.web.api import switchboard_of
from router.web.auth import acting_agent, may_act_on, principal, require
from router.web.errors import HTTPProblem
from router.web.inputs import json_object, path_id


def _assigner(request: web.Request) -> Assigner:
    assigner = switchboard_of(request).stash.get(ASSIGNER)
    if assigner is None:
        raise HTTPProblem(503, "unavailable", "assignment is not running (is the core.assignment plugin blocked?)")
    return assigner


async def _body(request: web.Request, *required: str) -> dict[str, Any]:
    """The JSON object sent; an empty body counts as {} (accepting an offer needs nothing more)."""
    body = await json_object(request, empty=None if required else {})
    missing = [name for name in required if not isinstance(body.get(name), str) or not body[name].strip()]
    if missing:
        raise HTTPProblem(400, "bad_request", f"missing field{'s' * (len(missing) > 1)}: {', '.join(missing)}",
                          fields=[{"field": m, "problem": "required, a non-empty string"} for m in missing])
    return body


def _offer_id(request: web.Request) -> int:
    return path_id(request, "offer_id", "offer")


# -- agents ------------------------------------------------------------------------------------------------------
def agent_json(assigner: Assigner, agent_id: str, who: Principal) -> dict[str, Any]:
    """An agent's view as `who` may see it: their own whole, others' without refs of cases `who` cannot read."""
    return assigner.agent_view(agent_id, visible=None if who.agent_id == agent_id else who.covers)


async def list_agents(request: web.Request) -> web.Response:
    who = await require(request, "read")
    assigner = _assigner(request)
    return web.json_response({"agents": [agent_json(assigner, a.id, who) for a in sorted(assigner.workforce,
                                                                                      key=lambda a: a.id)]})


async def get_agent(request: web.Request) -> web.Response:
    agent_id = request.match_info["agent_id"]
    who = await principal(request)
    if who.agent_id != agent_id:  # one's own, or anyone's with the read permission
        await require(request, "read")
    return web.json_response(agent_json(_assigner(request), agent_id, who))


async def put_agent(request: web.Request) -> web.Response:
    who = await require(request, "supervise")
    agent_id = request.match_info["agent_id"]
    body = await _body(request)
    if body.setdefault("id", agent_id) != agent_id:
        raise HTTPProblem(400, "bad_request", f"the body's id {body['id']!r} is not the path's {agent_id!r}")
    try:
        definition = AgentConfig.model_validate(body)
    except ValidationError as exc:
        raise _invalid("invalid_agent", exc) from None
    assigner = _assigner(request)
    created = agent_id not in assigner.workforce
    await assigner.put_agent(definition, by=who.actor)
    return web.json_response(agent_json(assigner, agent_id, who), status=201 if created else 200)


def _invalid(code: str, exc: ValidationError) -> HTTPProblem:
    fields = [{"field": ".".join(str(p) for p in e["loc"]) or "body", "problem": e["msg"]} for e in exc.errors()]
    return HTTPProblem(400, code, "; ".join(f"{f['field']}: {f['problem']}" for f in fields), fields=fields)


async def delete_agent(request: web.Request) -> web.Response:
    who = await require(request, "supervise")
    await _assigner(request).remove_agent(request.match_info["agent_id"], by=who.actor)
    return web.Response(status=204)


async def put_presence(request: web.Request) -> web.Response:
    who = await require(request, "agent")
    agent_id = request.match_info["agent_id"]
    if who.is_person and who.agent_id != agent_id:
        await require(request, "supervise")  # a supervisor may send someone away (or offline) who left
    return await _set_presence(request, who, agent_id)


async def put_my_presence(request: web.Request) -> web.Response:
    who = await require(request, "agent")
    body = await _body(request, "presence")
    return await _set_presence(request, who, acting_agent(who, body), body)


async def _set_presence(request: web.Request, who: Principal, agent_id: str,
                        body: dict[str, Any] | None = None) -> web.Response:
    body = body if body is not None else await _body(request, "presence")
    assigner = _assigner(request)
    await assigner.set_presence(agent_id, body["presence"], by=who.actor if who.is_person else agent_id)
    return web.json_response(agent_json(assigner, agent_id, who))


# -- offers --------------------------------------------------------------------------------------------------------
async def accept_offer(request: web.Request) -> web.Response:
    who = await require(request, "agent")
    body = await _body(request)
    work = await _assigner(request).accept(_offer_id(request), acting_agent(who, body))
    return web.json_response({"case": work.case.ref, "status": work.case.status.value, "agent": work.agent_id})


async def decline_offer(request: web.Request) -> web.Response:
    who = await require(request, "agent")
    body = await _body(request)
    reason = body.get("reason") if isinstance(body.get("reason"), str) else None
    await _assigner(request).decline(_offer_id(request), acting_agent(who, body), reason)
    return web.json_response({"declined": _offer_id(request)})


# -- cases ---------------------------------------------------------------------------------------------------------
async def open_work(request: web.Request) -> CaseWork:
    """The open, routed case of the path; 409 saying why for one that was merged, resolved or closed."""
    ref = request.match_info["ref"].upper()
    assigner = _assigner(request)
    try:
        return assigner.work_for(ref)
    except AssignmentError:
        case = await switchboard_of(request).store.read(lambda tx: tx.case_by_ref(ref))
        if case is None or case.is_open:
            raise
        if case.merged_into is not None:
            into = await switchboard_of(request).store.read(lambda tx: tx.case_by_id(case.merged_into))
            raise HTTPProblem(409, "conflict", f"{ref} was merged into {into.ref if into else '?'}; "
                                               "continue there", merged_into=into.ref if into else None) from None
        raise HTTPProblem(409, "conflict", f"{ref} is {case.status.value}"
                          + ("; reopen it first" if case.status == CaseStatus.RESOLVED else ""),
                          state=case.status.value) from None


def _holder(work: CaseWork) -> str | None:
    return work.offer.agent_id if work.offer is not None else work.agent_id


async def _acting_on(request: web.Request, scope: str, *required: str, what: str = "act on"):
    """Who acts, the body and the case, after checking they may act on it."""
    who = await require(request, scope)
    body = await _body(request, *required)
    work = await open_work(request)
    may_act_on(who, holder=_holder(work), line=work.case.line, team=work.case.team, ref=work.case.ref, what=what)
    return who, body, work


async def reply(request: web.Request) -> web.Response:
    who, body, work = await _acting_on(request, "agent", what="reply on")
    agent = acting_agent(who, body)
    text = body.get("text", "")
    waiting = body.get("waiting_customer", False)
    problems = []
    if not isinstance(text, str):
        problems.append({"field": "text", "problem": "a string"})
    if not isinstance(waiting, bool):
        problems.append({"field": "waiting_customer", "problem": "true or false"})
    attachments, to = [], None
    try:
        attachments = [_attachment(a) for a in body.get("attachments") or []]
    except (ValidationError, TypeError, ValueError, KeyError, binascii.Error):
        problems.append({"field": "attachments",
                         "problem": "a list of {filename, content_type, content} with the content in base64"})
    if body.get("to"):
        kind, _, value = str(body["to"]).partition(":")
        try:  # written as the customer wrote it or not (ADA@Example.com, 333 123 4567): stored normalised
            to = Identity(kind=kind, value=value).normalised(switchboard_of(request).config.instance.default_region)
        except (ValidationError, InvalidIdentity):
            problems.append({"field": "to", "problem": "an identity of the customer, like email:ann@example.com"})
    if problems:
        raise HTTPProblem(400, "bad_request", "; ".join(f"{p['field']}: {p['problem']}" for p in problems),
                          fields=problems)
    outbound_id = await _assigner(request).reply(work, agent, text, waiting_customer=waiting,
                                                 attachments=attachments, to=to)
    return web.json_response({"case": work.case.ref, "status": work.case.status.value,
                              "outbound_id": outbound_id or None}, status=201)


def _attachment(item: Any) -> Attachment:
    content = base64.b64decode(item["content"], validate=True)
    return Attachment.model_validate({**{k: v for k, v in item.items() if k != "content"}, "content": content,
                                      "size": len(content)})


async def set_status(request: web.Request) -> web.Response:
    who = await require(request, "agent")
    body = await _body(request, "status")
    allowed = {"resolved": CaseStatus.RESOLVED, "closed": CaseStatus.CLOSED,
               "waiting_customer": CaseStatus.WAITING_CUSTOMER}
    if body["status"] not in allowed:
        raise HTTPProblem(400, "bad_request", f"status must be one of {sorted(allowed)}")
    assigner = _assigner(request)
    ref = request.match_info["ref"].upper()
    if body["status"] == "closed" and not any(w.case.ref == ref for w in assigner.cases.values()):
        case = await _case_in_scope(request, who, ref)  # a resolved case is closed from the store
        await assigner.close_resolved(case.ref, by=who.actor if who.is_person else acting_agent(who, body))
        return web.json_response({"case": ref, "status": "closed"})
    work = await open_work(request)
    may_act_on(who, holder=_holder(work), line=work.case.line, team=work.case.team, ref=work.case.ref)
    agent = acting_agent(who, body) if not who.is_person or who.agent_id else who.actor
    if not who.is_person and work.agent_id not in (None, agent):
        raise HTTPProblem(403, "forbidden", f"{work.case.ref} is held by another agent")
    if allowed[body["status"]] == CaseStatus.WAITING_CUSTOMER:
        await assigner.wait_on_customer(work, agent)
    else:
        supervisor = who.is_person and _holder(work) != who.agent_id
        await assigner.finish(work, allowed[body["status"]], by=agent, supervisor=supervisor)
    return web.json_response({"case": work.case.ref, "status": body["status"]})


async def _case_in_scope(request: web.Request, who: Principal, ref: str):
    """A case read from the store that a person may act on: its last holder, or a supervisor of its line/team."""
    sb = switchboard_of(request)

    async def unit(tx):
        case = await tx.case_by_ref(ref)
        return case, (await tx.case_work(case.id) if case is not None else None)

    case, work = await sb.store.read(unit)
    if case is None:
        raise HTTPProblem(404, "not_found", f"no case {ref}")
    may_act_on(who, holder=work["agent_id"] if work else None, line=case.line, team=case.team, ref=ref)
    return case


async def reopen(request: web.Request) -> web.Response:
    who = await require(request, "agent")
    body = await _body(request)
    ref = request.match_info["ref"].upper()
    await _case_in_scope(request, who, ref)
    reason = body.get("reason") if isinstance(body.get("reason"), str) and body["reason"].strip() else "reopened"
    case = await _assigner(request).reopen(ref, by=who.actor if who.is_person else acting_agent(who, body),
                                           reason=reason)
    return web.json_response({"case": case.ref, "status": case.status.value})


async def transfer(request: web.Request) -> web.Response:
    who = await principal(request)
    who = await require(request, "agent" if who.is_person else "supervise")  # systems move cases as supervisors
    body = await _body(request, "reason")
    work = await open_work(request)
    may_act_on(who, holder=_holder(work), line=work.case.line, team=work.case.team, ref=work.case.ref,
               what="transfer")
    by = who.actor if who.is_person else body.get("by") if isinstance(body.get("by"), str) else who.actor
    assigner = _assigner(request)
    priority = body.get("priority")
    if priority is not None and (type(priority) is not int or not 1 <= priority <= 5):
        raise HTTPProblem(400, "bad_request", "priority must be a whole number from 1 to 5")
    wrong = [name for name in ("line", "team", "tier", "agent")
             if body.get(name) is not None and not isinstance(body[name], str)]
    if wrong:
        raise HTTPProblem(400, "bad_request", f"{', '.join(wrong)} must be {'names' if len(wrong) > 1 else 'a name'}",
                          fields=[{"field": name, "problem": "a string"} for name in wrong])
    if body.get("agent"):
        if any(body.get(k) is not None for k in ("line", "team", "tier", "priority")):
            raise HTTPProblem(400, "bad_request", "transfer to an agent, or to a line/team/tier, not both")
        await assigner.transfer_to_agent(work, body["agent"], by=by, reason=body["reason"])
    else:
        await assigner.transfer(work, by=by, reason=body["reason"], line=body.get("line"), team=body.get("team"),
                                tier=body.get("tier"), priority=priority)
    return web.json_response(_case_summary(work))


async def escalate(request: web.Request) -> web.Response:
    who, body, work = await _acting_on(request, "agent", "reason", what="escalate")
    by = who.actor if who.is_person else acting_agent(who, body, "by")
    await _assigner(request).escalate(work, by=by, reason=body["reason"])
    return web.json_response(_case_summary(work))


def _case_summary(work) -> dict[str, Any]:
    case = work.case
    return {"case": case.ref, "status": case.status.value, "line": case.line, "team": case.team, "tier": case.tier,
            "priority": case.priority, "offered_to": work.offer.agent_id if work.offer else None,
            "agent": work.agent_id}


# -- reading -------------------------------------------------------------------------------------------------------
async def queue(request: web.Request) -> web.Response:
    who = await require(request, "read")
    items = [q for q in _assigner(request).queue_view() if who.covers(q["line"], q["team"])]
    return web.json_response({"queue": items})


async def explain(request: web.Request) -> web.Response:
    from router.web.workspace_api import readable_case

    ref = request.match_info["ref"].upper()
    await readable_case(request, ref)
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
        web.put("/api/v1/me/presence", put_my_presence),
        web.post("/api/v1/offers/{offer_id}/accept", accept_offer),
        web.post("/api/v1/offers/{offer_id}/decline", decline_offer),
        web.post("/api/v1/cases/{ref}/replies", reply),
        web.post("/api/v1/cases/{ref}/status", set_status),
        web.post("/api/v1/cases/{ref}/reopen", reopen),
        web.post("/api/v1/cases/{ref}/transfer", transfer),
        web.post("/api/v1/cases/{ref}/escalate", escalate),
        web.get("/api/v1/cases/{ref}/explain", explain),
        web.get("/api/v1/queue", queue),
    ]


__all__ = ["routes", "open_work"]
