"""The exchange calendar: CME Globex sessions per product group, holidays, early closes, news events.

Four markets (product groups): equity_index, interest_rate, energy, metals. A trading date D of a
market has one Globex session, from the open at 17:00 CT on the calendar day before D to its close
on D (16:00 CT, then the daily maintenance halt until the next open; earlier on an early-close day).
A full holiday has no session (the evening of a holiday opens the next trading date).

Where the facts come from, in order of precedence:
1. the trader's corrections (riskd.yaml `calendar:` and the file it names), validated like rules;
2. the one-off dates of riskd/data/cme-hours.yaml (reviewed, with sources);
3. the `holidays` package's XCME calendar (full holidays and half days), with the early-close
   times per market from riskd/data/cme-hours.yaml (else the time the package's name states).
The data file's `reviewed_through` is the horizon: past it the dates still come from the
package's rules, but nobody reviewed them; `horizon_warning` says so loudly (riskd warns at start).

A `Calendar` is immutable and pure once built (its answers are memoised): it answers for a market
and a date or an instant, and the engine reads it through EngineSettings. Building one (`build`)
reads the files; the package's dates of a year are computed on first use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Literal
from zoneinfo import ZoneInfo

import yaml
from pydantic import Field

from riskd import yamldoc
from riskd.errors import ConfigError
from riskd.fields import _SESSION_TIME, Spec, Tags, TimeOfDay, Zone
from riskd.schedule import window_bounds

EXCHANGE_ZONE = ZoneInfo("America/Chicago")
Market = Literal["equity_index", "interest_rate", "energy", "metals"]
MARKETS: tuple[Market, ...] = ("equity_index", "interest_rate", "energy", "metals")
DATA = Path(__file__).parent / "data" / "cme-hours.yaml"
EVENT_LOOKAHEAD = timedelta(days=30)  # `riskd check` warns when the event file has nothing this far ahead


@dataclass(frozen=True, slots=True)
class Session:
    """One market's Globex session for one trading date: [open, close), aware in the exchange zone."""

    market: str
    day: date
    open: datetime
    close: datetime
    early: str | None = None  # why it closes early (e.g. "Christmas Eve"); None on a regular day

    def holds(self, instant: datetime) -> bool:
        return self.open <= instant < self.close


@dataclass(frozen=True, slots=True)
class NewsEvent:
    """One scheduled release from the trader's event file."""

    at: datetime  # UTC
    name: str
    tags: frozenset[str]
    source: str  # file:line


@dataclass(frozen=True, slots=True)
class DayRule:
    """What one source says of one date: `closed`, an `early` close at `close` (exchange time) or `regular`."""

    day: date
    kind: Literal["closed", "early", "regular"]
    name: str
    markets: frozenset[str]
    close: time | None = None
    source: str = ""


@dataclass(frozen=True, slots=True)
class Hours:
    """riskd/data/cme-hours.yaml, parsed."""

    open: time
    close: dict[str, time]
    roots: dict[str, str]  # instrument root -> market
    early: dict[str, dict[str, time]]  # the package's half-day name -> market -> close
    dates: dict[date, tuple[str, dict[str, str]]]  # date -> (name, market -> "HH:MM" | "regular" | "closed")
    reviewed_through: date


def _hhmm(text: str) -> time:
    hour, minute = (int(p) for p in text.split(":"))
    return time(hour, minute)


@lru_cache(maxsize=1)
def load_hours(path: Path = DATA) -> Hours:
    data = yaml.safe_load(path.read_text())
    groups = data["groups"]
    return Hours(
        open=_hhmm(data["open"]),
        close={m: _hhmm(groups[m]["close"]) for m in MARKETS},
        roots={root: m for m in MARKETS for root in groups[m]["roots"]},
        early={name: {m: _hhmm(t) for m, t in times.items()} for name, times in data["early_closes"].items()},
        dates={d: (entry.pop("name"), entry) for d, entry in ((d, dict(e)) for d, e in data["dates"].items())},
        reviewed_through=data["reviewed_through"],
    )


@lru_cache(maxsize=64)
def _package_year(year: int) -> tuple[dict[date, str], dict[date, str]]:
    """The holidays package's XCME calendar for a year: (full holidays, half days), date -> name."""
    import holidays

    closed = holidays.financial_holidays("XCME", years=year, categories=("public",), language="en_US")
    half = holidays.financial_holidays("XCME", years=year, categories=("half_day",), language="en_US")
    return ({d: n for d, n in closed.items() if d.year == year}, {d: n for d, n in half.items() if d.year == year})


