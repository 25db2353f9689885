"""Several router nodes over one PostgreSQL database behave like one router: a message delivered to both nodes
at once is stored once, and a customer writing to both at once is one customer with one case."""
from __future__ import annotations

import asyncio
import collections
from typing import Any

import asyncpg
import pytest

from router.core.store.base import migrations
from tests.e2e.servers import (
    PG_DSN_ENV,
    Answer,
    ServerProcess,
    client_session,
    message,
    pg_fetch,
    post_message,
    stored_in_postgres,
    write_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(60)]

OPEN = ("new", "queued", "offered", "assigned", "waiting_customer")


async def start_nodes(dsn: str, tmp_path, request, count: int = 2, trusted: bool = False) -> list[ServerProcess]:
    config_dir = write_config(tmp_path / "config", backend="postgres", trusted=trusted)
    nodes = []
    for i in range(1, count + 1):
        node = ServerProcess(config_dir, tmp_path / f"data{i}", tmp_path / "logs", env={PG_DSN_ENV: dsn},
                             name=f"node{i}")
        request.addfinalizer(node.ensure_stopped)
        nodes.append(node.start())
    # Started together on an empty database: they also race to migrate it.
    for health in await asyncio.gather(*(node.wait_healthy() for node in nodes)):
        assert health == {"status": "ok", "store": "postgres", "schema_version": len(migrations("postgres"))}
    return nodes


def stop_nodes(nodes: list[ServerProcess]) -> None:
    for node in nodes:
        assert node.terminate() == 0, node.describe()
        assert "Traceback" not in node.stderr(), node.describe()


async def send_to_all(nodes: list[ServerProcess], payloads: list[dict[str, Any]], parallel: int
                      ) -> dict[str, list[Answer]]:
    """Each payload is POSTed to every node at the same moment; `parallel` payloads are in flight at a time."""
    answers: dict[str, list[Answer]] = {}
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for payload in payloads:
        queue.put_nowait(payload)
    async with client_session(limit=parallel * len(nodes)) as session:
        async def worker() -> None:
            while not queue.empty():
                payload = queue.get_nowait()
                answers[payload["external_id"]] = list(
                    await asyncio.gather(*(post_message(session, node.url, payload) for node in nodes))
                )

        await asyncio.gather(*(worker() for _ in range(parallel)))
    return answers


async def check_customers_and_cases(dsn: str, senders: set[str]) -> None:
    """The invariants a support agent relies on, checked in the shared database."""
    # No identity belongs to two customers (the schema's UNIQUE also says so; this is the question agents ask).
    shared = await pg_fetch(dsn, "SELECT kind, value, COUNT(DISTINCT customer_id) AS n FROM identities "
                                 "GROUP BY kind, value HAVING COUNT(DISTINCT customer_id) > 1")
    assert shared == []
    # One customer per sender, and no half-made customer left behind by a lost race (every customer has an identity).
    customers = await pg_fetch(dsn, "SELECT c.id, c.merged_into, array_agg(i.value) AS identities FROM customers c "
                                    "LEFT JOIN identities i ON i.customer_id = c.id GROUP BY c.id")
    assert len(customers) == len(senders), [dict(c) for c in customers if len(c["identities"]) != 1][:5]
    assert all(c["merged_into"] is None and c["identities"] == [c["identities"][0]] for c in customers)
    assert {c["identities"][0] for c in customers} == senders
    created = await pg_fetch(dsn, "SELECT COUNT(*) AS n FROM events WHERE type = 'customer.created'")
    assert created[0]["n"] == len(senders)
    # Messages without thread hints from one customer continue their open case: never two open cases at once.
    two_open = await pg_fetch(dsn, "SELECT customer_id, array_agg(ref) AS refs FROM cases WHERE status = ANY($1) "
                                   "GROUP BY customer_id HAVING COUNT(*) > 1", list(OPEN))
    assert two_open == [], [dict(r) for r in two_open]
    per_sender = await pg_fetch(dsn, "SELECT m.sender, COUNT(DISTINCT m.case_id) AS cases FROM messages m "
                                     "WHERE m.direction = 'in' GROUP BY m.sender")
    assert {r["sender"]: r["cases"] for r in per_sender} == {f"email:{s}": 1 for s in senders}


