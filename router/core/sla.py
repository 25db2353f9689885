"""SLA clocks: first response, next response and resolution targets, counted in business time.

A policy (``sla_policies`` in config) gives targets; its ``overrides`` apply in order, every one whose ``when``
matches the case, so a later override wins for the targets it sets. Clocks count open time of the policy's
calendar (or the case's line calendar, else around the clock). A clock pauses while the case waits on the
customer; the pause is added back to its deadline in business time. Each clock warns once (``warn_before``
its deadline) and breaches once; both are recorded as events by the assigner, which owns the clocks.

State is plain JSON kept with the case's assignment state, so it survives restarts:
``{"first_response": {"started": iso, "target": seconds, "paused": seconds, "paused_since": iso|None,
"due": iso|None, "warned": bool, "breached": bool, "stopped": iso|None}, ...}``.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Iterator

from router.core.calendar import BusinessCalendar
from router.routing_config import SlaPolicyConfig

FIRST_RESPONSE, NEXT_RESPONSE, RESOLUTION = "first_response", "next_response", "resolution"
TARGETS = (FIRST_RESPONSE, NEXT_RESPONSE, RESOLUTION)


def targets_for(policy: SlaPolicyConfig, *, channel: str, line: str | None, team: str | None,
                priority: int) -> dict[str, timedelta]:
    """The policy's targets for a case, after every matching override (in order)."""
    targets = {name: getattr(policy, name) for name in TARGETS}
    facts = {"channel": channel, "line": line, "team": team, "priority": priority}
    for override in policy.overrides:
        when = override.when
        if all(getattr(when, key) is None or facts[key] in getattr(when, key) for key in facts):
            for name in TARGETS:
                value = getattr(override, name)
                if value is not None:
                    targets[name] = value
    return {name: value for name, value in targets.items() if value is not None}


@dataclass(slots=True)
class Alert:
    """A warning or a breach that just became due."""

    kind: str  # "warning" | "breach"
    clock: str
    due: datetime


class SlaClocks:
    """The clocks of one case; mutate through the methods, persist with :meth:`as_dict`."""

    def __init__(self, policy_name: str | None, calendar: BusinessCalendar, warn_before: timedelta,
                 state: dict[str, Any] | None = None):
        self.policy = policy_name
        self.calendar = calendar
        self.warn_before = warn_before
        self.clocks: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (state or {}).items()}
        # When check() may next have something to say; every method that changes a clock resets it, so the
        # periodic check of thousands of open cases costs one comparison each until something is due.
        self._next: datetime | None = None
        self._next_known = False

    def as_dict(self) -> dict[str, Any]:
        return {k: dict(v) for k, v in self.clocks.items()}

    def copy(self, state: dict[str, Any] | None = None) -> "SlaClocks":
        """The same policy and calendar with these clocks (default: the current ones, copied)."""
        return SlaClocks(self.policy, self.calendar, self.warn_before, self.as_dict() if state is None else state)

    def stopped(self, name: str) -> bool:
        """Whether the clock was started and has stopped (for first_response: the case has been answered)."""
        clock = self.clocks.get(name)
        return clock is not None and clock["stopped"] is not None

    def start(self, name: str, target: timedelta | None, now: datetime) -> bool:
        """Start (or restart) a clock; a running clock is left alone. False when nothing started."""
        self._next_known = False
        if target is None:
            return False
        current = self.clocks.get(name)
        if current is not None and current["stopped"] is None:
            return False
        self.clocks[name] = {"started": now.isoformat(), "target": target.total_seconds(), "paused": 0.0,
                             "paused_since": None, "due": None, "warned": False, "breached": False, "stopped": None,
                             "met": None}
        self._due(name)
        return True

    def stop(self, name: str, now: datetime) -> dict[str, Any] | None:
        """Stop a running clock (its target was met, or breached and then met); returns the clock."""
        self._next_known = False
        clock = self.clocks.get(name)
        if clock is None or clock["stopped"] is not None:
            return None
        self._resume(clock, now)
        clock["stopped"] = now.isoformat()
        clock["met"] = not clock["breached"]
        return clock

    def pause(self, now: datetime) -> None:
        self._next_known = False
        for clock in self._running():
            if clock["paused_since"] is None:
                clock["paused_since"] = now.isoformat()
                clock["due"] = None

    def resume(self, now: datetime) -> None:
        self._next_known = False
        for name, clock in self.clocks.items():
            if clock["stopped"] is None and clock["paused_since"] is not None:
                self._resume(clock, now)
                self._due(name)

    def check(self, now: datetime) -> list[Alert]:
        """Warnings and breaches due at `now` that have not been reported yet (each at most once)."""
        if not self._next_known:
            self._next, self._next_known = self.next_check(), True
        if self._next is None or now < self._next:
            return []
        self._next_known = False
        alerts = []
        for name, clock in self.clocks.items():
            if clock["stopped"] is not None or clock["due"] is None:
                continue
            due = datetime.fromisoformat(clock["due"])
            if not clock["breached"] and now >= due:
                clock["breached"] = clock["warned"] = True
                alerts.append(Alert("breach", name, due))
            elif not clock["warned"] and now >= due - self.warn_before:
                clock["warned"] = True
                alerts.append(Alert("warning", name, due))
        return alerts

    def next_check(self) -> datetime | None:
        """When :meth:`check` may next have something to say."""
        times = []
        for clock in self._running():
            if clock["due"] is None or clock["breached"]:
                continue
            due = datetime.fromisoformat(clock["due"])
            times.append(due if clock["warned"] else due - self.warn_before)
        return min(times, default=None)

    def due(self, name: str) -> datetime | None:
        clock = self.clocks.get(name)
        if clock is None or clock["stopped"] is not None or clock["due"] is None:
            return None
        return datetime.fromisoformat(clock["due"])

    def earliest_due(self) -> datetime | None:
        return min((d for d in (self.due(n) for n in self.clocks) if d is not None), default=None)

    # -- internals -----------------------------------------------------------------------------------------
    def _running(self) -> Iterator[dict[str, Any]]:
        return (c for c in self.clocks.values() if c["stopped"] is None)

    def _resume(self, clock: dict[str, Any], now: datetime) -> None:
        if clock["paused_since"] is not None:
            since = datetime.fromisoformat(clock["paused_since"])
            paused = self.calendar.between(since, max(since, now))
            clock["paused"] += paused.total_seconds()
            clock["paused_since"] = None

    def _due(self, name: str) -> None:
        clock = self.clocks[name]
        if clock["paused_since"] is not None:
            clock["due"] = None
            return
        budget = timedelta(seconds=clock["target"] + clock["paused"])
        clock["due"] = self.calendar.add(datetime.fromisoformat(clock["started"]), budget).isoformat()
