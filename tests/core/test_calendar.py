"""Business calendars: opening spans, holidays, DST days, several zones, and open-time arithmetic that agrees with itself."""
from __future__ import annotations

import random
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from router.core.calendar import BusinessCalendar
from router.routing_config import CalendarConfig, ScheduleConfig

UTC = timezone.utc
ROME = ZoneInfo("Europe/Rome")
TASHKENT = ZoneInfo("Asia/Tashkent")
NEW_YORK = ZoneInfo("America/New_York")

OFFICE_HOURS = {"mon-fri": ["09:00-13:00", "14:00-18:00"]}
EASTER_MONDAY = date(2026, 4, 6)
CHRISTMAS = date(2026, 12, 25)


def calendar(zone: str = "Europe/Rome", hours: dict | None = None, holidays: list[date] | None = None):
    return BusinessCalendar(CalendarConfig(timezone=zone, hours=hours or OFFICE_HOURS, holidays=holidays or []))


def rome(*args) -> datetime:
    return datetime(*args, tzinfo=ROME)


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture
def office() -> BusinessCalendar:
    """Rome office: weekdays 09-13 and 14-18, closed for Easter Monday and Christmas."""
    return calendar(holidays=[EASTER_MONDAY, CHRISTMAS])


# --- is_open ---------------------------------------------------------------------------------------------


def test_open_in_both_spans_and_closed_over_lunch(office):
    # 2026-01-05 is a Monday.
    assert office.is_open(rome(2026, 1, 5, 10, 0))
    assert not office.is_open(rome(2026, 1, 5, 13, 30))
    assert office.is_open(rome(2026, 1, 5, 16, 0))
    assert not office.is_open(rome(2026, 1, 5, 19, 0))
    assert not office.is_open(rome(2026, 1, 5, 7, 0))


def test_span_start_is_open_and_span_end_is_closed(office):
    tick = timedelta(microseconds=1)
    assert not office.is_open(rome(2026, 1, 5, 9, 0) - tick)
    assert office.is_open(rome(2026, 1, 5, 9, 0))
    assert office.is_open(rome(2026, 1, 5, 13, 0) - tick)
    assert not office.is_open(rome(2026, 1, 5, 13, 0))
    assert office.is_open(rome(2026, 1, 5, 14, 0))
    assert not office.is_open(rome(2026, 1, 5, 18, 0))


def test_closed_on_weekends(office):
    assert not office.is_open(rome(2026, 1, 10, 11, 0))  # Saturday
    assert not office.is_open(rome(2026, 1, 11, 11, 0))  # Sunday
    assert office.is_open(rome(2026, 1, 12, 11, 0))  # Monday again


def test_closed_all_day_on_a_holiday(office):
    assert not office.is_open(rome(2026, 4, 6, 10, 0))  # Easter Monday
    assert not office.is_open(rome(2026, 4, 6, 15, 0))
    assert office.is_open(rome(2026, 4, 7, 10, 0))


def test_holidays_are_local_dates_not_utc_dates():
    around_the_clock = calendar(hours={"daily": ["00:00-24:00"]}, holidays=[CHRISTMAS])
    assert not around_the_clock.is_open(utc(2026, 12, 24, 23, 30))  # already the 25th in Rome
    assert around_the_clock.is_open(utc(2026, 12, 25, 23, 30))  # the 26th in Rome


def test_instants_in_any_zone_are_accepted(office):
    assert office.is_open(datetime(2026, 1, 5, 4, 0, tzinfo=NEW_YORK))  # 10:00 in Rome
    assert office.is_open(utc(2026, 1, 5, 8, 0))  # 09:00 in Rome


# --- add -------------------------------------------------------------------------------------------------


def test_add_skips_the_lunch_break(office):
    assert office.add(rome(2026, 1, 5, 12, 0), timedelta(hours=2)) == rome(2026, 1, 5, 15, 0)


def test_add_skips_the_weekend(office):
    friday_afternoon = rome(2026, 1, 9, 17, 0)
    assert office.add(friday_afternoon, timedelta(hours=2)) == rome(2026, 1, 12, 10, 0)


def test_add_skips_a_weekend_followed_by_a_holiday(office):
    # Friday before Easter; Easter Monday is a holiday, so the clock resumes on Tuesday.
    assert office.add(rome(2026, 4, 3, 17, 0), timedelta(hours=2)) == rome(2026, 4, 7, 10, 0)


