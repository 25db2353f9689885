"""The outbox: every outbound message is stored before delivery, then delivered, retried and recorded."""
from __future__ import annotations

import asyncio
import logging
import random
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from router.core.model import DeliveryResult, Event, Outbound, OutboundStatus
from router.core.store.base import StoreUnavailable, Tx
from router.core.tasks import cancel_and_wait

if TYPE_CHECKING:  # pragma: no cover
    from router.app import Switchboard

log = logging.getLogger(__name__)


class Outbox:
    """Delivers due outbox rows through the channel plugins; several nodes may run one each (rows are leased)."""

    def __init__(self, switchboard: "Switchboard"):
        self.sb = switchboard
        self.config = switchboard.config.outbox
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def backoff(self, attempts: int) -> timedelta:
        """Exponential, capped, with jitter so that many failures do not retry in lockstep."""
        base = self.config.backoff_base.total_seconds() * (2 ** min(max(attempts - 1, 0), 40))
        capped = min(base, self.config.backoff_max.total_seconds())
        return timedelta(seconds=capped * random.uniform(0.8, 1.0))

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        poll = self.config.poll_interval.total_seconds()
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=poll)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                while await self.run_once() >= self.config.batch:
                    pass
            except StoreUnavailable as exc:
                log.warning("outbox paused: %s", exc)
            except Exception:  # noqa: BLE001 - the worker must survive to deliver the next message
                log.exception("outbox run failed")

    async def run_once(self) -> int:
        """Deliver what is due now; returns how many rows were taken."""
        now = self.sb.clock.now()
        lease_until = now + self.config.lease
        batch = await self.sb.store.write(lambda tx: tx.claim_due_outbound(now, lease_until, self.config.batch))
        if batch:
            await asyncio.gather(*(self._deliver(outbound, lease_until) for outbound in batch))
        return len(batch)

    async def _deliver(self, outbound: Outbound, claimed_until: datetime) -> None:
        # An attempt must end before its claim does: after the lease another node may claim the row and try.
        budget = max(1.0, (claimed_until - self.sb.clock.now()).total_seconds() - 5)
        try:
            result = await asyncio.wait_for(self.sb.hooks.deliver(outbound=outbound, switchboard=self.sb), budget)
        except asyncio.TimeoutError:
            log.warning("delivering outbound %s on %s took longer than its lease", outbound.id, outbound.channel)
            result = DeliveryResult.retry(f"no answer within {budget:.0f} s (the outbox lease)")
        except Exception as exc:  # noqa: BLE001 - a plugin crash is a transient failure of this attempt
            log.exception("delivering outbound %s on %s raised", outbound.id, outbound.channel)
            result = DeliveryResult.retry(f"{type(exc).__name__}: {exc}")
        if result is None:
            result = DeliveryResult.permanent(f"no plugin delivers on channel {outbound.channel!r}")
        await self.record(outbound, result, claimed_until)

    async def record(self, outbound: Outbound, result: DeliveryResult, claimed_until: datetime) -> None:
        now = self.sb.clock.now()
        attempts = outbound.attempts + 1
        if result.ok:
            status, next_at, event = OutboundStatus.SENT, now, "outbound.sent"
        elif not result.transient or attempts >= self.config.max_attempts:
            status, next_at, event = OutboundStatus.FAILED, now, "outbound.failed"
        else:
            status, next_at, event = OutboundStatus.PENDING, now + self.backoff(attempts), "outbound.retry"
        data = {"outbound_id": outbound.id, "channel": outbound.channel, "kind": outbound.kind, "attempts": attempts}
        if result.error:
            data["error"] = result.error
        if status is OutboundStatus.PENDING:
            data["next_attempt_at"] = next_at.isoformat()
        if result.provider_id:
            data["provider_id"] = result.provider_id

        async def unit(tx):
            if await tx.finish_claimed_outbound(
                    outbound.id, claimed_until=claimed_until, status=status, next_attempt_at=next_at,
                    last_error=result.error, provider_id=result.provider_id, at=now):
                return True, [await tx.append_event(outbound.case_id, event, "outbox", data, now)]
            # The claim no longer holds: a delivery report decided while this attempt was under way (the
            # integration said "delivered" before answering the webhook), or the lease ran out and another
            # claim took the row. Whatever stands now stands; this attempt is only counted.
            await tx.count_outbound_attempt(outbound.id, result.provider_id, now)
            return False, ([await tx.append_event(outbound.case_id, event, "outbox", data, now)] if result.ok else [])

        held, events = await self.sb.store.write(unit)
        self.sb.metrics.outbound.labels(outbound.channel, status.value if held else "superseded").inc()
        await self.sb.after_write(events)

    async def report(self, outbound_id: int, *, delivered: bool, error: str | None = None,
                     recipient_failing: bool = False) -> bool:
        """A channel's delivery report for a message it sent earlier (a bounce, a status callback).

        A failure marks the row failed with `error` for the agent to see; with `recipient_failing` the recipient
        identity is marked as failing too (automatic mail to it stops). Reporting the same thing twice changes
        nothing. Returns whether the row exists.
        """
        now = self.sb.clock.now()

        async def unit(tx):
            return await self.report_in(tx, outbound_id, delivered=delivered, error=error,
                                        recipient_failing=recipient_failing, now=now)

        found, events = await self.sb.store.write(unit)
        await self.sb.after_write(events)
        return found

    @staticmethod
    async def report_in(tx: Tx, outbound_id: int, *, delivered: bool, error: str | None, recipient_failing: bool,
                        now: datetime) -> tuple[bool, list[Event]]:
        """:meth:`report` inside a unit of the caller's (so a stored bounce and its report commit together):
        whether the row exists, and the events written."""
        status = OutboundStatus.DELIVERED if delivered else OutboundStatus.FAILED
        outbound = await tx.get_outbound(outbound_id)
        if outbound is None:
            return False, []
        if outbound.status is status and outbound.last_error == error:
            return True, []
        await tx.finish_outbound(outbound_id, status=status, attempts=outbound.attempts, next_attempt_at=now,
                                 last_error=error, provider_id=outbound.provider_id, at=now)
        data = {"outbound_id": outbound_id, "channel": outbound.channel, "kind": outbound.kind,
                "recipient": str(outbound.recipient)}
        if error:
            data["error"] = error
        events = [(outbound.case_id, "outbound.delivered" if delivered else "outbound.bounced", data)]
        if not delivered and recipient_failing:
            if await tx.mark_identity_failing(outbound.recipient, error or "delivery failed", now):
                events.append((outbound.case_id, "identity.failing",
                               {"identity": str(outbound.recipient), "reason": error or "delivery failed"}))
        return True, await tx.append_events(events, outbound.channel, now)
