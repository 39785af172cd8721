"""The conditions a rule's `when` can hold: one registry entry each.

An entry is the whole condition: its name (the YAML key under `when`), its spec (the type its
value is validated as: a model below or a riskd.fields type), its scope (`position`: evaluated per
matched position; `account`: per account; `group`: per account, over its positions in the rule's
scope, which the engine passes as the account's positions; `clock`: the same for every target), the pure check
(spec, target) -> (holds, inputs seen), and the explanation `riskd once` prints (the value seen, the
threshold, how far it is from holding), and optionally `test` (spec, target) -> holds: the verdict
alone, for the engine's hot path (it must agree with check; tests/test_engine_differential.py
compares the engine with one that calls check everywhere), and `bound` (spec) -> Bound: a
comparison of one figure to a number that holds wherever the condition does, which lets the engine
sort a scope's targets by that figure once per tick and test only those on the right side of the
number (a thousand accounts at rest are then a few bisections, not a loop). riskd.rules builds `when` from this
registry, so adding a condition is one `Condition(...)` here (with its spec model if it needs a new
one) and its tests.

Pure: no I/O, no clock; `now` arrives in the Target.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any, Callable, ClassVar, Literal, NamedTuple

from pydantic import ConfigDict, Field

from riskd.fields import (
    Contracts,
    Count,
    Cross,
    DrawdownLimit,
    Duration,
    Flag,
    Money,
    RuleModel,
    Tags,
    Weight,
    Window,
    _money,
    drawdown_limit,
    lenient,
)
from riskd.model import Account, Position
from riskd.schedule import format_span, in_window, relative_window, wall_occurrences, window_bounds
from riskd.sizes import MICRO_WEIGHT, by_root, weighted


class Target(NamedTuple):
    """What a condition sees of one target at one tick (a NamedTuple: built ~rules x targets times a tick)."""

    account: Account
    position: Position | None
    now: datetime
    local: datetime
    days: frozenset[int]
    peak: float
    first_seen: datetime | None
    calendar: Any = None  # riskd.calendar.Calendar (sessions, holidays, news events)
    market: str | None = None  # the market whose calendar the rule's clock follows; None: the plain wall clock
    trading_days: bool = False  # `days: trading_days`
    history: Any = None  # riskd.ledger.History: the account beyond this session (and its round trips, riskd.trades)


Seen = dict[str, Any]
Scope = Literal["position", "account", "group", "clock"]
# (account, position or None, peak, first_seen or None, now) -> the figure: what a Target holds of a
# target apart from the rule's clock (a figure is computed once per target per tick, for every rule)
Figure = Callable[[Account, "Position | None", float, "datetime | None", datetime], Any]


class Bound(NamedTuple):
    """A necessary test of a condition: it can hold only for a target whose `figure(...) op threshold`
    (see Figure). A figure is a module-level function: the engine caches the figures by it."""

    figure: Figure
    op: Literal["<", ">", ">="]
    threshold: Any


@dataclass(frozen=True, slots=True)
class Condition:
    name: str
    spec: Any  # the type the YAML value is validated as
    description: str  # for the JSON Schema and the docs
    scope: Scope
    check: Callable[[Any, Target], tuple[bool, Seen]]
    explain: Callable[[Any, Target, bool, Seen], dict[str, Any]]  # -> seen, threshold, distance
    # the threshold as a fired line carries it (its JSON form) for people; None: the JSON is shown
    words: Callable[[Any], str | None] | None = None
    # the check's verdict alone, without the inputs seen (the engine's hot path: most targets do not
    # hold, and their inputs are never looked at); None: check(...)[0]. Must agree with check (the
    # engine checks a target that passes it again with check, so it may never be False where check holds).
    test: Callable[[Any, Target], bool] | None = None
    # a necessary test (spec) -> Bound or None (see Bound): the engine tests only the targets it lets through
    bound: Callable[[Any], Bound | None] | None = None

    @property
    def predicate(self) -> Callable[[Any, Target], bool]:
        """(spec, target) -> holds, as cheaply as the condition allows."""
        if self.test is not None:
            return self.test
        check = self.check
        return lambda spec, target: check(spec, target)[0]

    def row(self, spec: Any, target: Target) -> dict[str, Any]:
        """One condition of one target as `riskd once` shows it."""
        holds, seen = self.check(spec, target)
        return {"name": self.name, "holds": holds, **self.explain(spec, target, holds, seen)}


# ---------------------------------------------------------------------------------------------
# Clock.


def _between(spec: tuple[Any, Any], t: Target) -> tuple[bool, Seen]:
    local = t.local.time().replace(microsecond=0)
    if t.market is not None and relative_window(spec):
        return _in_session_window(spec, t) is not None, {"local_time": local.isoformat()}
    day = t.local.date()
    if spec[0] > spec[1] and local < spec[1]:
        day -= timedelta(days=1)  # past midnight in a wrapping window: it belongs to the day it opened
    return _on_day(t, day) and in_window(spec, local), {"local_time": local.isoformat()}


def _outside(spec: tuple[Any, Any], t: Target) -> tuple[bool, Seen]:
    local = t.local.time().replace(microsecond=0)
    if t.market is not None and relative_window(spec):
        inside = _in_session_window(spec, t) is not None
    else:
        inside = in_window(spec, local)
    return _on_day(t, t.local.date()) and not inside, {"local_time": local.isoformat()}


def _on_day(t: Target, day: date) -> bool:
    """Is `day` one of the rule's days (and, for `days: trading_days`, a day its market trades)?"""
    return day.weekday() in t.days and (not t.trading_days or t.calendar.trading_day(t.market, day))


