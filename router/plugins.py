"""The plugin manager: built-ins by name, third parties by entry point, a block list, and a typed wrapper."""
from __future__ import annotations

import importlib
import inspect
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterable

import pluggy

from router import PROJECT, __version__, hookspecs
from router.channels import ChannelRegistry, ScheduledJob, StartupError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "switchboard"
BLOCK_ENV = "SWITCHBOARD_BLOCK_PLUGINS"

# Built-in plugins, registered first so that third-party plugins can override them.
BUILTIN_PLUGINS: dict[str, str] = {
    "core.routing": "router.core.routing",
    "core.assignment": "router.core.assignment",
    "core.csat": "router.core.csat",
    "api": "plugins.api",
    "email": "plugins.email",
}
# The core cannot work without these; blocking them is refused rather than leaving cases nowhere to go.
ESSENTIAL = frozenset({"core.routing", "core.assignment"})


async def await_me_maybe(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


def blocked_names(configured: Iterable[str] = ()) -> set[str]:
    from_env = {name.strip() for name in os.environ.get(BLOCK_ENV, "").split(",") if name.strip()}
    return set(configured) | from_env


def build_plugin_manager(blocked: Iterable[str] = (), *, entry_points: bool = True) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    names = blocked_names(blocked)
    refused = sorted(names & ESSENTIAL)
    if refused:
        raise StartupError(f"plugins {refused} are part of the core and cannot be blocked")
    for name in sorted(names):
        pm.set_blocked(name)
    for name, module in BUILTIN_PLUGINS.items():
        if not pm.is_blocked(name):
            pm.register(importlib.import_module(module), name=name)
    try:
        if entry_points:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise StartupError(f"{exc}; is a hook name misspelt, or an argument? see docs/hooks.md") from None
    check_no_wrappers(pm)
    return pm


# Hooks that Switchboard calls one implementation at a time (to attribute results, isolate failures or await
# answers); pluggy wrappers cannot wrap such calls, so they are refused at start-up rather than silently skipped.
PER_IMPLEMENTATION_HOOKS = (
    "switchboard_register_channels",
    "switchboard_web_routes",
    "switchboard_shutdown",
    "switchboard_inbound_received",
    "switchboard_deliver",
    "switchboard_reparse",
    "switchboard_case_event",
)


def check_no_wrappers(pm: pluggy.PluginManager) -> None:
    for name in PER_IMPLEMENTATION_HOOKS:
        for impl in getattr(pm.hook, name).get_hookimpls():
            if impl.wrapper or impl.hookwrapper:
                raise StartupError(f"plugin {impl.plugin_name!r}: {name} cannot be implemented as a wrapper")


@dataclass(frozen=True)
class PluginInfo:
    name: str
    version: str
    source: str  # "builtin" or the distribution it comes from
    hooks: tuple[str, ...]


def describe_plugins(pm: pluggy.PluginManager) -> list[PluginInfo]:
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    out = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:  # blocked
            continue
        hooks = tuple(sorted(caller.name for caller in pm.get_hookcallers(plugin) or ()))
        dist = dists.get(id(plugin))
        if dist is not None:
            out.append(PluginInfo(name, dist.version, dist.project_name, hooks))
        else:
            out.append(PluginInfo(name, __version__, "builtin", hooks))
    return sorted(out, key=lambda p: (p.source != "builtin", p.name))


def _call(impl: Any, **kwargs: Any) -> Any:
    """Call one implementation with the arguments it asked for (pluggy lets impls take a subset)."""
    return impl.function(**{name: kwargs[name] for name in impl.argnames})


class Hooks:
    """The only way core code calls hooks: keyword arguments, awaited results, one place to read."""

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        self._h = pm.hook

    # start-up and configuration
    def configure(self, *, config: Any) -> None:
        self._h.switchboard_configure(config=config)

    def register_channels(self, *, config: Any) -> ChannelRegistry:
        registry = ChannelRegistry()
        for impl in reversed(self._h.switchboard_register_channels.get_hookimpls()):
            registry._current_plugin = impl.plugin_name
            _call(impl, registry=registry, config=config)
        return registry

    def web_routes(self, *, switchboard: Any) -> list[tuple[str, Any]]:
        routes = []
        for impl in reversed(self._h.switchboard_web_routes.get_hookimpls()):
            for route in _call(impl, switchboard=switchboard) or ():
                routes.append((impl.plugin_name, route))
        return routes

    def scheduled_jobs(self, *, switchboard: Any) -> list[ScheduledJob]:
        jobs = [job for batch in self._h.switchboard_scheduled_jobs(switchboard=switchboard) for job in batch or ()]
        ids = [job.id for job in jobs]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise StartupError(f"scheduled job ids {dupes} are used by more than one job")
        return jobs

    async def startup(self, *, switchboard: Any) -> None:
        for result in self._h.switchboard_startup(switchboard=switchboard):
            await await_me_maybe(result)

    async def shutdown(self, *, switchboard: Any) -> None:
        for impl in self._h.switchboard_shutdown.get_hookimpls():
            try:
                await await_me_maybe(_call(impl, switchboard=switchboard))
            except Exception:  # noqa: BLE001 - one plugin failing to close must not stop the others
                log.exception("plugin %s failed during shutdown", impl.plugin_name)

    # inbound
    async def inbound_received(self, *, message: Any, switchboard: Any) -> Any:
        for impl in reversed(self._h.switchboard_inbound_received.get_hookimpls()):
            changed = await await_me_maybe(_call(impl, message=message, switchboard=switchboard))
            if changed is not None:
                message = changed
        return message

    async def _first_awaited_result(self, hook: str, **kwargs: Any) -> Any:
        # firstresult by hand: an async implementation's "None" is only known after awaiting it.
        for impl in reversed(getattr(self._h, hook).get_hookimpls()):
            result = await await_me_maybe(_call(impl, **kwargs))
            if result is not None:
                return result
        return None

    async def reparse(self, *, item: Any, switchboard: Any) -> Any:
        return await self._first_awaited_result("switchboard_reparse", item=item, switchboard=switchboard)

    # routing (synchronous by contract: they run inside the write)
    def classify(self, *, message: Any, case: Any, customer: Any, switchboard: Any) -> dict[str, Any]:
        labels: dict[str, Any] = {}
        results = self._h.switchboard_classify(message=message, case=case, customer=customer, switchboard=switchboard)
        for result in reversed(results):  # pluggy answers last-registered first; let later plugins win
            if result:
                labels.update(result)
        return labels

    def select_route(self, *, message: Any, case: Any, customer: Any, labels: dict[str, Any], switchboard: Any) -> Any:
        return self._h.switchboard_select_route(
            message=message, case=case, customer=customer, labels=labels, switchboard=switchboard
        )

    def choose_agent(self, *, case: Any, route: Any, candidates: list[Any]) -> Any:
        chosen = self._h.switchboard_choose_agent(case=case, route=route, candidates=candidates)
        if chosen is not None and chosen not in candidates:
            raise RuntimeError(f"switchboard_choose_agent returned {chosen!r}, which is not one of the candidates")
        return chosen

    # outbound
    async def deliver(self, *, outbound: Any, switchboard: Any) -> Any:
        return await self._first_awaited_result("switchboard_deliver", outbound=outbound, switchboard=switchboard)

    # events
    async def case_event(self, *, event: Any, switchboard: Any) -> None:
        for impl in reversed(self._h.switchboard_case_event.get_hookimpls()):
            try:
                await await_me_maybe(_call(impl, event=event, switchboard=switchboard))
            except Exception:  # noqa: BLE001 - observers must not undo what is recorded
                log.exception("plugin %s failed observing %s", impl.plugin_name, event.type)
