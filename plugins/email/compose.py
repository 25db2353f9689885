"""Outbound mail: an outbox row → a MIME message with the threading headers mail clients rely on."""
from __future__ import annotations

import re

from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

from plugins.email.parse import LOOP_HEADER
from plugins.email.tokens import Tokens
from router.core.model import Outbound

# Outbox kinds sent without a person writing them: RFC 3834 says to mark them so other robots stay quiet.
AUTOMATIC_KINDS = frozenset({"ack", "csat", "notice"})

# Runs of whitespace and control characters (CR, LF, tabs, NUL, DEL, C1 controls, Unicode line separators): a header
# value with a line break in it is refused by the email library, and would otherwise start a new header.
_BLANKS = re.compile(r"[\s\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
# A media type's name (RFC 6838 restricted-name, lower-cased).
_NAME = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
# An id worth quoting in In-Reply-To/References: `local@domain` in RFC 5322 msg-id characters. The synthetic
# `sha256:…` ids Switchboard gives mail that came without a Message-ID are not, and point nowhere.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+"
_MESSAGE_ID = re.compile(rf"{_ATOM}@(?:{_ATOM}|\[[!-Z^-~]*\])")
_MAX_ID = 500  # keeps "References: <id>" well inside a 998-byte line
_OCTET_STREAM = ("application", "octet-stream")


def _clean(value: object) -> str:
    """A header value on one line: every run of whitespace or control characters becomes one space."""
    return _BLANKS.sub(" ", str(value or "")).strip()


def _real_id(value: object) -> str | None:
    """`value` without angle brackets when it is a Message-ID another mail can refer to, else None."""
    if not isinstance(value, str):
        return None
    value = value.strip().removeprefix("<").removesuffix(">")
    if value.startswith("sha256:") or len(value) > _MAX_ID or not _MESSAGE_ID.fullmatch(value):
        return None
    return value


def _media_type(content_type: object) -> tuple[str, str, dict[str, str]]:
    """(maintype, subtype, parameters) to attach content stored as `content_type`; application/octet-stream when the
    type is malformed, or is a multipart/* or message/* one (MIME allows those no base64, and the stored bytes are
    not known to be a well-formed entity: sent as such, clients reject or mangle them)."""
    if not isinstance(content_type, str) or _UNPRINTABLE.search(content_type):
        return (*_OCTET_STREAM, {})  # line breaks, tabs, control or non-ASCII characters: no valid type has them
    header = SMTP.header_factory("Content-Type", content_type)
    head = content_type.partition(";")[0].strip().lower()
    maintype, _, subtype = head.partition("/")
    if (header.defects or not _NAME.fullmatch(maintype) or not _NAME.fullmatch(subtype)
            or (maintype, subtype) != (header.maintype, header.subtype) or maintype in ("multipart", "message")):
        return (*_OCTET_STREAM, {})
    charset = header.params.get("charset") if maintype == "text" else None
    if charset and _NAME.fullmatch(charset.strip().lower()):
        return maintype, subtype, {"charset": charset.strip().lower()}
    return maintype, subtype, {}


def compose(outbound: Outbound, *, sender: str, display_name: str | None, tokens: Tokens, instance: str,
            reply_token: bool, attachments: list[tuple[str, str, bytes]] = (), now=None) -> EmailMessage:
    """The mail for `outbound`, from `sender`; `attachments` are (filename, content type, bytes)."""
    ref = outbound.meta.get("case_ref") or ""
    message = EmailMessage(policy=SMTP)
    local, _, domain = sender.rpartition("@")
    message["From"] = Address(display_name=_clean(display_name), username=local, domain=domain)
    message["To"] = _clean(outbound.recipient.value)
    if reply_token and ref:
        message["Reply-To"] = tokens.reply_address(sender, ref)
    message["Subject"] = _clean(outbound.subject) or ref or "Your request"
    message["Message-ID"] = f"<{tokens.message_id(ref, outbound.id)}>" if ref else f"<sb.o{outbound.id}@{tokens.domain}>"
    # RFC 5322 §3.6.4: In-Reply-To names the parent, References its References then the parent; only real ids.
    parent = _real_id(outbound.meta.get("in_reply_to"))
    references: list[str] = []
    for found in map(_real_id, outbound.meta.get("references") or []):
        if found and found != parent and found not in references:
            references.append(found)
    references = references[-20:] + ([parent] if parent else [])
    if parent:
        message["In-Reply-To"] = f"<{parent}>"
    if references:
        message["References"] = " ".join(f"<{i}>" for i in references)
    if now is not None:
        message["Date"] = format_datetime(now)
    message[LOOP_HEADER] = _clean(instance)
    if outbound.kind in AUTOMATIC_KINDS:
        message["Auto-Submitted"] = "auto-replied"
        message["X-Auto-Response-Suppress"] = "All"
        message["Precedence"] = "auto_reply"
    message.set_content(outbound.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    for filename, content_type, content in attachments:
        maintype, subtype, params = _media_type(content_type)
        message.add_attachment(bytes(content), maintype=maintype, subtype=subtype, params=params,
                               filename=_clean(filename) or "attachment")
    return message
