"""The email channel in a real `switchboard run` process: killed mid-ingest and restarted it loses and doubles
nothing, and a poison mail is found and reprocessed with `switchboard quarantine`."""
from __future__ import annotations

import signal
import sqlite3
import time
import uuid

import pytest

from tests.e2e.servers import TOKEN, ServerProcess, run_cli, write_config
from tests.mailservers import PASSWORD
from tests.plugins.email.conftest import mail

pytestmark = pytest.mark.slow


def email_deployment(tmp_path, dovecot, address):
    extra = {
        "lines": {"poster": {"accounts": [{"channel": "email", "account": address}]}},
        "plugins": {"email": {
            "token_secret": {"$env": "SB_E2E_EMAIL_SECRET", "default": "e2e-secret"},
            "mailboxes": [{"name": "support", "address": address, "batch": 25,
                           "imap": {"host": "127.0.0.1", "port": dovecot.port, "security": "none",
                                    "username": address, "password": {"$env": "SB_E2E_IMAP", "default": PASSWORD}}}],
        }},
    }
    config = write_config(tmp_path / "config", extra=extra)
    text = (config / "switchboard.yaml").read_text().replace("scopes:\n  - ingest\n  - read",
                                                             "scopes:\n  - ingest\n  - read\n  - supervise")
    (config / "switchboard.yaml").write_text(text)
    return config


def counts(db):
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    except sqlite3.OperationalError:
        return 0, 0
    try:
        return conn.execute("SELECT COUNT(*), COUNT(DISTINCT external_id) FROM messages "
                            "WHERE channel = 'email' AND direction = 'in'").fetchone()
    except sqlite3.OperationalError:
        return 0, 0
    finally:
        conn.close()


def wait(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_killed_mid_ingest_and_restarted_nothing_is_lost_or_doubled(tmp_path, dovecot):
    address = f"kill-{uuid.uuid4().hex[:8]}@taskly.example"
    n = 300
    dovecot.append(address, *(mail(f"c{i % 40}@example.com", f"Order {i}", f"Problem number {i}") for i in range(n)))
    config = email_deployment(tmp_path, dovecot, address)
    db = tmp_path / "data" / "switchboard.db"
    server = ServerProcess(config, tmp_path / "data", tmp_path / "logs")
    server.start()
    try:
        assert wait(lambda: counts(db)[0] >= 60), server.describe()
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        killed_at = counts(db)[0]
        assert killed_at < n, "the kill came too late to test anything"
        server.start()
        assert wait(lambda: counts(db)[0] >= n, timeout=120), server.describe()
        time.sleep(1.0)  # a duplicate would arrive now
        assert counts(db) == (n, n)
    finally:
        server.ensure_stopped()
    client = dovecot.client(address)
    try:
        client.select_folder("INBOX", readonly=True)
        assert client.search(["UNSEEN"]) == []  # every mail marked once stored, the ones before the kill too
    finally:
        client.logout()


def test_quarantine_command_lists_shows_and_reprocesses(tmp_path, dovecot):
    address = f"q-{uuid.uuid4().hex[:8]}@taskly.example"
    dovecot.append(address, b"Subject: nobody sent this\r\n\r\nno sender\r\n", mail(message_id="fine@example.com"))
    config = email_deployment(tmp_path, dovecot, address)
    server = ServerProcess(config, tmp_path / "data", tmp_path / "logs")
    server.start()
    try:
        assert wait(lambda: counts(tmp_path / "data" / "switchboard.db")[0] == 1), server.describe()
        env_args = ("--config", str(config), "--server", server.url, "--token", TOKEN)
        listed = run_cli("quarantine", "list", *env_args)
        assert listed.returncode == 0 and "no sender address" in listed.stdout and "1 entry" in listed.stdout
        item_id = listed.stdout.split()[0]
        shown = run_cli("quarantine", "show", item_id, *env_args)
        assert shown.returncode == 0 and "nobody sent this" in shown.stdout
        again = run_cli("quarantine", "reprocess", item_id, *env_args)
        assert again.returncode == 1 and "still held" in again.stderr and "no sender" in again.stderr
        missing = run_cli("quarantine", "reprocess", "999", *env_args)
        assert missing.returncode == 1 and "999" in (missing.stdout + missing.stderr)
    finally:
        server.ensure_stopped()
