"""Raw RFC 5322 bytes → what Switchboard needs from a mail. Pure functions, tested on recorded real messages.

The stdlib parser runs with the `compat32` policy (about 20 times faster than `policy.default` here) and only
the headers Switchboard reads are decoded, each defensively: a broken header or an unknown charset costs that
field a fallback and a note, never the message.
"""
from __future__ import annotations

import codecs
import dataclasses
import hashlib
import re
from email import message_from_bytes
from email.header import decode_header, make_header
from email.message import Message
from email.policy import compat32
from email.utils import getaddresses, parsedate_to_datetime
from datetime import datetime, timezone

from inscriptis import get_text
from inscriptis.model.config import ParserConfig
from mailparser_reply import EmailReplyParser
from mailparser_reply.parser import EmailMessage
from mailparser_reply.constants import MAIL_LANGUAGES, QUOTED_MATCH_INCLUDE

from router.core.model import Attachment


class Unparseable(ValueError):
    """This mail cannot become a case as it is; the reason is what an operator reads in the quarantine."""


# Reply headers and sign-offs the reply parser does not know yet, for the languages the example deployment serves.
MAIL_LANGUAGES.setdefault("ru", {
    "wrote_header": r"^(" + QUOTED_MATCH_INCLUDE + r".{0,120}(?:пишет|написал|написала|писал)\s?:)$",
    "from_header": r"((?:(?:^|\n|\n" + QUOTED_MATCH_INCLUDE
                   + r")[* ]*(?:От|Отправлено|Кому|Тема|Дата|Копия):[ *]*(?:\s{,2}).*){2,}(?:\n.*){,1})",
    "disclaimers": [r"Конфиденциально:"],
    "signatures": ["С уважением", "С наилучшими пожеланиями", "Спасибо,"],
    "sent_from": "Отправлено с|Отправлено из",
})
MAIL_LANGUAGES.setdefault("uz", {
    "wrote_header": r"^(" + QUOTED_MATCH_INCLUDE + r".{0,120}(?:yozdi|yozgan)\s?:)$",
    "from_header": r"((?:(?:^|\n|\n" + QUOTED_MATCH_INCLUDE
                   + r")[* ]*(?:Kimdan|Kimga|Mavzu|Sana):[ *]*(?:\s{,2}).*){2,}(?:\n.*){,1})",
    "disclaimers": [r"Maxfiy:"],
    "signatures": ["Hurmat bilan", "Rahmat,"],
    "sent_from": "iPhone'dan yuborildi",
})

_WINDOWS_ALIASES = {"iso-8859-1": "cp1252", "latin-1": "cp1252", "latin1": "cp1252", "iso_8859-1": "cp1252",
                    "us-ascii": "cp1252", "ascii": "cp1252"}
_HTML = ParserConfig(display_links=False, display_images=False)
_CASE_TAG = re.compile(r"\[#([A-Z]{1,8}-\d{1,12})\]")
_MSGID = re.compile(r"<([^<>\s]{1,900})>")
# Trace headers that differ between two copies of one mail delivered to two mailboxes.
_TRACE = frozenset({"received", "delivered-to", "x-original-to", "return-path", "x-received", "envelope-to"})
LOOP_HEADER = "X-Switchboard-Loop"


@dataclasses.dataclass(slots=True)
class Bounce:
    """A delivery report about a mail that could not be delivered."""

    recipients: list[str]
    original_ids: list[str]
    status: str | None
    diagnostic: str | None
    permanent: bool
    # "failed" (not delivered); "delayed" (still being tried) and "delivered" (a success notice) are news for
    # the case and leave the outbound message as it is.
    action: str = "failed"


@dataclasses.dataclass(slots=True)
class ParsedMail:
    message_id: str  # without angle brackets; "sha256:..." of the content when the mail has none
    has_message_id: bool
    sender: str
    display_name: str | None
    recipients: list[str]  # To, Cc, Delivered-To, X-Original-To: where a reply-address token may be
    subject: str | None
    text: str  # the new text: quoted replies and signature separated off
    full_text: str  # the whole decoded text body
    attachments: list[Attachment]
    references: list[str]  # References then In-Reply-To, oldest first
    case_tag: str | None  # a [#REF] in the subject
    auto_generated: str | None  # why this mail is machine-generated, or None
    bounce: Bounce | None
    sent_at: datetime | None
    notes: list[str]