def test_add_spanning_several_days(office):
    # Eight open hours a day: Monday and Tuesday use 16 hours, Wednesday morning the last 4 (to 13:00).
    assert office.add(rome(2026, 1, 5, 9, 0), timedelta(hours=20)) == rome(2026, 1, 7, 13, 0)
    assert office.add(rome(2026, 1, 5, 9, 0), timedelta(hours=20, minutes=1)) == rome(2026, 1, 7, 14, 1)


def test_add_from_a_closed_instant_starts_at_the_next_opening(office):
    assert office.add(rome(2026, 1, 10, 11, 0), timedelta(minutes=30)) == rome(2026, 1, 12, 9, 30)
    assert office.add(rome(2026, 1, 5, 13, 15), timedelta(minutes=30)) == rome(2026, 1, 5, 14, 30)


def test_add_zero(office):
    assert office.add(rome(2026, 1, 5, 10, 0), timedelta(0)) == rome(2026, 1, 5, 10, 0)
    assert office.add(rome(2026, 1, 10, 11, 0), timedelta(0)) == rome(2026, 1, 12, 9, 0)
    assert office.add(rome(2026, 1, 5, 13, 0), timedelta(0)) == rome(2026, 1, 5, 14, 0)


def test_a_duration_that_ends_at_closing_time_is_due_at_closing_time(office):
    # Not at the next opening: an SLA due at 18:00 is breached at 18:00.
    assert office.add(rome(2026, 1, 9, 17, 0), timedelta(hours=1)) == rome(2026, 1, 9, 18, 0)


def test_add_returns_utc(office):
    due = office.add(datetime(2026, 1, 5, 4, 0, tzinfo=NEW_YORK), timedelta(hours=1))
    assert due.tzinfo is UTC
    assert due == utc(2026, 1, 5, 10, 0)


def test_negative_duration_is_refused(office):
    with pytest.raises(ValueError, match="negative"):
        office.add(rome(2026, 1, 5, 10, 0), timedelta(minutes=-1))


# --- between ---------------------------------------------------------------------------------------------


def test_between_counts_only_open_time(office):
    assert office.between(rome(2026, 1, 5, 12, 0), rome(2026, 1, 5, 15, 0)) == timedelta(hours=2)
    assert office.between(rome(2026, 1, 9, 17, 0), rome(2026, 1, 12, 10, 0)) == timedelta(hours=2)
    assert office.between(rome(2026, 4, 3, 17, 0), rome(2026, 4, 7, 10, 0)) == timedelta(hours=2)
    assert office.between(rome(2026, 1, 10, 0, 0), rome(2026, 1, 12, 0, 0)) == timedelta(0)
    assert office.between(rome(2026, 1, 5, 0, 0), rome(2026, 1, 12, 0, 0)) == timedelta(hours=40)


def test_between_is_zero_when_the_end_is_not_after_the_start(office):
    assert office.between(rome(2026, 1, 5, 10, 0), rome(2026, 1, 5, 10, 0)) == timedelta(0)
    assert office.between(rome(2026, 1, 5, 11, 0), rome(2026, 1, 5, 10, 0)) == timedelta(0)


# --- add and between agree, for many random starts and durations ----------------------------------------

PROPERTY_CALENDARS = {
    "rome office": dict(zone="Europe/Rome", hours=OFFICE_HOURS, holidays=[EASTER_MONDAY, CHRISTMAS]),
    "tashkent": dict(zone="Asia/Tashkent", hours={"mon-sat": ["08:30-17:00"]}),
    "new york": dict(zone="America/New_York", hours={"mon-fri": ["08:00-12:00", "12:30-20:00"], "sun": ["10:00-14:00"]}),
    # Spans on the hours that DST skips or repeats in Rome, and spans touching across midnight.
    "rome nights": dict(
        zone="Europe/Rome",
        hours={"daily": ["00:00-01:30", "02:15-02:45", "02:45-05:00", "22:00-24:00"]},
        holidays=[date(2026, 8, 15)],
    ),
}


@pytest.mark.parametrize("name", PROPERTY_CALENDARS)
def test_between_undoes_add(name):
    cal = calendar(**PROPERTY_CALENDARS[name])
    rng = random.Random(20260329)
    year_start = utc(2026, 1, 1).timestamp()
    year_seconds = 365 * 24 * 3600
    tick = timedelta(microseconds=1)
    for _ in range(400):
        start = datetime.fromtimestamp(year_start + rng.uniform(0, year_seconds), UTC)
        duration = timedelta(seconds=rng.choice([0, rng.randint(1, 3600), rng.randint(1, 21 * 24 * 3600)]))
        due = cal.add(start, duration)
        assert due >= start
        assert cal.between(start, due) == duration, (start, duration, due)
        if duration:
            # The clock stops on open time: the instant just before the due time is open.
            assert cal.is_open(due - tick), (start, duration, due)
        # Open time adds up over consecutive intervals.
        middle = start + (due - start) * rng.random()
        assert cal.between(start, middle) + cal.between(middle, due) == duration


