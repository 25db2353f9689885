"""Core HTTP API: health, metrics, and reading cases (for integrations with the `read` scope)."""
from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from router.app import Switchboard
from router.config import IntegrationConfig
from router.core.model import Case, Customer, Event, Message, Outbound
from router.web.auth import require
from router.web.errors import HTTPProblem
from router.web.inputs import MAX_ID, path_id, query_int


def switchboard_of(request: web.Request) -> Switchboard:
    from router.web.app import SWITCHBOARD

    return request.app[SWITCHBOARD]


def require_integration(request: web.Request, scope: str) -> IntegrationConfig:
    """The integration whose bearer token came with the request, if it holds `scope`; else 401/403.
    For what only systems do (posting messages); everything people may also do uses router.web.auth.require."""
    from router.web.auth import bearer

    integration = switchboard_of(request).integration_for_token(bearer(request))
    if integration is None:
        raise HTTPProblem(401, "unauthorized", "missing or unknown integration token (Authorization: Bearer <token>)")
    if scope not in integration.scopes:
        raise HTTPProblem(403, "forbidden", f"integration {integration.name!r} lacks the {scope!r} scope")
    return integration


async def healthz(request: web.Request) -> web.Response:
    sb = switchboard_of(request)
    version = await sb.store.schema_version()
    return web.json_response({"status": "ok", "store": sb.store.backend, "schema_version": version})


async def metrics(request: web.Request) -> web.Response:
    sb = switchboard_of(request)
    sb.metrics.set_case_counts(await sb.store.read(lambda tx: tx.count_cases_by_status()))
    return web.Response(body=sb.metrics.render(), content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


def case_json(case: Case) -> dict[str, Any]:
    return {
        "id": case.id, "ref": case.ref, "status": case.status.value, "channel": case.channel, "account": case.account,
        "subject": case.subject, "language": case.language, "line": case.line, "team": case.team, "tier": case.tier,
        "priority": case.priority, "order_id": case.order_id, "related_case_id": case.related_case_id,
        "route": case.route, "created_at": case.created_at.isoformat(), "updated_at": case.updated_at.isoformat(),
        "resolved_at": case.resolved_at.isoformat() if case.resolved_at else None,
    }


def customer_json(customer: Customer) -> dict[str, Any]:
    return {"id": customer.id, "role": customer.role, "display_name": customer.display_name,
            "language": customer.language, "identities": [str(i) for i in customer.identities]}


def message_json(message: Message) -> dict[str, Any]:
    return {"id": message.id, "direction": message.direction.value, "channel": message.channel,
            "account": message.account, "external_id": message.external_id, "sender": message.sender,
            "text": message.text, "meta": message.meta, "attachments": message.attachments,
            "created_at": message.created_at.isoformat()}


def event_json(event: Event) -> dict[str, Any]:
    return {"id": event.id, "type": event.type, "actor": event.actor, "data": event.data, "at": event.at.isoformat()}


def outbound_json(outbound: Outbound) -> dict[str, Any]:
    return {"id": outbound.id, "message_id": outbound.message_id, "kind": outbound.kind, "channel": outbound.channel, "recipient": str(outbound.recipient),
            "status": outbound.status.value, "attempts": outbound.attempts, "last_error": outbound.last_error,
            "next_attempt_at": outbound.next_attempt_at.isoformat()}


async def list_cases(request: web.Request) -> web.Response:
    who = await require(request, "read")
    limit = query_int(request, "limit", 50, 1, 500)
    before = query_int(request, "before", None, 1, MAX_ID)
    status = request.query.get("status")
    cases = await switchboard_of(request).store.read(
        lambda tx: tx.list_cases(status=status, limit=limit, before_id=before, scope=who.case_scope)
    )
    body: dict[str, Any] = {"cases": [case_json(c) for c in cases]}
    if len(cases) == limit:
        follow = {"limit": limit, "before": cases[-1].id} | ({"status": status} if status else {})
        body["next"] = "/api/v1/cases?" + urlencode(follow)
    return web.json_response(body)


def quarantined_json(item: dict[str, Any]) -> dict[str, Any]:
    out = {k: item[k] for k in ("id", "channel", "account", "source_key", "reason", "status", "attempts", "meta")}
    out["case_id"] = item["case_id"]
    out["created_at"] = item["created_at"].isoformat()
    out["updated_at"] = item["updated_at"].isoformat()
    if "raw" in item:
        raw: bytes = item["raw"]
        out["size"] = len(raw)
        out["raw_preview"] = raw[:65536].decode("utf-8", "replace")
    if item.get("case_ref"):
        out["case_ref"] = item["case_ref"]
    return out


async def list_quarantine(request: web.Request) -> web.Response:
    await require(request, "read")
    status = request.query.get("status", "held")
    if status not in ("held", "reprocessed", "all"):
        raise HTTPProblem(400, "bad_request", f"status must be held, reprocessed or all, not {status!r}")
    items = await switchboard_of(request).store.read(
        lambda tx: tx.list_quarantine(None if status == "all" else status, limit=500))
    return web.json_response({"quarantine": [quarantined_json(i) for i in items]})


def _item_id(request: web.Request) -> int:
    return path_id(request, "id", "quarantine")


async def get_quarantined(request: web.Request) -> web.Response:
    await require(request, "read")
    item_id = _item_id(request)
    item = await switchboard_of(request).store.read(lambda tx: tx.get_quarantined(item_id))
    if item is None:
        raise HTTPProblem(404, "not_found", f"no quarantined message {item_id}")
    return web.json_response(quarantined_json(item))


async def reprocess_quarantined(request: web.Request) -> web.Response:
    from router.core.quarantine import QuarantineError

    await require(request, "supervise")
    try:
        item = await switchboard_of(request).quarantine.reprocess(_item_id(request))
    except QuarantineError as exc:
        raise HTTPProblem(exc.status, "not_found" if exc.status == 404 else "conflict", str(exc)) from None
    return web.json_response(quarantined_json(item), status=200 if item["status"] == "reprocessed" else 422)
