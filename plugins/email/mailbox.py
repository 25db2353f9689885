"""One mailbox's ingest: UID-incremental sync with IDLE, headers first, bodies in bounded batches, every message
stored (or quarantined) before the server is told anything, and a mailbox failing on its own."""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import random
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from plugins.email.config import EmailConfig, MailboxConfig
from plugins.email.parse import ParsedMail, message_ids, parse_many
from plugins.email.tokens import Tokens
from plugins.email.transport import IMAP_ERRORS, ImapSession
from router.core.dispatcher import InvalidInbound
from router.core.model import Identity, InboundMessage, IngestOutcome, ThreadHints
from router.core.store.base import StoreUnavailable

if TYPE_CHECKING:  # pragma: no cover
    from router.app import Switchboard

log = logging.getLogger(__name__)

SEARCH_WINDOW = 50_000  # UIDs per SEARCH: its answer stays well under imaplib's 1,000,000-byte line limit
MAX_FETCH_FAILURES = 3  # a message the server fails to return this often is quarantined (headers) and skipped

CHANNEL = "email"
SEEN = b"\\Seen"
HEADER_ITEM = b"BODY[HEADER.FIELDS (MESSAGE-ID)]"
HEADER_ITEM_REQUEST = "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"
MAX_TEXT = 1_000_000
MAX_ATTACHMENTS = 100
BODY_BATCH_BYTES = 32 * 1024 * 1024  # one FETCH of bodies asks for at most this much


@dataclasses.dataclass(slots=True)
class MailboxStatus:
    """What an operator sees about a mailbox (`GET /api/v1/email/mailboxes`)."""

    name: str
    address: str
    connected: bool = False
    idle: bool = False
    uidvalidity: int | None = None
    last_uid: int = 0
    last_sync_at: float | None = None
    last_error: str | None = None
    failures: int = 0
    counts: dict[str, int] = dataclasses.field(default_factory=lambda: defaultdict(int))

    def as_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["counts"] = dict(self.counts)
        return data


def to_inbound(parsed: ParsedMail, raw: bytes, mailbox: MailboxConfig, tokens: Tokens,
               source: dict[str, Any]) -> tuple[InboundMessage, int | None]:
    """The normalised message for a parsed mail, and the outbound id it answers or reports on (a bounce)."""
    ref, outbound_id = tokens.find(parsed.references, parsed.recipients)
    notes = list(parsed.notes)
    sender = parsed.sender
    if parsed.bounce is not None:
        if not ref:
            for original in parsed.bounce.original_ids:
                found = tokens.from_message_id(original)
                if found:
                    ref, outbound_id = found
                    break
        # A bounce is about the address that failed: it belongs in that customer's case. (When the bounced
        # outbound is known, the mailbox puts its recipient here instead: a forwarded address reports another.)
        if ref and parsed.bounce.recipients:
            sender = parsed.bounce.recipients[0]
    text = parsed.text or parsed.full_text or (parsed.subject or "") or "(empty message)"
    if len(text) > MAX_TEXT:
        notes.append(f"text cut at {MAX_TEXT} characters; the whole mail is in the raw message")
        text = text[:MAX_TEXT]
    attachments = parsed.attachments
    if len(attachments) > MAX_ATTACHMENTS:
        notes.append(f"{len(attachments)} attachments: the first {MAX_ATTACHMENTS} are kept, all are in the raw message")
        attachments = attachments[:MAX_ATTACHMENTS]
    details: dict[str, Any] = {"mailbox": mailbox.name, **source}
    if parsed.full_text != text:
        details["full_text"] = parsed.full_text[:MAX_TEXT]
    if notes:
        details["notes"] = notes
    if parsed.auto_generated:
        details["auto_generated"] = parsed.auto_generated
    if parsed.bounce is not None:
        details["bounce"] = dataclasses.asdict(parsed.bounce)
    if parsed.sent_at is not None:
        details["date"] = parsed.sent_at.isoformat()
    hints = ThreadHints(
        case_ref=ref, in_reply_to=parsed.references, quoted_ref=parsed.case_tag,
        new_conversation=not (ref or parsed.references or parsed.case_tag),
    )
    message = InboundMessage(
        channel=CHANNEL, account=mailbox.address, external_id=parsed.message_id,
        sender=Identity(kind="email", value=sender[:512]),
        # A bounce's name is the mailer's ("Mail Delivery System"), not the customer's.
        display_name=None if sender != parsed.sender else (parsed.display_name or "")[:512] or None,
        subject=parsed.subject, text=text, attachments=attachments, thread=hints, raw=raw,
        auto_generated=parsed.auto_generated is not None, details=details,
    )
    return message, outbound_id


