"""The email channel's tests: an SMTP server per test (Dovecot is the session's, from tests/conftest.py; each
test takes fresh addresses, so their mailboxes never meet), configurations and mails."""
from __future__ import annotations

import itertools
import os
import uuid
from typing import Any

import pytest

from tests.core.test_assignment import agent, sections
from tests.conftest import make_config, webhook_integration
from tests.mailservers import start_smtp

os.environ.setdefault("SB_TEST_EMAIL_SECRET", "email-token-secret")
_n = itertools.count(1)


@pytest.fixture
def smtp():
    sink, controller = start_smtp()
    yield sink
    controller.stop()


@pytest.fixture
def addresses():
    """Fresh support addresses for one test: {name: address}, e.g. posters → posters-3f9a@taskly.example."""
    tag = uuid.uuid4().hex[:8]
    return {name: f"{name}-{tag}@taskly.example" for name in ("posters", "taskers", "couriers")}


def email_settings(dovecot, smtp_port: int | None, mailboxes: dict[str, str], **extra: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "token_secret": {"$env": "SB_TEST_EMAIL_SECRET"},
        "domain": "taskly.example",
        "mailboxes": [
            {"name": name, "address": address, "imap": dovecot.imap_settings(address), "poll_interval": "1h",
             **extra.pop(f"{name}_options", {})}
            for name, address in mailboxes.items()
        ],
        **extra,
    }
    if smtp_port is not None:
        settings["smtp"] = {"host": "127.0.0.1", "port": smtp_port, "security": "none"}
    return settings


def email_config(dovecot, smtp_port, mailboxes: dict[str, str], *, agents=None, integrations=(), supervise=False,
                 **extra):
    """A deployment with these mailboxes (name → address) on Dovecot, SMTP on `smtp_port`, agent anna, and the
    usual test integrations (plus `integrations`; `supervise` lets the first one reprocess the quarantine)."""
    data = sections(agents if agents is not None else [agent("anna", capacity={"default": 5})])
    data["integrations"] = [
        webhook_integration("http://127.0.0.1:9/unused", scopes=["ingest", "read"] + (["supervise"] if supervise else [])),
        {"name": "reader", "token": {"$env": "SB_TEST_READER_TOKEN"}, "scopes": ["read"]},
        *integrations,
    ]
    data["lines"]["poster"]["accounts"] = [{"channel": "email", "account": mailboxes["posters"]}] if "posters" in mailboxes else []
    if "taskers" in mailboxes:
        data["lines"]["tasker"] = {"roles": ["tasker"], "accounts": [{"channel": "email", "account": mailboxes["taskers"]}]}
    data["plugins"] = {"email": email_settings(dovecot, smtp_port, mailboxes, **extra)}
    return make_config(**data)


def mail(sender="ada@example.com", subject="Payout missing", body="My payout did not arrive.", *, message_id=True,
         headers: dict[str, str] | None = None, to="support@taskly.example") -> bytes:
    lines = [f"From: {sender}", f"To: {to}", f"Subject: {subject}", "MIME-Version: 1.0",
             "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"]
    if message_id is True:
        lines.append(f"Message-ID: <m{next(_n)}.{uuid.uuid4().hex[:8]}@example.com>")
    elif message_id:
        lines.append(f"Message-ID: <{message_id}>")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n" + body.replace("\n", "\r\n") + "\r\n").encode("utf-8")