# -- headers -------------------------------------------------------------------------------------------------------
def _unescape(value: str) -> str:
    """Raw 8-bit header bytes come through compat32 as surrogates: read them as UTF-8, else Latin-1."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        raw = value.encode("ascii", "surrogateescape")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")


def _raw_values(message: Message, name: str) -> list[str]:
    """A header's values as written (compat32 wraps 8-bit values in a Header that would print them as "?")."""
    lowered = name.lower()
    return [_unescape(value) if isinstance(value, str) else str(value)
            for key, value in message.raw_items() if key.lower() == lowered]


def _first(message: Message, name: str) -> str | None:
    """A header's first value as written: a str even for raw 8-bit values (compat32's get() gives a Header)."""
    values = _raw_values(message, name)
    return values[0] if values else None


def _decode_words(value: str) -> str:
    if "=?" in value:
        return str(make_header(decode_header(value)))
    return value


def _decode_words_or_keep(value: str) -> str:
    """Encoded words decoded, or the value as written when they cannot be."""
    try:
        return _decode_words(value)
    except (LookupError, UnicodeDecodeError, ValueError, AssertionError):
        return value


def header_text(message: Message, name: str, notes: list[str] | None = None) -> str | None:
    """A header as readable text: RFC 2047 encoded words decoded, raw 8-bit read as UTF-8 (else Latin-1)."""
    values = _raw_values(message, name)
    if not values:
        return None
    value = values[0]
    try:
        value = _decode_words(value)
    except (LookupError, UnicodeDecodeError, ValueError, AssertionError) as exc:
        if notes is not None:
            notes.append(f"{name}: undecodable encoded words kept as written ({type(exc).__name__})")
    return " ".join(value.split())


def _addresses(message: Message, *names: str) -> list[tuple[str, str]]:
    values = [v for name in names for v in _raw_values(message, name)]
    out = []
    for display, address in getaddresses(values):
        address = address.strip()
        if "@" in address and " " not in address:
            out.append((_decode_words_or_keep(display).strip(), address))
    return out


def message_ids(value: str | None) -> list[str]:
    """The ids in a Message-ID, In-Reply-To or References header, without angle brackets, in order."""
    if not value:
        return []
    found = _MSGID.findall(value)
    if not found and value.strip() and " " not in value.strip():
        found = [value.strip().strip("<>")]  # a bare id some mailers write without brackets
    return found


def content_hash_id(raw: bytes) -> str:
    """A stable id for a mail without Message-ID: the same mail fetched again, or delivered to another mailbox
    (whose trace headers differ), gets the same id."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = raw.partition(b"\n\n")
    digest = hashlib.sha256()
    keep = True
    for line in head.splitlines():
        if line[:1] in (b" ", b"\t"):
            if keep:
                digest.update(line.strip())
            continue
        name = line.split(b":", 1)[0].strip().lower().decode("ascii", "replace")
        keep = name not in _TRACE
        if keep:
            digest.update(line.strip() + b"\n")
    digest.update(body.replace(b"\r\n", b"\n").rstrip())
    return "sha256:" + digest.hexdigest()[:40]


# -- bodies --------------------------------------------------------------------------------------------------------
def decode_part(part: Message, notes: list[str]) -> str:
    """A text part's payload as str, whatever it declares: unknown or wrong charsets fall back, with a note."""
    try:
        payload = part.get_payload(decode=True)
    except Exception as exc:  # noqa: BLE001 - a broken transfer encoding: keep what is there
        notes.append(f"undecodable transfer encoding ({type(exc).__name__}); kept as written")
        payload = str(part.get_payload()).encode("utf-8", "replace")
    if payload is None:
        return ""
    if isinstance(payload, str):  # pragma: no cover - compat32 returns bytes for decode=True
        return payload
    charset = (part.get_content_charset() or "us-ascii").strip().strip('"').lower()
    # Mailers label Windows-1252 text as Latin-1 or ASCII all the time; browsers read it as 1252, so do we.
    charset = _WINDOWS_ALIASES.get(charset, charset)
    try:
        codecs.lookup(charset)
    except (LookupError, ValueError):  # ValueError: a NUL in the name
        notes.append(f"unknown charset {charset!r}: read as UTF-8 or Windows-1252")
        charset = ""
    for candidate in ([charset] if charset else []) + ["utf-8"] + (["latin-1"] if charset == "cp1252" else []):
        try:
            return payload.decode(candidate)
        except (UnicodeDecodeError, LookupError):
            continue
    if charset:
        notes.append(f"text is not valid {charset}: read as Windows-1252")
    return payload.decode("cp1252", "replace")