def _announces_mail(responses) -> bool:
    return any(len(r) > 1 and r[1] in (b"EXISTS", b"RECENT") for r in responses)


def _select(client, folder: str) -> dict:
    """SELECT the folder; the counts it announces are answered by this sync, so they are not "new mail"."""
    selected = client.select_folder(folder)
    _pending_exists(client)
    return selected


def _pending_exists(client) -> bool:
    """Whether the server announced new mail (an untagged EXISTS) in answer to an earlier command; imaplib keeps
    such announcements aside, where IDLE would never see them."""
    pending = client._imap.untagged_responses
    exists = pending.pop("EXISTS", None)
    recent = pending.pop("RECENT", None)
    return bool(exists or recent)


class Mailbox:
    """Keeps one IMAP folder flowing into cases; `run` until cancelled, reconnecting with backoff."""

    def __init__(self, sb: "Switchboard", settings: EmailConfig, mailbox: MailboxConfig, tokens: Tokens):
        self.sb = sb
        self.settings = settings
        self.config = mailbox
        self.tokens = tokens
        self.status = MailboxStatus(mailbox.name, mailbox.address)
        self.session = ImapSession(mailbox.imap, mailbox.name)
        self._wake = asyncio.Event()
        self._stopping = False
        self._lock = asyncio.Lock()  # one sync at a time (the poll job and IDLE may both ask)
        # (uidvalidity, uid, what was fetched: head or body) -> failed single fetches
        self._fetch_failures: dict[tuple[int, int, str], int] = {}
        self._unfetchable_held: set[tuple[int, int]] = set()  # quarantined, skipped until the folder changes

    @property
    def state_key(self) -> str:
        return self.config.name

    # -- the loop ---------------------------------------------------------------------------------------------
    async def run(self) -> None:
        delay = 1.0
        while not self._stopping:
            try:
                await self.connect()
                while not self._stopping:
                    await self.sync()
                    delay = 1.0  # a whole sync went through: the next failure starts the backoff again
                    self.status.last_error = None
                    await self._wait_for_mail()
            except asyncio.CancelledError:
                raise
            except (*IMAP_ERRORS, StoreUnavailable) as exc:
                self._failed(exc)
            except Exception as exc:  # noqa: BLE001 - a bug in one mailbox must not stop it for good
                log.exception("mailbox %s: unexpected error", self.config.name)
                self._failed(exc)
            await self.session.close()
            self.status.connected = self.status.idle = False
            if self._stopping:
                break
            wait = min(delay, self.settings.reconnect_max.total_seconds()) * random.uniform(0.8, 1.2)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=wait)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            delay = min(delay * 2, self.settings.reconnect_max.total_seconds())

    def _failed(self, exc: BaseException) -> None:
        self.status.failures += 1
        self.status.last_error = f"{type(exc).__name__}: {exc}"[:500]
        log.warning("mailbox %s: %s; reconnecting", self.config.name, self.status.last_error)

    async def connect(self) -> None:
        await self.session.connect()
        client = self.session.client
        assert client is not None
        if self.config.after_ingest == "move" and not await self.session.call(client.folder_exists, self.config.move_to):
            await self.session.call(client.create_folder, self.config.move_to)
        self.status.connected = True

    async def _wait_for_mail(self) -> None:
        """Until new mail may be there: IDLE when the server has it, else the poll interval (or a wake-up)."""
        timeout = self.config.poll_interval.total_seconds()
        if self.config.idle and self.session.has(b"IDLE"):
            self.status.idle = True
            await self.session.call(self._idle, min(timeout, 25 * 60))
            self.status.idle = False
            self._wake.clear()
            return
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=timeout)
        except asyncio.TimeoutError:
            pass
        self._wake.clear()

    def _idle(self, timeout: float) -> None:
        """IDLE until the server announces new mail, a wake-up, or `timeout`.

        IDLE is entered in growing windows (1 s, 2 s, ... up to a minute), each closed with DONE: an announcement
        that arrives together with IDLE's "+ idling" sits in imaplib's buffer where `idle_check` cannot see it,
        but DONE's answer carries it, so such mail waits one window at most, not until the next poll.
        """
        client = self.session.client
        assert client is not None
        if _pending_exists(client):  # mail came in while the last sync ran: no IDLE, sync again
            return
        deadline = time.monotonic() + timeout
        window = 1.0
        while not self._stopping and not self._wake.is_set() and time.monotonic() < deadline:
            client.idle()
            seen = False
            try:
                until = min(time.monotonic() + window, deadline)
                instant = 0  # answers with nothing in them, at once: imapclient's sign of a closed socket
                while not seen and not self._stopping and not self._wake.is_set() and time.monotonic() < until:
                    asked = time.monotonic()
                    responses = client.idle_check(timeout=0.5)
                    if any(r and r[0] == b"BYE" for r in responses):
                        raise ConnectionError(f"the IMAP server ended the session during IDLE: {responses}")
                    instant = instant + 1 if not responses and time.monotonic() - asked < 0.05 else 0
                    if instant >= 3:  # (it swallows EOF and returns []; polling on would spin a core)
                        raise ConnectionError("the IMAP connection closed during IDLE")
                    seen = _announces_mail(responses)
            finally:
                _, responses = client.idle_done()
            if seen or _announces_mail(responses) or _pending_exists(client):
                return
            window = min(window * 2, 60.0)

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    # -- one sync ---------------------------------------------------------------------------------------------
    async def sync(self) -> dict[str, int]:
        """Store every message that arrived since the last sync; returns what happened to them, by outcome."""
        async with self._lock:
            return await self._sync()

    async def _sync(self) -> dict[str, int]:
        client = self.session.client
        assert client is not None
        selected = await self.session.call(_select, client, self.config.imap.folder)
        uidvalidity = int(selected[b"UIDVALIDITY"])
        state = await self.sb.store.read(lambda tx: tx.channel_state(CHANNEL, self.state_key)) or {}
        last_uid = int(state.get("last_uid", 0))
        if state.get("uidvalidity") not in (None, uidvalidity):
            # The server renumbered the folder: every message is looked at again; Message-IDs already stored are
            # recognised at the header stage, so nothing is ingested twice.
            log.warning("mailbox %s: UIDVALIDITY changed from %s to %s; resyncing", self.config.name,
                        state.get("uidvalidity"), uidvalidity)
            self.status.counts["resyncs"] += 1
            last_uid = 0
        self.status.uidvalidity, self.status.last_uid = uidvalidity, last_uid
        totals: dict[str, int] = defaultdict(int)
        uids: list[int] = []
        async for window in self._search(client, last_uid, selected.get(b"UIDNEXT")):
            uids += window
            for start in range(0, len(window), self.config.batch):
                chunk = window[start:start + self.config.batch]
                for outcome, n in (await self._take(chunk, uidvalidity)).items():
                    totals[outcome] += n
                await self._save_state(uidvalidity, chunk[-1])
                self.status.last_uid = chunk[-1]
        done_up_to = int(selected[b"UIDNEXT"]) - 1 if selected.get(b"UIDNEXT") else None
        if done_up_to is not None and done_up_to > self.status.last_uid:
            # Everything below UIDNEXT was looked at: remember it, so that an empty stretch of UIDs (mail moved
            # away) is not searched again on every sync.
            await self._save_state(uidvalidity, done_up_to)
            self.status.last_uid = done_up_to
        elif state.get("uidvalidity") != uidvalidity and not uids:
            await self._save_state(uidvalidity, last_uid)
        self.status.last_sync_at = time.time()
        for outcome, n in totals.items():
            self.status.counts[outcome] += n
        return dict(totals)

    async def _search(self, client: Any, last_uid: int, uidnext: Any):
        """The UIDs after `last_uid`, in windows of SEARCH_WINDOW UIDs up to UIDNEXT: one SEARCH over a large
        mailbox answers with a line longer than imaplib takes (1,000,000 bytes: about 150,000 UIDs), and the
        first sync or a resync of such a mailbox would fail every time."""
        start = last_uid + 1
        end = int(uidnext) - 1 if uidnext else None
        while end is None or start <= end:
            upper = "*" if end is None else str(min(start + SEARCH_WINDOW - 1, end))
            found = sorted(u for u in await self.session.call(client.search, ["UID", f"{start}:{upper}"]) if u >= start)
            if found:
                yield found
            if end is None:
                return
            start += SEARCH_WINDOW

    async def _save_state(self, uidvalidity: int, last_uid: int) -> None:
        state = {"uidvalidity": uidvalidity, "last_uid": last_uid}
        await self.sb.store.write(
            lambda tx: tx.put_channel_state(CHANNEL, self.state_key, state, self.sb.clock.now()))

    async def _take(self, uids: list[int], uidvalidity: int) -> dict[str, int]:
        client = self.session.client
        assert client is not None
        counts: dict[str, int] = defaultdict(int)
        held = [u for u in uids if (uidvalidity, u) in self._unfetchable_held]
        if held:
            counts["unfetchable"] += len(held)  # quarantined: the server cannot return them; left where they are
            uids = [u for u in uids if (uidvalidity, u) not in self._unfetchable_held]
        heads = (await self._fetch(client, uids, ["RFC822.SIZE", HEADER_ITEM_REQUEST], uidvalidity, what="head")
                 if uids else {})
        ids: dict[int, str | None] = {}
        sizes: dict[int, int] = {}
        for uid in uids:
            data = heads.get(uid)
            if data is None:  # expunged between SEARCH and FETCH
                continue
            sizes[uid] = int(data.get(b"RFC822.SIZE", 0))
            header = data.get(HEADER_ITEM) or b""
            found = message_ids(header.decode("ascii", "replace").partition(":")[2])
            ids[uid] = found[0] if found else None
        known = await self.sb.store.read(
            lambda tx: tx.known_external_ids(CHANNEL, [i for i in ids.values() if i is not None]))
        done: list[int] = []  # stored or quarantined: the server may now mark or move them
        duplicates: list[tuple[int, str, tuple[int, str]]] = []
        wanted: list[int] = []
        limit = self.settings.limits.max_message_bytes
        for uid, message_id in ids.items():
            if message_id is not None and message_id in known:
                duplicates.append((uid, message_id, known[message_id]))
                done.append(uid)
            elif sizes[uid] > limit:
                await self._too_large(uid, uidvalidity, sizes[uid], heads[uid])
                counts["too_large"] += 1
            else:
                wanted.append(uid)
        if duplicates:
            counts["duplicate"] += len(duplicates)
            await self._record_duplicates(duplicates, uidvalidity)
        # A pipeline: while one batch is written, the next one is fetched (in the session's thread).
        writing: asyncio.Task | None = None
        try:
            for batch in self._body_batches(wanted, sizes):
                bodies = await self._fetch(client, batch, ["BODY.PEEK[]"], uidvalidity, heads, what="body")
                # A body the server answers as NIL: the message was expunged meanwhile; it is gone, not lost.
                mails = [(uid, bytes(bodies[uid][b"BODY[]"])) for uid in batch
                         if uid in bodies and bodies[uid].get(b"BODY[]") is not None]
                # In a thread: a slow mail delays this mailbox only, not the event loop (the API, other mailboxes).
                parsed = await asyncio.to_thread(self._parse, [raw for _, raw in mails])
                if writing is not None:
                    self._count(await writing, counts, done)
                writing = asyncio.create_task(self._ingest_all(mails, parsed, uidvalidity))
            if writing is not None:
                self._count(await writing, counts, done)
        finally:
            if writing is not None and not writing.done():
                writing.cancel()
                await asyncio.gather(writing, return_exceptions=True)
        await self._after_ingest(sorted(done))
        return counts

    async def _fetch(self, client: Any, uids: list[int], items: list[str], uidvalidity: int,
                     heads: dict[int, Any] | None = None, *, what: str) -> dict[int, Any]:
        """FETCH `items` of `uids`. One message the server fails to return (a damaged file, a server bug) must
        not hold up the mailbox: after a failed batch its messages are fetched one at a time, and one that fails
        MAX_FETCH_FAILURES times is quarantined (with its headers when known) and skipped, left on the server."""
        suspects = [u for u in uids if (uidvalidity, u, what) in self._fetch_failures]
        rest = [u for u in uids if (uidvalidity, u, what) not in self._fetch_failures]
        found: dict[int, Any] = {}
        if rest:
            try:
                found.update(await self.session.call(client.fetch, rest, items))
            except IMAP_ERRORS:
                for uid in rest:
                    self._fetch_failures.setdefault((uidvalidity, uid, what), 0)
                raise
        for uid in suspects:
            key = (uidvalidity, uid, what)
            try:
                found.update(await self.session.call(client.fetch, [uid], items))
            except IMAP_ERRORS as exc:
                self._fetch_failures[key] += 1
                if self._fetch_failures[key] >= MAX_FETCH_FAILURES:
                    del self._fetch_failures[key]
                    self._unfetchable_held.add((uidvalidity, uid))
                    known = (heads or {}).get(uid, {})
                    await self._quarantine(
                        uid, uidvalidity, bytes(known.get(HEADER_ITEM) or b""),
                        f"the server failed {MAX_FETCH_FAILURES} times to return this message ({exc}); left on "
                        f"the server in {self.config.imap.folder}, UID {uid}",
                        key_extra=f"{known.get(b'RFC822.SIZE')}" if known else f"UID {uidvalidity}/{uid}",
                        unfetchable=True)
                raise  # the connection may be unusable after this: reconnect; the next sync goes on past it
            else:
                self._fetch_failures.pop(key, None)
        return found

    @staticmethod
    def _count(results: list[tuple[int, str]], counts: dict[str, int], done: list[int]) -> None:
        for uid, outcome in results:
            counts[outcome] += 1
            done.append(uid)

    def _body_batches(self, uids: list[int], sizes: dict[int, int]):
        batch: list[int] = []
        total = 0
        for uid in uids:
            if batch and total + sizes[uid] > BODY_BATCH_BYTES:
                yield batch
                batch, total = [], 0
            batch.append(uid)
            total += sizes[uid]
        if batch:
            yield batch

    def _source(self, uid: int, uidvalidity: int) -> dict[str, Any]:
        return {"folder": self.config.imap.folder, "uid": uid, "uidvalidity": uidvalidity}

    def _parse(self, raws: list[bytes]) -> list[ParsedMail | str]:
        limits = self.settings.limits
        return parse_many(raws, self.sb.config.instance.languages, limits.max_attachment_bytes,
                          limits.oversized_attachments)

    async def _ingest_all(self, mails: list[tuple[int, bytes]], parsed_mails: list[ParsedMail | str],
                          uidvalidity: int) -> list[tuple[int, str]]:
        """Ingest a parsed batch. Mails from one sender go in order (a reply after the mail it answers);
        different senders go concurrently, so their writes share commits."""
        by_sender: dict[str, list[tuple[int, bytes, Any]]] = defaultdict(list)
        results: list[tuple[int, str]] = []
        for (uid, raw), parsed in zip(mails, parsed_mails):
            if isinstance(parsed, str):
                await self._quarantine(uid, uidvalidity, raw, parsed)
                results.append((uid, "quarantined"))
                continue
            try:
                message, answers = to_inbound(parsed, raw, self.config, self.tokens, self._source(uid, uidvalidity))
                if parsed.bounce is not None and answers is not None:
                    message = await self._bounced_recipient(message, answers)
                message = self.sb.dispatcher.normalise(message)
            except ValueError as exc:  # InvalidInbound and pydantic's ValidationError among them
                await self._quarantine(uid, uidvalidity, raw, f"{type(exc).__name__}: {exc}")
                results.append((uid, "quarantined"))
                continue
            by_sender[message.sender.value].append((uid, raw, (message, answers)))

        async def one_sender(items: list[tuple[int, bytes, Any]]) -> None:
            for uid, raw, (message, answers) in items:
                results.append((uid, await self._ingest_one(uid, uidvalidity, raw, message, answers)))

        tasks = [asyncio.ensure_future(one_sender(items)) for items in by_sender.values()]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            # One sender's write failed (the store is down): the others stop too, so that nothing of this sync
            # runs on behind the reconnect (their mails are fetched again and recognised as stored).
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return results

    async def _bounced_recipient(self, message: InboundMessage, outbound_id: int) -> InboundMessage:
        """A bounce of a mail Switchboard sent goes to the case of the address it was sent to, whatever address
        the report names (a forwarding address reports where it forwarded to)."""
        outbound = await self.sb.store.read(lambda tx: tx.get_outbound(outbound_id))
        if outbound is None or outbound.recipient.kind != "email" or outbound.recipient == message.sender:
            return message
        return message.model_copy(update={"sender": outbound.recipient, "display_name": None})

    async def _ingest_one(self, uid: int, uidvalidity: int, raw: bytes, message: InboundMessage,
                          answers: int | None) -> str:
        bounce = message.details.get("bounce")
        also = None
        if bounce and answers is not None and bounce.get("action", "failed") == "failed":
            reason = "bounced: " + " ".join(filter(None, (bounce.get("status"), bounce.get("diagnostic")))) \
                if bounce.get("status") or bounce.get("diagnostic") else "bounced"
            now = self.sb.clock.now()

            async def also(tx, _result):  # the bounce and its report commit together, or neither does
                _found, events = await self.sb.outbox.report_in(
                    tx, answers, delivered=False, error=reason[:500],
                    recipient_failing=bool(bounce.get("permanent")), now=now)
                return events
        try:
            result = await self.sb.dispatcher.ingest(message, also=also)
        except (StoreUnavailable, asyncio.CancelledError):
            raise  # nothing was written: the mail stays on the server for the next sync
        except Exception as exc:  # noqa: BLE001 - this mail cannot be stored as it is; the others go on
            if not isinstance(exc, InvalidInbound):
                log.exception("mailbox %s: UID %s could not be stored; quarantined", self.config.name, uid)
            await self._quarantine(uid, uidvalidity, raw, f"{type(exc).__name__}: {exc}")
            return "quarantined"
        if result.outcome is IngestOutcome.DUPLICATE:
            # Recognised only now (no Message-ID: its content hash matched), perhaps from another mailbox.
            await self._record_duplicates([(uid, message.external_id, (result.case.id, result.case.account))],
                                          uidvalidity)
        return "bounce" if bounce else result.outcome.value

    async def _quarantine(self, uid: int, uidvalidity: int, raw: bytes, reason: str, *, key_extra: str = "",
                          **meta: Any) -> None:
        # Keyed by content, not by UID: after a UIDVALIDITY change (the folder rebuilt) or a second delivery of
        # the same bytes, the mail is fetched again under another UID and must stay one entry. Entries that
        # keep only a header add the mail's size, so that two without a Message-ID are two entries (unless they
        # are also exactly as long).
        digest = hashlib.sha256(raw + key_extra.encode()).hexdigest()
        await self.sb.quarantine.hold(
            channel=CHANNEL, account=self.config.address,
            source_key=f"{self.config.name}/sha256:{digest}",
            reason=reason[:1000], raw=raw,
            meta={"mailbox": self.config.name, **meta, **self._source(uid, uidvalidity)},
        )

    async def _too_large(self, uid: int, uidvalidity: int, size: int, head: dict[bytes, Any]) -> None:
        """Left on the server untouched (so nothing is lost), and shown in the quarantine with its Message-ID."""
        await self._quarantine(
            uid, uidvalidity, bytes(head.get(HEADER_ITEM) or b""),
            f"message of {size} bytes is over limits.max_message_bytes ({self.settings.limits.max_message_bytes});"
            f" left on the server in {self.config.imap.folder}, UID {uid}",
            key_extra=f"{size}", too_large=size,
        )

    async def _record_duplicates(self, duplicates: list[tuple[int, str, tuple[int, str]]], uidvalidity: int) -> None:
        """The same mail delivered to another mailbox too (the customer wrote to two addresses): one case, and
        the second delivery noted on it. A refetch of this mailbox's own mail is only counted."""
        others = [(uid, mid, case_id, account) for uid, mid, (case_id, account) in duplicates
                  if account.lower() != self.config.address.lower()]
        if not others:
            return
        now = self.sb.clock.now()

        async def unit(tx):
            return await tx.append_events(
                [(case_id, "message.duplicate_delivery",
                  {"external_id": mid, "mailbox": self.config.name, "account": self.config.address,
                   "stored_from": account, "uid": uid, "uidvalidity": uidvalidity})
                 for uid, mid, case_id, account in others], CHANNEL, now)

        await self.sb.after_write(await self.sb.store.write(unit))

    async def _after_ingest(self, uids: list[int]) -> None:
        if not uids or self.config.after_ingest == "leave":
            return
        client = self.session.client
        assert client is not None
        if self.config.after_ingest == "seen":
            await self.session.call(client.add_flags, uids, [SEEN], silent=True)
        elif self.session.has(b"MOVE"):
            await self.session.call(client.move, uids, self.config.move_to)
        else:
            await self.session.call(client.copy, uids, self.config.move_to)
            await self.session.call(client.delete_messages, uids, silent=True)
            if self.session.has(b"UIDPLUS"):
                await self.session.call(client.uid_expunge, uids)
            else:
                await self.session.call(client.expunge)