_PAUSE = re.compile(r"^(?P<name>.*?) \(markets pause at (?P<h>\d{1,2}):(?P<m>\d\d)(?P<ampm>am|pm) CT\)$")


def _half_day(name: str) -> tuple[str, time]:
    """A half-day name of the package -> (the holiday's name, the time the name states)."""
    match = _PAUSE.match(name)
    if not match:
        return name, time(12, 0)
    hour = int(match["h"]) % 12 + (12 if match["ampm"] == "pm" else 0)
    return match["name"], time(hour, int(match["m"]))


class Calendar:
    """The CME Globex calendar, corrected by the trader, with the news events. Immutable; pure queries."""

    def __init__(self, hours: Hours | None = None, corrections: Iterable[DayRule] = (), events: Iterable[NewsEvent] = (),
                 market: str = "equity_index", sources: tuple[str, ...] = ()):
        self.hours = hours or load_hours()
        self.market = market  # the market of a rule that names none and whose instruments do not say
        self.corrections: dict[tuple[str, date], DayRule] = {}
        for rule in corrections:
            for m in rule.markets:
                self.corrections[(m, rule.day)] = rule
        self.events: tuple[NewsEvent, ...] = tuple(sorted(events, key=lambda e: e.at))
        self.sources = sources  # the correction and event files it was built from
        self.built_from: tuple[Any, ...] | None = None  # build()'s arguments, to read the files again on reload
        self._days: dict[tuple[str, date], tuple[str, str | None, time | None]] = {}
        self._windows: dict[tuple[Any, ...], tuple[datetime, datetime] | None] = {}  # memo: the same answer for every target

    @property
    def horizon(self) -> date:
        """The last date whose hours were reviewed (the data file's `reviewed_through`)."""
        return self.hours.reviewed_through

    # -- one date ------------------------------------------------------------------------------

    def status(self, market: str, day: date) -> tuple[str, str | None, time | None]:
        """Given a market and a date, return (kind, name, close): kind is regular, early, closed or
        weekend; name says why (a holiday's name); close is the exchange-time close (None when closed)."""
        key = (market, day)
        found = self._days.get(key)
        if found is None:
            found = self._days[key] = self._status(market, day)
        return found

    def _status(self, market: str, day: date) -> tuple[str, str | None, time | None]:
        regular = self.hours.close[market]
        correction = self.corrections.get((market, day))
        if correction is not None:
            if correction.kind == "closed":
                return "closed", correction.name, None
            if correction.kind == "early":
                return "early", correction.name, correction.close
            return "regular", None, regular
        if day.weekday() >= 5:
            return "weekend", None, None
        if day in self.hours.dates:
            name, per_market = self.hours.dates[day]
            value = per_market.get(market, "closed")
            if value == "regular":
                return "regular", None, regular
            if value == "closed":
                return "closed", name, None
            return "early", name, _hhmm(value)
        closed, half = _package_year(day.year)
        if day in closed:
            return "closed", closed[day], None
        if day in half:
            name, stated = _half_day(half[day])
            return "early", name, self.hours.early.get(name, {}).get(market, stated)
        return "regular", None, regular

    def trading_day(self, market: str, day: date) -> bool:
        return self.status(market, day)[0] in ("regular", "early")

    def session(self, market: str, day: date) -> Session | None:
        """The market's session for trading date `day`; None on a weekend or full holiday."""
        kind, name, close = self.status(market, day)
        if close is None:
            return None
        opens = datetime.combine(day - timedelta(days=1), self.hours.open, EXCHANGE_ZONE)
        return Session(market, day, opens, datetime.combine(day, close, EXCHANGE_ZONE), name if kind == "early" else None)

    def sessions_near(self, market: str, instant: datetime, before: int = 1, after: int = 2) -> list[Session]:
        """The sessions of the trading dates from `before` days before the instant's exchange date to `after` after it."""
        day = instant.astimezone(EXCHANGE_ZONE).date()
        found = (self.session(market, day + timedelta(days=k)) for k in range(-before, after + 1))
        return [s for s in found if s is not None]

    def session_at(self, market: str, instant: datetime) -> Session | None:
        """The session open at the instant; None when the market is closed then."""
        return next((s for s in self.sessions_near(market, instant, 0, 1) if s.holds(instant)), None)

    def window_at(self, window: tuple[Any, Any], market: str, zone: Any, days: frozenset[int],
                  instant: datetime) -> tuple[datetime, datetime] | None:
        """A window with a session-relative edge (`[open, close-15m]`): the bounds of the one holding the
        instant, on a session whose trading date is one of `days`; None when it holds on none."""
        key = (window, market, zone, days, instant)
        if key in self._windows:
            return self._windows[key]
        found = None
        for session in self.sessions_near(market, instant):
            start, end = window_bounds(window, session, zone)
            if start <= instant < end and session.day.weekday() in days:
                found = (start, end)
                break
        if len(self._windows) > 4096:  # one tick's worth is what repeats
            self._windows.clear()
        self._windows[key] = found
        return found

    def closed_reason(self, market: str, instant: datetime) -> str | None:
        """None when the market trades at the instant; else why not, for the audit trail."""
        if self.session_at(market, instant) is not None:
            return None
        local = instant.astimezone(EXCHANGE_ZONE)
        at = f"{local:%Y-%m-%d %H:%M} CT"
        day = local.date() + timedelta(days=1) if local.time() >= self.hours.open else local.date()  # an evening opens the next date
        kind, name, close = self.status(market, day)
        if kind in ("closed", "weekend"):
            return f"{market} is closed at {at}: {name or 'weekend'}"
        if kind == "early" and close is not None:
            return f"{market} closed early at {close:%H:%M} CT on {day} ({name})"
        return f"{market} is closed at {at}: the daily maintenance halt"

    # -- news ----------------------------------------------------------------------------------

    def event_near(self, now: datetime, before: timedelta, after: timedelta, tags: frozenset[str]) -> NewsEvent | None:
        """The first event (with one of `tags`, or any when empty) such that at - before <= now < at + after."""
        for event in self.events:
            if event.at - before > now:
                break
            if now < event.at + after and (not tags or tags & event.tags):
                return event
        return None

    def next_event(self, now: datetime, tags: frozenset[str] = frozenset()) -> NewsEvent | None:
        return next((e for e in self.events if e.at > now and (not tags or tags & e.tags)), None)

    # -- warnings ------------------------------------------------------------------------------

    def horizon_warning(self, today: date) -> str | None:
        """A loud warning when the reviewed horizon has run out (or runs out within 60 days)."""
        left = (self.horizon - today).days
        if left < 0:
            return (f"the CME calendar ran out on {self.horizon}: holidays after it follow the holidays package's rules only and "
                    "early-close times are unreviewed; upgrade riskd, or add the days to riskd.yaml `calendar:` (docs/calendar.md)")
        if left < 60:
            return f"the CME calendar runs out on {self.horizon} ({left} days): upgrade riskd before then (docs/calendar.md)"
        return None

    def events_warning(self, now: datetime) -> str | None:
        if not self.sources and not self.events:
            return None
        upcoming = self.next_event(now)
        if upcoming is None or upcoming.at > now + EVENT_LOOKAHEAD:
            return (f"the news event file has no event in the next {EVENT_LOOKAHEAD.days} days: near_event rules will not fire; "
                    "add the coming FOMC, CPI and NFP releases (docs/calendar.md)")
        return None


