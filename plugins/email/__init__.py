"""The email channel: mailboxes read over IMAP (IDLE plus a polling safety net), answers sent over SMTP."""
from __future__ import annotations

import asyncio
from datetime import timedelta

from aiohttp import web

from plugins.email.compose import AUTOMATIC_KINDS, compose
from plugins.email.config import EmailConfig
from plugins.email.mailbox import CHANNEL, Mailbox, to_inbound
from plugins.email.parse import Unparseable, parse_mail
from plugins.email.tokens import Tokens
from plugins.email.transport import send_smtp
from router import hookimpl
from router.channels import Channel, ScheduledJob
from router.config import plugin_settings
from router.core.model import DeliveryResult
from router.core.tasks import cancel_and_wait
from router.stash import StashKey
from router.web.auth import require

SETTINGS = StashKey[EmailConfig]()
TOKENS = StashKey[Tokens]()
MAILBOXES = StashKey[dict[str, Mailbox]]()
TASKS = StashKey[list[asyncio.Task]]()


def settings_of(config) -> EmailConfig:
    return plugin_settings(config, CHANNEL, EmailConfig)


def tokens_of(settings: EmailConfig) -> Tokens:
    secret = settings.token_secret.get() if settings.token_secret else "unset"
    return Tokens(secret, settings.message_domain)


@hookimpl
def switchboard_configure(config):
    settings_of(config)


@hookimpl
def switchboard_register_channels(registry, config):
    settings = settings_of(config)
    registry.add(Channel(
        name=CHANNEL, title="Email", description="Mailboxes read over IMAP; answers sent over SMTP",
        identity_kind="email",
        outbound=lambda account: settings.smtp is not None and settings.mailbox_for(account) is not None,
    ))


@hookimpl
def switchboard_startup(switchboard):
    settings = settings_of(switchboard.config)
    switchboard.stash[SETTINGS] = settings
    tokens = switchboard.stash[TOKENS] = tokens_of(settings)
    mailboxes = {m.name: Mailbox(switchboard, settings, m, tokens) for m in settings.mailboxes}
    switchboard.stash[MAILBOXES] = mailboxes
    if switchboard.background:
        switchboard.stash[TASKS] = [asyncio.create_task(m.run(), name=f"mailbox-{name}")
                                    for name, m in mailboxes.items()]


STOP_GRACE = 2.0  # seconds a mailbox gets to finish on its own when the server stops


@hookimpl
async def switchboard_shutdown(switchboard):
    mailboxes = switchboard.stash.pop(MAILBOXES) or {}
    for mailbox in mailboxes.values():
        await mailbox.stop()
    tasks = switchboard.stash.pop(TASKS) or []
    if tasks:
        # Each mailbox leaves IDLE or finishes its sync on its own within a moment; one still blocked on a
        # slow server after that is cut off, so that stopping never waits on a server.
        _, slow = await asyncio.wait(tasks, timeout=STOP_GRACE)
        if slow:
            for mailbox in mailboxes.values():
                mailbox.session.interrupt()
    for task in tasks:
        await cancel_and_wait(task)
    for mailbox in mailboxes.values():
        await mailbox.session.close()
        mailbox.session.shutdown()


@hookimpl
def switchboard_scheduled_jobs(switchboard):
    # The safety net under IDLE: each mailbox is woken to sync at its poll interval whatever IDLE reported.
    settings = settings_of(switchboard.config)
    return [ScheduledJob(id=f"email-poll-{m.name}", func=_wake, every=m.poll_interval,
                         kwargs={"switchboard": switchboard, "name": m.name}) for m in settings.mailboxes]


async def _wake(switchboard, name: str) -> None:
    # A coroutine, so that APScheduler runs it on the event loop (a plain function runs in its thread pool,
    # where setting the mailbox's asyncio.Event is not safe).
    mailbox = (switchboard.stash.get(MAILBOXES) or {}).get(name)
    if mailbox is not None:
        mailbox.wake()


@hookimpl
def switchboard_web_routes(switchboard):
    async def mailboxes(request: web.Request) -> web.Response:
        await require(request, "read")
        found = switchboard.stash.get(MAILBOXES) or {}
        return web.json_response({"mailboxes": [m.status.as_dict() for m in found.values()]})

    return [web.get("/api/v1/email/mailboxes", mailboxes)]


