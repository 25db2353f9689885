"""Operator configuration for routing: lines, teams, tiers, skills, calendars, SLAs, escalation, rules, agents."""
from __future__ import annotations

import re
from datetime import date, time, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BeforeValidator, Field, field_validator, model_validator

from router.config_base import Duration, Model

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
BUILTIN_SKILL_NAMESPACES = ("lang", "team", "line", "tier")
# Rule conditions that hold when the message's value is one of the listed ones.
LIST_CONDITION_FIELDS = ("channel", "account", "line", "role", "language", "topic", "urgency")


def _as_list(value: Any) -> Any:
    """Conditions accept one value or a list of values."""
    if value is None or isinstance(value, list):
        return value
    return [value]


OneOrMany = Annotated[list[str] | None, BeforeValidator(_as_list)]
IntOneOrMany = Annotated[list[int] | None, BeforeValidator(_as_list)]


def _parse_clock(text: str) -> time:
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", text.strip())
    if not match:
        raise ValueError(f"not a time of day: {text!r}; write HH:MM")
    hours, minutes = int(match.group(1)), int(match.group(2))
    if (hours, minutes) == (24, 0):
        return time.max
    if hours > 23 or minutes > 59:
        raise ValueError(f"not a time of day: {text!r}")
    return time(hours, minutes)


def parse_span(text: str) -> tuple[time, time]:
    """'09:00-13:00' → (09:00, 13:00); '24:00' as an end means midnight at the end of the day."""
    if not isinstance(text, str) or text.count("-") != 1:
        raise ValueError(f"not a span of hours: {text!r}; write e.g. 09:00-17:30")
    start, end = (_parse_clock(part) for part in text.split("-"))
    if end <= start:
        raise ValueError(f"{text!r} ends before it starts; split spans that cross midnight at 24:00")
    return start, end


def parse_days(key: str) -> list[int]:
    """'mon', 'mon-fri', 'sat,sun', 'daily' → weekday numbers (Monday = 0)."""
    key = key.strip().lower()
    if key in ("daily", "every day"):
        return list(range(7))
    days: list[int] = []
    for part in key.split(","):
        part = part.strip()
        if "-" in part:
            first, last = (p.strip() for p in part.split("-", 1))
            if first not in WEEKDAYS or last not in WEEKDAYS:
                raise ValueError(f"unknown day in {key!r}; use mon..sun, ranges like mon-fri, or daily")
            a, b = WEEKDAYS.index(first), WEEKDAYS.index(last)
            days.extend(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
        elif part in WEEKDAYS:
            days.append(WEEKDAYS.index(part))
        else:
            raise ValueError(f"unknown day {part!r}; use mon..sun, ranges like mon-fri, or daily")
    return days


class CalendarConfig(Model):
    """Business hours in one time zone: weekly spans, minus holidays."""

    timezone: str = "UTC"
    always_open: bool = False
    hours: dict[str, list[str]] = Field(default_factory=dict)
    holidays: list[date] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name like Europe/Rome") from None
        return value

    @field_validator("hours")
    @classmethod
    def _valid_hours(cls, hours: dict[str, list[str]]) -> dict[str, list[str]]:
        weekly: dict[int, list[tuple[time, time, str]]] = {d: [] for d in range(7)}
        for key, spans in hours.items():
            for day in parse_days(key):
                for span in spans:
                    start, end = parse_span(span)
                    weekly[day].append((start, end, f"{key}: {span}"))
        for day, spans in weekly.items():
            spans.sort()
            for (s1, e1, src1), (s2, _e2, src2) in zip(spans, spans[1:]):
                if s2 < e1:
                    raise ValueError(f"{WEEKDAYS[day]}: '{src1}' overlaps '{src2}'")
        return hours

    @model_validator(mode="after")
    def _open_sometime(self) -> "CalendarConfig":
        if not self.always_open and not any(self.hours.values()):
            raise ValueError("a calendar needs hours, or always_open: true")
        return self

    def weekly_spans(self) -> dict[int, list[tuple[time, time]]]:
        weekly: dict[int, list[tuple[time, time]]] = {d: [] for d in range(7)}
        for key, spans in self.hours.items():
            for day in parse_days(key):
                weekly[day].extend(parse_span(s) for s in spans)
        return {d: sorted(spans) for d, spans in weekly.items()}


class AccountRef(Model):
    channel: str
    account: str


class LineConfig(Model):
    title: str = ""
    calendar: str | None = Field(default=None, description="business hours; none = always open")
    languages: list[str] = Field(default_factory=list)
    roles: list[str] = Field(default_factory=list, description="customer roles served by this line")
    accounts: list[AccountRef] = Field(default_factory=list, description="channel accounts that feed this line")
    sla_policy: str | None = None


class TeamConfig(Model):
    title: str = ""
    tier: str | None = Field(default=None, description="the tier a case has when routed to this team")
    lines: list[str] = Field(default_factory=list, description="the lines it serves; empty = all")


class Targets(Model):
    first_response: Duration | None = None
    next_response: Duration | None = None
    resolution: Duration | None = None


class SlaWhen(Model):
    channel: OneOrMany = None
    line: OneOrMany = None
    team: OneOrMany = None
    priority: IntOneOrMany = None


class SlaOverride(Targets):
    when: SlaWhen


class SlaPolicyConfig(Targets):
    calendar: str | None = Field(default=None, description="none = the line's calendar, else always open")
    warn_before: Duration = timedelta(minutes=15)
    overrides: list[SlaOverride] = Field(default_factory=list)


class EscalationStep(Model):
    after: Duration
    drop_preferred_skills: bool = False
    allow_next_tier: bool = False
    overflow_team: str | None = None
    raise_priority: int = Field(default=0, ge=0, le=4)


class BreachAction(Model):
    next_tier: bool = True
    notify_supervisors: bool = True
    raise_priority: int = Field(default=1, ge=0, le=4)


class EscalationPolicyConfig(Model):
    steps: list[EscalationStep] = Field(default_factory=list)
    on_breach: BreachAction = Field(default_factory=BreachAction)

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[EscalationStep]) -> list[EscalationStep]:
        for a, b in zip(steps, steps[1:]):
            if b.after <= a.after:
                raise ValueError("steps must come in increasing order of 'after'")
        return steps