# ---------------------------------------------------------------------------------------------
# The trader's corrections and event file (riskd.yaml `calendar:`), validated with located errors.


def _all_markets() -> list[Market]:
    return list(MARKETS)


class HolidaySpec(Spec):
    day: date = Field(alias="date", description="YYYY-MM-DD")
    name: str = "holiday (riskd.yaml)"
    markets: list[Market] = Field(default_factory=_all_markets, min_length=1)


class EarlyCloseSpec(Spec):
    day: date = Field(alias="date", description="YYYY-MM-DD")
    close: TimeOfDay = Field(description="the early close, exchange time (America/Chicago)")
    name: str = "early close (riskd.yaml)"
    markets: list[Market] = Field(default_factory=_all_markets, min_length=1)


class RegularDaySpec(Spec):
    day: date = Field(alias="date", description="YYYY-MM-DD: trades regular hours whatever the built-in calendar says")
    markets: list[Market] = Field(default_factory=_all_markets, min_length=1)


class CorrectionsSpec(Spec):
    holidays: list[HolidaySpec] = []
    early_closes: list[EarlyCloseSpec] = []
    regular_days: list[RegularDaySpec] = []


class CalendarSpec(CorrectionsSpec):
    """riskd.yaml `calendar:`."""

    market: Market = Field("equity_index", description="the market of a calendar rule whose instruments do not name one")
    file: str | None = Field(None, description="a file of more corrections (holidays, early_closes, regular_days)")
    events: str | None = Field(None, description="the news event file (near_event)")


class EventSpec(Spec):
    day: date = Field(alias="date")
    at: TimeOfDay = Field(alias="time")
    zone: Zone = None
    tags: Tags
    name: str = ""