def html_to_text(html: str) -> str:
    """Readable text from an HTML body: layout kept (paragraphs, lists, tables), markup, scripts and styles gone."""
    return get_text(html, _HTML).strip()


def _filename(part: Message) -> str | None:
    try:
        name = part.get_filename()
    except (LookupError, UnicodeDecodeError, ValueError):
        name = None
    if name is None:
        return None
    name = _decode_words_or_keep(_unescape(name))
    return " ".join(name.replace("/", "_").replace("\\", "_").split())[:255] or None


@dataclasses.dataclass(slots=True)
class _Walk:
    plain: list[str] = dataclasses.field(default_factory=list)
    html: list[str] = dataclasses.field(default_factory=list)
    attachments: list[tuple[str, Message]] = dataclasses.field(default_factory=list)
    reports: list[Message] = dataclasses.field(default_factory=list)


def _walk(part: Message, section: str, walk: _Walk, notes: list[str], in_alternative: bool = False) -> None:
    ctype = part.get_content_type()
    if ctype == "message/rfc822":  # a forwarded or digested mail: kept whole, as a file
        walk.attachments.append((section or "1", part))
        return
    if part.is_multipart():
        children = part.get_payload()
        if not isinstance(children, list):
            return
        if ctype == "multipart/report":
            walk.reports.append(part)
        alternative = ctype == "multipart/alternative"
        if alternative:
            # Take the richest form a reader would see: plain text when there is one, else HTML.
            kinds = [c.get_content_type() for c in children]
            preferred = "text/plain" if "text/plain" in kinds else "text/html" if "text/html" in kinds else None
            for index, child in enumerate(children, start=1):
                if preferred is None or child.get_content_type() == preferred or child.is_multipart():
                    _walk(child, f"{section}.{index}" if section else str(index), walk, notes, True)
                    if child.get_content_type() == preferred:
                        break
            return
        for index, child in enumerate(children, start=1):
            _walk(child, f"{section}.{index}" if section else str(index), walk, notes)
        return
    disposition = part.get_content_disposition()
    name = _filename(part)
    # Text without a file name is the body; so is an inline text part with one when no body came before it
    # (mailers such as VM and Apple Mail write the body that way).
    is_body = ctype in ("text/plain", "text/html") and disposition != "attachment" and (
        name is None or (disposition == "inline" and not (walk.plain or walk.html)))
    if is_body and (in_alternative or not (walk.plain or walk.html) or ctype == "text/plain"):
        text = decode_part(part, notes)
        (walk.plain if ctype == "text/plain" else walk.html).append(text)
        return
    if ctype in ("message/delivery-status", "message/disposition-notification", "text/rfc822-headers"):
        return  # read through the report, not kept as files
    walk.attachments.append((section or "1", part))


_SPLITTERS: dict[tuple[str, ...], EmailMessage] = {}


def _reply_splitter(languages: tuple[str, ...], text: str) -> EmailMessage:
    """The reply parser's message object for `text`, with its regexes compiled once per language set (it would
    compile them for every mail, and Python's regex cache is too small to hold them all)."""
    template = _SPLITTERS.get(languages)
    if template is None:
        template = _SPLITTERS[languages] = EmailReplyParser(languages=list(languages)).read("")
    message = EmailMessage(text=text, languages=list(template.languages))
    message._header_regex = template.HEADER_REGEX
    message._signature_regex = template.SIGNATURE_REGEX
    message._disclaimers_regex = template.DISCLAIMERS_REGEX
    return message


