"""The reliability promise, end to end: once Switchboard has answered 2xx to a message, that message is stored,
whatever happens to the process afterwards; and resending anything is always safe."""
from __future__ import annotations

import asyncio
import collections
import time

import pytest

from tests.e2e.servers import (
    PG_DSN_ENV,
    SQLITE_FILE,
    Load,
    ServerProcess,
    client_session,
    message,
    stored_in_postgres,
    stored_in_sqlite,
    summarise_errors,
    write_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

N = 3000  # distinct messages
SENDERS = 300  # so most messages are follow-ups appended to a sender's open case, and some open new ones
CONCURRENCY = 32
KILL_AFTER_ACKS = 400  # "a few hundred" answered messages before the crash


def corpus() -> list[dict]:
    """N distinct messages; each sender writes several times, none with thread hints (so they thread together)."""
    return [
        message(f"crash-{i:05d}", f"customer{i % SENDERS:04d}@example.com", f"message {i}: where is my order?")
        for i in range(N)
    ]


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_acknowledged_messages_survive_sigkill_and_resending_is_safe(backend, tmp_path, request):
    """An integration that got a 2xx for a message never has to worry about it again: after the router is killed
    mid-load (SIGKILL, no clean shutdown) and restarted, every acknowledged message is in the case it was told about,
    and resending everything (what a client does after a crash) stores nothing twice and loses nothing."""
    started = time.monotonic()
    env: dict[str, str] = {}
    dsn = None
    if backend == "postgres":
        dsn = request.getfixturevalue("pg_database")
        env[PG_DSN_ENV] = dsn
    config_dir = write_config(tmp_path / "config", backend=backend)
    data_dir = tmp_path / "data"
    server = ServerProcess(config_dir, data_dir, tmp_path / "logs", env=env)
    request.addfinalizer(server.ensure_stopped)
    payloads = corpus()
    ids = [p["external_id"] for p in payloads]

    # -- first run: load, and SIGKILL once a few hundred messages have been acknowledged ----------------------------
    server.start()
    health = await server.wait_healthy()
    assert health["store"] == backend
    async with client_session(limit=CONCURRENCY) as session:
        load = Load(session, server.url, concurrency=CONCURRENCY, ack_threshold=KILL_AFTER_ACKS)
        running = asyncio.create_task(load.run(payloads))
        try:
            await asyncio.wait_for(load.acked_event.wait(), timeout=30)
        except asyncio.TimeoutError:
            pytest.fail(f"only {load.acked} acknowledgements in 30 s: {summarise_errors(load.answers.values())}\n"
                        + server.describe())
        acked_at_kill = load.acked
        server.kill()
        load.stop.set()
        first = await running
    assert server.proc is not None and server.proc.returncode == -9, "the server did not die of SIGKILL"

    acked = {eid: a for eid, a in first.items() if a.acknowledged}
    failed = {eid: a for eid, a in first.items() if a.error is not None}
    refused = {eid: a for eid, a in first.items() if not a.acknowledged and a.error is None}
    # The crash really happened in the middle of the load: some answered, some cut off, most never sent.
    assert acked_at_kill >= KILL_AFTER_ACKS and len(acked) >= acked_at_kill
    assert failed, "no request was in flight when the server was killed; the kill came too late or too early"
    assert len(first) < N, "every message was sent before the kill; it was not mid-load"
    # Before the crash every answer the server gave was a success: no 5xx under load.
    assert not refused, f"{len(refused)} requests refused before the crash: {summarise_errors(refused.values())}"
    for answer in acked.values():
        assert answer.status == 202 and answer.outcome in ("created", "appended"), answer
        assert answer.case_ref and answer.case_ref.startswith("TK-"), answer

    # -- second run: same data, resend everything --------------------------------------------------------------------
    server.start()
    await server.wait_healthy()
    async with client_session(limit=CONCURRENCY) as session:
        second = await Load(session, server.url, concurrency=CONCURRENCY).run(payloads)
    assert all(second[eid].acknowledged for eid in ids), (
        f"resending after restart was refused: {summarise_errors(second.values())}\n" + server.describe()
    )
    for eid, before in acked.items():
        after = second[eid]
        assert (after.status, after.outcome, after.case_ref) == (200, "duplicate", before.case_ref), (
            f"{eid} was acknowledged in case {before.case_ref} before the crash; resent it answered "
            f"{after.status} {after.body}"
        )
    # Messages whose answer was lost may or may not have been stored; either way the resend is now answered.
    for eid in set(ids) - set(acked):
        assert (second[eid].status, second[eid].outcome) in {
            (202, "created"), (202, "appended"), (200, "duplicate")
        }, second[eid]

    exit_code = server.terminate()
    assert exit_code == 0, server.describe()

    # -- what the database holds ---------------------------------------------------------------------------------------
    stored = (stored_in_sqlite(data_dir / SQLITE_FILE) if backend == "sqlite" else await stored_in_postgres(dsn))
    assert stored.duplicate_rows == []
    counts = stored.counts()
    assert sorted(counts) == sorted(ids), "some messages are missing, or unknown ones were stored"
    assert set(counts.values()) == {1}, {eid: n for eid, n in counts.items() if n != 1}
    assert stored.inbound_total == N
    case_of = stored.case_of()
    lost = {eid: (a.case_ref, case_of.get(eid)) for eid, a in acked.items() if case_of.get(eid) != a.case_ref}
    assert not lost, f"acknowledged messages not in the case they were acknowledged with: {lost}"
    assert all(second[eid].case_ref == case_of[eid] for eid in ids)
    # Nothing was resolved and nothing carried thread hints: each customer's conversation is exactly one case,
    # crash or no crash (a rolled-back first message must not leave a customer or case behind).
    sender_of = {p["external_id"]: p["sender"]["value"] for p in payloads}
    cases_per_sender = collections.defaultdict(set)
    customers_per_sender = collections.defaultdict(set)
    for eid, ref, customer_id in stored.rows:
        cases_per_sender[sender_of[eid]].add(ref)
        customers_per_sender[sender_of[eid]].add(customer_id)
    split = {s: sorted(refs) for s, refs in cases_per_sender.items() if len(refs) != 1}
    assert not split, f"conversations split over several cases: {dict(list(split.items())[:5])}"
    assert all(len(c) == 1 for c in customers_per_sender.values())
    assert len({ref for refs in cases_per_sender.values() for ref in refs}) == SENDERS

    print(f"\n{backend}: {len(acked)} acknowledged before SIGKILL ({acked_at_kill} when it was sent), "
          f"{len(failed)} cut off in flight, {N - len(first)} never sent; "
          f"{sum(1 for e in set(ids) - set(acked) if second[e].outcome == 'duplicate')} stored but unanswered; "
          f"{time.monotonic() - started:.1f}s")
