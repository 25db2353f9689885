"""Reading what HTTP clients send: JSON bodies, ids in paths, whole numbers in queries.

Whatever a client sends that cannot be taken is a 400 (or, for an id in a path, a 404) naming what is wrong,
never an exception from deeper down: JSON is read as UTF-8 whatever charset the request claims (RFC 8259),
strings with lone surrogates and nesting deeper than 1,024 levels are refused by orjson, and ids are bounded
to what both stores' integer columns hold.
"""
from __future__ import annotations

import re
from typing import Any

import orjson
from aiohttp import web

from router.web.errors import HTTPProblem

MAX_ID = 2**63 - 1  # the largest id an SQLite INTEGER or a PostgreSQL BIGINT holds
_WHOLE = re.compile(r"-?[0-9]{1,19}")


async def json_object(request: web.Request, *, empty: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON object in the body; an empty body is `empty` when given (else refused)."""
    raw = await request.read()
    if not raw and empty is not None:
        return dict(empty)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise HTTPProblem(400, "bad_request", f"the body must be a JSON object in UTF-8: {exc}") from None
    if not isinstance(body, dict):
        raise HTTPProblem(400, "bad_request", "the body must be a JSON object")
    return body


def path_id(request: web.Request, name: str, what: str) -> int:
    """The whole number in the path's `name`; 404 when it is not one any row could have."""
    text = request.match_info[name]
    if _WHOLE.fullmatch(text) and 0 < int(text) <= MAX_ID:
        return int(text)
    raise HTTPProblem(404, "not_found", f"{what} ids are whole numbers from 1 to {MAX_ID}, not {text[:40]!r}")


def query_int(request: web.Request, name: str, default: int | None, low: int, high: int) -> int | None:
    """The whole number in query parameter `name` (or `default` when absent); 400 unless low <= it <= high."""
    text = request.query.get(name)
    if text is None:
        return default
    value = int(text) if _WHOLE.fullmatch(text) else None
    if value is None or not low <= value <= high:
        raise HTTPProblem(400, "bad_request", f"{name} must be a whole number from {low} to {high}, not {text[:40]!r}",
                          fields=[{"field": name, "problem": f"a whole number from {low} to {high}"}])
    return value