def _in_session_window(spec: tuple[Any, Any], t: Target) -> tuple[datetime, datetime] | None:
    """A window with a session-relative edge: the bounds of the one holding `now`, on a session of the rule's days."""
    return t.calendar.window_at(spec, t.market, t.local.tzinfo, t.days, t.now)


def _next_session_edge(spec: tuple[Any, Any], edge: int, t: Target) -> datetime | None:
    for session in t.calendar.sessions_near(t.market, t.now, 0, 10):
        if session.day.weekday() in t.days:
            at = window_bounds(spec, session, t.local.tzinfo)[edge]
            if at > t.now:
                return at
    return None


def _explain_window(name: str) -> Callable[[Any, Target, bool, Seen], dict[str, Any]]:
    def explain(spec: tuple[Any, Any], t: Target, holds: bool, seen: Seen) -> dict[str, Any]:
        start, end = spec
        row = {"seen": seen["local_time"], "threshold": f"{name} {start.isoformat()}-{end.isoformat()}", "distance": "holds"}
        if t.market is not None:
            row["threshold"] += f" ({t.market}{', trading days' if t.trading_days else ''})"
        if not holds:
            index = 0 if name == "between" else 1
            if t.market is not None and relative_window(spec):
                nxt = _next_session_edge(spec, index, t)
            else:
                nxt = next((o for o in wall_occurrences(spec[index], t.days, t.local.tzinfo, t.now, 1)
                            if o > t.now and _on_day(t, o.date())), None)
            row["distance"] = f"holds from {nxt.isoformat()} (in {format_span(nxt - t.now)})" if nxt else "never"
        return row

    return explain


# ---------------------------------------------------------------------------------------------
# Position.


class Level(RuleModel):
    """A dollar threshold: exactly one of below / above."""

    expected: ClassVar[str] = "a threshold such as {below: -500}"
    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["below"]}, {"required": ["above"]}]})

    below: Money | None = Field(None, description="holds when the value is less than this (dollars)")
    above: Money | None = Field(None, description="holds when the value is more than this (dollars)")

    @classmethod
    def _cross(cls, raw: dict[str, Any], misspelt: bool) -> Cross:
        if ("below" in raw) == ("above" in raw) and not (misspelt and "below" not in raw):
            return [((), "give exactly one of 'below' or 'above' (write two rules for a band)")]
        return []

    def holds(self, value: float) -> bool:
        return value < self.below if self.below is not None else value > self.above  # type: ignore[operator]

    def describe(self) -> dict[str, float]:
        return {"below": self.below} if self.below is not None else {"above": self.above}  # type: ignore[dict-item]


class SizeLevel(RuleModel):
    expected: ClassVar[str] = "a threshold such as {above: 10}"
    above: Contracts = Field(description="holds when the absolute position size is larger than this (contracts)")


class AgeLevel(RuleModel):
    expected: ClassVar[str] = "a threshold such as {above: 30m}"
    above: Duration = Field(description="holds when the position has been open longer than this")


