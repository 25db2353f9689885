"""Composing outbound mail, checked as a receiving client sees it: the bytes that go over SMTP, parsed back."""
from __future__ import annotations

import email
import email.policy
from datetime import datetime, timezone

import pytest

from plugins.email.compose import compose
from plugins.email.parse import content_hash_id
from plugins.email.tokens import Tokens
from router.core.model import Identity, Outbound, OutboundStatus

NOW = datetime(2026, 11, 23, 10, tzinfo=timezone.utc)
TOKENS = Tokens("s3cret", "taskly.example")
SENDER = "support@taskly.example"
# RFC 2045 §6.4, RFC 2046 §5.1.1/§5.2.1: composite types take no encoding but the identity ones.
IDENTITY = {"7bit", "8bit", "binary"}
ANY_ENCODING = IDENTITY | {"quoted-printable", "base64"}


def outbound(**changes) -> Outbound:
    fields = dict(
        id=7, case_id=1, message_id=None, channel="email", account=SENDER,
        recipient=Identity(kind="email", value="ada@example.com"), kind="reply", text="Ciao Ada, il bonifico è partito ✓",
        subject="Re: Pagamento [#TK-1]", status=OutboundStatus.SENDING, attempts=0, next_attempt_at=NOW, created_at=NOW,
        meta={"case_ref": "TK-1", "in_reply_to": "m1@example.com", "references": []},
    )
    fields.update(changes)
    return Outbound(**fields)


def received(item: Outbound, *, attachments=(), display_name="Taskly Support") -> email.message.EmailMessage:
    """The mail as the recipient's client reads it, after checking it is MIME a client can take."""
    mail = compose(item, sender=SENDER, display_name=display_name, tokens=TOKENS, instance="Taskly",
                   reply_token=True, attachments=list(attachments), now=NOW)
    raw = mail.as_bytes()
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    for part in parsed.walk():
        assert not part.defects, (part.get_content_type(), part.defects)
        for name, value in part.items():
            assert not value.defects, (name, str(value), value.defects)
        cte = str(part.get("Content-Transfer-Encoding", "7bit")).strip().lower()
        allowed = IDENTITY if part.get_content_maintype() in ("multipart", "message") else ANY_ENCODING
        assert cte in allowed, f"{part.get_content_type()} sent as {cte}"
    return parsed


def attachments_of(parsed) -> list[tuple[str, str, bytes]]:
    return [(part.get_filename(), str(part["Content-Type"]), part.get_payload(decode=True))
            for part in parsed.iter_attachments()]


# -- attachment types ---------------------------------------------------------------------------------------------
FORWARDED = b"From: bob@example.org\r\nSubject: the original\r\n\r\nHello\r\n"


@pytest.mark.parametrize("content_type", ["message/rfc822", "Message/RFC822", "multipart/mixed",
                                          "multipart/alternative; boundary=x"])
def test_composite_attachment_types_are_sent_as_octet_stream_with_their_name(content_type):
    parsed = received(outbound(), attachments=[("forwarded.eml", content_type, FORWARDED),
                                               ("fattura è.pdf", "application/pdf", b"%PDF-1.4")])
    assert attachments_of(parsed) == [("forwarded.eml", "application/octet-stream", FORWARDED),
                                      ("fattura è.pdf", "application/pdf", b"%PDF-1.4")]
    assert parsed.get_body(("plain",)).get_content().strip() == "Ciao Ada, il bonifico è partito ✓"


@pytest.mark.parametrize("content_type", [
    "pdf",                          # no slash
    "a/b/c",
    "image/ jpeg",
    "image/jpeg\r\n",               # a blank line would end the part's headers early
    "image/jpeg\r\nX-Injected: 1",
    "image/jpeg\x00",
    "text/plain; charset=x\ny",
    "image/jpég",
])
def test_malformed_content_types_fall_back_to_octet_stream(content_type):
    parsed = received(outbound(), attachments=[("photo.jpg", content_type, b"\xff\xd8\xff\xe0 JFIF")])
    assert attachments_of(parsed) == [("photo.jpg", "application/octet-stream", b"\xff\xd8\xff\xe0 JFIF")]
    assert all(part["X-Injected"] is None for part in parsed.walk())


