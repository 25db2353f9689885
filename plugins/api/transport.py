"""The API channel's outbound side: signed webhook POSTs to the integration."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Sequence

import aiohttp

from router.config import IntegrationConfig
from router.core.model import DeliveryResult, Outbound

SIGNATURE_HEADER = "X-Switchboard-Signature"
DELIVERY_HEADER = "X-Switchboard-Delivery"
TIMESTAMP_HEADER = "X-Switchboard-Timestamp"


MAX_ANSWER_BYTES = 65536  # of a webhook's answer: enough for any JSON with an id, bounded against a huge body


async def _read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body up to `limit` bytes, however many chunks it comes in (read(n) returns what has arrived)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await response.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256 over `<timestamp>.<body>`: the body cannot be altered or replayed later."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, tolerance: float = 300,
           now: float | None = None) -> bool:
    """What a receiver does: recompute, compare in constant time, refuse old timestamps."""
    try:
        age = abs((now if now is not None else time.time()) - int(timestamp))
    except ValueError:
        return False
    return age <= tolerance and hmac.compare_digest(sign(secret, timestamp, body), signature)


def webhook_body(outbound: Outbound, attachments: Sequence[tuple[str, str, bytes]] = ()) -> bytes:
    external_id = outbound.meta.get("in_reply_to") or ""
    return json.dumps(
        {
            "delivery_id": outbound.id,
            "kind": outbound.kind,
            "case_ref": outbound.meta.get("case_ref"),
            "recipient": {"kind": outbound.recipient.kind, "value": outbound.recipient.value},
            "text": outbound.text,
            "subject": outbound.subject,
            # The integration's own message id (without Switchboard's namespace), so it can thread the answer.
            "in_reply_to": external_id.split("/", 1)[1] if "/" in external_id else external_id or None,
            "conversation": outbound.meta.get("conversation"),
            "language": outbound.meta.get("language"),
            "attachments": [{"filename": name, "content_type": kind, "size": len(content),
                             "content": base64.b64encode(content).decode()} for name, kind, content in attachments],
        },
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()


async def post_webhook(
    session: aiohttp.ClientSession, integration: IntegrationConfig, outbound: Outbound,
    attachments: Sequence[tuple[str, str, bytes]] = (),
) -> DeliveryResult:
    webhook = integration.webhook
    if webhook is None:
        return DeliveryResult.permanent(f"integration {integration.name!r} has no webhook to deliver to")
    body = webhook_body(outbound, attachments)
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(webhook.secret.get(), timestamp, body),
        TIMESTAMP_HEADER: timestamp,
        DELIVERY_HEADER: str(outbound.id),
    }
    try:
        async with session.post(
            webhook.url, data=body, headers=headers,
            timeout=aiohttp.ClientTimeout(total=webhook.timeout.total_seconds()), allow_redirects=False,
        ) as response:
            raw = await _read_at_most(response, MAX_ANSWER_BYTES)  # what an answer may say; the rest is not read
            if 200 <= response.status < 300:
                provider_id = None
                if response.content_type == "application/json":
                    try:  # the whole answer is parsed: an id after a long field is still found
                        provider_id = str((json.loads(raw) or {}).get("id") or "")[:256] or None
                    except (ValueError, AttributeError):
                        provider_id = None
                return DeliveryResult.sent(provider_id)
            text = raw.decode(response.charset or "utf-8", errors="replace")[:300]
            reason = f"webhook answered {response.status}: {text}".strip()
            if response.status in (408, 425, 429) or response.status >= 500:
                return DeliveryResult.retry(reason)
            return DeliveryResult.permanent(reason)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return DeliveryResult.retry(f"webhook unreachable: {type(exc).__name__}: {exc}")