class OffersConfig(Model):
    timeout: dict[str, Duration] = Field(default_factory=lambda: {"default": timedelta(seconds=60)})
    queue_order: Literal["priority_then_age", "sla_due"] = "priority_then_age"
    candidate_limit: int = Field(default=20, ge=1, le=500, description="agents passed to switchboard_choose_agent")

    @field_validator("timeout")
    @classmethod
    def _has_default(cls, timeout: dict[str, timedelta]) -> dict[str, timedelta]:
        if "default" not in timeout:
            raise ValueError("give a 'default' timeout, then per-channel ones")
        return timeout

    def timeout_for(self, channel: str) -> timedelta:
        return self.timeout.get(channel, self.timeout["default"])


class TopicConfig(Model):
    keywords: dict[str, list[str]] = Field(default_factory=dict, description="by language; 'any' for all")
    patterns: list[str] = Field(default_factory=list, description="regular expressions, case-insensitive")

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from None
        return patterns


class ClassificationConfig(Model):
    language_detection: bool = True
    min_confidence: float = Field(default=0.5, ge=0, le=1)
    topics: dict[str, TopicConfig] = Field(default_factory=dict)
    safety: dict[str, list[str]] = Field(default_factory=dict, description="urgent words by language")


class RuleWhen(Model):
    channel: OneOrMany = None
    account: OneOrMany = None
    line: OneOrMany = None
    role: OneOrMany = None
    language: OneOrMany = None
    topic: OneOrMany = None
    urgency: OneOrMany = None
    keywords: list[str] | None = None
    pattern: str | None = None
    business_hours: Literal["open", "closed"] | None = None
    expr: str | None = Field(default=None, description="a CEL expression over message, customer, case, labels")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return pattern


class RouteSpec(Model):
    line: str | None = None
    team: str | None = None
    tier: str | None = None
    priority: int | None = Field(default=None, ge=1, le=5)
    required_skills: list[str] = Field(default_factory=list)
    preferred_skills: list[str] = Field(default_factory=list)
    sla: str | None = None
    escalation: str | None = None
    safety_lane: bool = False


class RuleConfig(Model):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    when: RuleWhen = Field(default_factory=RuleWhen)
    route: RouteSpec


class RoutingConfig(Model):
    rules: list[RuleConfig] = Field(default_factory=list)
    default: RouteSpec = Field(default_factory=lambda: RouteSpec(tier="L1", priority=3))

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules: list[RuleConfig]) -> list[RuleConfig]:
        names = [r.name for r in rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate rule names {dupes}")
        return rules


def _skill_levels(value: Any) -> Any:
    """Skills as a list (level 1 each) or a mapping of skill → level."""
    if isinstance(value, list):
        return {str(v): 1 for v in value}
    return value


SkillLevels = Annotated[dict[str, Annotated[int, Field(ge=1, le=5)]], BeforeValidator(_skill_levels)]


class ScheduleConfig(Model):
    calendar: str | None = Field(default=None, description="a named calendar, or give timezone and hours")
    timezone: str | None = None
    hours: dict[str, list[str]] | None = None

    @model_validator(mode="after")
    def _one_way(self) -> "ScheduleConfig":
        if self.calendar and (self.timezone or self.hours):
            raise ValueError("give either calendar or timezone and hours, not both")
        if not self.calendar and not self.hours:
            raise ValueError("give a calendar, or timezone and hours")
        if self.hours is not None:
            CalendarConfig(timezone=self.timezone or "UTC", hours=self.hours)  # same checks as a calendar
        return self


class AgentConfig(Model):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=64)
    name: str
    email: str | None = None
    lines: list[str] = Field(default_factory=list)
    teams: list[str] = Field(default_factory=list)
    tier: str = "L1"
    languages: SkillLevels = Field(default_factory=dict)
    skills: SkillLevels = Field(default_factory=dict)
    capacity: dict[str, Annotated[int, Field(ge=0, le=1000)]] = Field(default_factory=lambda: {"default": 3})
    schedule: ScheduleConfig | None = Field(default=None, description="none = available whenever online")

    def capacity_for(self, channel: str) -> int:
        return self.capacity.get(channel, self.capacity.get("default", 0))


SKILL_REQUIREMENT = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9_.:{}-]*?)(?:>=(?P<level>[1-5]))?$")


def parse_skill_requirement(text: str) -> tuple[str, int]:
    """'lang:it>=3' → ('lang:it', 3); 'vip' → ('vip', 1)."""
    match = SKILL_REQUIREMENT.match(text.strip())
    if not match:
        raise ValueError(f"not a skill requirement: {text!r}; write skill or skill>=level (level 1-5)")
    return match.group("name"), int(match.group("level") or 1)
