"""Every error an HTTP client sees is JSON: a machine-readable code and a sentence a person can act on."""
from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from router.core.assigner import AssignmentError
from router.core.dispatcher import InvalidInbound
from router.core.model import InvalidTransition
from router.core.store.base import StoreUnavailable

log = logging.getLogger(__name__)


def json_error(status: int, code: str, detail: str, **extra: Any) -> web.Response:
    body = {"error": code, "detail": detail, **extra}
    headers = {"Retry-After": "5"} if status == 503 else None
    return web.json_response(body, status=status, headers=headers)


class HTTPProblem(web.HTTPException):
    """Raise from a handler to answer with a JSON error."""

    def __init__(self, status: int, code: str, detail: str, **extra: Any):
        self.status_code = status
        super().__init__(
            text=json.dumps({"error": code, "detail": detail, **extra}), content_type="application/json"
        )


_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type"}


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except HTTPProblem:
        raise
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            return json_error(exc.status, _CODES.get(exc.status, "http_error"), exc.text or exc.reason)
        raise
    except AssignmentError as exc:
        return json_error(exc.status, exc.code, exc.detail)
    except InvalidTransition as exc:
        return json_error(409, "conflict", str(exc))
    except InvalidInbound as exc:
        return json_error(400, "invalid_message", str(exc), fields=[{"field": exc.field, "problem": exc.reason}])
    except StoreUnavailable as exc:
        log.warning("store unavailable for %s %s: %s", request.method, request.path, exc)
        return json_error(503, "store_unavailable", "the store is unavailable and nothing was written; try again shortly")
    except Exception:  # noqa: BLE001 - the client gets a clean 500; the log gets the traceback
        log.exception("unhandled error in %s %s", request.method, request.path)
        return json_error(500, "internal_error", "unexpected error; it has been logged")
