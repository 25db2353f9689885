"""The generic API channel through HTTP, as an integrator uses it."""
from __future__ import annotations

import asyncio
import base64
import sqlite3

import pytest

from router.core.store.base import migrations
from tests.conftest import READER_TOKEN, auth, make_config, run_sync

MESSAGE = {"external_id": "m1", "sender": {"kind": "email", "value": "Anna@Example.com"}, "text": "My tasker is late",
           "display_name": "Anna", "language": "en", "context": {"role": "poster", "order_id": "T-77"}}


async def post(client, body, token="test-token", **kwargs):
    return await client.post("/api/v1/messages", json=body, headers=auth(token), **kwargs)


async def test_posting_a_message_opens_a_case_readable_through_the_api(http_factory):
    h = await http_factory()
    response = await post(h.client, MESSAGE)
    assert response.status == 202
    body = await response.json()
    assert body["outcome"] == "created" and body["case"]["ref"] == "TK-1001"
    case = await (await h.client.get("/api/v1/cases/tk-1001", headers=auth())).json()
    assert case["customer"]["identities"] == ["email:anna@example.com"]
    assert case["customer"]["role"] == "poster" and case["case"]["order_id"] == "T-77"
    assert case["messages"][0]["text"] == "My tasker is late"
    assert case["messages"][0]["external_id"] == "backend/m1"
    assert [o["kind"] for o in case["outbound"]] == ["ack"]
    assert "case.created" in [e["type"] for e in case["events"]]


async def test_resending_is_safe_and_answers_200_with_the_same_case(http_factory):
    h = await http_factory()
    first = await (await post(h.client, MESSAGE)).json()
    again = await post(h.client, MESSAGE)
    assert again.status == 200
    body = await again.json()
    assert body["outcome"] == "duplicate" and body["case"]["ref"] == first["case"]["ref"]
    assert body["message_id"] == first["message_id"]


async def test_concurrent_duplicate_deliveries_store_one_message(http_factory):
    h = await http_factory()
    responses = await asyncio.gather(*(post(h.client, MESSAGE) for _ in range(20)))
    bodies = [await r.json() for r in responses]
    assert sorted(r.status for r in responses) == [200] * 19 + [202]
    assert len({b["message_id"] for b in bodies}) == 1
    assert await h.read(lambda tx: tx.count_messages("api", "backend/m1")) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**MESSAGE, "sender": {"kind": "email"}}, "sender.value"),
        ({k: v for k, v in MESSAGE.items() if k != "external_id"}, "external_id"),
        ({**MESSAGE, "text": 42}, "text"),
        ({**MESSAGE, "colour": "blue"}, "colour"),
        ({**MESSAGE, "sender": {"kind": "phone", "value": "not a number"}}, "sender.value"),
        ({**MESSAGE, "context": {"role": "astronaut"}}, "context.role"),
        ({**MESSAGE, "attachments": [{"filename": "a.png", "content_base64": "***"}]}, "attachments.0.content_base64"),
        ({**MESSAGE, "context": {"attributes": {"rating": {"score": float("nan")}}}}, "context.attributes"),
        ({**MESSAGE, "context": {"attributes": {"limits": [1, float("inf")]}}}, "context.attributes"),
        ([1, 2, 3], "(body)"),
    ],
)
async def test_malformed_message_is_refused_naming_the_field(http_factory, body, field):
    h = await http_factory()
    response = await post(h.client, body)
    assert response.status == 400
    problem = await response.json()
    assert problem["error"] == "invalid_message"
    assert field in [f["field"] for f in problem["fields"]], problem
    assert await h.read(lambda tx: tx.fetchval("SELECT COUNT(*) FROM messages")) == 0