# The reply parser's "On ... wrote:" patterns backtrack quadratically on a long line that starts like a header
# ("On Monday I booked ..." as one 20,000-character paragraph took 5 s, 78 KB took two minutes). No real header
# line is that long: longer lines reach the parser as short placeholders, put back in its result. And only the
# first 64 KB are split (the new text of a reply comes first): at most ~0.3 s for the worst text on this VM.
_LONGEST_HEADER_LINE = 256
_SPLIT_AT_MOST = 65536
_PLACEHOLDER = "\ue000{}\ue001"
_PLACEHOLDERS = re.compile("\ue000([0-9]+)\ue001")


def split_reply(text: str, languages: list[str]) -> str:
    """The new text of a reply: the quoted earlier mail, its "On ... wrote:" line and the signature removed."""
    if not text.strip():
        return ""
    long_lines: list[str] = []
    cut = len(text) > _SPLIT_AT_MOST
    text_in = text[: text.rfind("\n", 0, _SPLIT_AT_MOST) + 1 or _SPLIT_AT_MOST] if cut else text
    if len(text_in) > _LONGEST_HEADER_LINE and "\ue000" not in text_in:
        def shorten(line: str) -> str:
            if len(line) <= _LONGEST_HEADER_LINE:
                return line
            long_lines.append(line)
            return _PLACEHOLDER.format(len(long_lines) - 1)

        text_in = "\n".join(shorten(line) for line in text_in.split("\n"))
    try:
        message = _reply_splitter(tuple(languages), text_in).read()
    except Exception:  # noqa: BLE001 - the splitter is a convenience: the full text is always kept
        return text.strip()
    if not message.replies or (cut and len(message.replies) == 1):  # nothing quoted in the part looked at
        return text.strip()
    first = message.replies[0]
    body = first.body or first.content
    if long_lines:
        body = _PLACEHOLDERS.sub(lambda m: long_lines[int(m.group(1))], body)
    # Plain ">" quoting without a header line above it.
    lines = body.rstrip().split("\n")
    while lines and lines[-1].lstrip().startswith(">"):
        lines.pop()
    return "\n".join(lines).strip() or text.strip()


# -- auto-generated mail and bounces ---------------------------------------------------------------------------------
def auto_generated_reason(message: Message, sender: str) -> str | None:
    """Why this mail must never get an automatic answer (RFC 3834 and what mailers actually send), or None."""
    auto = (_first(message, "Auto-Submitted") or "").strip().lower()
    if auto and not auto.startswith("no"):
        return f"Auto-Submitted: {auto}"
    precedence = (_first(message, "Precedence") or "").strip().lower()
    if precedence in ("bulk", "junk", "list", "auto_reply"):
        return f"Precedence: {precedence}"
    for name in ("X-Autoreply", "X-Autorespond", "X-Auto-Response-Suppress", "List-Id", LOOP_HEADER):
        if message.get(name) is not None:
            return f"{name} header"
    return_path = _first(message, "Return-Path")
    if return_path is not None and return_path.strip() in ("<>", ""):
        return "empty Return-Path (a bounce)"
    local = sender.rpartition("@")[0].lower()
    if local in ("mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon"):
        return f"sent by {local}"
    if message.get_content_type() == "multipart/report":
        return f"a {message.get_param('report-type') or 'delivery'} report"
    return None


