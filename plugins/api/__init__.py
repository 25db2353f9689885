"""The generic API channel: integrations POST normalised JSON messages and receive answers as signed webhooks."""
from __future__ import annotations

import json

import aiohttp
from aiohttp import web

from plugins.api.parse import CHANNEL, InvalidPayload, parse_message
from plugins.api.transport import post_webhook
from router import hookimpl
from router.channels import Channel
from router.core.model import DeliveryResult, IngestOutcome
from router.stash import StashKey
from router.web.api import require_integration
from router.web.errors import HTTPProblem
from router.web.inputs import json_object, path_id

HTTP_SESSION = StashKey[aiohttp.ClientSession]()
_json_str = json.JSONEncoder().encode  # a JSON string literal, escaped as json.dumps escapes it


@hookimpl
def switchboard_register_channels(registry, config):
    with_webhook = frozenset(i.name for i in config.integrations if i.webhook is not None)
    registry.add(
        Channel(
            name=CHANNEL,
            title="API",
            description="Messages POSTed by integrations; answers go back as signed webhooks",
            outbound=lambda account: account in with_webhook,
        )
    )


@hookimpl
def switchboard_web_routes(switchboard):
    async def post_message(request: web.Request) -> web.Response:
        integration = require_integration(request, "ingest")
        if request.content_type != "application/json":
            raise HTTPProblem(415, "unsupported_media_type", "send the message as Content-Type: application/json")
        body = await request.read()  # aiohttp answers 413 past server.max_body_bytes
        try:
            message = parse_message(body, integration)
        except InvalidPayload as exc:
            switchboard.metrics.rejected.labels(CHANNEL, "invalid").inc()
            raise HTTPProblem(400, "invalid_message", str(exc), fields=exc.problems) from None
        result = await switchboard.dispatcher.ingest(message)
        status = 200 if result.outcome is IngestOutcome.DUPLICATE else 202
        # The same text web.json_response would send (json.dumps with its default spacing), built directly.
        case = result.case
        text = (
            f'{{"outcome": {_json_str(result.outcome.value)}, "case": {{"ref": {_json_str(case.ref)}, '
            f'"id": {int(case.id)}, "status": {_json_str(case.status.value)}}}, "message_id": {int(result.message_id)}}}'
        )
        return web.Response(text=text, status=status, content_type="application/json")

    async def delivery_report(request: web.Request) -> web.Response:
        """The integration says what became of a webhook it accepted: delivered to the person, or failed."""
        integration = require_integration(request, "ingest")
        outbound_id = path_id(request, "delivery_id", "delivery")
        body = await json_object(request)
        status = body.get("status")
        if status not in ("delivered", "failed"):
            raise HTTPProblem(400, "bad_request", "status must be delivered or failed",
                              fields=[{"field": "status", "problem": "delivered or failed"}])
        error = body.get("error") if isinstance(body.get("error"), str) else None
        outbound = await switchboard.store.read(lambda tx: tx.get_outbound(outbound_id))
        if outbound is None or outbound.channel != CHANNEL or outbound.account != integration.name:
            raise HTTPProblem(404, "not_found", f"no delivery {outbound_id} of integration {integration.name!r}")
        await switchboard.outbox.report(outbound_id, delivered=status == "delivered",
                                        error=error or (None if status == "delivered" else "failed"),
                                        recipient_failing=body.get("recipient_failing") is True)
        return web.json_response({"delivery_id": outbound_id, "status": status})

    return [web.post("/api/v1/messages", post_message),
            web.post("/api/v1/deliveries/{delivery_id}", delivery_report)]


@hookimpl
def switchboard_startup(switchboard):
    switchboard.stash[HTTP_SESSION] = aiohttp.ClientSession()


@hookimpl
async def switchboard_shutdown(switchboard):
    session = switchboard.stash.pop(HTTP_SESSION)
    if session is not None:
        await session.close()


@hookimpl
def switchboard_deliver(outbound, switchboard):
    if outbound.channel != CHANNEL:
        return None
    integration = switchboard.integration(outbound.account)
    if integration is None:
        return DeliveryResult.permanent(f"no integration named {outbound.account!r} any more")
    session = switchboard.stash.setdefault(HTTP_SESSION, aiohttp.ClientSession)

    async def deliver():
        attachments = []
        if outbound.message_id is not None:  # an agent's files go with the reply, base64 in the JSON
            attachments = await switchboard.store.read(lambda tx: tx.attachment_contents(outbound.message_id))
        return await post_webhook(session, integration, outbound, attachments)

    return deliver()