class EventFileSpec(Spec):
    events: list[EventSpec] = []


def _rules(spec: CorrectionsSpec, source: str) -> list[DayRule]:
    out = [DayRule(h.day, "closed", h.name, frozenset(h.markets), None, source) for h in spec.holidays]
    out += [DayRule(e.day, "early", e.name, frozenset(e.markets), e.close, source) for e in spec.early_closes]
    out += [DayRule(r.day, "regular", "regular day (riskd.yaml)", frozenset(r.markets), None, source) for r in spec.regular_days]
    return out


def _read(path: Path, model: type[Spec], what: str) -> tuple[Any, yamldoc.Document]:
    doc = yamldoc.read(path)
    if doc.node is None and not doc.problems:
        doc.problems.append(doc.problem_at(None, "", f"empty {what}; see docs/calendar.md"))
    spec = yamldoc.validate(doc, model) if not doc.problems else None
    if spec is None or doc.problems:
        raise ConfigError(doc.problems)
    return spec, doc


def load_events(path: Path, default_zone: Any) -> list[NewsEvent]:
    spec, doc = _read(path, EventFileSpec, "event file: write events: followed by a list of {date, time, zone, tags}")
    out = []
    for i, e in enumerate(spec.events):
        node = doc.locate(("events", i))
        line = node.start_mark.line + 1 if node is not None else 1
        at = datetime.combine(e.day, e.at, e.zone or default_zone).astimezone(timezone.utc)
        out.append(NewsEvent(at, e.name or ", ".join(e.tags), frozenset(t.lower() for t in e.tags), f"{path}:{line}"))
    return out


def build(spec: CalendarSpec | None = None, root: Path | None = None, default_zone: Any = None) -> Calendar:
    """Given riskd.yaml's `calendar:` and the config's directory, return the calendar (reads the files it names)."""
    spec = spec or CalendarSpec()
    base = root or Path.cwd()
    corrections = _rules(spec, "riskd.yaml")
    sources: list[str] = []
    problems = []  # both files' problems at once
    if spec.file:
        path = (base / spec.file).resolve()
        try:
            more, _ = _read(path, CorrectionsSpec, "calendar file: write holidays:, early_closes: or regular_days:")
            corrections += _rules(more, str(path))
        except ConfigError as exc:
            problems += exc.problems
        sources.append(str(path))
    events: list[NewsEvent] = []
    if spec.events:
        path = (base / spec.events).resolve()
        try:
            events = load_events(path, default_zone or ZoneInfo("America/New_York"))
        except ConfigError as exc:
            problems += exc.problems
        sources.append(str(path))
    if problems:
        raise ConfigError(problems)
    built = Calendar(corrections=corrections, events=events, market=spec.market, sources=tuple(sources))
    built.built_from = (spec, root, default_zone)
    return built  # the package's dates are read at their first use (~0.25 s once: its import, then the year)


def rebuilt(calendar: Calendar | None) -> Calendar | None:
    """The calendar with its correction and event files read again (a reload); raise ConfigError as build does."""
    if calendar is None or calendar.built_from is None:
        return calendar
    return build(*calendar.built_from)


@lru_cache(maxsize=1)
def builtin() -> Calendar:
    """The built-in calendar without corrections or events (for an engine given none)."""
    return Calendar()


# ---------------------------------------------------------------------------------------------
# Rules that follow the calendar.


def builtin_markets(instruments: Iterable[str]) -> set[str]:
    """The markets an instrument filter names by root (globs and roots the data file does not know name none)."""
    roots = load_hours().roots
    return {roots[r] for r in (p.split(" ", 1)[0].upper() for p in instruments) if r in roots}


def uses_calendar(when: dict[str, Any]) -> bool:
    """Does a rule's raw `when` follow the exchange calendar (market:, days: trading_days, a session-relative time)?"""
    def relative(value: Any) -> bool:
        return isinstance(value, str) and re.fullmatch(_SESSION_TIME, value.strip()) is not None

    windows = [edge for key in ("between", "outside") if isinstance(when.get(key), list) for edge in when[key]]
    return "market" in when or when.get("days") == "trading_days" or relative(when.get("at")) or any(map(relative, windows))


# ---------------------------------------------------------------------------------------------
# What `riskd calendar` and `riskd once` print.