def _level(value: float, spec: Any, holds: bool) -> dict[str, Any]:
    side, level = next(iter(spec.describe().items()))
    gap = value - level if side == "below" else level - value
    return {"seen": round(value, 2), "threshold": f"{side} {level:.2f}", "distance": "holds" if holds else f"${gap:.2f} to go",
            **_gap(gap, abs(level), "$", holds)}


def _gap(gap: float, span: float, unit: str, holds: bool) -> dict[str, Any]:
    """The distance to firing as numbers: `gap` (in `unit`; 0 once it holds) left of `span` (the
    threshold's size), and that gap in percent of the span (None when the span is 0)."""
    gap = 0.0 if holds else max(gap, 0.0)
    return {"gap": round(gap, 2), "span": round(span, 2), "unit": unit, "gap_percent": round(100 * gap / span, 1) if span else None}


def _position_pnl(spec: Any, t: Target) -> tuple[bool, Seen]:
    value = t.position.unrealized_pnl  # type: ignore[union-attr]
    return spec.holds(value), {"position_pnl": value}


def _position_pnl_holds(spec: Any, t: Target) -> bool:
    return spec.holds(t.position.unrealized_pnl)  # type: ignore[no-any-return,union-attr]


def _position_pnl_figure(account: Account, position: Position | None, peak: float, seen: datetime | None, now: datetime) -> float:
    return position.unrealized_pnl  # type: ignore[union-attr]


def _level_bound(figure: Figure) -> Callable[[Any], Bound]:
    def bound(spec: Any) -> Bound:
        return Bound(figure, "<", spec.below) if spec.below is not None else Bound(figure, ">", spec.above)

    return bound


def _position_size(spec: Any, t: Target) -> tuple[bool, Seen]:
    size = t.position.quantity  # type: ignore[union-attr]
    return size > spec.above, {"position_size": size}


def _position_size_holds(spec: Any, t: Target) -> bool:
    return t.position.quantity > spec.above  # type: ignore[no-any-return,union-attr]


def _position_size_figure(account: Account, position: Position | None, peak: float, seen: datetime | None, now: datetime) -> int:
    return position.quantity  # type: ignore[union-attr]


def _explain_position_size(spec: Any, t: Target, holds: bool, seen: Seen) -> dict[str, Any]:
    return {"seen": seen["position_size"], "threshold": f"above {spec.above}",
            "distance": "holds" if holds else f"{spec.above + 1 - seen['position_size']} contract(s) to go",
            **_gap(spec.above + 1 - seen["position_size"], spec.above + 1, "contracts", holds)}


def _position_age(spec: Any, t: Target) -> tuple[bool, Seen]:
    age = (t.now - t.first_seen) if t.first_seen else timedelta(0)
    return age > spec.above, {"position_age_s": round(age.total_seconds(), 3)}


def _position_age_holds(spec: Any, t: Target) -> bool:
    return ((t.now - t.first_seen) if t.first_seen else _NO_AGE) > spec.above  # type: ignore[no-any-return]


_NO_AGE = timedelta(0)


def _position_age_figure(account: Account, position: Position | None, peak: float, seen: datetime | None, now: datetime) -> timedelta:
    return (now - seen) if seen else _NO_AGE


def _explain_position_age(spec: Any, t: Target, holds: bool, seen: Seen) -> dict[str, Any]:
    age = timedelta(seconds=seen["position_age_s"])
    return {"seen": format_span(age), "threshold": f"above {format_span(spec.above)}",
            "distance": "holds" if holds else f"{format_span(spec.above - age)} to go",
            **_gap((spec.above - age).total_seconds(), spec.above.total_seconds(), "s", holds)}


# ---------------------------------------------------------------------------------------------
# Account.