async def rollbacks(dsn: str, wait: float = 5) -> int:
    """Transactions rolled back in this database; server backends report them within about a second."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        rows = await pg_fetch(dsn, "SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()")
        if rows[0]["xact_rollback"] > 0 or loop.time() > deadline:
            return rows[0]["xact_rollback"]
        await asyncio.sleep(0.2)


def check_answers(answers: dict[str, list[Answer]], case_of: dict[str, str]) -> None:
    for eid, pair in answers.items():
        assert all(a.acknowledged for a in pair), (eid, pair)
        # Both nodes name the same case, the one the message is stored in.
        assert {a.case_ref for a in pair} == {case_of[eid]}, (eid, pair, case_of[eid])
        # Exactly one node stored it (202); the other saw it was already there (200 duplicate). Two 202s would mean
        # two stored copies; two 200s would mean a duplicate of nothing.
        assert sorted((a.status, a.outcome == "duplicate") for a in pair) == [(200, True), (202, False)], (eid, pair)


async def test_a_message_delivered_to_both_nodes_is_stored_once_in_one_case(pg_database, tmp_path, request):
    """An integration that retries against another node (or a load balancer that duplicates a request) never
    creates a second copy: both nodes answer with the same case ref, one as stored (202) and one as duplicate."""
    nodes = await start_nodes(pg_database, tmp_path, request)
    senders = [f"buyer{i:03d}@example.com" for i in range(60)]
    # Runs of four messages per sender: with 16 messages (32 requests) in flight, each sender has about eight requests
    # racing; the first round opens customers and cases, later rounds are follow-ups to them.
    payloads = [message(f"dup-{i:04d}", senders[(i // 4) % len(senders)], f"question {i}") for i in range(600)]
    answers = await send_to_all(nodes, payloads, parallel=16)
    stop_nodes(nodes)

    stored = await stored_in_postgres(pg_database)
    assert stored.duplicate_rows == []
    assert stored.counts() == {p["external_id"]: 1 for p in payloads}
    assert stored.inbound_total == len(payloads)
    check_answers(answers, stored.case_of())
    await check_customers_and_cases(pg_database, set(senders))


async def test_a_new_customer_writing_to_both_nodes_at_once_gets_one_case(pg_database, tmp_path, request):
    """A brand-new customer whose first few messages arrive at both nodes in the same instant (say, a chat and an
    app message, each also retried to the other node) becomes one customer with one open case, not two."""
    nodes = await start_nodes(pg_database, tmp_path, request)
    async with client_session(limit=64) as session:
        answers: dict[str, list[Answer]] = collections.defaultdict(list)

        async def burst(customer: int) -> None:
            sender = f"newcomer{customer:03d}@example.com"
            # Four different messages at once, each to both nodes: eight requests racing for one new customer.
            sends = [(f"new-{customer:03d}-{k}", node) for k in range(4) for node in nodes]
            results = await asyncio.gather(*(
                post_message(session, node.url, message(eid, sender, f"hello? ({eid})")) for eid, node in sends
            ))
            for (eid, _), answer in zip(sends, results):
                answers[eid].append(answer)

        customers = range(40)
        for start in range(0, len(customers), 4):  # four new customers at a time: 32 requests in flight
            await asyncio.gather(*(burst(c) for c in customers[start:start + 4]))
    stop_nodes(nodes)

    # The race was real: transactions lost it and were rolled back and retried.
    assert await rollbacks(pg_database) > 0
    stored = await stored_in_postgres(pg_database)
    assert stored.duplicate_rows == [] and stored.inbound_total == 4 * len(customers)
    assert set(stored.counts().values()) == {1}
    case_of = stored.case_of()
    check_answers(answers, case_of)
    senders = {f"newcomer{c:03d}@example.com" for c in customers}
    await check_customers_and_cases(pg_database, senders)
    # From the customer's side: all four messages were answered with one case ref, and exactly one of them opened it.
    for c in customers:
        pairs = [answers[f"new-{c:03d}-{k}"] for k in range(4)]
        assert len({a.case_ref for pair in pairs for a in pair}) == 1
        assert sorted(a.outcome for pair in pairs for a in pair if a.status == 202) == [
            "appended", "appended", "appended", "created"
        ]


async def wait_for_lock_waiters(dsn: str, count: int, timeout: float = 10) -> None:
    """Until `count` server transactions in this database are blocked on a row lock."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        rows = await pg_fetch(dsn, "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE datname = current_database() "
                                   "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()")
        if rows[0]["n"] >= count:
            return
        if loop.time() > deadline:
            pytest.fail(f"expected {count} transactions waiting on a lock, saw {rows[0]['n']}")
        await asyncio.sleep(0.02)


