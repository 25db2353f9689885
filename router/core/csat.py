"""Customer satisfaction: a one-question survey after resolution, its answer, and a follow-up for low scores.

When a case is resolved (event ``case.status_changed`` to ``resolved``) the built-in ``core.csat`` plugin writes
the survey — message, outbox row and ``surveys`` row in one transaction — on the channel the customer last wrote
on, in their language, with the texts of config ``csat`` (per line if set). The customer's answer comes in like
any message; the dispatcher recognises a score (``4``, ``2/5``, ``5 stars, thanks``) on a resolved case with an
open survey, records it without reopening the case, and for a score below ``csat.low_score`` opens a follow-up
case for the quality team, linked to the original. Anything else reopens the case as usual.
"""
from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

from router import hookimpl
from router.core.model import Case, CaseStatus, Direction, Identity, tagged_subject

if TYPE_CHECKING:  # pragma: no cover
    from router.app import Switchboard
    from router.core.store.base import Tx

SCORE = re.compile(r"^\s*([1-5])\s*(?:/\s*5|out of 5|stars?|★+|\*+)?\s*(?:[.!,:;\-–—]+\s*|\s+|$)(.*)$", re.S | re.I)
SYSTEM = "system"


def score_of(text: str) -> tuple[int, str | None] | None:
    """A survey answer's score and comment, or None when the text is not an answer ("1 more question...")."""
    match = SCORE.match(text)
    if match is None:
        return None
    comment = match.group(2).strip() or None
    if comment is not None and comment[:1].isdigit():
        return None  # "3 4 5" or "2 invoices": numbers, not a score
    return int(match.group(1)), comment


async def open_survey(tx: "Tx", case: Case, now: datetime, window) -> dict[str, Any] | None:
    """The survey of a resolved (or since closed) case still waiting for its answer, if any."""
    if case.status not in (CaseStatus.RESOLVED, CaseStatus.CLOSED) or case.resolved_at is None \
            or case.merged_into is not None:
        return None
    survey = await tx.latest_survey(case.id)
    if survey is None or survey["answered_at"] is not None or survey["sent_at"] < case.resolved_at:
        return None
    return survey if now - survey["sent_at"] <= window else None


async def send_survey(switchboard: "Switchboard", case_id: int) -> int | None:
    """Write the survey for a resolved case; its outbound id, or None when none is due (off for the line,
    no channel to answer on, or sent already for this resolution)."""
    sb = switchboard
    config = sb.config.csat
    now = sb.clock.now()

    async def unit(tx):
        case = await tx.case_by_id(case_id)
        if case is None or case.status != CaseStatus.RESOLVED or case.resolved_at is None:
            return None, []
        if case.route.get("rule") == "csat.low_score":
            return None, []  # no survey about a survey follow-up
        language = case.language if case.language in sb.config.instance.languages else None
        text = config.text_for(case.line, language, sb.config.instance.default_language)
        if text is None:
            return None, []
        previous = await tx.latest_survey(case.id)
        if previous is not None and previous["sent_at"] >= case.resolved_at:
            return None, []
        found = await tx.last_inbound(case.id)
        if found is None:
            return None, []
        last, conversation = found
        channel = sb.channels.get(last.channel)
        if channel is None or not channel.can_send(last.account) or not last.sender:
            return None, []
        kind, _, value = last.sender.partition(":")
        recipient = Identity(kind=kind, value=value)
        if await tx.identity_failing(recipient):
            return None, []
        body = text.format(ref=case.ref)
        message_id = await tx.insert_message(
            case_id=case.id, direction=Direction.OUTBOUND, channel=last.channel, account=last.account,
            external_id=None, conversation=conversation, sender=SYSTEM, text=body,
            meta={"kind": "csat", "language": language}, at=now)
        outbound_id = await tx.enqueue_outbound(
            case_id=case.id, message_id=message_id, channel=last.channel, account=last.account, recipient=recipient,
            kind="csat", text=body, subject=tagged_subject(case.subject, case.ref, reply=True),
            meta={"in_reply_to": last.external_id, "references": last.meta.get("references", []),
                  "case_ref": case.ref, "conversation": conversation, "language": language, "auto": True}, at=now)
        survey_id = await tx.insert_survey(case.id, outbound_id, last.channel, language, now)
        events = await tx.append_events([(case.id, "csat.sent", {"survey": survey_id, "outbound_id": outbound_id,
                                                                 "channel": last.channel})], SYSTEM, now)
        return outbound_id, events

    outbound_id, events = await sb.store.write(unit)
    await sb.after_write(events, wake_outbox=bool(outbound_id))
    return outbound_id


@hookimpl
async def switchboard_case_event(event, switchboard):
    if event.type == "case.status_changed" and event.data.get("to") == CaseStatus.RESOLVED.value \
            and event.case_id is not None:
        await send_survey(switchboard, event.case_id)