class AccountPnl(Level):
    expected: ClassVar[str] = "a threshold such as {below: -1000}"
    model_config = ConfigDict(json_schema_extra={
        "oneOf": [{"required": ["below"]}, {"required": ["above"]}],
        "if": {"required": ["basis"], "properties": {"basis": {"const": "unrealized"}}},
        "then": {"properties": {"period": {"const": "session"}}},
    })
    basis: Literal["total", "realized", "unrealized"] = Field("total", description="realized + unrealized (total), or one of them")
    net_of_commission: Flag = Field(False, description="subtract the session's commissions")
    once_above: Money | None = Field(None, description="a profit floor: holds only once the session P&L peak has reached this "
                                                       "(dollars); with below, the floor")
    period: Literal["session", "week", "month"] = Field(
        "session", description="the P&L of this session, or of the trading week (from the Sunday 18:00 session) or month it is in")

    @classmethod
    def _cross(cls, raw: dict[str, Any], misspelt: bool) -> Cross:
        problems = super()._cross(raw, misspelt)
        if raw.get("basis") == "unrealized" and raw.get("period", "session") != "session":
            problems.append((("period",), "the open P&L (basis: unrealized) is not summed across sessions; "
                                          "use basis: total or realized, or remove 'period'"))
        if "once_above" in raw and raw.get("period", "session") != "session":
            problems.append((("once_above",), "'once_above' arms on the session P&L peak: use it without 'period' (a session floor), "
                                              "or remove once_above"))
        if "once_above" not in raw:
            return problems
        trigger, floor = lenient(_money, raw["once_above"]), lenient(_money, raw.get("below"))
        if "above" in raw:
            problems.append((("once_above",), "'once_above' arms a floor: use it with 'below' (e.g. {below: 400, once_above: 800}), "
                                              "not 'above'"))
        elif trigger is not None and floor is not None and trigger <= floor:
            problems.append((("once_above",), f"the floor ({floor:g}) must be below the trigger ({trigger:g}), or the rule fires "
                                              f"the moment it arms; raise once_above or lower below"))
        if raw.get("basis", "total") != "total" or raw.get("net_of_commission") is True:
            problems.append((("once_above",), "'once_above' is measured on the session P&L peak (realized + unrealized, before "
                                              "commission); remove basis/net_of_commission, or once_above"))
        return problems


class Drawdown(RuleModel):
    expected: ClassVar[str] = "a drawdown such as {limit: 300, after: 500}"
    model_config = ConfigDict(json_schema_extra={
        "if": {"required": ["metric"], "properties": {"metric": {"const": "balance"}}},
        "then": {"not": {"required": ["after"]}},
        "else": {"allOf": [{"not": {"required": ["start"]}}, {"not": {"required": ["stop_trailing_at"]}},
                           {"properties": {"trail": {"const": "intraday"}}}]},
    })
    limit: DrawdownLimit = Field(description="dollars below the peak, or 'N%' of the peak")
    after: Money = Field(0.0, description="the drawdown arms once the session P&L peak has reached this (dollars)")
    metric: Literal["session_pnl", "balance"] = Field(
        "session_pnl", description="what trails: the session P&L (its peak resets each session) or the balance (net liquidation)")
    trail: Literal["intraday", "end_of_day"] = Field(
        "intraday", description="balance: the peak follows every tick (intraday) or only each session's closing balance")
    start: Money | None = Field(None, description="balance: the peak starts at this balance (the account's starting balance)")
    stop_trailing_at: Money | None = Field(None, description="balance: the floor never rises above this level (it freezes there)")

    @classmethod
    def _cross(cls, raw: dict[str, Any], misspelt: bool) -> Cross:
        problems: Cross = []
        if raw.get("metric", "session_pnl") == "balance":
            if "after" in raw:
                problems.append((("after",), "'after' arms a session P&L drawdown; a balance drawdown trails from 'start'; remove 'after'"))
            limit, start, stop = lenient(drawdown_limit, raw.get("limit")), raw.get("start"), raw.get("stop_trailing_at")
            if limit is not None and isinstance(start, (int, float)) and isinstance(stop, (int, float)):
                first = _floor(limit, float(start))
                if float(stop) <= first:
                    problems.append((("stop_trailing_at",), f"the floor starts at {first:.2f} (start less the limit), so a floor frozen "
                                                            f"at {float(stop):.2f} never trails; raise 'stop_trailing_at' or remove it"))
        else:
            if raw.get("trail") == "end_of_day":
                problems.append((("trail",), "'trail: end_of_day' needs 'metric: balance' (the session P&L starts at 0 every session)"))
            for key in ("start", "stop_trailing_at"):
                if key in raw:
                    problems.append(((key,), f"'{key}' applies only with 'metric: balance'; add it or remove '{key}'"))
        return problems


def _floor(limit: Any, peak: float) -> float:
    kind, amount = limit
    return peak - (amount * peak if kind == "percent" else amount)


