"""Wall-clock time for rules: the instants of an `at`, the windows of `between`/`outside`.

Pure: an instant and a zone come in, instants go out. Daylight saving is handled once, here: an
occurrence is the first instant the zone's clock reads the time on that day (the end of a
spring-forward gap, the first of two fall-back times).
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Iterable

from riskd.fields import SessionTime
from riskd.model import Rule


def wall_instant(day: date, at: time, zone: Any) -> datetime:
    """Given a local date, a wall-clock time and a zone, return the first instant at which that zone's
    clock reads `at` or later on that date: the time itself on most days, the first of the two on a
    fall-back day, and the end of the gap (e.g. 03:00 for 02:30) on a spring-forward day."""
    wall = datetime.combine(day, at)
    first = wall.replace(tzinfo=zone)  # fold=0: the earlier of two equal wall times
    if first.astimezone(timezone.utc).astimezone(zone).replace(tzinfo=None) == wall:
        return first
    lo = wall.replace(tzinfo=zone, fold=1).astimezone(timezone.utc)  # before the jump: the clock reads less than `at`
    hi = first.astimezone(timezone.utc)  # after the jump: more than `at`
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(zone).replace(tzinfo=None) >= wall:
            hi = mid
        else:
            lo = mid
    return hi.replace(microsecond=0).astimezone(zone)


def wall_occurrences(at: time, days: frozenset[int], zone: Any, now: datetime, step: int) -> Iterable[datetime]:
    local = now.astimezone(zone).date()
    for offset in range(-1, 9):
        day = local + timedelta(days=offset * step)
        if day.weekday() in days:
            yield wall_instant(day, at, zone)


def occurrences(rule: Rule, now: datetime, step: int, calendar: Any = None) -> Iterable[datetime]:
    """An `at` rule's occurrences around `now`, later ones first when `step` is -1. A rule that follows the
    exchange calendar (riskd.calendar) has none on a day its market does not trade when its `days` are
    trading_days or its time is relative to the session (close-5m: the session's close minus 5 minutes)."""
    if rule.market is None:
        yield from wall_occurrences(rule.at, rule.days, rule.zone, now, step)
        return
    from riskd.calendar import EXCHANGE_ZONE, builtin

    calendar = calendar or builtin()
    market = calendar.market if rule.market == "default" else rule.market
    relative = isinstance(rule.at, SessionTime)
    local = now.astimezone(EXCHANGE_ZONE if relative else rule.zone).date()
    for offset in range(-1, 14):
        day = local + timedelta(days=offset * step)
        if day.weekday() not in rule.days:
            continue
        if relative:
            session = calendar.session(market, day)
            if session is not None:
                yield rule.at.instant(session).astimezone(rule.zone)
        elif not rule.trading_days or calendar.trading_day(market, day):
            yield wall_instant(day, rule.at, rule.zone)


def last_occurrence(rule: Rule, now: datetime, calendar: Any = None) -> datetime | None:
    """Given an `at` rule and an instant, return its latest occurrence at or before it."""
    return next((occ for occ in occurrences(rule, now, -1, calendar) if occ <= now), None)


def next_occurrence(rule: Rule, now: datetime, calendar: Any = None) -> datetime | None:
    """Given an `at` rule and an instant, return its first occurrence strictly after it."""
    return next((occ for occ in occurrences(rule, now, 1, calendar) if occ > now), None)


def window_bounds(window: tuple[Any, Any], session: Any, zone: Any) -> tuple[datetime, datetime]:
    """A window with a session-relative edge, on one riskd.calendar.Session: each fixed edge is that time in `zone` on the trading date."""
    def edge(value: Any) -> datetime:
        return value.instant(session) if isinstance(value, SessionTime) else wall_instant(session.day, value, zone)

    return edge(window[0]), edge(window[1])


def relative_window(window: tuple[Any, Any]) -> bool:
    return isinstance(window[0], SessionTime) or isinstance(window[1], SessionTime)


def next_session_start(now: datetime, zone: Any, session_start: time) -> datetime:
    """Given an instant, return the first `session_start` strictly after it (by the wall clock alone;
    riskd.engine.session_end also skips the evenings that open no session of the exchange calendar)."""
    day = now.astimezone(zone).date()
    end = wall_instant(day, session_start, zone)
    return end if end > now else wall_instant(day + timedelta(days=1), session_start, zone)


WEEK_FIRST_DAY = 6  # Sunday: a CME week opens with Sunday's 18:00 session


def week_bounds(now: datetime, zone: Any, session_start: time, first_day: int = WEEK_FIRST_DAY) -> tuple[datetime, datetime]:
    """Given an instant, return [start, end) of its trading week: a week starts at the first
    `session_start` on or after its first day (CME: Sunday 18:00 New York) and ends where the next starts."""
    local = now.astimezone(zone).date()
    first = local - timedelta(days=(local.weekday() - first_day) % 7)
    start = wall_instant(first, session_start, zone)
    if start > now:
        first -= timedelta(days=7)
        start = wall_instant(first, session_start, zone)
    return start, wall_instant(first + timedelta(days=7), session_start, zone)


def in_window(window: tuple[time, time], moment: time) -> bool:
    start, end = window
    return start <= moment < end if start < end else (moment >= start or moment < end)


PERIODS = ("session", "week", "month")


def period_of(session: str, period: str) -> str:
    """Given a session's trading date (ISO, as riskd.engine.session_of names it: the day after an
    18:00 start) and a period (session | week | month), return the period it belongs to: the
    session itself, the ISO date of the Monday of its trading week, or its trading month YYYY-MM.

    By trading date, as the exchange and the broker's statements count: a week starts with the
    first session that starts on or after Sunday (CME: Sunday 18:00 New York opens Monday's
    session); a month with the session of its first trading date (June 30 18:00 opens July 1's
    session, which is July's).
    """
    if period == "session":
        return session
    day = date.fromisoformat(session)
    if period == "week":
        return (day - timedelta(days=day.weekday())).isoformat()
    if period == "month":
        return day.strftime("%Y-%m")
    raise ValueError(f"unknown period {period!r}; use one of {', '.join(PERIODS)}")


def format_span(delta: timedelta) -> str:
    """A duration for people: 45s, 3m05s, 2h10m."""
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
