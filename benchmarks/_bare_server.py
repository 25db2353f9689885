"""Baseline server for benchmarks/ingest.py: one aiohttp process whose handler only json.loads the body."""
from __future__ import annotations

import argparse
import json

from aiohttp import web


async def post_message(request: web.Request) -> web.Response:
    json.loads(await request.read())
    return web.Response(status=200)


async def healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_post("/api/v1/messages", post_message)
    app.router.add_get("/healthz", healthz)
    # Served like `switchboard run` serves: web.run_app on the default asyncio event loop, no access log.
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
