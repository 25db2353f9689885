"""Quarantine: messages a channel could not turn into a case are kept with their raw bytes and the reason, visible
to operators and reprocessed on request; nothing a channel received is ever dropped."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from router.core.dispatcher import InvalidInbound

if TYPE_CHECKING:  # pragma: no cover
    from router.app import Switchboard

log = logging.getLogger(__name__)

HELD, REPROCESSED = "held", "reprocessed"


class QuarantineError(Exception):
    """A reprocess request that cannot be carried out; `status` is the HTTP status that says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Quarantine:
    def __init__(self, switchboard: "Switchboard"):
        self.sb = switchboard

    async def hold(self, *, channel: str, account: str, source_key: str, reason: str, raw: bytes,
                   meta: dict[str, Any] | None = None) -> int:
        """Keep `raw` with `reason`; returns the entry's id. Durable when this returns, so the channel may then
        let go of its copy (mark the mail seen, answer the webhook). Holding the same source twice is one entry."""
        now = self.sb.clock.now()
        data = {"source_key": source_key, "reason": reason, "account": account}

        async def unit(tx):
            item_id, new = await tx.quarantine_message(
                channel=channel, account=account, source_key=source_key, reason=reason, raw=raw, meta=meta or {}, at=now
            )
            return item_id, ([await tx.append_event(None, "message.quarantined", channel, {**data, "id": item_id}, now)]
                             if new else [])

        item_id, events = await self.sb.store.write(unit)
        if events:
            log.warning("quarantined %s message %s from %s: %s", channel, source_key, account, reason)
            self.sb.metrics.rejected.labels(channel, "quarantined").inc()
        await self.sb.after_write(events)
        return item_id

    async def reprocess(self, item_id: int) -> dict[str, Any]:
        """Parse the held message again (after a fix, a config change...) and ingest it; it stays held, with the
        new reason, if it still cannot be taken. Returns the entry as it now is, with the case when one was made."""
        item = await self.sb.store.read(lambda tx: tx.get_quarantined(item_id))
        if item is None:
            raise QuarantineError(404, f"no quarantined message {item_id}")
        if item["status"] != HELD:
            raise QuarantineError(409, f"quarantined message {item_id} is already {item['status']} (case id "
                                       f"{item['case_id']}); nothing to do")
        case_ref = None
        try:
            message = await self.sb.hooks.reparse(item=item, switchboard=self.sb)
            if message is None:
                raise InvalidInbound("channel", f"no plugin can reparse {item['channel']!r} messages")
            result = await self.sb.dispatcher.ingest(message)
        except ValueError as exc:  # InvalidInbound among them
            status, reason, case_id = HELD, f"{type(exc).__name__}: {exc}", None
        else:
            status, reason, case_id, case_ref = REPROCESSED, item["reason"], result.case.id, result.case.ref
        now = self.sb.clock.now()
        attempts = item["attempts"] + 1

        async def unit(tx):
            await tx.update_quarantined(item_id, status=status, reason=reason, attempts=attempts, case_id=case_id, at=now)
            return await tx.append_event(case_id, "message.reprocessed", "operator",
                                         {"id": item_id, "status": status, "reason": reason}, now)

        event = await self.sb.store.write(unit)
        await self.sb.after_write([event])
        item = await self.sb.store.read(lambda tx: tx.get_quarantined(item_id))
        item.pop("raw")
        return {**item, "case_ref": case_ref}