async def test_a_reply_naming_an_earlier_message_joins_its_case(http_factory):
    h = await http_factory()
    first = await (await post(h.client, {**MESSAGE, "thread": {"new_conversation": True}})).json()
    await post(h.client, {**MESSAGE, "external_id": "m2", "text": "other topic", "thread": {"new_conversation": True}})
    reply = await (await post(h.client, {**MESSAGE, "external_id": "m3", "text": "about the first",
                                         "thread": {"in_reply_to": ["m1"], "new_conversation": True}})).json()
    assert reply["outcome"] == "appended" and reply["case"]["ref"] == first["case"]["ref"]


async def test_machine_generated_messages_get_no_acknowledgement(http_factory):
    h = await http_factory()
    body = await (await post(h.client, {**MESSAGE, "auto_generated": True})).json()
    case = await (await h.client.get(f"/api/v1/cases/{body['case']['ref']}", headers=auth())).json()
    assert case["outbound"] == []


async def test_broken_json_is_refused(http_factory):
    h = await http_factory()
    response = await h.client.post("/api/v1/messages", data=b'{"external_id": "m1",',
                                   headers={**auth(), "Content-Type": "application/json"})
    assert response.status == 400
    assert "not valid JSON" in (await response.json())["detail"]


async def test_attachments_arrive_base64_and_are_listed(http_factory):
    h = await http_factory()
    content = "Квитанция".encode()
    body = {**MESSAGE, "attachments": [{"filename": "квитанция.txt", "content_type": "text/plain",
                                        "content_base64": base64.b64encode(content).decode()}]}
    assert (await post(h.client, body)).status == 202
    case = await (await h.client.get("/api/v1/cases/TK-1001", headers=auth())).json()
    [attachment] = case["messages"][0]["attachments"]
    assert attachment["filename"] == "квитанция.txt" and attachment["size"] == len(content)
    download = await h.client.get(f"/api/v1/cases/TK-1001/attachments/{attachment['id']}", headers=auth())
    assert await download.read() == content
    assert download.headers["Content-Disposition"] == (
        "attachment; filename=\"_________.txt\"; filename*=UTF-8''%D0%BA%D0%B2%D0%B8%D1%82%D0%B0%D0%BD%D1%86%D0%B8%D1%8F.txt")


async def test_an_attachment_named_with_line_breaks_and_quotes_downloads_cleanly(http_factory):
    h = await http_factory()
    body = {**MESSAGE, "attachments": [{"filename": 'bill\r\nSet-Cookie: a=b "final".pdf',
                                        "content_type": "application/pdf\r\nX-Evil: 1",
                                        "content_base64": base64.b64encode(b"%PDF-1.4").decode()}]}
    assert (await post(h.client, body)).status == 202
    case = await (await h.client.get("/api/v1/cases/TK-1001", headers=auth())).json()
    [attachment] = case["messages"][0]["attachments"]
    download = await h.client.get(f"/api/v1/cases/TK-1001/attachments/{attachment['id']}", headers=auth())
    assert download.status == 200 and await download.read() == b"%PDF-1.4"
    assert "Set-Cookie" not in download.headers and "X-Evil" not in download.headers
    assert download.headers["Content-Disposition"] == (
        "attachment; filename=\"billSet-Cookie: a=b _final_.pdf\"; "
        "filename*=UTF-8''billSet-Cookie%3A%20a%3Db%20%22final%22.pdf")
    assert download.headers["X-Original-Content-Type"] == "application/pdfX-Evil: 1"


async def test_unknown_token_is_401_and_missing_scope_is_403(http_factory):
    h = await http_factory()
    assert (await post(h.client, MESSAGE, token="forged")).status == 401
    assert (await h.client.post("/api/v1/messages", json=MESSAGE)).status == 401
    response = await post(h.client, MESSAGE, token=READER_TOKEN)
    assert response.status == 403 and "ingest" in (await response.json())["detail"]
    assert (await h.client.get("/api/v1/cases", headers=auth("forged"))).status == 401
    assert (await h.client.get("/api/v1/cases", headers=auth(READER_TOKEN))).status == 200


