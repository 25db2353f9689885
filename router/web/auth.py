"""Who is calling, and may they: people sign in (session cookie or API token), systems use integration tokens.

Credentials, in order: ``Authorization: Bearer <token>`` (an integration's token, or a person's API or session
token), then the console's ``sb_session`` cookie. A request authenticated by the cookie that changes something
must carry ``X-Requested-With: switchboard``: a browser only sends that header from Switchboard's own pages, so
another site cannot make a signed-in agent's browser act (CSRF).
"""
from __future__ import annotations

from typing import Any

from aiohttp import web

from router.core.accounts import Principal
from router.web.errors import HTTPProblem

SESSION_COOKIE = "sb_session"
CSRF_HEADER = "X-Requested-With"
CSRF_VALUE = "switchboard"
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
_PRINCIPAL = web.RequestKey("principal", Principal)


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() or None if header[:7].lower() == "bearer " else None


async def principal(request: web.Request) -> Principal:
    """The caller, or 401 with what to send."""
    if _PRINCIPAL in request:
        return request[_PRINCIPAL]
    from router.web.api import switchboard_of

    sb = switchboard_of(request)
    token = bearer(request)
    found: Principal | None = None
    if token is not None:
        found = sb.integration_principal(token) or await sb.accounts.authenticate(token)
    elif (cookie := request.cookies.get(SESSION_COOKIE)) is not None:
        found = await sb.accounts.authenticate(cookie)
        if found is not None and request.method not in _SAFE and request.headers.get(CSRF_HEADER) != CSRF_VALUE:
            raise HTTPProblem(403, "forbidden", f"a signed-in browser must send {CSRF_HEADER}: {CSRF_VALUE} "
                                                "with every change (protection against cross-site requests)")
    if found is None:
        raise HTTPProblem(401, "unauthorized", "sign in, or send a token (Authorization: Bearer <token>); "
                                               "the one given is missing, unknown, expired or revoked")
    request[_PRINCIPAL] = found
    return found


async def require(request: web.Request, scope: str) -> Principal:
    """The caller, if they hold `scope` (read, agent, supervise, ingest); else 401/403."""
    who = await principal(request)
    if scope not in who.scopes:
        what = f"integration {who.id!r}" if who.kind == "integration" else f"{who.role} {who.id!r}"
        raise HTTPProblem(403, "forbidden", f"{what} may not do this (needs the {scope!r} permission)")
    return who


def acting_agent(who: Principal, body: dict[str, Any], field: str = "agent") -> str:
    """The agent an action is done as: people act as themselves; an integration names the agent in the body."""
    named = body.get(field)
    if who.is_person:
        if who.agent_id is None:
            raise HTTPProblem(403, "forbidden", f"account {who.id!r} does not work as an agent")
        if named not in (None, who.agent_id):
            raise HTTPProblem(403, "forbidden", f"you act as agent {who.agent_id!r}, not {named!r}")
        return who.agent_id
    if not isinstance(named, str) or not named.strip():
        raise HTTPProblem(400, "bad_request", f"missing field: {field}",
                          fields=[{"field": field, "problem": "required, the agent's id"}])
    return named


def may_act_on(who: Principal, *, holder: str | None, line: str | None, team: str | None, ref: str,
               what: str = "act on") -> None:
    """People may act on the cases they hold; supervisors on any case of their lines and teams. 403 otherwise."""
    if who.kind == "integration":
        return
    if holder is not None and holder == who.agent_id:
        return
    if "supervise" in who.scopes and who.covers(line, team):
        return
    if holder is None:
        raise HTTPProblem(403, "forbidden", f"you cannot {what} {ref}: nobody holds it and it is not on your "
                                            "lines or teams")
    raise HTTPProblem(403, "forbidden", f"you cannot {what} {ref}: it is held by {holder}; only they or a "
                                        "supervisor of its line or team can")