def test_well_formed_content_types_are_lower_cased_and_keep_only_a_text_charset():
    parsed = received(outbound(), attachments=[
        ("photo.jpg", "IMAGE/JPEG", b"\xff\xd8"),
        ("invoice.pdf", 'Application/PDF; name="other name.pdf"', b"%PDF"),
        ("notes.txt", 'text/plain; Charset="UTF-8"; format=flowed', "è fatto".encode()),
    ])
    assert attachments_of(parsed) == [("photo.jpg", "image/jpeg", b"\xff\xd8"),
                                      ("invoice.pdf", "application/pdf", b"%PDF"),
                                      ("notes.txt", 'text/plain; charset="utf-8"', "è fatto".encode())]
    assert list(parsed.iter_attachments())[2].get_content() == "è fatto"


# -- line breaks in header values ---------------------------------------------------------------------------------
@pytest.mark.parametrize("subject", ["Re: Pagamento\r\n [#TK-1]", "Re: Pagamento\n[#TK-1]", "Re:\tPagamento\r[#TK-1]",
                                     "Re: Pagamento\x0b\x00\u2028 [#TK-1]\n"])
def test_a_line_break_in_the_subject_becomes_a_space(subject):
    parsed = received(outbound(kind="ack", subject=subject))
    assert parsed["Subject"] == "Re: Pagamento [#TK-1]"
    assert parsed["Auto-Submitted"] == "auto-replied" and parsed["X-Switchboard-Loop"] == "Taskly"
    assert TOKENS.from_message_id(parsed["Message-ID"].strip("<>")) == ("TK-1", 7)


def test_a_line_break_in_the_display_name_becomes_a_space():
    parsed = received(outbound(), display_name="Taskly\r\n  Support\t")
    [sender] = parsed["From"].addresses
    assert (sender.display_name, sender.addr_spec) == ("Taskly Support", SENDER)


@pytest.mark.parametrize("filename, shown", [("fattura\r\nmarzo.pdf", "fattura marzo.pdf"),
                                             ("fattura\n\nè\tmarzo.pdf\n", "fattura è marzo.pdf"),
                                             ("\r\n", "attachment")])
def test_a_line_break_in_an_attachment_name_becomes_a_space(filename, shown):
    parsed = received(outbound(), attachments=[(filename, "application/pdf", b"%PDF-1.4")])
    assert attachments_of(parsed) == [(shown, "application/pdf", b"%PDF-1.4")]


# -- threading ----------------------------------------------------------------------------------------------------
def test_a_reply_to_a_mail_without_message_id_has_no_threading_headers():
    synthetic = content_hash_id(b"From: ada@example.com\r\nSubject: Pagamento\r\n\r\nNo id here\r\n")
    assert synthetic.startswith("sha256:")
    parsed = received(outbound(kind="ack", subject="Pagamento [#TK-1]",
                               meta={"case_ref": "TK-1", "in_reply_to": synthetic, "references": []}))
    assert parsed["In-Reply-To"] is None and parsed["References"] is None
    assert parsed["Subject"] == "Pagamento [#TK-1]" and parsed["Auto-Submitted"] == "auto-replied"
    assert TOKENS.from_message_id(parsed["Message-ID"].strip("<>")) == ("TK-1", 7)
    assert parsed.get_content().strip() == "Ciao Ada, il bonifico è partito ✓"


def test_a_parent_without_message_id_still_passes_on_its_real_references():
    parsed = received(outbound(meta={"case_ref": "TK-1", "in_reply_to": "sha256:" + "a" * 40,
                                     "references": ["first-1@example.com", "sha256:" + "b" * 40]}))
    assert parsed["In-Reply-To"] is None
    assert parsed["References"] == "<first-1@example.com>"


def test_references_keep_only_real_message_ids_in_order_and_the_parent_last():
    parsed = received(outbound(meta={"case_ref": "TK-1", "in_reply_to": "m3@example.com", "references": [
        "m1@example.com", "sha256:" + "c" * 40, "no-at-sign", "two words@example.com", "a@b@c", "m2@[192.0.2.1]",
        "m1@example.com", "m3@example.com"]}))
    assert parsed["In-Reply-To"] == "<m3@example.com>"
    assert parsed["References"].split() == ["<m1@example.com>", "<m2@[192.0.2.1]>", "<m3@example.com>"]
    assert parsed["Auto-Submitted"] is None and parsed["Subject"] == "Re: Pagamento [#TK-1]"