def read_bounce(message: Message, walk: _Walk, text: str) -> Bounce | None:
    """What a delivery-status report (RFC 3464) says, or what a plain-text bounce quotes, or None."""
    recipients: list[str] = []
    delayed: list[str] = []
    succeeded: list[str] = []
    status = diagnostic = None
    permanent = False
    original: list[str] = []
    found_report = False
    for report in walk.reports:
        if (report.get_param("report-type") or "").lower() != "delivery-status":
            continue
        for part in report.get_payload():
            ctype = part.get_content_type()
            if ctype == "message/delivery-status":
                found_report = True
                blocks = part.get_payload()
                for block in blocks if isinstance(blocks, list) else []:
                    action = (_first(block, "Action") or "").strip().lower()
                    final = _first(block, "Final-Recipient") or _first(block, "Original-Recipient")
                    if not final:
                        continue
                    address = final.split(";", 1)[-1].strip().strip("<>")
                    if action in ("delivered", "relayed", "expanded"):
                        succeeded.append(address)  # news of success, not a failure
                        continue
                    (delayed if action == "delayed" else recipients).append(address)
                    status = (_first(block, "Status") or status or "").strip() or None
                    if _first(block, "Diagnostic-Code"):
                        diagnostic = " ".join((_first(block, "Diagnostic-Code") or "").split())[:500]
                    permanent = permanent or action == "failed"
            elif ctype in ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers"):
                inner = part.get_payload()
                if isinstance(inner, list) and inner:
                    original += message_ids(_first(inner[0], "Message-ID"))
                elif isinstance(inner, str):
                    original += message_ids(message_from_bytes(inner.encode("utf-8", "replace")).get("Message-ID"))
    if not found_report:
        local = (_addresses(message, "From")[:1] or [("", "")])[0][1].rpartition("@")[0].lower()
        if local not in ("mailer-daemon", "postmaster") or not text:
            return None
        # A plain-text bounce: the failed address and the original Message-ID are only in the text.
        original = [m for m in _MSGID.findall(text) if "@" in m]
        recipients = re.findall(r"<([^<>@\s]+@[^<>\s]+)>:", text)[:5]
        permanent = bool(recipients)
    if status and status.startswith("4"):
        permanent = False
    if found_report and not recipients and (delayed or succeeded):  # news for the case, not a failure
        return Bounce(recipients=delayed or succeeded, original_ids=original, status=status, diagnostic=diagnostic,
                      permanent=False, action="delayed" if delayed else "delivered")
    return Bounce(recipients=recipients, original_ids=original, status=status, diagnostic=diagnostic,
                  permanent=permanent)


# -- the whole mail --------------------------------------------------------------------------------------------------
def parse_mail(raw: bytes, *, languages: list[str], max_attachment_bytes: int,
               oversized_attachments: str = "reference") -> ParsedMail:
    """Everything Switchboard reads from one mail; raises :class:`Unparseable` when it cannot be a case."""
    if not raw.strip():
        raise Unparseable("empty message: no headers and no body")
    head = raw[:4096].lstrip()
    if b":" not in head.split(b"\n", 1)[0]:
        raise Unparseable("not an email message: the first line is not a header")
    try:
        message = message_from_bytes(raw, policy=compat32)
    except Exception as exc:  # noqa: BLE001 - the stdlib parser is lenient; anything it raises is quarantined
        raise Unparseable(f"the MIME structure cannot be read: {type(exc).__name__}: {exc}") from None
    notes: list[str] = []
    senders = _addresses(message, "From") or _addresses(message, "Sender") or _addresses(message, "Reply-To")
    if not senders and message.get_content_type() == "multipart/report":
        senders = [("Mail Delivery System", "mailer-daemon@unknown.invalid")]  # a bounce with From: <>
    if not senders:
        raise Unparseable(f"no sender address (From: {header_text(message, 'From')!r})")
    display_name, sender = senders[0]
    reply_to = _addresses(message, "Reply-To")
    if reply_to and reply_to[0][1].lower() != sender.lower():
        notes.append(f"Reply-To {reply_to[0][1]} differs from From {sender}; answers go to From")
    ids = message_ids(_first(message, "Message-ID"))
    has_id = bool(ids)
    message_id = ids[0] if ids else content_hash_id(raw)
    if not has_id:
        notes.append("no Message-ID: identified by a hash of its content")
    walk = _Walk()
    _walk(message, "", walk, notes)
    if walk.plain:
        chunks = walk.plain
    else:
        chunks = [html_to_text(h) for h in walk.html]
    full_text = "\n\n".join(c.replace("\r\n", "\n").replace("\r", "\n").strip("\n") for c in chunks).replace("\x00", "")
    text = split_reply(full_text, languages)
    attachments = []
    for section, part in walk.attachments:
        attachments.append(_attachment(part, section, notes, max_attachment_bytes, oversized_attachments))
    subject = header_text(message, "Subject", notes)
    references = message_ids(_first(message, "References"))
    for parent in message_ids(_first(message, "In-Reply-To")):
        if parent not in references:
            references.append(parent)
    tag = _CASE_TAG.search(subject or "")
    try:
        date = _first(message, "Date")
        sent_at = parsedate_to_datetime(date) if date else None
        if sent_at is not None and sent_at.tzinfo is None:
            sent_at = sent_at.replace(tzinfo=timezone.utc)
    except (TypeError, ValueError, IndexError, OverflowError):
        sent_at = None
    auto = auto_generated_reason(message, sender)
    bounce = read_bounce(message, walk, full_text) if auto else None
    return ParsedMail(
        message_id=message_id[:998], has_message_id=has_id, sender=sender, display_name=display_name or None,
        recipients=[a for _, a in _addresses(message, "To", "Cc", "Delivered-To", "X-Original-To")],
        subject=subject[:998] if subject else None, text=text, full_text=full_text, attachments=attachments,
        references=references[-50:], case_tag=tag.group(1) if tag else None, auto_generated=auto, bounce=bounce,
        sent_at=sent_at, notes=notes,
    )