def _account_pnl(spec: Any, t: Target) -> tuple[bool, Seen]:
    if spec.period != "session" and t.history is not None:
        value, gap = t.history.period_pnl(spec.period, spec.basis, spec.net_of_commission)
        seen = {"period_pnl": round(value, 2), "period": spec.period, "session_pnl": t.account.pnl(spec.basis, spec.net_of_commission),
                "basis": spec.basis, "net_of_commission": spec.net_of_commission}
        return spec.holds(value), {**seen, "gap": gap} if gap else seen
    value = t.account.pnl(spec.basis, spec.net_of_commission)
    # derived numbers are seen (audited, explained) in cents: -1100.0, not -1099.9999999999943; the check uses the exact value
    seen = {"account_pnl": round(value, 2), "basis": spec.basis, "net_of_commission": spec.net_of_commission}
    if spec.once_above is None:
        return spec.holds(value), seen
    armed = t.peak >= spec.once_above  # the peak persists for the session: once armed, the floor stays armed
    return armed and spec.holds(value), {**seen, "peak": round(t.peak, 2), "armed": armed}


def _account_pnl_holds(spec: Any, t: Target) -> bool:
    if spec.period != "session" and t.history is not None:
        return _account_pnl(spec, t)[0]
    if spec.once_above is not None and t.peak < spec.once_above:
        return False
    return spec.holds(t.account.pnl(spec.basis, spec.net_of_commission))  # type: ignore[no-any-return]


@lru_cache(maxsize=None)
def _account_pnl_figure(basis: str, net_of_commission: bool) -> Figure:
    def figure(account: Account, position: Position | None, peak: float, seen: datetime | None, now: datetime) -> float:
        return account.pnl(basis, net_of_commission)

    return figure


def _account_pnl_bound(spec: Any) -> Bound | None:
    if spec.period != "session":
        return None
    return _level_bound(_account_pnl_figure(spec.basis, spec.net_of_commission))(spec)


def _explain_account_pnl(spec: Any, t: Target, holds: bool, seen: Seen) -> dict[str, Any]:
    row = _level(seen["period_pnl"] if "period_pnl" in seen else seen["account_pnl"], spec, holds)
    if spec.basis != "total" or spec.net_of_commission:
        row["threshold"] += f" ({spec.basis}{', net of commission' if spec.net_of_commission else ''})"
    if spec.once_above is not None:
        row["threshold"] += f" once the peak reached {spec.once_above:.2f} (peak {seen['peak']:.2f})"
        if not seen["armed"]:
            row["distance"] = f"inactive until the session P&L reaches {spec.once_above:.2f} (${spec.once_above - seen['peak']:.2f} to go)"
    if "period" in seen:
        row["threshold"] += f" this {seen['period']}"
        gap = seen.get("gap")
        if gap:
            row["distance"] += f" (counts {gap['counted']:.2f} riskd did not see, from {gap['source']})"
    return row


def drawdown_floor(spec: Any, peak: float) -> float:
    """Given an account_drawdown spec and its peak, return the level at which it fires (a balance
    floor stops rising at stop_trailing_at)."""
    floor = _floor(spec.limit, peak)
    return min(floor, spec.stop_trailing_at) if spec.stop_trailing_at is not None else floor


def balance_high(spec: Any, t: Target) -> float:
    """A balance drawdown's high-water mark: the account's mark for its trail, never below `start`."""
    high = t.history.high(spec.trail) if t.history is not None else t.account.net_liquidation
    return max(high, spec.start) if spec.start is not None else high


def _balance_drawdown(spec: Any, t: Target) -> tuple[bool, Seen]:
    if not t.account.balance_known:  # the snapshot gave no netLiquidation: not a balance of 0
        return False, {"balance": None, "trail": spec.trail}
    balance, high = t.account.net_liquidation, balance_high(spec, t)
    floor = drawdown_floor(spec, high)
    frozen = spec.stop_trailing_at is not None and floor == spec.stop_trailing_at
    return balance <= floor, {"balance": round(balance, 2), "high": round(high, 2), "floor": round(floor, 2), "trail": spec.trail,
                              "frozen": frozen}


