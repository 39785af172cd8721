"""Wall-clock time for rules: the instants of an `at`, the windows of `between`/`outside`.

Pure: an instant and a zone come in, instants go out. Daylight saving is handled once, here: an
occurrence is the first instant the zone's clock reads the time on that day (the end of a
spring-forward gap, the first of two fall-back times).
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Iterable

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


def last_occurrence(rule: Rule, now: datetime) -> datetime | None:
    """Given an `at` rule and an instant, return its latest occurrence at or before it."""
    return next((occ for occ in wall_occurrences(rule.at, rule.days, rule.zone, now, -1) if occ <= now), None)


def next_occurrence(rule: Rule, now: datetime) -> datetime | None:
    """Given an `at` rule and an instant, return its first occurrence strictly after it."""
    return next((occ for occ in wall_occurrences(rule.at, rule.days, rule.zone, now, 1) if occ > now), None)


def session_end(now: datetime, zone: Any, session_start: time) -> datetime:
    """Given an instant, return the end of its session: the first `session_start` strictly after it."""
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




def format_span(delta: timedelta) -> str:
    """A duration for people: 45s, 3m05s, 2h10m."""
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
