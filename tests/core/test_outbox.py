"""The outbox delivers acknowledgements as signed webhooks to a real receiver, retries, and records failures."""
from __future__ import annotations

import json
from datetime import timedelta

from plugins.api.transport import DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from router.core.model import OutboundStatus
from tests.conftest import WEBHOOK_SECRET, make_config, webhook_integration

EMAIL = {"kind": "email", "value": "anna@example.com"}


def _config(url: str, **outbox):
    return make_config(integrations=[webhook_integration(url)], outbox={"backoff_base": "10s", **outbox})


async def _outbound(h, case_id):
    return await h.read(lambda tx: tx.outbound_for_case(case_id))


async def test_acknowledgement_reaches_the_integration_signed(harness_factory, webhook_receiver):
    h = await harness_factory(_config(webhook_receiver.url))
    result = await h.ingest(external_id="backend/m1", sender=EMAIL, text="hello", language="it")
    assert await h.sb.outbox.run_once() == 1
    [request] = webhook_receiver.requests
    headers, body = request["headers"], request["body"]
    assert verify(WEBHOOK_SECRET, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
    assert not verify("wrong-secret", headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
    assert not verify(WEBHOOK_SECRET, headers[TIMESTAMP_HEADER], body + b" ", headers[SIGNATURE_HEADER])
    payload = json.loads(body)
    assert payload["case_ref"] == result.case.ref and result.case.ref in payload["text"]
    assert payload["recipient"] == {"kind": "email", "value": "anna@example.com"}
    assert payload["in_reply_to"] == "m1" and payload["kind"] == "ack" and payload["language"] == "it"
    [outbound] = await _outbound(h, result.case.id)
    assert headers[DELIVERY_HEADER] == str(outbound.id)
    assert outbound.status is OutboundStatus.SENT and outbound.attempts == 1
    events = [e.type for e in await h.read(lambda tx: tx.events_for_case(result.case.id))]
    assert events[-1] == "outbound.sent"


async def test_stale_signature_is_refused_by_the_verifier():
    from plugins.api.transport import sign

    body = b'{"x":1}'
    signature = sign("s", "1000", body)
    assert verify("s", "1000", body, signature, now=1100)
    assert not verify("s", "1000", body, signature, now=1000 + 301)  # replayed too late
    assert not verify("s", "not-a-number", body, signature, now=1000)


async def test_transient_failures_back_off_then_succeed(harness_factory, webhook_receiver):
    h = await harness_factory(_config(webhook_receiver.url))
    webhook_receiver.script = [503, 429]
    result = await h.ingest(external_id="backend/m1", sender=EMAIL, text="hello")
    await h.sb.outbox.run_once()
    [outbound] = await _outbound(h, result.case.id)
    assert outbound.status is OutboundStatus.PENDING and outbound.attempts == 1
    assert "503" in outbound.last_error
    wait = outbound.next_attempt_at - h.clock.now()
    assert timedelta(seconds=8) <= wait <= timedelta(seconds=10)
    assert await h.sb.outbox.run_once() == 0  # not due yet: nothing is sent early
    h.clock.advance(wait)
    await h.sb.outbox.run_once()
    [outbound] = await _outbound(h, result.case.id)
    assert outbound.attempts == 2 and outbound.status is OutboundStatus.PENDING
    second_wait = outbound.next_attempt_at - h.clock.now()
    assert timedelta(seconds=16) <= second_wait <= timedelta(seconds=20)  # exponential
    h.clock.advance(second_wait)
    await h.sb.outbox.run_once()
    [outbound] = await _outbound(h, result.case.id)
    assert outbound.status is OutboundStatus.SENT and outbound.attempts == 3
    assert outbound.provider_id == "ext-3"
    assert len(webhook_receiver.requests) == 3


async def test_rejection_is_a_visible_permanent_failure(harness_factory, webhook_receiver):
    h = await harness_factory(_config(webhook_receiver.url))
    webhook_receiver.script = [422]
    result = await h.ingest(external_id="backend/m1", sender=EMAIL, text="hello")
    await h.sb.outbox.run_once()
    [outbound] = await _outbound(h, result.case.id)
    assert outbound.status is OutboundStatus.FAILED and "422" in outbound.last_error
    events = await h.read(lambda tx: tx.events_for_case(result.case.id))
    assert events[-1].type == "outbound.failed" and "422" in events[-1].data["error"]
    h.clock.advance(timedelta(days=1))
    assert await h.sb.outbox.run_once() == 0


async def test_attempts_stop_at_the_configured_maximum(harness_factory, webhook_receiver):
    h = await harness_factory(_config(webhook_receiver.url, max_attempts=2))
    webhook_receiver.script = [500, 500, 500]
    result = await h.ingest(external_id="backend/m1", sender=EMAIL, text="hello")
    await h.sb.outbox.run_once()
    h.clock.advance(timedelta(minutes=1))
    await h.sb.outbox.run_once()
    [outbound] = await _outbound(h, result.case.id)
    assert outbound.status is OutboundStatus.FAILED and outbound.attempts == 2
    assert len(webhook_receiver.requests) == 2


async def test_unreachable_webhook_is_retried(harness_factory, unused_tcp_port):
    h = await harness_factory(_config(f"http://127.0.0.1:{unused_tcp_port}/hook"))
    result = await h.ingest(external_id="backend/m1", sender=EMAIL, text="hello")
    await h.sb.outbox.run_once()
    [outbound] = await _outbound(h, result.case.id)
    assert outbound.status is OutboundStatus.PENDING and "unreachable" in outbound.last_error


async def test_a_crashed_sender_is_picked_up_after_its_lease(harness_factory, webhook_receiver):
    h = await harness_factory(_config(webhook_receiver.url))
    result = await h.ingest(external_id="backend/m1", sender=EMAIL, text="hello")
    now = h.clock.now()
    # A node claims the message and dies before recording anything.
    await h.sb.store.write(lambda tx: tx.claim_due_outbound(now, now + timedelta(minutes=2), 10))
    assert await h.sb.outbox.run_once() == 0
    h.clock.advance(timedelta(minutes=3))
    assert await h.sb.outbox.run_once() == 1
    [outbound] = await _outbound(h, result.case.id)
    assert outbound.status is OutboundStatus.SENT and len(webhook_receiver.requests) == 1


async def test_no_acknowledgement_is_queued_where_nothing_can_deliver_it(harness_factory):
    h = await harness_factory(make_config(integrations=[
        {"name": "backend", "token": {"$env": "SB_TEST_TOKEN"}, "scopes": ["ingest"]}]))
    result = await h.ingest(external_id="backend/m1", sender=EMAIL, text="hello")
    assert result.outbound_ids == [] and await _outbound(h, result.case.id) == []


async def test_stopping_a_worker_survives_a_swallowed_cancellation():
    """On Python 3.11 asyncio.wait_for can swallow a cancellation (gh-86296); a worker looping around it must
    still stop when the application shuts down, instead of holding the shutdown for ever."""
    import asyncio

    from router.core.tasks import cancel_and_wait

    swallowed = 0

    async def worker():
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed == 0:  # what the wait_for race does: the cancellation is lost once
                    swallowed += 1
                    continue
                raise

    task = asyncio.create_task(worker())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(task), timeout=5)
    assert task.cancelled() and swallowed == 1


async def test_a_slow_attempt_past_its_lease_does_not_undo_the_attempt_that_took_over(harness_factory,
                                                                                      webhook_receiver):
    import asyncio

    h = await harness_factory(_config(webhook_receiver.url, lease="2m"))
    result = await h.ingest(external_id="backend/m1", sender=EMAIL, text="hello")
    released = [asyncio.Event(), asyncio.Event()]
    calls = []

    async def held(_body):  # each webhook call waits until the test lets it answer
        calls.append(len(calls))
        await released[len(calls) - 1].wait()

    webhook_receiver.before_answer = held
    webhook_receiver.script = [500, 200]  # the first attempt fails (transiently), the second succeeds
    first = asyncio.create_task(h.sb.outbox.run_once())
    while len(calls) < 1:
        await asyncio.sleep(0.01)
    h.clock.advance(timedelta(minutes=3))  # the lease ran out: the row may be claimed again ("another node")
    second = asyncio.create_task(h.sb.outbox.run_once())
    while len(calls) < 2:
        await asyncio.sleep(0.01)
    released[0].set()
    await first  # the stale attempt ends first: it must not put the row back to pending under the new claim
    released[1].set()
    assert await second == 1
    [outbound] = await _outbound(h, result.case.id)
    assert (outbound.status, outbound.attempts, outbound.last_error) == (OutboundStatus.SENT, 2, None)
    assert await h.sb.outbox.run_once() == 0  # nothing is due: no third delivery
    h.clock.advance(timedelta(hours=1))
    assert await h.sb.outbox.run_once() == 0 and len(webhook_receiver.requests) == 2
    events = [e.type for e in await h.read(lambda tx: tx.events_for_case(result.case.id))]
    assert events.count("outbound.sent") == 1 and "outbound.retry" not in events


async def test_the_integrations_id_is_kept_after_a_long_answer(harness_factory, webhook_receiver):
    webhook_receiver.answer = {"note": "x" * 5000, "id": "prov-42"}  # a long JSON answer, its id at the end
    h = await harness_factory(_config(webhook_receiver.url))
    result = await h.ingest(external_id="backend/m1", sender=EMAIL, text="hello")
    assert await h.sb.outbox.run_once() == 1
    [outbound] = await _outbound(h, result.case.id)
    assert outbound.status is OutboundStatus.SENT and outbound.provider_id == "prov-42"
