"""Every hook Switchboard calls, each with its contract.

Implementations take only the arguments they need, by name. ``None`` always means "no opinion".

Async: the hooks that say "May be async" (startup, shutdown, inbound_received, deliver, case_event) may be
``async def`` or return an awaitable, which Switchboard awaits (like Datasette's ``await_me_maybe``). The others
are called synchronously and must answer directly: configuration and registration happen before the event loop
work starts, and classification, routing and agent choice run inside a durable write.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from router import hookspec

if TYPE_CHECKING:  # pragma: no cover - typing only
    from aiohttp import web

    from router.app import Switchboard
    from router.channels import ChannelRegistry, ScheduledJob
    from router.config import Config
    from router.core.model import Case, Customer, DeliveryResult, Event, InboundMessage, Outbound, Route


# ---------------------------------------------------------------------------------------------------------------
# Start-up and configuration
# ---------------------------------------------------------------------------------------------------------------


@hookspec
def switchboard_configure(config: "Config") -> None:
    """Validate this plugin's part of the configuration, once, before anything starts.

    Called by ``switchboard check`` and at start-up. Read your section with ``config.plugins.get(<name>)``.
    Raise :class:`router.config.ConfigError` with problems written as ``<file>: <key.path>: <what to fix>``
    to stop start-up. The return value is ignored.
    """


@hookspec
def switchboard_register_channels(registry: "ChannelRegistry", config: "Config") -> None:
    """Declare the channels this plugin provides with ``registry.add(Channel(...))``.

    Called once at start-up. Adding a name that is already taken stops start-up with an error naming both
    plugins. A channel that is registered can receive; it can send when a plugin implements
    :func:`switchboard_deliver` for it.
    """


@hookspec
def switchboard_web_routes(switchboard: "Switchboard") -> "list[web.AbstractRouteDef] | None":
    """Return the HTTP routes this plugin serves (webhooks, widget files, callbacks).

    Called once while the web application is built. Return a list of aiohttp route definitions
    (``web.post(path, handler)``, ...). Paths should start with ``/channels/<channel>/`` or ``/api/``;
    a path already taken stops start-up. Handlers reach the core only through ``switchboard``.
    """


@hookspec
def switchboard_scheduled_jobs(switchboard: "Switchboard") -> "list[ScheduledJob] | None":
    """Return the periodic jobs this plugin needs (mailbox polls, token refreshes, status sweeps).

    Called once at start-up; each :class:`router.channels.ScheduledJob` is added to the application's single
    APScheduler. A job's function may be a coroutine function. Job ids must be unique.
    """


@hookspec
def switchboard_startup(switchboard: "Switchboard") -> Any:
    """The store is open and routes are mounted: open connections, start listeners. May be async.

    An exception stops start-up.
    """


@hookspec
def switchboard_shutdown(switchboard: "Switchboard") -> Any:
    """The application is stopping: close what ``switchboard_startup`` opened. May be async.

    Called in the reverse of the order ``switchboard_startup`` ran; an exception is logged and the others still
    run.
    """


# ---------------------------------------------------------------------------------------------------------------
# Inbound
# ---------------------------------------------------------------------------------------------------------------


@hookspec
def switchboard_inbound_received(message: "InboundMessage", switchboard: "Switchboard") -> "InboundMessage | None":
    """Inspect or enrich a message before it is stored (e.g. fill ``language``, link identities).

    Called for every message before the write; a redelivery of a stored message is only recognised inside the
    write, so this hook may see it again (keep it free of side effects that must happen once). Return a changed copy
    (``message.model_copy(update=...)``) or ``None`` to leave it. Implementations run in turn, each seeing the
    previous one's result. May be async. Raising quarantines nothing: the ingest fails and the sender is not
    acknowledged, so it will redeliver; keep these hooks fast and total.
    """


@hookspec(firstresult=True)
def switchboard_reparse(item: "dict[str, Any]", switchboard: "Switchboard") -> "InboundMessage | None":
    """Turn a quarantined message back into an :class:`InboundMessage`, for an operator's reprocess request.

    ``item`` has ``channel``, ``account``, ``source_key``, ``reason``, ``meta`` (what the plugin stored with it)
    and ``raw`` (the bytes as received). Return ``None`` when ``item["channel"]`` is not yours; raise
    ``ValueError`` (or :class:`router.core.dispatcher.InvalidInbound`) with the reason when it still cannot be
    taken: it stays quarantined with that reason. May be async; the first non-``None`` answer wins.
    """


# ---------------------------------------------------------------------------------------------------------------
# Routing
# ---------------------------------------------------------------------------------------------------------------


@hookspec
def switchboard_classify(
    message: "InboundMessage", case: "Case", customer: "Customer", switchboard: "Switchboard"
) -> "dict[str, Any] | None":
    """Label a message that opens or reopens a case: ``{"topic": ..., "language": ..., "urgency": ...}``.

    Every implementation is called; their dicts are merged, plugins registered later (third-party ones) winning
    on the same key over the built-in classifier (language, topics, urgency, line), and the result is passed to
    :func:`switchboard_select_route`. Runs inside the write, so it must be synchronous
    and fast (no I/O); do slow enrichment in :func:`switchboard_inbound_received`.
    """


@hookspec(firstresult=True)
def switchboard_select_route(
    message: "InboundMessage", case: "Case", customer: "Customer", labels: "dict[str, Any]", switchboard: "Switchboard"
) -> "Route | None":
    """Decide where a new or reopened case goes: return a :class:`router.core.model.Route`.

    The first non-``None`` answer wins; the built-in rules engine (the operator's ``routing`` config, ending in
    its default route) answers last. Runs inside the write:
    synchronous, no I/O. Record why in ``Route.reasons``: operators read it in the case's ``case.routed`` event.
    """


# ---------------------------------------------------------------------------------------------------------------
# Assignment
# ---------------------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def switchboard_choose_agent(case: "Case", route: "Route", candidates: "list[Any]") -> Any:
    """Pick one agent among the eligible ``candidates`` for ``case``; return it, or ``None`` for no opinion.

    The first non-``None`` answer wins; the built-in fair strategy (least loaded, then longest idle) answers
    last. Returning an agent not in ``candidates`` is an error.
    """


# ---------------------------------------------------------------------------------------------------------------
# Outbound
# ---------------------------------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def switchboard_deliver(outbound: "Outbound", switchboard: "Switchboard") -> "DeliveryResult | None":
    """Send one outbound message on its channel; return a :class:`router.core.model.DeliveryResult`.

    Return ``None`` when ``outbound.channel`` is not yours. The first non-``None`` answer wins; an ``async def``
    implementation is awaited before its answer counts, so it may return ``None`` too. May be async. Return ``DeliveryResult.retry(reason)`` for transient failures (the outbox backs off and tries
    again) and ``DeliveryResult.permanent(reason)`` when retrying cannot help; an exception counts as
    transient. Delivery is at-least-once: send ``outbound.id`` to the provider as an idempotency key where
    it takes one.
    """


# ---------------------------------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------------------------------


@hookspec
def switchboard_case_event(event: "Event", switchboard: "Switchboard") -> Any:
    """Observe something that happened to a case, after it is durably recorded.

    Called for every event (``case.created``, ``message.received``, ``case.routed``, ``outbound.sent``, ...)
    in the order they happened within one write. May be async. An exception is logged and does not undo
    anything: the event is already in the log.
    """