@pytest.mark.parametrize("name", PROPERTY_CALENDARS)
def test_is_open_agrees_with_next_change(name):
    cal = calendar(**PROPERTY_CALENDARS[name])
    rng = random.Random(7)
    tick = timedelta(microseconds=1)
    at = utc(2026, 3, 20)
    # Walk change by change across both of Rome's DST weekends' neighbourhoods and beyond.
    while at < utc(2026, 11, 5):
        change = cal.next_change(at)
        assert change > at
        state = cal.is_open(at)
        assert cal.is_open(change - tick) == state
        assert cal.is_open(change) != state
        probe = at + (change - at) * rng.random()
        assert cal.is_open(probe) == state
        # Open time in the stretch is all of it or none of it.
        assert cal.between(at, change) == ((change - at) if state else timedelta(0))
        at = change


# --- DST days in Europe/Rome -----------------------------------------------------------------------------


def test_a_whole_day_lasts_23_hours_when_clocks_spring_forward_and_25_when_they_fall_back():
    cal = calendar(hours={"daily": ["00:00-24:00"]}, holidays=[date(2026, 3, 28), date(2026, 3, 30)])
    assert cal.between(rome(2026, 3, 28, 12, 0), rome(2026, 3, 30, 12, 0)) == timedelta(hours=23)
    cal = calendar(hours={"daily": ["00:00-24:00"]}, holidays=[date(2026, 10, 24), date(2026, 10, 26)])
    assert cal.between(rome(2026, 10, 24, 12, 0), rome(2026, 10, 26, 12, 0)) == timedelta(hours=25)


def test_a_night_span_over_the_dst_change_follows_the_wall_clock():
    cal = calendar(hours={"daily": ["01:00-04:00"]})
    assert cal.between(utc(2026, 3, 28, 12), utc(2026, 3, 29, 12)) == timedelta(hours=2)  # 02:00 -> 03:00
    assert cal.between(utc(2026, 10, 24, 12), utc(2026, 10, 25, 12)) == timedelta(hours=4)  # 03:00 -> 02:00
    assert cal.between(utc(2026, 5, 1, 12), utc(2026, 5, 2, 12)) == timedelta(hours=3)


def test_a_span_starting_in_the_skipped_hour_opens_when_the_clock_jumps():
    # On 2026-03-29 Rome goes from 02:00 CET straight to 03:00 CEST (01:00 UTC); 02:30 never happens.
    cal = calendar(hours={"daily": ["02:30-05:00"]})
    assert not cal.is_open(utc(2026, 3, 29, 0, 59, 59))
    assert cal.is_open(utc(2026, 3, 29, 1, 0))
    assert cal.next_change(utc(2026, 3, 29, 0, 0)) == utc(2026, 3, 29, 1, 0)
    assert cal.next_change(utc(2026, 3, 29, 1, 0)) == rome(2026, 3, 29, 5, 0) == utc(2026, 3, 29, 3, 0)
    assert cal.between(utc(2026, 3, 29), utc(2026, 3, 30)) == timedelta(hours=2)


def test_a_span_wholly_inside_the_skipped_hour_does_not_open():
    cal = calendar(hours={"daily": ["02:15-02:45", "10:00-11:00"]})
    assert cal.between(rome(2026, 3, 29, 0, 0), rome(2026, 3, 29, 9, 0)) == timedelta(0)
    assert cal.between(rome(2026, 3, 30, 0, 0), rome(2026, 3, 30, 9, 0)) == timedelta(minutes=30)


def test_a_span_starting_in_the_repeated_hour_opens_at_its_first_occurrence():
    # On 2026-10-25 Rome's clock reads 02:00-03:00 twice: first in CEST (00:00-01:00 UTC), then in CET.
    cal = calendar(hours={"daily": ["02:30-05:00"]})
    assert not cal.is_open(utc(2026, 10, 25, 0, 29))
    assert cal.is_open(utc(2026, 10, 25, 0, 30))
    assert cal.next_change(utc(2026, 10, 25, 0, 30)) == utc(2026, 10, 25, 4, 0)  # 05:00 CET
    assert cal.between(utc(2026, 10, 25), utc(2026, 10, 26)) == timedelta(hours=3, minutes=30)


