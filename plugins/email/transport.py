"""Talking to mail servers: an IMAP session per mailbox (imapclient, in its own thread) and SMTP (aiosmtplib)."""
from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import ssl
from email.message import EmailMessage
from typing import Any, Callable, TypeVar

import aiosmtplib
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

from plugins.email.config import ImapConfig, SmtpConfig
from router.core.model import DeliveryResult

T = TypeVar("T")

# Errors that mean "the server or the connection failed": reconnect with backoff and try again.
IMAP_ERRORS = (IMAPClientError, OSError, socket.timeout, ssl.SSLError, EOFError)


class ImapSession:
    """One mailbox's IMAP connection. imapclient is blocking, so every call runs in this session's own thread:
    a slow server or a long IDLE holds up this mailbox only, never the event loop or another mailbox."""

    def __init__(self, config: ImapConfig, name: str):
        self.config = config
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"imap-{name}")
        self.client: IMAPClient | None = None
        self.capabilities: frozenset[bytes] = frozenset()

    async def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, lambda: func(*args, **kwargs))

    def _connect(self) -> IMAPClient:
        config = self.config
        client = IMAPClient(config.host, port=config.port, ssl=config.security == "tls",
                            timeout=config.timeout.total_seconds())
        try:
            if config.security == "starttls":
                client.starttls(ssl.create_default_context())
            client.login(config.username, config.password.get())
        except BaseException:
            _quietly(client.logout)
            raise
        return client

    async def connect(self) -> None:
        self.client = await self.call(self._connect)
        self.capabilities = frozenset(await self.call(self.client.capabilities))

    def has(self, capability: bytes) -> bool:
        return capability in self.capabilities

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            await self.call(_quietly, client.logout)

    def interrupt(self) -> None:
        """End a call blocked on a slow or stalled server now (from any thread): its socket is shut down, so the
        read in progress fails at once instead of after the server's next byte or the timeout."""
        client = self.client
        if client is None:
            return
        try:
            client.socket().shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed

    def shutdown(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)


def _quietly(func: Callable[[], Any]) -> None:
    try:
        func()
    except Exception:  # noqa: BLE001 - closing a connection that is already broken
        pass


# -- SMTP ----------------------------------------------------------------------------------------------------------
_TRANSIENT_SMTP = (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError,
                   aiosmtplib.SMTPConnectTimeoutError, OSError, TimeoutError)


async def send_smtp(config: SmtpConfig, message: EmailMessage, sender: str, recipient: str) -> DeliveryResult:
    """Hand one mail to the SMTP server; a 4xx or a broken connection is worth retrying, a 5xx is not."""
    try:
        errors, response = await aiosmtplib.send(
            message, sender=sender, recipients=[recipient], hostname=config.host, port=config.port,
            username=config.username, password=config.password.get() if config.password else None,
            use_tls=config.security == "tls", start_tls=True if config.security == "starttls" else False,
            timeout=config.timeout.total_seconds(),
        )
    except aiosmtplib.SMTPRecipientsRefused as exc:
        refused = exc.recipients[0] if exc.recipients else None
        code = getattr(refused, "code", 550)
        reason = f"recipient refused: {code} {getattr(refused, 'message', exc)}"
        return DeliveryResult.retry(reason) if 400 <= code < 500 else DeliveryResult.permanent(reason)
    except aiosmtplib.SMTPResponseException as exc:
        reason = f"SMTP server answered {exc.code} {exc.message}"
        return DeliveryResult.retry(reason) if 400 <= exc.code < 500 else DeliveryResult.permanent(reason)
    except _TRANSIENT_SMTP as exc:
        return DeliveryResult.retry(f"SMTP server unreachable: {type(exc).__name__}: {exc}")
    if errors:
        code, text = next(iter(errors.values()))
        reason = f"recipient refused: {code} {text}"
        return DeliveryResult.retry(reason) if 400 <= code < 500 else DeliveryResult.permanent(reason)
    return DeliveryResult.sent(str(message["Message-ID"]).strip("<>"))
