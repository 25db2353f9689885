"""The agent workspace over HTTP: signing in, who am I, the live stream, reading a case with everything around
it, internal notes, links between cases, merges, retrying a failed delivery, and the console's pages."""
from __future__ import annotations

import asyncio
import contextlib
from importlib import resources
from typing import Any
from urllib.parse import quote

from aiohttp import web

from router.core.accounts import AccountError, Principal
from router.core.assigner import ASSIGNER
from router.core.feed import CLOSE, reset_frame
from router.core.model import Case, Direction
from router.web.api import case_json, customer_json, event_json, message_json, outbound_json, switchboard_of
from router.web.assignment_api import _assigner, _body, open_work
from router.web.auth import SESSION_COOKIE, bearer, may_act_on, principal, require
from router.web.errors import HTTPProblem
from router.web.inputs import path_id

RELATIONS = ("other_side", "related", "followup")


# -- signing in -----------------------------------------------------------------------------------------------------
async def login(request: web.Request) -> web.Response:
    if request.content_type != "application/json":
        # A page on another site can post a form (text/plain, urlencoded) but not JSON without the browser
        # asking this server first: so no page can sign a visitor in to an account of its choosing.
        raise HTTPProblem(415, "unsupported_media_type", "sign in with a JSON body (Content-Type: application/json)")
    body = await _body(request, "account", "password")
    sb = switchboard_of(request)
    try:
        token, who = await sb.accounts.login(body["account"].strip(), body["password"])
    except AccountError as exc:
        raise HTTPProblem(exc.status, exc.code, exc.detail) from None
    answer: dict[str, Any] = {"account": who.as_json(),
                              "expires_in": int(sb.config.console.session_ttl.total_seconds())}
    if body.get("token") is True:  # a script asked for it; a browser keeps the session in the HttpOnly cookie only
        answer["token"] = token
    response = web.json_response(answer)
    # Secure over HTTPS, including behind a TLS-terminating proxy that says so.
    secure = request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="Strict", path="/",
                        max_age=int(sb.config.console.session_ttl.total_seconds()), secure=secure)
    return response


async def logout(request: web.Request) -> web.Response:
    who = await principal(request)
    token = bearer(request) or request.cookies.get(SESSION_COOKIE)  # the credential this request used
    if token and who.is_person:
        await switchboard_of(request).accounts.revoke(token)
    response = web.Response(status=204)
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


async def me(request: web.Request) -> web.Response:
    who = await principal(request)
    if not who.is_person:
        return web.json_response({"account": None, "integration": who.id, "scopes": sorted(who.scopes)})
    agent = None
    if who.agent_id:
        assigner = switchboard_of(request).stash.get(ASSIGNER)
        if assigner is not None and who.agent_id in assigner.workforce:
            agent = assigner.agent_view(who.agent_id)
    return web.json_response({"account": who.as_json(), "agent": agent})


async def my_cases(request: web.Request) -> web.Response:
    who = await require(request, "agent")
    if who.agent_id is None:
        return web.json_response({"cases": []})
    assigner = _assigner(request)
    held = sorted((w.case for w in assigner.cases.values() if w.agent_id == who.agent_id and w.offer is None),
                  key=lambda c: (c.priority, c.updated_at))
    return web.json_response({"cases": [case_json(c) for c in held]})