def test_office_hours_keep_their_wall_clock_times_across_a_dst_weekend(office):
    # Friday 17:00 CET (16:00 UTC) + 2h lands on Monday 10:00 CEST (08:00 UTC).
    due = office.add(rome(2026, 3, 27, 17, 0), timedelta(hours=2))
    assert due == utc(2026, 3, 30, 8, 0)
    due = office.add(rome(2026, 10, 23, 17, 0), timedelta(hours=2))
    assert due == utc(2026, 10, 26, 9, 0)  # Monday 10:00 CET


def test_a_day_whose_midnight_is_skipped_starts_when_the_clock_jumps():
    # Santiago springs forward at midnight: on 2026-09-06 the clock goes from Saturday 23:59 (-04) to
    # Sunday 01:00 (-03) at 04:00 UTC. Saturday's "until 24:00" and Sunday's "from 00:00" meet there.
    cal = calendar("America/Santiago", {"sat": ["20:00-24:00"], "sun": ["00:00-24:00"]})
    assert cal.next_change(utc(2026, 9, 5, 12)) == utc(2026, 9, 6, 0, 0)  # Saturday 20:00 -04
    assert cal.next_change(utc(2026, 9, 6, 0, 0)) == utc(2026, 9, 7, 3, 0)  # Monday 00:00 -03, no break
    assert cal.between(utc(2026, 9, 5), utc(2026, 9, 8)) == timedelta(hours=4 + 23)


# --- several zones ---------------------------------------------------------------------------------------


def test_the_same_instant_in_three_zones():
    rome_office = calendar("Europe/Rome", {"mon-fri": ["09:00-18:00"]})
    tashkent_office = calendar("Asia/Tashkent", {"mon-fri": ["09:00-18:00"]})
    new_york_office = calendar("America/New_York", {"mon-fri": ["09:00-18:00"]})

    morning = utc(2026, 1, 5, 7, 30)  # Rome 08:30, Tashkent 12:30, New York 02:30
    assert [c.is_open(morning) for c in (rome_office, tashkent_office, new_york_office)] == [False, True, False]
    afternoon = utc(2026, 1, 5, 15, 0)  # Rome 16:00, Tashkent 20:00, New York 10:00
    assert [c.is_open(afternoon) for c in (rome_office, tashkent_office, new_york_office)] == [True, False, True]

    assert rome_office.add(morning, timedelta(hours=1)) == utc(2026, 1, 5, 9, 0)
    assert tashkent_office.add(morning, timedelta(hours=1)) == utc(2026, 1, 5, 8, 30)
    assert new_york_office.add(morning, timedelta(hours=1)) == utc(2026, 1, 5, 15, 0)

    assert rome_office.next_change(morning) == utc(2026, 1, 5, 8, 0)
    assert tashkent_office.next_change(morning) == utc(2026, 1, 5, 13, 0)
    assert new_york_office.next_change(morning) == utc(2026, 1, 5, 14, 0)


def test_a_monday_in_tashkent_starts_on_sunday_in_utc():
    tashkent = calendar("Asia/Tashkent", {"mon": ["00:00-24:00"]})
    assert tashkent.is_open(utc(2026, 1, 4, 19, 0))  # Sunday 19:00 UTC = Monday 00:00 in Tashkent
    assert not tashkent.is_open(utc(2026, 1, 5, 19, 0))  # Tuesday 00:00 there


# --- always open -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cal", [BusinessCalendar(None), BusinessCalendar(CalendarConfig(always_open=True))])
def test_always_open(cal):
    start = rome(2026, 1, 10, 3, 0)
    assert cal.always_open
    assert cal.is_open(start)
    assert cal.add(start, timedelta(hours=30)) == start + timedelta(hours=30)
    assert cal.add(start, timedelta(hours=30)).tzinfo is UTC
    assert cal.between(start, start + timedelta(days=3)) == timedelta(days=3)
    assert cal.between(start, start - timedelta(days=3)) == timedelta(0)
    assert cal.next_change(start) is None


def test_a_calendar_with_hours_is_not_always_open(office):
    assert not office.always_open


# --- next_change -----------------------------------------------------------------------------------------


