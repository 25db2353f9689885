"""Outbound mail: an outbox row → a MIME message with the threading headers mail clients rely on."""
from __future__ import annotations

from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

from plugins.email.parse import LOOP_HEADER
from plugins.email.tokens import Tokens
from router.core.model import Outbound

# Outbox kinds sent without a person writing them: RFC 3834 says to mark them so other robots stay quiet.
AUTOMATIC_KINDS = frozenset({"ack", "csat", "notice"})


def _angle(ids: list[str]) -> str:
    return " ".join(f"<{i}>" for i in ids)


def compose(outbound: Outbound, *, sender: str, display_name: str | None, tokens: Tokens, instance: str,
            reply_token: bool, attachments: list[tuple[str, str, bytes]] = (), now=None) -> EmailMessage:
    """The mail for `outbound`, from `sender`; `attachments` are (filename, content type, bytes)."""
    ref = outbound.meta.get("case_ref") or ""
    message = EmailMessage(policy=SMTP)
    local, _, domain = sender.rpartition("@")
    message["From"] = Address(display_name=display_name or "", username=local, domain=domain)
    message["To"] = outbound.recipient.value
    if reply_token and ref:
        message["Reply-To"] = tokens.reply_address(sender, ref)
    message["Subject"] = outbound.subject or ref or "Your request"
    message["Message-ID"] = f"<{tokens.message_id(ref, outbound.id)}>" if ref else f"<sb.o{outbound.id}@{tokens.domain}>"
    parent = outbound.meta.get("in_reply_to")
    if parent:
        references = [r for r in (outbound.meta.get("references") or []) if r != parent][-20:] + [parent]
        message["In-Reply-To"] = f"<{parent}>"
        message["References"] = _angle(references)
    if now is not None:
        message["Date"] = format_datetime(now)
    message[LOOP_HEADER] = instance
    if outbound.kind in AUTOMATIC_KINDS:
        message["Auto-Submitted"] = "auto-replied"
        message["X-Auto-Response-Suppress"] = "All"
        message["Precedence"] = "auto_reply"
    message.set_content(outbound.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    for filename, content_type, content in attachments:
        maintype, _, subtype = content_type.partition("/")
        message.add_attachment(content, maintype=maintype or "application", subtype=subtype or "octet-stream",
                               filename=filename)
    return message