def _account_drawdown(spec: Any, t: Target) -> tuple[bool, Seen]:
    if spec.metric == "balance":
        return _balance_drawdown(spec, t)
    pnl = t.account.pnl()
    floor = drawdown_floor(spec, t.peak)
    armed = t.peak >= spec.after and (spec.limit[0] == "dollars" or t.peak > 0)  # N% of a zero peak is no limit yet
    return armed and pnl <= floor, {"account_pnl": round(pnl, 2), "peak": round(t.peak, 2), "floor": round(floor, 2), "armed": armed}


def _giveback_figure(account: Account, position: Position | None, peak: float, seen: datetime | None, now: datetime) -> float:
    """How far the session P&L is below its peak, raised by far more than the rounding of either
    subtraction (1e-9 relative, against 2**-52) so that `giveback >= limit` holds wherever
    `pnl <= peak - limit` does."""
    pnl = account.pnl()
    return peak - pnl + 1e-9 * (abs(peak) + abs(pnl) + 1.0)


def _account_drawdown_bound(spec: Any) -> Bound | None:
    if spec.metric != "session_pnl" or spec.limit[0] != "dollars":
        return None
    return Bound(_giveback_figure, ">=", spec.limit[1] * (1 - 1e-9) - 1e-9)


def _explain_account_drawdown(spec: Any, t: Target, holds: bool, seen: Seen) -> dict[str, Any]:
    kind, amount = spec.limit
    limit = f"{amount * 100:g}% of the peak" if kind == "percent" else f"${amount:.2f}"
    if spec.metric == "balance" and seen["balance"] is None:
        return {"seen": "balance not reported", "threshold": f"{limit} below the {spec.trail} high",
                "distance": "unknown: no netLiquidation"}
    if spec.metric == "balance":
        trail = "end-of-day" if spec.trail == "end_of_day" else "intraday"
        frozen = f", frozen at {spec.stop_trailing_at:.2f}" if seen["frozen"] else (
            f", freezes at {spec.stop_trailing_at:.2f}" if spec.stop_trailing_at is not None else "")
        return {"seen": f"balance {seen['balance']:.2f}",
                "threshold": f"{limit} below the {trail} high (high {seen['high']:.2f}, floor {seen['floor']:.2f}{frozen})",
                "distance": "holds" if holds else f"${seen['balance'] - seen['floor']:.2f} to go"}
    row = {"seen": round(seen["account_pnl"], 2),
           "threshold": f"{limit} below the peak (peak {seen['peak']:.2f}, floor {seen['floor']:.2f})"}
    if not seen["armed"]:
        row["distance"] = f"inactive until the peak reaches {max(spec.after, 0):.2f}" + (" and is above 0" if kind == "percent" else "")
    else:
        row["distance"] = "holds" if holds else f"${seen['account_pnl'] - seen['floor']:.2f} to go"
        row.update(_gap(seen["account_pnl"] - seen["floor"], seen["peak"] - seen["floor"], "$", holds))
    return row


# ---------------------------------------------------------------------------------------------
# Size across positions (scope `group`: the target's account holds only the positions in the rule's scope).


class GroupSize(RuleModel):
    expected: ClassVar[str] = "a cap such as {above: 5}"
    above: Contracts = Field(description="holds when larger than this, in full-size contracts (micros weighed)")
    micro_weight: Weight | None = Field(None, description=f"what one micro counts as (default {MICRO_WEIGHT} of its "
                                                                      "full-size contract, see rules/README.md)")


def _instrument_size(spec: Any, t: Target) -> tuple[bool, Seen]:
    sizes = {root: weighted(ps, spec.micro_weight) for root, ps in by_root(t.account.positions, spec.micro_weight).items()}
    root = max(sizes, key=lambda r: (sizes[r], r), default=None)
    largest = sizes[root] if root is not None else 0.0
    return largest > spec.above, {"instrument_size": largest, "root": root, "sizes": sizes}


def _account_size(spec: Any, t: Target) -> tuple[bool, Seen]:
    size = weighted(t.account.positions, spec.micro_weight)
    return size > spec.above, {"account_size": size}


def _explain_size(name: str) -> Callable[[Any, Target, bool, Seen], dict[str, Any]]:
    def explain(spec: Any, t: Target, holds: bool, seen: Seen) -> dict[str, Any]:
        value = seen[name]
        where = f", {seen['root']} and its micros" if seen.get("root") else ""
        return {"seen": value, "threshold": f"above {spec.above} full-size contract(s){where}",
                "distance": "holds" if holds else f"more than {round(spec.above - value, 6):g} contract(s) to go"}

    return explain


