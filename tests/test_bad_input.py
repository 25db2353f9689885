"""Whatever odd input a client sends to the HTTP API, the answer is a JSON 4xx naming the problem, never a 500:
JSON that is deep, huge, mis-declared or not UTF-8, ids past what a database holds, times at the calendar's
edges, and values of the wrong type. Every endpoint that takes a body or an id is tried; real server, both stores."""
from __future__ import annotations

import pytest

from tests.conftest import TOKEN, auth
from tests.test_workspace import desk  # noqa: F401 - the workspace fixture: a server, people, a webhook

HUGE = "1" + "0" * 25  # past 2**63: no row can have it

BODY_ENDPOINTS = [
    ("POST", "/api/v1/cases/{ref}/replies"), ("POST", "/api/v1/cases/{ref}/status"),
    ("POST", "/api/v1/cases/{ref}/reopen"), ("POST", "/api/v1/cases/{ref}/transfer"),
    ("POST", "/api/v1/cases/{ref}/escalate"), ("POST", "/api/v1/cases/{ref}/notes"),
    ("POST", "/api/v1/cases/{ref}/links"), ("POST", "/api/v1/cases/{ref}/merge"),
    ("PUT", "/api/v1/agents/anna"), ("PUT", "/api/v1/agents/anna/presence"), ("PUT", "/api/v1/me/presence"),
    ("POST", "/api/v1/offers/1/accept"), ("POST", "/api/v1/offers/1/decline"),
    ("POST", "/api/v1/deliveries/1"), ("POST", "/api/v1/auth/login"),
]

ODD_BODIES = [
    ("not JSON", b"{'text': 'hi'}", "application/json"),
    ("a JSON array", b'["hi"]', "application/json"),
    ("nested 100,000 deep", b"[" * 100_000, "application/json"),
    ("an integer of 5,000 digits", b'{"text": ' + b"9" * 5000 + b"}", "application/json"),
    ("a lone surrogate", b'{"text": "\\ud800", "reason": "\\udfff", "case": "\\ud800"}', "application/json"),
    ("Latin-1 bytes", '{"text": "café"}'.encode("latin-1"), "application/json"),
]

WRONG_TYPES = [{"text": 5, "reason": [], "case": {}, "into": 7, "relation": [], "status": ["resolved"],
                "presence": {}, "priority": 18446744073709551615, "agent": 3, "line": 1, "account": 1,
                "password": None, "attachments": "x", "to": 1, "waiting_customer": "yes"},
               {"relation": {"a": 1}, "case": "TK-1", "status": {}, "presence": [], "reason": "r",
                "priority": 1.5, "into": "", "text": "hi", "attachments": [{"content": 5}]}]


async def _refusal(response, context):
    assert 400 <= response.status < 500, f"{context}: {response.status} {await response.text()}"
    body = await response.json()
    assert body["error"] and body["detail"], context
    return body


@pytest.mark.parametrize("who", ["pia", "integration"])
async def test_odd_bodies_are_refused_with_a_reason_on_every_endpoint(desk, who):  # noqa: F811
    await desk.online("anna")
    ref = await desk.customer_writes()
    headers = auth(TOKEN) if who == "integration" else desk.as_(who)
    for method, path in BODY_ENDPOINTS:
        url = path.format(ref=ref)
        for name, raw, content_type in ODD_BODIES:
            response = await desk.client.request(method, url, data=raw,
                                                 headers={**headers, "Content-Type": content_type})
            await _refusal(response, f"{method} {url} with {name}")
        # JSON is UTF-8 (RFC 8259), whatever charset the request claims: read as such, not a crash
        response = await desk.client.request(method, url, data=b'{"text": "hi"}',
                                             headers={**headers, "Content-Type": "application/json; charset=klingon"})
        assert response.status < 500, f"{method} {url} with charset=klingon: {await response.text()}"
        for body in WRONG_TYPES:
            response = await desk.client.request(method, url, json=body, headers=headers)
            assert response.status < 500, f"{method} {url} with {body}: {await response.text()}"
    case = await desk.case(ref, who="pia")
    assert case["case"]["status"] in ("offered", "queued") and case["messages"][0]["text"]


async def test_ids_past_what_a_database_holds_are_not_found(desk):  # noqa: F811
    ref = await desk.customer_writes()
    for who, method, path in [
            ("integration", "GET", f"/api/v1/quarantine/{HUGE}"), ("pia", "POST", f"/api/v1/quarantine/{HUGE}/reprocess"),
            ("anna", "POST", f"/api/v1/outbound/{HUGE}/retry"), ("anna", "POST", "/api/v1/outbound/0/retry"),
            ("integration", "GET", f"/api/v1/cases/{ref}/attachments/{HUGE}"),
            ("anna", "POST", f"/api/v1/offers/{HUGE}/accept"), ("integration", "POST", f"/api/v1/deliveries/{HUGE}"),
            ("integration", "GET", "/api/v1/quarantine/-1")]:
        headers = auth(TOKEN) if who == "integration" else desk.as_(who)
        response = await desk.client.request(method, path, json={"status": "delivered"}, headers=headers)
        assert response.status == 404, f"{method} {path}: {response.status} {await response.text()}"
    for query in [f"before={HUGE}", "before=0", "before=abc", "limit=1e3", "limit=0", f"limit={HUGE}", "limit=-5"]:
        response = await desk.client.get(f"/api/v1/cases?{query}", headers=auth(TOKEN))
        body = await _refusal(response, query)
        assert body["fields"][0]["field"] == query.split("=")[0]
    assert (await desk.client.get("/api/v1/cases?before=9223372036854775807", headers=auth(TOKEN))).status == 200


async def test_report_periods_at_the_edges_of_the_calendar_are_refused(desk):  # noqa: F811
    for query in ["to=0001-01-01T12:00:00", "from=0001-01-01T00:00:00%2B01:00&to=0001-01-02T00:00:00",
                  "from=9999-12-31T23:00:00-05:00&to=9999-12-31T23:59:00-05:00", "to=not-a-time"]:
        for report in ("metrics", "volume"):
            response = await desk.client.get(f"/api/v1/reports/{report}?{query}", headers=desk.as_("pia"))
            await _refusal(response, f"{report}?{query}")
    fine = await desk.client.get("/api/v1/reports/volume?from=0001-01-03T00:00:00&to=0001-01-04T00:00:00",
                                 headers=desk.as_("pia"))
    assert fine.status == 200 and (await fine.json())["buckets"][0]["created"] == 0