async def test_oversized_body_is_413_and_nothing_is_stored(http_factory):
    h = await http_factory(make_config(server={"max_body_bytes": 4096}))
    response = await post(h.client, {**MESSAGE, "text": "x" * 10_000})
    assert response.status == 413
    assert (await response.json())["error"] == "payload_too_large"
    assert (await post(h.client, MESSAGE)).status == 202


async def test_wrong_content_type_is_415(http_factory):
    h = await http_factory()
    response = await h.client.post("/api/v1/messages", data="external_id=m1", headers={
        **auth(), "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status == 415


async def test_case_listing_pages_and_filters(http_factory):
    h = await http_factory()
    for n in range(5):
        await post(h.client, {**MESSAGE, "external_id": f"m{n}", "sender": {"kind": "email", "value": f"c{n}@x.io"}})
    page = await (await h.client.get("/api/v1/cases?limit=2", headers=auth())).json()
    assert [c["ref"] for c in page["cases"]] == ["TK-1005", "TK-1004"]
    rest = await (await h.client.get(page["next"], headers=auth())).json()
    assert [c["ref"] for c in rest["cases"]] == ["TK-1003", "TK-1002"]
    for bad in ("ten", "0", "-1", "501"):
        assert (await h.client.get(f"/api/v1/cases?limit={bad}", headers=auth())).status == 400, bad
    assert (await h.client.get("/api/v1/cases/TK-9999", headers=auth())).status == 404


async def test_store_that_cannot_write_answers_503_and_acknowledges_nothing(http_factory, backend, tmp_path):
    h = await http_factory()
    assert (await post(h.client, MESSAGE)).status == 202
    if backend == "sqlite":
        h.sb.store.busy_timeout_ms = 200
        h.sb.store._writer.execute("PRAGMA busy_timeout = 200")
        blocker = sqlite3.connect(h.sb.store.path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # another process holds the database
        try:
            response = await post(h.client, {**MESSAGE, "external_id": "m2"})
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
    else:
        # A failover lands us on a server that refuses writes; our connections are re-made against it.
        run_sync(_read_only(h.sb.store.dsn, True))
        try:
            response = await post(h.client, {**MESSAGE, "external_id": "m2"})
        finally:
            run_sync(_read_only(h.sb.store.dsn, False))
    assert response.status == 503
    assert response.headers["Retry-After"] == "5"
    assert (await response.json())["error"] == "store_unavailable"
    assert await h.read(lambda tx: tx.find_message("api", "backend/m2")) is None
    # The sender retries, as told, and the message goes through once the store is back.
    retry = await post(h.client, {**MESSAGE, "external_id": "m2"})
    assert retry.status == 202
    assert await h.read(lambda tx: tx.count_messages("api", "backend/m2")) == 1


async def _read_only(dsn: str, on: bool) -> None:
    import asyncpg

    database = dsn.rsplit("/", 1)[1]
    conn = await asyncpg.connect(dsn.rsplit("/", 1)[0] + "/postgres")
    try:
        await conn.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = {"on" if on else "off"}')
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
    finally:
        await conn.close()


async def test_healthz_and_metrics(http_factory):
    h = await http_factory()
    await post(h.client, MESSAGE)
    await post(h.client, MESSAGE)
    await post(h.client, {**MESSAGE, "sender": {"kind": "email"}})
    await post(h.client, {**MESSAGE, "external_id": "m9", "context": {"role": "astronaut"}})
    health = await (await h.client.get("/healthz")).json()
    assert health["status"] == "ok" and health["schema_version"] == len(migrations(h.sb.store.backend))
    metrics = await (await h.client.get("/metrics")).text()
    assert 'switchboard_inbound_messages_total{channel="api",outcome="created"} 1.0' in metrics
    assert 'switchboard_inbound_messages_total{channel="api",outcome="duplicate"} 1.0' in metrics
    assert 'switchboard_inbound_rejected_total{channel="api",reason="invalid"} 2.0' in metrics
    assert 'switchboard_cases{status="queued"} 1.0' in metrics
    assert "switchboard_ingest_seconds_bucket" in metrics