# ---------------------------------------------------------------------------------------------
# Trades and streaks (riskd.trades counts the round trips).


class CountLevel(RuleModel):
    expected: ClassVar[str] = "a threshold such as {above: 3}"
    above: Count = Field(description="holds when the count is more than this")


def _counter(field: str, name: str) -> Callable[[Any, Target], tuple[bool, Seen]]:
    def check(spec: Any, t: Target) -> tuple[bool, Seen]:
        count = int(((t.history.trades if t.history is not None else None) or {}).get(field, 0))
        return count > spec.above, {name: count}

    return check


def _explain_count(name: str, unit: str) -> Callable[[Any, Target, bool, Seen], dict[str, Any]]:
    def explain(spec: Any, t: Target, holds: bool, seen: Seen) -> dict[str, Any]:
        count = seen[name]
        distance = "holds" if holds else f"{spec.above + 1 - count} {unit} to go"
        return {"seen": count, "threshold": f"above {spec.above}", "distance": distance}

    return explain


# ---------------------------------------------------------------------------------------------
# News: the events of the trader's event file (riskd.calendar).


class NearEvent(RuleModel):
    expected: ClassVar[str] = "a window around news events such as {before: 2m, after: 2m, tags: [fomc]}"
    before: Duration = Field(timedelta(0), description="holds from this long before an event")
    after: Duration = Field(timedelta(0), description="until this long after it")
    tags: Tags | None = Field(None, description="only events with one of these tags (default: every event)")

    @classmethod
    def _cross(cls, raw: dict[str, Any], misspelt: bool) -> Cross:
        if not misspelt and "before" not in raw and "after" not in raw:
            return [((), "give 'before', 'after' or both, e.g. {before: 2m, after: 2m}")]
        return []


def _near_event(spec: Any, t: Target) -> tuple[bool, Seen]:
    event = t.calendar.event_near(t.now, spec.before, spec.after, frozenset(spec.tags or ())) if t.calendar else None
    if event is None:
        return False, {}
    return True, {"event": event.name, "event_at": event.at.isoformat(), "event_tags": sorted(event.tags)}


def _explain_near_event(spec: Any, t: Target, holds: bool, seen: Seen) -> dict[str, Any]:
    window = f"{format_span(spec.before)} before to {format_span(spec.after)} after" + (f" {', '.join(spec.tags)}" if spec.tags else "")
    if holds:
        return {"seen": f"{seen['event']} at {seen['event_at']}", "threshold": window, "distance": "holds"}
    nxt = t.calendar.next_event(t.now + spec.before, frozenset(spec.tags or ())) if t.calendar else None
    if nxt is None:
        return {"seen": "no event ahead", "threshold": window, "distance": "never (no event in the event file)"}
    starts = nxt.at - spec.before
    return {"seen": f"next: {nxt.name} at {nxt.at.isoformat()}", "threshold": window,
            "distance": f"holds from {starts.isoformat()} (in {format_span(starts - t.now)})"}



# ---------------------------------------------------------------------------------------------
# Thresholds for people: a fired line's `threshold` (JSON) as the trail and the report write it.


