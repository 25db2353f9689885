"""The email channel's configuration (`plugins.email` in switchboard.yaml), validated before anything starts."""
from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field, model_validator

from router.config_base import Duration, Model, Secret

Security = Literal["none", "starttls", "tls"]


class ImapConfig(Model):
    host: str
    port: int = Field(default=993, ge=1, le=65535)
    security: Security = "tls"
    username: str
    password: Secret
    folder: str = "INBOX"
    timeout: Duration = timedelta(seconds=30)


class MailboxConfig(Model):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=64)
    address: str = Field(pattern=r"^[^@\s]+@[^@\s]+$", description="the support address; the case's account")
    display_name: str | None = Field(default=None, description="shown in From: of mail sent from this address")
    imap: ImapConfig
    after_ingest: Literal["seen", "move", "leave"] = Field(
        default="seen", description="what to do on the server with a message once it is stored"
    )
    move_to: str | None = Field(default=None, description="the folder for after_ingest: move")
    idle: bool = Field(default=True, description="use IMAP IDLE when the server offers it")
    poll_interval: Duration = Field(default=timedelta(seconds=60), description="the safety-net poll")
    batch: int = Field(default=200, ge=1, le=5000, description="messages fetched per round trip")

    @model_validator(mode="after")
    def _move_needs_folder(self) -> "MailboxConfig":
        if self.after_ingest == "move" and not self.move_to:
            raise ValueError("after_ingest is move but move_to names no folder")
        if self.after_ingest == "move" and _same_folder(self.move_to or "", self.imap.folder):
            raise ValueError(f"move_to {self.move_to!r} is the folder read ({self.imap.folder!r}): each move would "
                             "give the mail a new UID and fetch it again; name another folder")
        return self


def _same_folder(a: str, b: str) -> bool:
    """IMAP folder names compare exactly, except INBOX, which is case-insensitive (RFC 3501)."""
    return a == b or (a.upper() == "INBOX" and b.upper() == "INBOX")


class SmtpConfig(Model):
    host: str
    port: int = Field(default=587, ge=1, le=65535)
    security: Security = "starttls"
    username: str | None = None
    password: Secret | None = None
    timeout: Duration = timedelta(seconds=30)


class LimitsConfig(Model):
    max_message_bytes: int = Field(default=50 * 1024 * 1024, ge=1024, description="larger mail is quarantined")
    max_attachment_bytes: int = Field(default=20 * 1024 * 1024, ge=0)
    oversized_attachments: Literal["reference", "reject"] = Field(
        default="reference",
        description="reference: keep name, type and size, the bytes stay in the raw message; reject: keep only a "
                    "note saying it was refused",
    )


class AutoMailLimit(Model):
    count: int = Field(default=3, ge=1)
    per: Duration = timedelta(hours=1)


class EmailConfig(Model):
    token_secret: Secret | None = Field(
        default=None, description="signs case tokens in Message-IDs and reply addresses; required with mailboxes"
    )
    domain: str | None = Field(default=None, description="right-hand side of Message-IDs; default: first mailbox's")
    mailboxes: list[MailboxConfig] = Field(default_factory=list)
    smtp: SmtpConfig | None = None
    reply_address_token: bool = Field(
        default=True, description="Reply-To: support+TK-12.<sig>@..., so replies thread even with a new subject"
    )
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    auto_mail_limit: AutoMailLimit = Field(default_factory=AutoMailLimit)
    reconnect_max: Duration = Field(default=timedelta(minutes=5), description="longest wait between reconnects")

    @model_validator(mode="after")
    def _consistent(self) -> "EmailConfig":
        for kind in ("name", "address"):
            values = [getattr(m, kind).lower() for m in self.mailboxes]
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                raise ValueError(f"mailboxes: {kind} {dupes} used twice")
        if self.mailboxes and self.token_secret is None:
            raise ValueError("token_secret: required when mailboxes are configured ({$env: NAME})")
        return self

    @property
    def message_domain(self) -> str:
        if self.domain:
            return self.domain
        return self.mailboxes[0].address.rpartition("@")[2] if self.mailboxes else "switchboard.invalid"

    def mailbox_for(self, address: str) -> MailboxConfig | None:
        address = address.lower()
        return next((m for m in self.mailboxes if m.address.lower() == address), None)
