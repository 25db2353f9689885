"""What plugins contribute: channels in a registry, and scheduled jobs."""
from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any, Callable


class StartupError(Exception):
    """Start-up cannot go on: two plugins claim the same thing, or a plugin is misconfigured."""


@dataclasses.dataclass(frozen=True, slots=True)
class Channel:
    """A way customers reach support (email, sms, telegram, ...)."""

    name: str
    title: str
    description: str = ""
    # Which identity kind this channel's senders have, e.g. "email" or "phone".
    identity_kind: str | None = None
    # Whether Switchboard can write back on this channel through a given receiving account; a callable
    # answers per account (e.g. an API integration without a webhook cannot be written back to).
    outbound: bool | Callable[[str], bool] = True

    def can_send(self, account: str) -> bool:
        return self.outbound(account) if callable(self.outbound) else self.outbound


class ChannelRegistry:
    """The channels plugins declared, by name; a name can be taken once."""

    def __init__(self) -> None:
        self._channels: dict[str, tuple[Channel, str]] = {}
        self._current_plugin = "?"

    def add(self, channel: Channel) -> None:
        if channel.name in self._channels:
            _, owner = self._channels[channel.name]
            raise StartupError(
                f"channel {channel.name!r} is registered twice: by plugin {owner!r} and by {self._current_plugin!r}; "
                "block one of them (blocked_plugins in switchboard.yaml)"
            )
        self._channels[channel.name] = (channel, self._current_plugin)

    def get(self, name: str) -> Channel | None:
        found = self._channels.get(name)
        return found[0] if found else None

    def owner(self, name: str) -> str | None:
        found = self._channels.get(name)
        return found[1] if found else None

    def __contains__(self, name: object) -> bool:
        return name in self._channels

    def __iter__(self):
        return (channel for channel, _ in self._channels.values())

    def names(self) -> list[str]:
        return sorted(self._channels)


@dataclasses.dataclass(frozen=True, slots=True)
class ScheduledJob:
    """A periodic job for the application's scheduler; `func` may be a coroutine function."""

    id: str
    func: Callable[..., Any]
    every: timedelta
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Run once right away at start-up rather than only after the first interval.
    run_at_start: bool = False