def _attachment(part: Message, section: str, notes: list[str], limit: int, oversized: str) -> Attachment:
    ctype = part.get_content_type()
    name = _filename(part)
    if part.get_content_type() == "message/rfc822":
        inner = part.get_payload()
        inner_message = inner[0] if isinstance(inner, list) and inner else None
        content = inner_message.as_bytes() if inner_message is not None else b""
        subject = header_text(inner_message, "Subject") if inner_message is not None else None
        name = name or f"{(subject or 'message')[:80]}.eml"
    else:
        try:
            content = part.get_payload(decode=True) or b""
        except Exception:  # noqa: BLE001 - broken base64 and friends: keep the encoded text
            content = str(part.get_payload()).encode("utf-8", "replace")
            notes.append(f"attachment {name or section}: undecodable transfer encoding; kept as written")
    inline = part.get_content_disposition() == "inline" or (part.get("Content-ID") is not None and name is None)
    extension = ctype.split("/", 1)[1].split("+")[0] if "/" in ctype else "bin"
    name = name or f"part-{section}.{extension}"
    if len(content) > limit:
        if oversized == "reject":
            notes.append(f"attachment {name!r} refused: {len(content)} bytes is over the {limit}-byte limit")
            return Attachment(filename=name, content_type=ctype[:255], size=len(content), url=None, inline=inline)
        notes.append(f"attachment {name!r} kept by reference: {len(content)} bytes is over the {limit}-byte limit; "
                     f"its bytes stay in the raw message (MIME part {section})")
        return Attachment(filename=name, content_type=ctype[:255], size=len(content), url=f"mime-part:{section}",
                          inline=inline)
    return Attachment(filename=name, content_type=ctype[:255], size=len(content), content=content, inline=inline)


def parse_many(raws: list[bytes], languages: list[str], max_attachment_bytes: int,
               oversized_attachments: str) -> list[ParsedMail | str]:
    """Parse several mails (in a worker process): each a ParsedMail, or the reason it cannot be one."""
    out: list[ParsedMail | str] = []
    for raw in raws:
        try:
            out.append(parse_mail(raw, languages=languages, max_attachment_bytes=max_attachment_bytes,
                                  oversized_attachments=oversized_attachments))
        except Unparseable as exc:
            out.append(f"Unparseable: {exc}")
        except Exception as exc:  # noqa: BLE001 - a parser crash on one mail is that mail's problem only
            out.append(f"parser crashed: {type(exc).__name__}: {exc}")
    return out