def next_firings(rule: Any, now: datetime, calendar: Calendar, until: datetime, limit: int = 10) -> list[tuple[datetime, str | None]]:
    """An `at` rule's occurrences after `now` up to `until` (at most `limit`), each with why it will be
    skipped (the market closed at that time) or None."""
    from riskd.schedule import next_occurrence

    out: list[tuple[datetime, str | None]] = []
    at = now
    market = calendar.market if rule.market == "default" else rule.market
    while len(out) < limit:
        nxt = next_occurrence(rule, at, calendar)
        if nxt is None or nxt > until:
            break
        out.append((nxt, calendar.closed_reason(market, nxt) if market is not None else None))
        at = nxt
    return out


def firing_line(rule: Any, when: datetime, skipped: str | None) -> str:
    """One firing: in the rule's zone and in UTC, with the reason it will be skipped."""
    local = when.astimezone(rule.zone)
    utc = when.astimezone(timezone.utc)
    return f"{local:%a %Y-%m-%d %H:%M:%S %Z}  {utc:%H:%M:%S} UTC" + (f"  skipped: {skipped}" if skipped else "")


def listing(calendar: Calendar, rules: Iterable[Any], now: datetime, days: int) -> list[str]:
    """`riskd calendar`: the coming sessions per market, holidays and early closes, the news events, and
    every timed rule's next firings, from `now` for `days` days."""
    today = now.astimezone(EXCHANGE_ZONE).date()
    until = now + timedelta(days=days)
    lines = [f"CME Globex sessions, exchange time (America/Chicago), {today} to {today + timedelta(days=days - 1)}; "
             f"open is the evening before; reviewed through {calendar.horizon}"]
    for warning in (calendar.horizon_warning(today), calendar.events_warning(now)):
        if warning:
            lines.append(f"WARNING: {warning}")
    lines.append(f"  {'date':16}" + "".join(f"{m:15}" for m in MARKETS) + "note")
    for k in range(days):
        day = today + timedelta(days=k)
        statuses = [calendar.status(m, day) for m in MARKETS]
        if all(kind == "weekend" for kind, _, _ in statuses):
            continue
        cells = []
        notes = set()
        for kind, name, close in statuses:
            cells.append(f"{calendar.hours.open:%H:%M}-{close:%H:%M}" if close is not None else kind)
            if kind == "early":
                notes.add(f"early close: {name}")
            elif kind == "closed":
                notes.add(f"holiday: {name}")
        lines.append((f"  {day:%a %Y-%m-%d}  " + "".join(f"{c:15}" for c in cells) + "; ".join(sorted(notes))).rstrip())
    events = [e for e in calendar.events if now <= e.at <= until]
    if calendar.sources or calendar.events:
        lines.append("news events:")
        for e in events:
            tags = ", ".join(sorted(e.tags))
            lines.append(f"  {e.at.astimezone(EXCHANGE_ZONE):%a %Y-%m-%d %H:%M %Z}  {e.at:%H:%M} UTC  {e.name} [{tags}]")
        if not events:
            lines.append("  none")
    lines.append("next firings (the rule's zone, then UTC):")
    timed = [r for r in rules if r.at is not None and r.enabled]
    for rule in timed:
        market = calendar.market if rule.market == "default" else rule.market
        follows = f"  ({market}{', trading days' if rule.trading_days else ''})" if market else ""
        lines.append(f"  {rule.name}  at {rule.at.isoformat()}{follows}")
        firings = next_firings(rule, now, calendar, until)
        lines.extend(f"      {firing_line(rule, when, skipped)}" for when, skipped in firings)
        if not firings:
            lines.append(f"      none in the next {days} days")
    for rule in rules:
        windows = [spec for name, spec in rule.conditions if name == "near_event"]
        if not windows or not rule.enabled:
            continue
        spec = windows[0]
        wanted = frozenset(spec.tags or ())
        lines.append(f"  {rule.name}  near_event {_span(spec.before)} before to {_span(spec.after)} after"
                     + (f" [{', '.join(spec.tags)}]" if spec.tags else ""))
        near = [e for e in events if not wanted or wanted & e.tags]
        for e in near:
            start, end = (e.at - spec.before).astimezone(rule.zone), (e.at + spec.after).astimezone(rule.zone)
            lines.append(f"      {start:%a %Y-%m-%d %H:%M:%S}-{end:%H:%M:%S %Z}  {start.astimezone(timezone.utc):%H:%M:%S}"
                         f"-{end.astimezone(timezone.utc):%H:%M:%S} UTC  {e.name}")
        if not near:
            lines.append(f"      no event in the next {days} days")
        timed.append(rule)
    if not timed:
        lines.append("  no timed rule")
    return lines


def _span(delta: timedelta) -> str:
    from riskd.schedule import format_span

    return format_span(delta)
