"""Ingest: dedupe → identify → thread → persist → route → acknowledge, as one durable write; then notify."""
from __future__ import annotations

import dataclasses
import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from router.core import csat
from router.core.model import (
    Case,
    CaseStatus,
    Customer,
    Direction,
    Event,
    Identity,
    InboundMessage,
    IngestOutcome,
    IngestResult,
    InvalidIdentity,
    Route,
    normalise_identity,
    tagged_subject,
)
from router.core.store.base import Conflict, Tx

if TYPE_CHECKING:  # pragma: no cover
    from router.app import Switchboard

log = logging.getLogger(__name__)

SYSTEM = "system"


class InvalidInbound(ValueError):
    """A message a channel handed over that cannot be taken as it is; `field` names what is wrong."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclasses.dataclass(slots=True)
class _Work:
    """What one ingest accumulates inside its transaction; its events are written together at the end."""

    now: datetime
    pending: list[tuple[int | None, str, dict[str, Any]]] = dataclasses.field(default_factory=list)
    outbound_ids: list[int] = dataclasses.field(default_factory=list)

    def event(self, case_id: int | None, type: str, data: dict[str, Any]) -> None:
        self.pending.append((case_id, type, data))


class Dispatcher:
    def __init__(self, switchboard: "Switchboard"):
        self.sb = switchboard
        self.config = switchboard.config

    # -- public ---------------------------------------------------------------------------------------------
    async def ingest(self, message: InboundMessage,
                     also: Callable[[Tx, IngestResult], Awaitable[list[Event]]] | None = None) -> IngestResult:
        """Store `message` durably in a case and return what happened. Idempotent on (channel, external id).

        When this returns, the message survives a crash; only then may the channel acknowledge the sender.
        `also` is a channel's own work that must commit with the message or not at all (a bounce and the report
        on the bounced outbound): it runs in the same unit after the message is stored, not for a redelivery,
        and returns the events it wrote.
        Raises :class:`InvalidInbound` for a message that cannot be taken and
        :class:`router.core.store.base.StoreUnavailable` when nothing could be written.
        """
        started = time.perf_counter()
        try:
            message = self.normalise(message)
        except InvalidInbound:
            self.sb.metrics.rejected.labels(message.channel, "invalid").inc()
            raise
        message = await self.sb.hooks.inbound_received(message=message, switchboard=self.sb)
        # A redelivery is recognised inside the write (the one place that cannot race), not by a read before.
        async def unit(tx: Tx) -> IngestResult:
            stored = await self._ingest(tx, message)
            if also is not None and stored.outcome is not IngestOutcome.DUPLICATE:
                stored.events += await also(tx, stored)
            return stored

        result = await self.sb.store.write(unit)
        self.sb.metrics.observe_ingest(message.channel, result.outcome.value, time.perf_counter() - started)
        await self.sb.after_write(result.events, wake_outbox=bool(result.outbound_ids))
        return result

    def normalise(self, message: InboundMessage) -> InboundMessage:
        if message.channel not in self.sb.channels:
            raise InvalidInbound("channel", f"unknown channel {message.channel!r}; known: {self.sb.channels.names()}")
        region = self.config.instance.default_region
        try:
            sender = _normalised(message.sender, region)
        except InvalidIdentity as exc:
            raise InvalidInbound("sender.value", str(exc)) from None
        linked = []
        for i, identity in enumerate(message.linked_identities):
            try:
                linked.append(_normalised(identity, region))
            except InvalidIdentity as exc:
                raise InvalidInbound(f"linked_identities.{i}.value", str(exc)) from None
        role = message.context.role
        if role is not None and role not in self.config.instance.roles:
            raise InvalidInbound("context.role", f"unknown role {role!r}; configured roles: {self.config.instance.roles}")
        if not message.text.strip() and not message.attachments:
            raise InvalidInbound("text", "a message needs text or at least one attachment")
        update = {"sender": sender, "linked_identities": linked, "received_at": message.received_at or self.sb.clock.now()}
        for name in ("text", "subject", "display_name"):  # U+0000: no store keeps it alike (PostgreSQL cannot)
            value = getattr(message, name)
            if value and "\x00" in value:
                update[name] = value.replace("\x00", "\ufffd")
        return message.model_copy(update=update)

    # -- inside the write -----------------------------------------------------------------------------------
    async def _duplicate(self, tx: Tx, message_id: int, case_id: int) -> IngestResult:
        case = await tx.case_by_id(case_id)
        assert case is not None
        return IngestResult(IngestOutcome.DUPLICATE, case, message_id, case.customer_id)

    async def _ingest(self, tx: Tx, message: InboundMessage) -> IngestResult:
        known = await tx.find_message(message.channel, message.external_id)
        if known is not None:
            return await self._duplicate(tx, *known)
        work = _Work(now=self.sb.clock.now())
        customer, is_new = await self._identify(tx, message, work)
        case, outcome = await self._thread(tx, message, customer, is_new, work)
        message_id = await self._store_message(tx, message, case, outcome, work)
        if outcome in (IngestOutcome.CREATED, IngestOutcome.REOPENED):
            await self._acknowledge(tx, message, case, customer, outcome, work)
        events = await tx.append_events(work.pending, SYSTEM, work.now)
        return IngestResult(outcome, case, message_id, customer.id, events, work.outbound_ids)

    async def _identify(self, tx: Tx, message: InboundMessage, work: _Work) -> tuple[Customer, bool]:
        """Find or create the customer (and say whether it is new); a trusted source may link identities, and
        so merge customers."""
        # Once normalised, two linked identities may be one ("+39 333 …" and "333…"): each is claimed once.
        claimed = list(dict.fromkeys([message.sender, *message.linked_identities])) if message.trusted and \
            message.linked_identities else [message.sender]
        found = await tx.customers_for_identities(claimed)
        if not found:
            role = message.context.role if message.trusted else None
            customer_id = await tx.insert_customer(role, message.display_name, message.language, work.now)
            work.event(None, "customer.created", {"customer_id": customer_id})
            for identity in claimed:
                await tx.add_identity(customer_id, identity, verified=True, at=work.now)
                work.event(None, "customer.identity_linked", {"customer_id": customer_id, "identity": str(identity)})
            return Customer(customer_id, role, message.display_name, message.language, work.now, claimed), True
        customer_id = min(found.values())  # several known customers are one person: they merge into the oldest
        for other in sorted(set(found.values()) - {customer_id}):
            await tx.merge_customers(customer_id, other)
            work.event(None, "customer.merged", {"customer_id": customer_id, "merged": other})
        for identity in claimed:
            if identity not in found:
                await tx.add_identity(customer_id, identity, verified=True, at=work.now)
                work.event(None, "customer.identity_linked", {"customer_id": customer_id, "identity": str(identity)})
        await tx.lock_customer(customer_id)
        customer = await tx.get_customer(customer_id, identities=False)
        if customer is None or customer.merged_into is not None:
            # Another node merged this customer away between our lookup and our lock: start again.
            raise Conflict(f"customer {customer_id} was merged while this message was being stored")
        changes: dict[str, Any] = {}
        if message.trusted and message.context.role and customer.role != message.context.role:
            changes["role"] = message.context.role
        if message.display_name and not customer.display_name:
            changes["display_name"] = message.display_name
        if message.language and not customer.language:
            changes["language"] = message.language
        if changes:
            await tx.update_customer(customer_id, **changes)
            customer = dataclasses.replace(customer, **changes)
        return customer, False

    async def _thread(
        self, tx: Tx, message: InboundMessage, customer: Customer, is_new: bool, work: _Work
    ) -> tuple[Case, IngestOutcome]:
        # A customer created just now has no cases to continue.
        previous, how = (None, "new customer") if is_new else await self._find_thread(tx, message, customer)
        now = work.now
        if previous is not None and previous.is_open:
            # An out-of-office answer or a bounce is not the customer writing: it neither counts as their reply
            # nor takes the case out of waiting for them.
            changes: dict[str, Any] = {"updated_at": now} if message.auto_generated else \
                {"updated_at": now, "last_inbound_at": now}
            if previous.status == CaseStatus.WAITING_CUSTOMER and not message.auto_generated:
                changes["status"] = CaseStatus.ASSIGNED
                work.event(previous.id, "case.status_changed",
                    {"from": previous.status.value, "to": CaseStatus.ASSIGNED.value, "reason": "customer replied"},
                )
            await tx.update_case(previous.id, **changes)
            # `previous` was read in this unit and is nobody else's: update it in place (cheaper than replace()).
            for name, value in changes.items():
                setattr(previous, name, value)
            return previous, IngestOutcome.APPENDED
        if previous is not None and not previous.is_open and not message.auto_generated \
                and await self._survey_answer(tx, message, previous, customer, work):
            return previous, IngestOutcome.APPENDED  # a satisfaction score: recorded, the case stays resolved
        if previous is not None and not previous.is_open and message.auto_generated and how != "latest_case":
            # A machine's answer to our own mail (an out-of-office reply to the survey, a bounce of the closing
            # reply): kept on that case for the agent to see, without reopening it or opening another.
            return previous, IngestOutcome.APPENDED
        window = self.config.threading.reopen_window
        if (
            previous is not None
            and previous.status == CaseStatus.RESOLVED
            and previous.resolved_at is not None
            and now - previous.resolved_at <= window
        ):
            case = dataclasses.replace(previous, status=CaseStatus.QUEUED, resolved_at=None, updated_at=now,
                                       last_inbound_at=now)
            work.event(case.id, "case.reopened", {"by": how, "resolved_at": previous.resolved_at.isoformat()})
            case = await self._route(tx, message, case, customer, work)
            return case, IngestOutcome.REOPENED
        number = await tx.next_case_number()
        case = Case(
            id=0,
            ref=f"{self.config.instance.case_ref_prefix}-{number}",
            customer_id=customer.id,
            status=CaseStatus.NEW,
            channel=message.channel,
            account=message.account,
            subject=message.subject,
            language=message.language or customer.language,
            line=None,
            team=None,
            tier=None,
            priority=3,
            created_at=now,
            updated_at=now,
            last_inbound_at=now,
            related_case_id=previous.id if previous is not None else None,
            order_id=message.context.order_id,
        )
        case.id = await tx.insert_case(case)
        data: dict[str, Any] = {"ref": case.ref, "channel": case.channel, "customer_id": customer.id}
        if previous is not None:
            data["related_case"] = previous.ref
        work.event(case.id, "case.created", data)
        case = await self._route(tx, message, case, customer, work)
        return case, IngestOutcome.CREATED

    async def _survey_answer(self, tx: Tx, message: InboundMessage, case: Case, customer: Customer,
                             work: _Work) -> bool:
        """Record a satisfaction score answering the case's open survey; a low one opens a follow-up case."""
        settings = self.config.csat
        survey = await csat.open_survey(tx, case, work.now, settings.answer_window)
        found = csat.score_of(message.text) if survey is not None else None
        if found is None:
            return False
        score, comment = found
        followup = None
        if score < settings.low_score and settings.followup_team in self.config.teams:
            followup = await self._open_followup(tx, case, customer, score, comment, work)
        await tx.answer_survey(survey["id"], score, comment, work.now, followup)
        data: dict[str, Any] = {"score": score, "survey": survey["id"], "comment": comment}
        if followup is not None:
            data["followup_case_id"] = followup
        work.event(case.id, "csat.answered", data)
        return True

    async def _open_followup(self, tx: Tx, case: Case, customer: Customer, score: int, comment: str | None,
                             work: _Work) -> int:
        """A case for the quality team about a low score, linked to the rated case; the customer is not told."""
        settings = self.config.csat
        team = self.config.teams.get(settings.followup_team or "")
        route = Route(line=case.line, team=settings.followup_team, tier=(team.tier if team and team.tier else None)
                      or self.config.tiers[0], priority=settings.followup_priority,
                      sla_policy=case.route.get("sla_policy"), escalation=case.route.get("escalation"),
                      rule="csat.low_score", reasons=[f"the customer rated {case.ref} {score}/5"])
        number = await tx.next_case_number()
        followup = Case(
            id=0, ref=f"{self.config.instance.case_ref_prefix}-{number}", customer_id=customer.id,
            status=CaseStatus.QUEUED, channel=case.channel, account=case.account,
            subject=f"Low satisfaction ({score}/5) with {case.ref}" + (f": {case.subject}" if case.subject else ""),
            language=case.language, line=route.line, team=route.team, tier=route.tier, priority=route.priority,
            created_at=work.now, updated_at=work.now, related_case_id=case.id, order_id=case.order_id,
            route={**route.as_dict(), "labels": {}},
        )
        followup.id = await tx.insert_case(followup)
        await tx.insert_message(
            case_id=followup.id, direction=Direction.NOTE, channel=case.channel, account=case.account,
            external_id=None, conversation=None, sender=SYSTEM,
            text=f"The customer rated {case.ref} {score}/5." + (f" Their comment: {comment}" if comment else ""),
            meta={"kind": "csat_followup", "rated_case": case.ref, "score": score}, at=work.now)
        await tx.link_cases(case.id, followup.id, "followup", SYSTEM, work.now)
        work.event(followup.id, "case.created", {"ref": followup.ref, "channel": followup.channel,
                                                 "customer_id": customer.id, "related_case": case.ref,
                                                 "reason": "low satisfaction score"})
        work.event(followup.id, "case.routed", {"route": route.as_dict(), "labels": {}})
        work.event(case.id, "case.linked", {"case": followup.ref, "relation": "followup"})
        return followup.id

    async def _find_thread(self, tx: Tx, message: InboundMessage, customer: Customer) -> tuple[Case | None, str]:
        """The case this message continues, and which hint said so; hints only ever match the same customer."""
        hints = message.thread
        case = await _own_case(tx, hints.case_ref, customer)
        if case is not None:
            return case, "case_ref"
        if hints.in_reply_to:
            case = await tx.case_for_external_ids(message.channel, hints.in_reply_to)
            if case is not None and case.customer_id == customer.id:
                return case, "in_reply_to"
        case = await _own_case(tx, hints.quoted_ref, customer)
        if case is not None:
            return case, "quoted_ref"
        if hints.conversation:
            case = await tx.case_for_conversation(customer.id, message.channel, hints.conversation)
            if case is not None:
                return case, "conversation"
        policy = self.config.threading.attach_to_open_case
        if hints.new_conversation or policy == "never":
            return None, "new"
        case = await tx.latest_case(customer.id, message.channel if policy == "same_channel" else None)
        return case, "latest_case"

    async def _route(self, tx: Tx, message: InboundMessage, case: Case, customer: Customer, work: _Work) -> Case:
        if not customer.identities:  # fetched only now: routing is the one step that may look at them
            customer.identities = await tx.identities_of(customer.id)
        hooks = self.sb.hooks
        labels = hooks.classify(message=message, case=case, customer=customer, switchboard=self.sb)
        route: Route | None = hooks.select_route(
            message=message, case=case, customer=customer, labels=labels, switchboard=self.sb
        )
        if route is None:  # the built-in default always answers; reaching here means it was unregistered
            route = Route(reasons=["no routing plugin answered; default queue"])
        changes = {
            "status": CaseStatus.QUEUED,
            "line": route.line,
            "team": route.team,
            "tier": route.tier,
            "priority": route.priority,
            "language": labels.get("language") or case.language,
            "route": {**route.as_dict(), "labels": labels},
            "updated_at": work.now,
            "last_inbound_at": work.now,
            "resolved_at": None,
        }
        await tx.update_case(case.id, **changes)
        work.event(case.id, "case.routed", {"route": route.as_dict(), "labels": labels})
        return dataclasses.replace(case, **changes)

    async def _store_message(
        self, tx: Tx, message: InboundMessage, case: Case, outcome: IngestOutcome, work: _Work
    ) -> int:
        meta: dict[str, Any] = {"received_at": message.received_at.isoformat() if message.received_at else None}
        if message.display_name:
            meta["display_name"] = message.display_name
        if message.subject:
            meta["subject"] = message.subject
        if message.raw is not None:
            meta["raw_ref"] = f"raw_payloads/{await tx.insert_raw_payload(message.channel, message.raw, work.now)}"
        elif message.raw_ref:
            meta["raw_ref"] = message.raw_ref
        if message.thread.in_reply_to:
            meta["references"] = message.thread.in_reply_to
        if message.language:
            meta["language"] = message.language
        ctx = message.context
        context = (
            ctx.model_dump(exclude_defaults=True) if ctx.role is not None or ctx.order_id is not None or ctx.attributes
            else None  # all defaults (the common case): nothing to dump
        )
        if context:
            meta["context"] = context
        if message.auto_generated:
            meta["auto_generated"] = True
        if message.details:
            meta["details"] = message.details
        message_id = await tx.insert_message(
            case_id=case.id,
            direction=Direction.INBOUND,
            channel=message.channel,
            account=message.account,
            external_id=message.external_id,
            conversation=message.thread.conversation,
            sender=str(message.sender),
            text=message.text,
            meta=meta,
            at=work.now,
        )
        for attachment in message.attachments:
            content = attachment.content
            await tx.insert_attachment(
                message_id,
                filename=attachment.filename,
                content_type=attachment.content_type,
                size=attachment.size if attachment.size is not None else (len(content) if content else None),
                url=attachment.url,
                inline=attachment.inline,
                content=content,
            )
        data = {"message_id": message_id, "channel": message.channel, "external_id": message.external_id,
                "sender": str(message.sender), "outcome": outcome.value}
        if message.auto_generated:
            data["auto_generated"] = True  # not the customer writing: no response is owed (decision 41)
        work.event(case.id, "message.received", data)
        return message_id

    async def _acknowledge(
        self, tx: Tx, message: InboundMessage, case: Case, customer: Customer, outcome: IngestOutcome, work: _Work
    ) -> None:
        acks = self.config.acknowledgements
        if not acks.enabled or message.auto_generated:
            return
        channel = self.sb.channels.get(message.channel)
        if channel is None or not channel.can_send(message.account):
            return
        kind = "new_case" if outcome is IngestOutcome.CREATED else "reopened"
        templates = acks.templates[kind]
        language = next(
            (lang for lang in (message.language, case.language, customer.language) if lang in templates),
            self.config.instance.default_language,
        )
        text = templates[language].format(
            ref=case.ref, name=customer.display_name or "", instance=self.config.instance.name
        )
        message_id = await tx.insert_message(
            case_id=case.id,
            direction=Direction.OUTBOUND,
            channel=message.channel,
            account=message.account,
            external_id=None,
            conversation=message.thread.conversation,
            sender=SYSTEM,
            text=text,
            meta={"kind": "ack", "language": language},
            at=work.now,
        )
        outbound_id = await tx.enqueue_outbound(
            case_id=case.id,
            message_id=message_id,
            channel=message.channel,
            account=message.account,
            recipient=message.sender,
            kind="ack",
            text=text,
            subject=tagged_subject(message.subject, case.ref),
            meta={"in_reply_to": message.external_id, "references": message.thread.in_reply_to,
                  "conversation": message.thread.conversation, "case_ref": case.ref, "language": language},
            at=work.now,
        )
        work.outbound_ids.append(outbound_id)
        work.event(case.id, "outbound.queued",
            {"outbound_id": outbound_id, "kind": "ack", "channel": message.channel, "recipient": str(message.sender)},
        )


async def _own_case(tx: Tx, ref: str | None, customer: Customer) -> Case | None:
    """The case a quoted reference names, if it is this customer's: nobody writes into a stranger's case."""
    if not ref:
        return None
    case = await tx.case_by_ref(ref.strip().upper())
    if case is not None and case.merged_into is not None:  # merged: the conversation goes on in the other case
        case = await tx.case_by_id(case.merged_into)
    return case if case is not None and case.customer_id == customer.id else None


def _normalised(identity: Identity, region: str | None) -> Identity:
    """`identity.normalised(region)`, reusing `identity` when it is already in normal form."""
    value = normalise_identity(identity.kind, identity.value, default_region=region)
    return identity if value == identity.value and type(identity) is Identity else Identity(kind=identity.kind, value=value)


__all__ = ["Dispatcher", "InvalidInbound", "Identity"]
