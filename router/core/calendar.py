"""Business-hours arithmetic for SLA clocks and agent schedules: weekly wall-clock spans in one zone, minus holidays."""
from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from router.routing_config import CalendarConfig, ScheduleConfig

UTC = timezone.utc
ONE_DAY = timedelta(days=1)
# How far a walk over days may go before we decide the calendar never opens (about ten years).
MAX_WALK_DAYS = 3700


def _to_utc(value: datetime, name: str) -> datetime:
    """Refuse naive datetimes: guessing their zone would silently shift SLA deadlines by hours."""
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got naive {value!r}")
    return value.astimezone(UTC)


class BusinessCalendar:
    """Opening hours in one time zone: weekly spans minus holidays; `None` config = always open."""

    def __init__(self, config: CalendarConfig | None):
        self._always_open = config is None or config.always_open
        self._tz = ZoneInfo(config.timezone) if config is not None else ZoneInfo("UTC")
        weekly = config.weekly_spans() if config is not None and not self._always_open else {}
        # Indexed by date.weekday(); sorted and non-overlapping, as CalendarConfig validation guarantees.
        self._weekly: tuple[tuple[tuple[time, time], ...], ...] = tuple(
            tuple(weekly.get(day, ())) for day in range(7)
        )
        self._holidays: frozenset[date] = frozenset(config.holidays) if config is not None else frozenset()
        # A week covered from midnight to midnight every day never closes except on holidays; next_change
        # needs to know that, because walking forward would otherwise never find a closing instant.
        self._covers_whole_week = not self._always_open and all(
            _covers_whole_day(spans) for spans in self._weekly
        )
        self._known: tuple[datetime, datetime, bool] | None = None  # (from, until, is_open) last computed

    @classmethod
    def from_schedule(
        cls, schedule: ScheduleConfig | None, calendars: dict[str, CalendarConfig]
    ) -> "BusinessCalendar":
        """An agent's schedule: a named calendar, or inline timezone and hours; no schedule = always open."""
        if schedule is None:
            return cls(None)
        if schedule.calendar:
            if schedule.calendar not in calendars:
                raise ValueError(f"unknown calendar {schedule.calendar!r}; known: {sorted(calendars)}")
            return cls(calendars[schedule.calendar])
        return cls(CalendarConfig(timezone=schedule.timezone or "UTC", hours=schedule.hours or {}))

    @property
    def always_open(self) -> bool:
        return self._always_open

    def is_open(self, at: datetime) -> bool:
        """Whether `at` falls in an opening span (start inclusive, end exclusive)."""
        at = _to_utc(at, "at")
        if self._always_open:
            return True
        # Routing asks about "now" over and over: the answer holds from the last instant asked until the next
        # change, so remember that stretch (one comparison instead of a walk over the week's spans).
        known = self._known
        if known is not None and known[0] <= at < known[1]:
            return known[2]
        answer = self._is_open(at)
        change = self.next_change(at)
        if change is not None:
            self._known = (at, change, answer)
        return answer

    def _is_open(self, at: datetime) -> bool:
        day = self._local_date(at)
        # The neighbouring days are checked too: around a DST change at midnight an instant's local date
        # and the day whose span covers it can differ.
        for start, end in self._intervals(day - ONE_DAY, day + ONE_DAY):
            if start > at:
                return False
            if at < end:
                return True
        return False

    def add(self, start: datetime, duration: timedelta) -> datetime:
        """The instant at which `duration` of open time has elapsed after `start`.

        A closed `start` begins counting at the next opening, so a zero duration gives `start` when open and
        the next opening otherwise. A duration that runs out exactly at a closing gives the closing instant.
        """
        start = _to_utc(start, "start")
        if duration < timedelta(0):
            raise ValueError(f"duration must not be negative, got {duration}")
        if self._always_open:
            return start + duration
        remaining = duration
        for span_start, span_end in self._intervals(self._local_date(start) - ONE_DAY):
            if span_end <= start:
                continue
            cursor = max(span_start, start)
            available = span_end - cursor
            if remaining <= available:
                return cursor + remaining
            remaining -= available
        raise AssertionError("unreachable: _intervals raises when the walk is exhausted")

    def between(self, a: datetime, b: datetime) -> timedelta:
        """Open time within [a, b); zero when b <= a."""
        a, b = _to_utc(a, "a"), _to_utc(b, "b")
        if b <= a:
            return timedelta(0)
        if self._always_open:
            return b - a
        total = timedelta(0)
        for start, end in self._intervals(self._local_date(a) - ONE_DAY):
            if start >= b:
                break
            if end > a:
                total += min(end, b) - max(start, a)
        return total

    def next_change(self, at: datetime) -> datetime | None:
        """The next instant after `at` at which is_open flips; None when it never will."""
        at = _to_utc(at, "at")
        if self._always_open:
            return None
        day = self._local_date(at)
        if self._covers_whole_week and not any(self._edge(h + ONE_DAY, time(0)) > at for h in self._holidays):
            return None  # open around the clock, and every holiday is over: it never closes again
        intervals = self._intervals(day - ONE_DAY)
        for start, end in intervals:
            if end <= at:
                continue
            if start > at:
                return start  # closed now: the change is the next opening
            # Open now. Spans that touch (13:00-24:00 then 00:00-09:00 the next day) are one stretch of
            # open time, so the closing is the end of the last span in the run, not the end of this one.
            for next_start, next_end in intervals:
                if next_start != end:
                    break
                end = next_end
            return end
        raise AssertionError("unreachable: _intervals raises when the walk is exhausted")

    # --- internals ---------------------------------------------------------------------------------------

    def _local_date(self, at: datetime) -> date:
        return at.astimezone(self._tz).date()

    def _intervals(self, first_day: date, last_day: date | None = None) -> Iterator[tuple[datetime, datetime]]:
        """Open intervals in UTC, in order, for local days from `first_day` (to `last_day`, inclusive).

        Without `last_day` the walk goes on until the caller stops, but at most MAX_WALK_DAYS: beyond that
        (a calendar closed for years, or an absurd duration) it raises rather than loop for ever.
        """
        day = first_day
        for _ in range(MAX_WALK_DAYS):
            if last_day is not None and day > last_day:
                return
            if day not in self._holidays:
                for span_start, span_end in self._weekly[day.weekday()]:
                    start, end = self._edge(day, span_start), self._edge(day, span_end)
                    # A span lying wholly inside a spring-forward gap never happens on the wall clock.
                    if start < end:
                        yield start, end
            day += ONE_DAY
        raise ValueError(
            f"walked {MAX_WALK_DAYS} days of the calendar from {first_day} without an answer: it stays closed"
            " (or open) that long, or the time asked for is longer than that"
        )

    def _edge(self, day: date, clock: time) -> datetime:
        """The first instant at which the local wall clock reads `day` `clock` or later, in UTC.

        This one rule keeps span edges ordered and touching spans touching on DST days: an ambiguous time
        (fall back) is its first occurrence, and a time skipped by spring forward is the end of the gap.
        The rule the standard library applies to skipped times (fold=0: read with the old offset) would map
        02:30 to 03:30 in Rome, after 03:15, and turn a span like 02:30-03:15 inside out.
        """
        if clock == time.max:  # "24:00": the next local midnight
            day, clock = day + ONE_DAY, time(0)
        naive = datetime.combine(day, clock)
        first = naive.replace(tzinfo=self._tz, fold=0).astimezone(UTC)
        second = naive.replace(tzinfo=self._tz, fold=1).astimezone(UTC)
        if first.astimezone(self._tz).replace(tzinfo=None) == naive:
            return min(first, second)  # exists: once, or twice when the clock falls back
        return self._transition(second, first)

    def _transition(self, before: datetime, after: datetime) -> datetime:
        """The UTC instant in (before, after] where the zone's offset changes (the end of a skipped gap).

        zoneinfo has no public list of transitions, so bisect; offsets and transitions are whole seconds
        and gaps are at most a day long, so this takes under twenty steps and only on DST-change days.
        """
        old_offset = before.astimezone(self._tz).utcoffset()
        low, high = 0, int((after - before).total_seconds())  # offset at low is old, at high is new
        while high - low > 1:
            middle = (low + high) // 2
            if (before + timedelta(seconds=middle)).astimezone(self._tz).utcoffset() == old_offset:
                low = middle
            else:
                high = middle
        return before + timedelta(seconds=high)


def _covers_whole_day(spans: tuple[tuple[time, time], ...]) -> bool:
    """Whether sorted, non-overlapping spans run from 00:00 to 24:00 without a break."""
    reached = time(0)
    for start, end in spans:
        if start != reached:
            return False
        reached = end
    return reached == time.max