def dollars(value: Any, signed: bool = False) -> str:
    """-500 -> "-$500", 1250.5 -> "$1,250.50" (signed: "+$500")."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    sign = "-" if number < 0 else "+" if signed and number > 0 else ""
    return f"{sign}${abs(number):,.0f}" if number == round(number) else f"{sign}${abs(number):,.2f}"


def _words_pnl(what: str) -> Callable[[Any], str | None]:
    def words(spec: Any) -> str | None:
        if not isinstance(spec, dict):
            return None
        side = "below" if "below" in spec else "above" if "above" in spec else None
        if side is None:
            return None
        basis = spec.get("basis", "total")
        label = what if what == "position P&L" or basis == "total" else f"{basis} P&L"
        period = f" this {spec['period']}" if spec.get("period", "session") != "session" else ""
        net = " net of commission" if spec.get("net_of_commission") else ""
        floor = f" once the peak reached {dollars(spec['once_above'], signed=True)}" if spec.get("once_above") is not None else ""
        return f"{label}{period}{net} {side} {dollars(spec[side])}{floor}"

    return words


def _words_drawdown(spec: Any) -> str | None:
    limit = spec.get("limit") if isinstance(spec, dict) else None
    if not (isinstance(limit, list) and len(limit) == 2):
        return None
    kind, amount = limit
    base = "the balance high" if spec.get("metric") == "balance" else "the peak"
    given = f"{float(amount) * 100:g}% of {base} given back" if kind == "percent" else f"{dollars(amount)} below {base}"
    after = f" after {dollars(spec['after'], signed=True)}" if spec.get("after") else ""
    return f"{given}{after}"


def _words_above(text: str) -> Callable[[Any], str | None]:
    def words(spec: Any) -> str | None:
        return text.format(spec["above"]) if isinstance(spec, dict) and "above" in spec else None

    return words


def _words_age(spec: Any) -> str | None:
    if not (isinstance(spec, dict) and "above" in spec):
        return None
    return f"open longer than {format_span(timedelta(seconds=float(spec['above'])))}"


def _words_near_event(spec: Any) -> str | None:
    if not isinstance(spec, dict):
        return None
    before, after = (format_span(timedelta(seconds=float(spec.get(k) or 0))) for k in ("before", "after"))
    tags = f" ({', '.join(spec['tags'])})" if spec.get("tags") else ""
    return f"from {before} before to {after} after a news event{tags}"


def _words_window(name: str) -> Callable[[Any], str | None]:
    def words(spec: Any) -> str | None:
        if not (isinstance(spec, list) and len(spec) == 2):
            return None
        start, end = (str(t)[:5] for t in spec)
        return f"{name} {start}-{end}"

    return words


REGISTRY: dict[str, Condition] = {c.name: c for c in (
    Condition("between", Window, "local time is inside the window [start, end); may wrap midnight",
              "clock", _between, _explain_window("between"), _words_window("between")),
    Condition("outside", Window, "local time is outside the window [start, end)",
              "clock", _outside, _explain_window("outside"), _words_window("outside")),
    Condition("position_pnl", Level, "the position's unrealized P&L (dollars)",
              "position", _position_pnl, lambda spec, t, holds, seen: _level(seen["position_pnl"], spec, holds),
              _words_pnl("position P&L"), _position_pnl_holds, _level_bound(_position_pnl_figure)),
    Condition("position_size", SizeLevel, "the position's absolute size (contracts)",
              "position", _position_size, _explain_position_size, _words_above("size above {} contracts"),
              _position_size_holds, lambda spec: Bound(_position_size_figure, ">", spec.above)),
    Condition("position_age", AgeLevel, "how long the position has been open",
              "position", _position_age, _explain_position_age, _words_age, _position_age_holds,
              lambda spec: Bound(_position_age_figure, ">", spec.above)),
    Condition("account_pnl", AccountPnl, "the account's session P&L (dollars)",
              "account", _account_pnl, _explain_account_pnl, _words_pnl("session P&L"), _account_pnl_holds, _account_pnl_bound),
    Condition("account_drawdown", Drawdown, "giveback from the session P&L peak, or from the balance high-water mark",
              "account", _account_drawdown, _explain_account_drawdown, _words_drawdown, bound=_account_drawdown_bound),
    Condition("instrument_size", GroupSize, "per root, every contract month together, micros weighed against minis",
              "group", _instrument_size, _explain_size("instrument_size"),
              _words_above("more than {} full-size contracts of one root")),
    Condition("account_size", GroupSize, "all positions in scope together, micros weighed against minis",
              "group", _account_size, _explain_size("account_size"), _words_above("more than {} full-size contracts in all")),
    # per position: each position open (or opened) in the window is a target, so the window stays flat
    Condition("near_event", NearEvent, "within a window around a news event of the event file (riskd.yaml calendar.events)",
              "position", _near_event, _explain_near_event, _words_near_event),
    Condition("trades", CountLevel, "round trips closed this session (from the account's executions)",
              "account", _counter("count", "trades"), _explain_count("trades", "round trip(s)"), _words_above("more than {} round trips")),
    Condition("loss_streak", CountLevel, "losing round trips in a row this session (from the account's executions)",
              "account", _counter("streak", "loss_streak"), _explain_count("loss_streak", "losing round trip(s)"),
              _words_above("more than {} losing round trips in a row")),
)}