def test_next_change(office):
    assert office.next_change(rome(2026, 1, 5, 10, 0)) == rome(2026, 1, 5, 13, 0)  # lunch
    assert office.next_change(rome(2026, 1, 5, 13, 0)) == rome(2026, 1, 5, 14, 0)  # back from lunch
    assert office.next_change(rome(2026, 1, 5, 8, 0)) == rome(2026, 1, 5, 9, 0)
    assert office.next_change(rome(2026, 1, 9, 18, 0)) == rome(2026, 1, 12, 9, 0)  # Friday night -> Monday
    assert office.next_change(rome(2026, 4, 3, 18, 0)) == rome(2026, 4, 7, 9, 0)  # past Easter Monday
    assert office.next_change(rome(2026, 1, 5, 10, 0)).tzinfo is UTC


def test_next_change_runs_across_touching_spans():
    weekdays = calendar(hours={"mon-thu": ["00:00-24:00"], "fri": ["00:00-12:00", "12:00-17:00"]})
    assert weekdays.next_change(rome(2026, 1, 5, 10, 0)) == rome(2026, 1, 9, 17, 0)
    assert weekdays.next_change(rome(2026, 1, 9, 17, 0)) == rome(2026, 1, 12, 0, 0)


def test_next_change_on_a_calendar_open_around_the_clock():
    cal = calendar(hours={"daily": ["00:00-24:00"]})
    assert cal.next_change(rome(2026, 1, 5, 10, 0)) is None
    with_holiday = calendar(hours={"daily": ["00:00-24:00"]}, holidays=[CHRISTMAS])
    assert with_holiday.next_change(rome(2026, 1, 5, 10, 0)) == rome(2026, 12, 25, 0, 0)
    assert with_holiday.next_change(rome(2026, 12, 25, 0, 0)) == rome(2026, 12, 26, 0, 0)
    assert with_holiday.next_change(rome(2026, 12, 26, 0, 0)) is None


# --- from_schedule ---------------------------------------------------------------------------------------


def test_from_schedule_with_a_named_calendar():
    calendars = {"rome-office": CalendarConfig(timezone="Europe/Rome", hours=OFFICE_HOURS)}
    cal = BusinessCalendar.from_schedule(ScheduleConfig(calendar="rome-office"), calendars)
    assert cal.is_open(rome(2026, 1, 5, 10, 0))
    assert not cal.is_open(rome(2026, 1, 5, 13, 30))


def test_from_schedule_with_inline_hours():
    schedule = ScheduleConfig(timezone="America/New_York", hours={"sat,sun": ["10:00-16:00"]})
    cal = BusinessCalendar.from_schedule(schedule, {})
    assert cal.is_open(datetime(2026, 1, 10, 10, 0, tzinfo=NEW_YORK))
    assert not cal.is_open(datetime(2026, 1, 12, 10, 0, tzinfo=NEW_YORK))


def test_from_schedule_inline_hours_default_to_utc():
    cal = BusinessCalendar.from_schedule(ScheduleConfig(hours={"daily": ["06:00-07:00"]}), {})
    assert cal.is_open(utc(2026, 1, 5, 6, 30))
    assert not cal.is_open(utc(2026, 1, 5, 7, 0))


def test_from_schedule_without_a_schedule_is_always_open():
    assert BusinessCalendar.from_schedule(None, {}).always_open


def test_from_schedule_with_an_unknown_calendar():
    with pytest.raises(ValueError, match="unknown calendar 'nope'"):
        BusinessCalendar.from_schedule(ScheduleConfig(calendar="nope"), {})


# --- refusals --------------------------------------------------------------------------------------------


def test_naive_datetimes_are_refused(office):
    naive = datetime(2026, 1, 5, 10, 0)
    aware = rome(2026, 1, 5, 10, 0)
    for call in (
        lambda: office.is_open(naive),
        lambda: office.add(naive, timedelta(hours=1)),
        lambda: office.between(naive, aware),
        lambda: office.between(aware, naive),
        lambda: office.next_change(naive),
        lambda: BusinessCalendar(None).is_open(naive),
        lambda: BusinessCalendar(None).add(naive, timedelta(hours=1)),
    ):
        with pytest.raises(ValueError, match="naive"):
            call()


def test_a_calendar_closed_for_over_ten_years_raises_instead_of_looping():
    mondays = [date(2026, 1, 5) + timedelta(weeks=n) for n in range(600)]
    cal = calendar(hours={"mon": ["09:00-17:00"]}, holidays=mondays)
    with pytest.raises(ValueError, match="without an answer"):
        cal.add(rome(2026, 1, 1, 0, 0), timedelta(hours=1))
    with pytest.raises(ValueError, match="without an answer"):
        cal.next_change(rome(2026, 1, 1, 0, 0))
