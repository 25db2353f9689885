"""The aiohttp application factory: core routes, plugin routes, and the Switchboard lifecycle."""
from __future__ import annotations

from aiohttp import web

from router.app import Switchboard
from router.channels import StartupError
from router.web import api, assignment_api, reports_api, workspace_api
from router.web.errors import error_middleware

SWITCHBOARD = web.AppKey("switchboard", Switchboard)


def create_app(switchboard: Switchboard) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware], client_max_size=switchboard.config.server.max_body_bytes
    )
    app[SWITCHBOARD] = switchboard
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/metrics", api.metrics)
    app.router.add_get("/api/v1/cases", api.list_cases)
    app.router.add_get("/api/v1/quarantine", api.list_quarantine)
    app.router.add_get("/api/v1/quarantine/{id}", api.get_quarantined)
    app.router.add_post("/api/v1/quarantine/{id}/reprocess", api.reprocess_quarantined)
    app.router.add_routes(assignment_api.routes())
    app.router.add_routes(workspace_api.routes())
    app.router.add_routes(reports_api.routes())
    taken = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
    for plugin, route in switchboard.hooks.web_routes(switchboard=switchboard):
        if isinstance(route, web.StaticDef):
            key = ("GET", route.prefix.rstrip("/") + "/{filename}")
        else:
            key = (route.method, route.path)
        if key in taken:
            raise StartupError(f"plugin {plugin!r} wants {key[0]} {key[1]}, which is already served")
        taken.add(key)
        app.router.add_routes([route])

    async def lifecycle(_app: web.Application):
        await switchboard.start()
        yield
        await switchboard.stop()

    async def end_streams(_app: web.Application) -> None:
        switchboard.feed.close_all()  # open streams end now rather than hold up the shutdown

    app.on_shutdown.append(end_streams)
    app.cleanup_ctx.append(lifecycle)
    return app