# -- the live stream -------------------------------------------------------------------------------------------------
async def stream(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: every event the caller may see, live; after a reconnect (Last-Event-ID, or ?after=),
    first what was missed, from the store."""
    who = await principal(request)
    if who.kind == "integration":
        await require(request, "read")  # a system streams everything or nothing
    sb = switchboard_of(request)
    feed = sb.feed
    raw_after = request.headers.get("Last-Event-ID") or request.query.get("after")
    try:
        after = int(raw_after) if raw_after else None
    except ValueError:
        raise HTTPProblem(400, "bad_request", "Last-Event-ID (or after) must be an event id") from None
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    credential = bearer(request) or request.cookies.get(SESSION_COOKIE) or ""
    sub = feed.subscribe(who)  # before reading the backlog, so nothing falls between the two
    try:
        frames, last, complete = [], 0, True
        if after is not None:
            if after > await feed.latest_id():  # an id this store never gave (restored, another deployment)
                complete = False
            else:
                frames, last, complete = await feed.backlog(who, after)
        await response.prepare(request)
        await response.write(b"retry: 2000\n: connected\n\n" + b"".join(frames))
        if not complete:
            await response.write(reset_frame("the events since your last one cannot be replayed; reload"))
        heartbeat = sb.config.console.stream_heartbeat.total_seconds()
        loop = asyncio.get_running_loop()
        check_at = loop.time() + heartbeat
        while True:
            if loop.time() >= check_at:  # busy or idle, the caller is checked again every heartbeat
                if not await _still(sb, who, credential):  # signed out, revoked, disabled or changed
                    break
                check_at = loop.time() + heartbeat
            try:
                item = await asyncio.wait_for(sub.queue.get(), timeout=max(0.0, check_at - loop.time()))
            except asyncio.TimeoutError:
                await response.write(b": ping\n\n")
                continue
            if item is None:  # fell behind: the client reconnects and catches up from the store
                await response.write(reset_frame("the stream fell behind; reconnect to catch up"))
                break
            if item == CLOSE:  # the server is stopping; the client reconnects to another node or later
                break
            chunks = [item]
            while not sub.queue.empty() and len(chunks) < 256:  # whatever else is ready goes in the same write
                more = sub.queue.get_nowait()
                if not more:  # a reset or the close (always the last item): handled on the next turn
                    sub.queue.put_nowait(more)
                    break
                chunks.append(more)
            fresh = [c for c in chunks if _frame_id(c) > last]  # not those the backlog already sent
            if fresh:
                await response.write(b"".join(fresh))
        return response
    except ConnectionResetError:  # the browser went away (aiohttp's ClientConnectionResetError): nothing to do
        return response
    finally:
        feed.unsubscribe(sub)


async def _still(sb, who: Principal, credential: str) -> bool:
    """Whether the credential a stream was opened with still stands for the same caller (checked at each
    heartbeat: a stream must not outlive a sign-out, a revoked token or a changed role)."""
    now = (sb.integration_principal(credential) if who.kind == "integration"
           else await sb.accounts.authenticate(credential))
    return now == who


def _frame_id(frame: bytes) -> int:
    return int(frame[4:frame.index(b"\n")])


# -- reading a case ----------------------------------------------------------------------------------------------------
async def readable_case(request: web.Request, ref: str) -> tuple[Principal, Case, dict[str, Any] | None]:
    """The case, if the caller may read it: full readers and supervisors of its line or team; agents when
    they hold it, are offered it, last worked it, or hold a case linked to it (the other side of an order)."""
    who = await principal(request)
    sb = switchboard_of(request)

    async def unit(tx):
        case = await tx.case_by_ref(ref)
        if case is None:
            return None, None, []
        holders = []
        for _relation, other in await tx.linked_cases(case.id):
            other_work = await tx.case_work(other.id)
            if other_work is not None and other.is_open:
                holders.append(other_work["agent_id"])
        return case, await tx.case_work(case.id), holders

    case, work, linked_holders = await sb.store.read(unit)
    if case is None:
        raise HTTPProblem(404, "not_found", f"no case {ref}")
    if "read" in who.scopes and who.covers(case.line, case.team):
        return who, case, work
    assigner = sb.stash.get(ASSIGNER)
    live = assigner.cases.get(case.id) if assigner is not None else None
    offered = live.offer.agent_id if live is not None and live.offer is not None else None
    mine = who.agent_id is not None and who.agent_id in (
        offered, live.agent_id if live else None, work["agent_id"] if work else None, *linked_holders)
    if not mine:
        raise HTTPProblem(403, "forbidden", f"{ref} is not yours: you can read the cases you hold or are offered, "
                                            "and the cases linked to them")
    return who, case, work


async def get_case(request: web.Request) -> web.Response:
    ref = request.match_info["ref"].upper()
    _who, case, work = await readable_case(request, ref)

    async def unit(tx):
        return (await tx.get_customer(case.customer_id), await tx.messages_for_case(case.id),
                await tx.events_for_case(case.id), await tx.outbound_for_case(case.id),
                await tx.linked_cases(case.id), await tx.latest_survey(case.id),
                await tx.case_by_id(case.merged_into) if case.merged_into else None,
                await tx.case_by_id(case.related_case_id) if case.related_case_id else None)

    customer, messages, events, outbound, links, survey, merged_into, related = \
        await switchboard_of(request).store.read(unit)
    body = case_json(case)
    body["merged_into"] = merged_into.ref if merged_into else None
    body["related_case"] = related.ref if related else None
    body["agent"] = work["agent_id"] if work else None
    return web.json_response({
        "case": body, "customer": customer_json(customer),
        "messages": [message_json(m) for m in messages], "events": [event_json(e) for e in events],
        "outbound": [outbound_json(o) for o in outbound],
        "links": [{"ref": other.ref, "relation": relation, "status": other.status.value, "subject": other.subject,
                   "line": other.line, "customer_id": other.customer_id} for relation, other in links],
        "survey": None if survey is None else {
            "score": survey["score"], "comment": survey["comment"], "channel": survey["channel"],
            "sent_at": survey["sent_at"].isoformat(),
            "answered_at": survey["answered_at"].isoformat() if survey["answered_at"] else None},
    })


async def get_attachment(request: web.Request) -> web.Response:
    ref = request.match_info["ref"].upper()
    _who, case, _work = await readable_case(request, ref)
    attachment_id = path_id(request, "attachment_id", "attachment")
    row = await switchboard_of(request).store.read(lambda tx: tx.fetchrow(
        "SELECT a.filename, a.content_type, a.content FROM attachments a JOIN messages m ON m.id = a.message_id "
        "WHERE a.id = $1 AND m.case_id = $2", attachment_id, case.id))
    if row is None or row["content"] is None:
        raise HTTPProblem(404, "not_found", f"no stored attachment {attachment_id} on {ref}")
    return web.Response(body=bytes(row["content"]), content_type="application/octet-stream", headers={
        "Content-Disposition": _attachment_disposition(row["filename"] or ""), "X-Content-Type-Options": "nosniff",
        "X-Original-Content-Type": "".join(c for c in row["content_type"] or "" if " " <= c <= "~")[:255]})


def _attachment_disposition(filename: str) -> str:
    """RFC 6266: an ASCII `filename` for old clients and the exact name, UTF-8 and percent-encoded, in `filename*`.
    Customers' file names hold anything (quotes, line breaks, any script): none of it reaches the header raw."""
    name = "".join(c for c in filename if c.isprintable()).strip() or "attachment"
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


# -- notes, links, merges -------------------------------------------------------------------------------------------
async def _workable_case(request: web.Request, refusal: str) -> tuple[str, Principal, Case]:
    """The path's case, for a caller who may read it and works cases (the `agent` permission); else 403."""
    ref = request.match_info["ref"].upper()
    who, case, _work = await readable_case(request, ref)
    if "agent" not in who.scopes:
        raise HTTPProblem(403, "forbidden", refusal)
    return ref, who, case


async def add_note(request: web.Request) -> web.Response:
    """An internal note: kept on the case, seen by colleagues, never sent to the customer."""
    ref, who, case = await _workable_case(request, "notes are written by agents and supervisors")
    body = await _body(request, "text")
    author = who.actor if who.is_person else body.get("agent") or who.actor
    sb = switchboard_of(request)
    now = sb.clock.now()

    async def unit(tx):
        note_id = await tx.insert_message(
            case_id=case.id, direction=Direction.NOTE, channel=case.channel, account=case.account, external_id=None,
            conversation=None, sender=f"agent:{author}", text=body["text"], meta={"kind": "note", "author": author},
            at=now)
        events = await tx.append_events([(case.id, "note.added", {"message_id": note_id, "author": author})],
                                        author, now)
        return note_id, events

    note_id, events = await sb.store.write(unit)
    await sb.after_write(events)
    return web.json_response({"case": ref, "note_id": note_id}, status=201)


async def add_link(request: web.Request) -> web.Response:
    """Link the cases of the two sides of one task or order, so each side's agent sees the other."""
    ref, who, case = await _workable_case(request, "cases are linked by agents and supervisors")
    body = await _body(request, "case")
    relation = body.get("relation", "other_side")
    if relation not in RELATIONS:
        raise HTTPProblem(400, "bad_request", f"relation must be one of {list(RELATIONS)}")
    other_ref = body["case"].strip().upper()
    if other_ref == ref:
        raise HTTPProblem(400, "bad_request", "a case cannot be linked to itself")
    await _may_link(request, case, other_ref)
    sb = switchboard_of(request)
    now = sb.clock.now()

    async def unit(tx):
        other = await tx.case_by_ref(other_ref)
        if other is None:
            raise HTTPProblem(404, "not_found", f"no case {other_ref}")
        if not await tx.link_cases(case.id, other.id, relation, who.actor, now):
            return other, []
        return other, await tx.append_events(
            [(case.id, "case.linked", {"case": other.ref, "relation": relation}),
             (other.id, "case.linked", {"case": case.ref, "relation": relation})], who.actor, now)

    other, events = await sb.store.write(unit)
    await sb.after_write(events)
    return web.json_response({"case": ref, "linked": other.ref, "relation": relation},
                             status=201 if events else 200)


async def _may_link(request: web.Request, case: Case, other_ref: str) -> None:
    """A link opens each side to the other's agent, so the caller must be able to read the other case too, or
    it must be about the same order or task as theirs (the platform said so: context.order_id)."""
    try:
        await readable_case(request, other_ref)
    except HTTPProblem as exc:
        if exc.status != 403:
            raise
        other = await switchboard_of(request).store.read(lambda tx: tx.case_by_ref(other_ref))
        if not (case.order_id and other is not None and other.order_id == case.order_id):
            raise HTTPProblem(403, "forbidden", f"you cannot link {other_ref}: it is not yours and not about the "
                                                f"same order as {case.ref}") from None


async def merge(request: web.Request) -> web.Response:
    """Merge this case into another case of the same customer."""
    ref = request.match_info["ref"].upper()
    who = await require(request, "agent")
    body = await _body(request, "into")
    sb = switchboard_of(request)
    for one in (ref, body["into"].strip().upper()):  # the caller must be able to act on both
        case, work = await sb.store.read(lambda tx, r=one: _case_and_work(tx, r))
        if case is not None:
            may_act_on(who, holder=work["agent_id"] if work and case.is_open else None, line=case.line,
                       team=case.team, ref=one, what="merge")
    target = await _assigner(request).merge(ref, body["into"].strip().upper(), by=who.actor)
    return web.json_response({"case": ref, "merged_into": target.ref})


async def _case_and_work(tx, ref: str):
    case = await tx.case_by_ref(ref)
    return case, (await tx.case_work(case.id) if case is not None else None)


async def retry_outbound(request: web.Request) -> web.Response:
    """Send a failed outbound message again (after fixing the address, or when the channel is back)."""
    who = await require(request, "agent")
    outbound_id = path_id(request, "outbound_id", "outbound")
    sb = switchboard_of(request)
    outbound = await sb.store.read(lambda tx: tx.get_outbound(outbound_id))
    if outbound is None:
        raise HTTPProblem(404, "not_found", f"no outbound message {outbound_id}")
    case = await sb.store.read(lambda tx: tx.case_by_id(outbound.case_id))
    _who, case, work = await readable_case(request, case.ref)
    author = outbound.message_id and await sb.store.read(
        lambda tx: tx.fetchval("SELECT sender FROM messages WHERE id = $1", outbound.message_id))
    if not (who.is_person and who.agent_id and author in (who.agent_id, f"agent:{who.agent_id}")):
        # whoever wrote a message may send it again (replies are stored as sent by agent:<id>)
        may_act_on(who, holder=work["agent_id"] if work and case.is_open else None, line=case.line, team=case.team,
                   ref=case.ref, what="send a message again on")
    now = sb.clock.now()

    async def unit(tx):
        again = await tx.retry_outbound(outbound_id, now)
        if again is None:
            current = await tx.get_outbound(outbound_id)
            raise HTTPProblem(409, "conflict", f"outbound message {outbound_id} is {current.status.value}; only a "
                                               "failed one can be retried", state=current.status.value)
        events = await tx.append_events([(again.case_id, "outbound.retry_requested",
                                          {"outbound_id": outbound_id, "by": who.actor})], who.actor, now)
        return again, events

    again, events = await sb.store.write(unit)
    await sb.after_write(events, wake_outbox=True)
    return web.json_response(outbound_json(again))


# -- the console --------------------------------------------------------------------------------------------------------
STATIC = resources.files("router.web").joinpath("static")
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


async def console_page(request: web.Request) -> web.Response:
    return _static("console.html")


async def console_static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if "/" in name or name.startswith(".") or not any(name.endswith(s) for s in _TYPES):
        raise HTTPProblem(404, "not_found", f"no console file {name}")
    return _static(name)


def _static(name: str) -> web.Response:
    item = STATIC.joinpath(name)
    with contextlib.suppress(FileNotFoundError):
        body = item.read_bytes()
        suffix = name[name.rindex("."):]
        return web.Response(body=body, content_type=_TYPES[suffix], charset="utf-8", headers={
            "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                       "frame-ancestors 'none'"})
    raise HTTPProblem(404, "not_found", f"no console file {name}")


async def console_redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/console")


def routes() -> list[web.RouteDef]:
    return [
        web.post("/api/v1/auth/login", login),
        web.post("/api/v1/auth/logout", logout),
        web.get("/api/v1/me", me),
        web.get("/api/v1/me/cases", my_cases),
        web.get("/api/v1/stream", stream),
        web.get("/api/v1/cases/{ref}", get_case),
        web.get("/api/v1/cases/{ref}/attachments/{attachment_id}", get_attachment),
        web.post("/api/v1/cases/{ref}/notes", add_note),
        web.post("/api/v1/cases/{ref}/links", add_link),
        web.post("/api/v1/cases/{ref}/merge", merge),
        web.post("/api/v1/outbound/{outbound_id}/retry", retry_outbound),
        web.get("/", console_redirect),
        web.get("/console", console_page),
        web.get("/console/static/{name}", console_static),
    ]


__all__ = ["routes", "readable_case", "open_work"]