@hookimpl
async def switchboard_deliver(outbound, switchboard):
    if outbound.channel != CHANNEL:
        return None
    settings = switchboard.stash.get(SETTINGS) or settings_of(switchboard.config)
    mailbox = settings.mailbox_for(outbound.account)
    if mailbox is None:
        return DeliveryResult.permanent(f"no mailbox {outbound.account!r} is configured any more")
    if settings.smtp is None:
        return DeliveryResult.permanent("plugins.email.smtp is not configured: mail cannot be sent")
    if outbound.kind in AUTOMATIC_KINDS:
        refusal = await _automatic_refusal(switchboard, settings, outbound)
        if refusal:
            return DeliveryResult.permanent(refusal)
    attachments = []
    if outbound.message_id:
        attachments = await switchboard.store.read(lambda tx: tx.attachment_contents(outbound.message_id))
    message = compose(outbound, sender=mailbox.address, display_name=mailbox.display_name or switchboard.config.instance.name,
                      tokens=switchboard.stash.setdefault(TOKENS, lambda: tokens_of(settings)),
                      instance=switchboard.config.instance.name,
                      reply_token=settings.reply_address_token, attachments=attachments, now=switchboard.clock.now())
    return await send_smtp(settings.smtp, message, mailbox.address, outbound.recipient.value)


async def _automatic_refusal(switchboard, settings: EmailConfig, outbound) -> str | None:
    """Why an automatic mail must not go (the address bounces, or it got enough automatic mail lately)."""
    limit = settings.auto_mail_limit
    since = switchboard.clock.now() - limit.per

    async def unit(tx):
        return (await tx.identity_failing(outbound.recipient),
                await tx.count_outbound_since(CHANNEL, outbound.recipient.value, sorted(AUTOMATIC_KINDS), since,
                                              outbound.id))

    failing, recent = await switchboard.store.read(unit)
    if failing:
        return f"not sent: {outbound.recipient.value} is marked failing ({failing})"
    if recent >= limit.count:
        return (f"not sent: {recent} automatic mails went to {outbound.recipient.value} in the last "
                f"{_duration(limit.per)} (limit {limit.count}); a loop or a flood is likely")
    return None


def _duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    return f"{seconds // 3600}h" if seconds % 3600 == 0 else f"{seconds // 60}m" if seconds % 60 == 0 else f"{seconds}s"


@hookimpl
def switchboard_reparse(item, switchboard):
    if item["channel"] != CHANNEL:
        return None
    settings = switchboard.stash.get(SETTINGS) or settings_of(switchboard.config)
    meta = item.get("meta") or {}
    if meta.get("too_large"):
        raise ValueError(f"only the headers were kept: the mail ({meta['too_large']} bytes) is still on the server "
                         f"in {meta.get('folder')}, UID {meta.get('uid')}; raise limits.max_message_bytes, then move "
                         "it out of the folder and back (it gets a new UID and is fetched), or forward it")
    if meta.get("unfetchable"):
        raise ValueError(f"only the headers were kept: the server could not return this message (still in "
                         f"{meta.get('folder')}, UID {meta.get('uid')}); repair it on the server, then move it out "
                         "of the folder and back (it gets a new UID and is fetched again)")
    mailbox = settings.mailbox_for(item["account"])
    if mailbox is None:
        raise ValueError(f"mailbox {item['account']!r} is no longer configured")
    limits = settings.limits
    try:
        parsed = parse_mail(item["raw"], languages=switchboard.config.instance.languages,
                            max_attachment_bytes=limits.max_attachment_bytes,
                            oversized_attachments=limits.oversized_attachments)
    except Unparseable as exc:
        raise ValueError(str(exc)) from None
    source = {k: meta[k] for k in ("folder", "uid", "uidvalidity") if k in meta}
    tokens = switchboard.stash.setdefault(TOKENS, lambda: tokens_of(settings))
    message, _ = to_inbound(parsed, item["raw"], mailbox, tokens, {**source, "reprocessed": item["id"]})
    return message