def require(condition: object, what: str) -> None:
    """A precondition of the scenario: if it does not hold, the test itself is broken (reported as such)."""
    if not condition:
        pytest.fail(f"scenario precondition failed: {what}")


async def test_a_message_racing_a_merge_on_another_node_joins_the_merged_customer(pg_database, tmp_path, request):
    """When the marketplace backend tells one node that a phone number belongs to an e-mail customer (merging
    the two customers) while the same phone writes to the other node, the phone's message joins the merged
    customer's conversation; it does not open a stray case on the customer that was merged away (a case no later
    message will ever reach, outside the customer's history)."""
    nodes = await start_nodes(pg_database, tmp_path, request, trusted=True)
    email, phone = "anna@example.com", "+393331234567"
    async with client_session() as session:
        # Two customers who are really one person: the e-mail customer is the older one, the phone the newer; the
        # link names the e-mail as sender, so the phone's customer is the one merged away, whichever rule picks.
        by_email = await post_message(session, nodes[0].url, message("e-1", email, "about my booking"))
        by_phone = await post_message(session, nodes[0].url, {"external_id": "p-1", "sender": {
            "kind": "phone", "value": phone}, "text": "my tasker did not come"})
        require((by_email.outcome, by_phone.outcome) == ("created", "created"), f"{by_email} {by_phone}")
        owners = {r["kind"]: r["customer_id"] for r in await pg_fetch(
            pg_database, "SELECT kind, customer_id FROM identities WHERE value = ANY($1)", [email, phone])}
        require(owners["email"] < owners["phone"], f"the e-mail customer is not the older one: {owners}")

        # Share-lock the e-mail customer's row: the merge on node 1 gets through merging the phone customer away
        # but waits to lock the surviving customer, before it commits. A busy row or a slow disk does the same,
        # only less predictably (without this hold the race still shows, in a few percent of attempts).
        holder = await asyncpg.connect(pg_database, timeout=10)
        try:
            hold = holder.transaction()
            await hold.start()
            await holder.execute("SELECT id FROM customers WHERE id = $1 FOR SHARE", owners["email"])
            link = message("e-2", email, "this phone is mine too", linked_identities=[{"kind": "phone", "value": phone}])
            merging = asyncio.create_task(post_message(session, nodes[0].url, link))
            await wait_for_lock_waiters(pg_database, 1)
            # Meanwhile the phone writes again, to node 2.
            follow_up = asyncio.create_task(post_message(session, nodes[1].url, {
                "external_id": "p-2", "sender": {"kind": "phone", "value": phone}, "text": "hello?"}))
            await wait_for_lock_waiters(pg_database, 2)
            await hold.rollback()
        finally:
            await holder.close()
        merged, answer = await merging, await follow_up
    stop_nodes(nodes)

    require(merged.status == 202 and merged.outcome == "appended", f"the linking message answered {merged}")
    require(answer.acknowledged, f"the phone's follow-up answered {answer}")
    after = await pg_fetch(pg_database, "SELECT customer_id FROM identities WHERE value = ANY($1)", [email, phone])
    require(len({r["customer_id"] for r in after}) == 1, "the link did not merge the two customers")
    tombstone_cases = await pg_fetch(pg_database, "SELECT c.ref FROM cases c JOIN customers u ON u.id = c.customer_id "
                                                  "WHERE u.merged_into IS NOT NULL")
    assert answer.outcome == "appended" and answer.case_ref in (by_phone.case_ref, by_email.case_ref), (
        f"the phone's message answered {answer.outcome} {answer.case_ref}; cases on merged-away customers: "
        f"{[r['ref'] for r in tombstone_cases]}")
    assert tombstone_cases == []
