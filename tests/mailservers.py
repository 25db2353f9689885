"""Real mail servers for tests and benchmarks: a throwaway Dovecot (IMAP) on a loopback port with a generated
configuration, and an aiosmtpd SMTP server that keeps what it receives."""
from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope, Session, SMTP

PASSWORD = "secret"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dovecot_available() -> str | None:
    """Why Dovecot cannot run here, or None. `./dev test` installs it (Debian's dovecot-imapd)."""
    if shutil.which("dovecot") is None and not Path("/usr/sbin/dovecot").exists():
        return "dovecot is not installed (./dev test installs dovecot-imapd)"
    return None


class Dovecot:
    """Dovecot serving maildirs on 127.0.0.1:<port>: any user name logs in with PASSWORD, and its mailbox is made
    on first login, so each test takes fresh addresses of its own.

    Its files live in a fresh folder under the system temp directory, readable by Dovecot's own users (pytest's
    tmp_path is private to the user running the tests), and removed by `stop`."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="switchboard-dovecot-"))
        self.root.chmod(0o755)
        self.port = free_port()
        self.config = self.root / "dovecot.conf"
        self.binary = shutil.which("dovecot") or "/usr/sbin/dovecot"
        self.doveadm = shutil.which("doveadm") or "/usr/bin/doveadm"

    def _write_config(self) -> None:
        mail = self.root / "mail"
        run = self.root / "run"
        for folder in (mail, run):
            folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            # imap-login refuses to run as root; mail is stored as an unprivileged user.
            owner = pwd.getpwnam("nobody")
            os.chown(mail, owner.pw_uid, owner.pw_gid)
            login_user, internal_user, mail_user = "dovenull", "dovecot", owner
        else:
            me = pwd.getpwuid(os.geteuid())
            login_user = internal_user = me.pw_name
            mail_user = me
        self.config.write_text(f"""\
protocols = imap
listen = 127.0.0.1
base_dir = {run}
state_dir = {run}/state
instance_name = sbtest-{self.port}
log_path = {self.root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_login_user = {login_user}
default_internal_user = {internal_user}
first_valid_uid = 0
mail_location = maildir:{mail}/%u
mail_fsync = optimized
passdb {{
  driver = static
  args = password={PASSWORD}
}}
userdb {{
  driver = static
  args = uid={mail_user.pw_uid} gid={mail_user.pw_gid} home={mail}/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0666
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
protocol imap {{
  mail_max_userip_connections = 200
}}
""")

    def start(self) -> "Dovecot":
        self._write_config()
        # The daemon forks and keeps its standard streams: give it files, not pipes to wait on.
        with open(self.root / "dovecot.out", "wb") as out:
            subprocess.run([self.binary, "-c", str(self.config)], check=True, stdin=subprocess.DEVNULL, stdout=out,
                           stderr=subprocess.STDOUT, timeout=30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(100).startswith(b"* OK"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"dovecot did not answer on port {self.port}: {self.log()[-2000:]}")

    def stop(self) -> None:
        subprocess.run([self.doveadm, "-c", str(self.config), "stop"], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def imap_settings(self, user: str, **extra: Any) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": self.port, "security": "none", "username": user,
                "password": {"$env": "SB_TEST_IMAP_PASSWORD", "default": PASSWORD}, **extra}

    def client(self, user: str):
        from imapclient import IMAPClient

        client = IMAPClient("127.0.0.1", port=self.port, ssl=False, timeout=30)
        client.login(user, PASSWORD)
        return client

    def append(self, user: str, *messages: bytes, folder: str = "INBOX") -> None:
        client = self.client(user)
        try:
            for raw in messages:
                client.append(folder, raw)
        finally:
            client.logout()


# -- SMTP ----------------------------------------------------------------------------------------------------------
@dataclass
class Received:
    sender: str
    recipients: list[str]
    raw: bytes

    @property
    def message(self) -> Message:
        return message_from_bytes(self.raw, policy=default_policy)


@dataclass
class SmtpSink:
    """An SMTP server on loopback that accepts mail (or refuses recipients listed in `refuse`)."""

    port: int = 0
    received: list[Received] = field(default_factory=list)
    refuse: dict[str, tuple[int, str]] = field(default_factory=dict)  # recipient → (code, text)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list):
        if address in self.refuse:
            code, text = self.refuse[address]
            return f"{code} {text}"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or envelope.content
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(data)))
        return "250 Message accepted for delivery"


def start_smtp() -> tuple[SmtpSink, Controller]:
    sink = SmtpSink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    sink.port = port
    return sink, controller
