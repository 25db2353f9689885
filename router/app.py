"""The Switchboard runtime: one per application, holding config, plugins, store, dispatcher, outbox and scheduler."""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
from pathlib import Path
from datetime import datetime, timezone
from typing import Iterable, Iterator

import pluggy
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from router.config import Config, ConfigError, IntegrationConfig
from router.core.accounts import Accounts, Principal
from router.core.clock import Clock, ManualClock
from router.core.dispatcher import Dispatcher
from router.core.feed import Feed
from router.core.model import Event
from router.core.outbox import Outbox
from router.core.quarantine import Quarantine
from router.core.store import Store, make_store
from router.metrics import Metrics
from router.plugins import Hooks, build_plugin_manager
from router.stash import Stash

log = logging.getLogger(__name__)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Switchboard:
    """Everything a running deployment is made of. Plugins receive it in hooks; it is their way into the core."""

    def __init__(
        self,
        config: Config,
        *,
        data_dir: str | Path = "data",
        plugin_manager: pluggy.PluginManager | None = None,
        store: Store | None = None,
        clock: Clock | None = None,
    ):
        self.config = config
        self.data_dir = Path(data_dir)
        self.clock = clock or Clock()
        self.pm = plugin_manager or build_plugin_manager(config.blocked_plugins)
        self.hooks = Hooks(self.pm)
        installed = {name for name, _ in self.pm.list_name_plugin()}  # blocked ones too: their settings may stay
        unknown = sorted(set(config.plugins) - installed)
        if unknown:
            raise ConfigError([f"{config.source_of('plugins')}: plugins.{name}: no plugin named {name!r} is "
                               f"installed (a typo?); installed: {', '.join(sorted(installed))}" for name in unknown])
        self.hooks.configure(config=config)
        self.channels = self.hooks.register_channels(config=config)
        self.store = store or make_store(config, self.data_dir)
        self.metrics = Metrics()
        self.stash = Stash()
        self.dispatcher = Dispatcher(self)
        self.outbox = Outbox(self)
        self.quarantine = Quarantine(self)
        self.accounts = Accounts(self)
        self.feed = Feed(self)
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        # Integration tokens are compared by their SHA-256, so lookups do not leak timing about the token.
        self._integrations = {_digest(i.token.get()): i for i in config.integrations}
        self.started = False
        self.background = False  # set by start(): whether background workers (outbox, assigner, jobs) run

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def start(self, *, background: bool = True) -> None:
        """Open the store, then start plugins; with `background`, also the outbox worker and scheduled jobs.

        If any step fails, what was already started is stopped again before the error propagates.
        """
        self.background = background
        await self.store.open()
        try:
            await self.accounts.seed()
            await self.hooks.startup(switchboard=self)
            if background:  # jobs start after every plugin's start-up, so they find what it opened
                for job in self.hooks.scheduled_jobs(switchboard=self):
                    # The scheduler runs on real time, whatever clock the deployment reads (a manual clock in the
                    # past would make APScheduler count every missed second since then). Without run_at_start
                    # the first run is one interval away: APScheduler's default, which an explicit
                    # next_run_time=None would not give (it adds the job paused, and it never runs).
                    first = {"next_run_time": datetime.now(timezone.utc)} if job.run_at_start else {}
                    self.scheduler.add_job(
                        job.func, "interval", seconds=job.every.total_seconds(), id=job.id, kwargs=job.kwargs,
                        max_instances=1, coalesce=True, **first,
                    )
                self.scheduler.start()
        except BaseException:
            await self.hooks.shutdown(switchboard=self)
            if self.scheduler.running:
                self.scheduler.shutdown(wait=False)
            await self.store.close()
            raise
        if background:
            self.outbox.start()
        self.started = True

    async def stop(self) -> None:
        await self.outbox.stop()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        await self.hooks.shutdown(switchboard=self)
        await self.store.close()
        self.started = False

    # -- services for plugins and the web layer --------------------------------------------------------------
    @contextlib.contextmanager
    def clock_at(self, when: datetime) -> Iterator[None]:
        """Evaluate as if it were `when` (dry runs and routing tests); the real clock comes back afterwards."""
        real = self.clock
        self.clock = ManualClock(when)
        try:
            yield
        finally:
            self.clock = real

    def integration_for_token(self, token: str | None) -> IntegrationConfig | None:
        if not token:
            return None
        digest = _digest(token)
        for known, integration in self._integrations.items():
            if hmac.compare_digest(known, digest):
                return integration
        return None

    def integration_principal(self, token: str | None) -> Principal | None:
        integration = self.integration_for_token(token)
        if integration is None:
            return None
        return Principal(kind="integration", id=integration.name, name=integration.name, role="integration",
                         scopes=frozenset(integration.scopes))

    def integration(self, name: str) -> IntegrationConfig | None:
        return next((i for i in self.config.integrations if i.name == name), None)

    async def after_write(self, events: Iterable[Event], *, wake_outbox: bool = False) -> None:
        """Tell observers what a committed write did, and wake the outbox if it has something new."""
        if wake_outbox:
            self.outbox.wake()
        events = list(events)
        await self.feed.publish(events)
        for event in events:
            await self.hooks.case_event(event=event, switchboard=self)
