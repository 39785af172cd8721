"""The conditions a rule's `when` can hold: one registry entry each.

An entry is the whole condition: its name (the YAML key under `when`), its spec (the type its
value is validated as: a model below or a riskd.fields type), its scope (`position`: evaluated per
matched position; `account`: per account; `group`: per account, over its positions in the rule's
scope, which the engine passes as the account's positions; `clock`: the same for every target), the pure check
(spec, target) -> (holds, inputs seen), and the explanation `riskd once` prints (the value seen, the
threshold, how far it is from holding). riskd.rules builds `when` from this registry, so adding a
condition is one `Condition(...)` here (with its spec model if it needs a new one) and its tests.

Pure: no I/O, no clock; `now` arrives in the Target.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any, Callable, ClassVar, Literal, NamedTuple

from pydantic import ConfigDict, Field

from riskd.fields import Contracts, Cross, DrawdownLimit, Duration, Flag, Money, RuleModel, Weight, Window, _money, lenient
from riskd.model import Account, Position
from riskd.schedule import format_span, in_window, wall_occurrences
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


Seen = dict[str, Any]
Scope = Literal["position", "account", "group", "clock"]


@dataclass(frozen=True, slots=True)
class Condition:
    name: str
    spec: Any  # the type the YAML value is validated as
    description: str  # for the JSON Schema and the docs
    scope: Scope
    check: Callable[[Any, Target], tuple[bool, Seen]]
    explain: Callable[[Any, Target, bool, Seen], dict[str, Any]]  # -> seen, threshold, distance

    def row(self, spec: Any, target: Target) -> dict[str, Any]:
        """One condition of one target as `riskd once` shows it."""
        holds, seen = self.check(spec, target)
        return {"name": self.name, "holds": holds, **self.explain(spec, target, holds, seen)}


# ---------------------------------------------------------------------------------------------
# Clock.


def _between(spec: tuple[time, time], t: Target) -> tuple[bool, Seen]:
    local = t.local.time().replace(microsecond=0)
    day = t.local.date()
    if spec[0] > spec[1] and local < spec[1]:
        day -= timedelta(days=1)  # past midnight in a wrapping window: it belongs to the day it opened
    return day.weekday() in t.days and in_window(spec, local), {"local_time": local.isoformat()}


def _outside(spec: tuple[time, time], t: Target) -> tuple[bool, Seen]:
    local = t.local.time().replace(microsecond=0)
    return t.local.weekday() in t.days and not in_window(spec, local), {"local_time": local.isoformat()}


def _explain_window(name: str) -> Callable[[Any, Target, bool, Seen], dict[str, Any]]:
    def explain(spec: tuple[time, time], t: Target, holds: bool, seen: Seen) -> dict[str, Any]:
        start, end = spec
        row = {"seen": seen["local_time"], "threshold": f"{name} {start.isoformat()}-{end.isoformat()}", "distance": "holds"}
        if not holds:
            edge = start if name == "between" else end
            nxt = next((o for o in wall_occurrences(edge, t.days, t.local.tzinfo, t.now, 1) if o > t.now), None)
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


def _position_size(spec: Any, t: Target) -> tuple[bool, Seen]:
    size = t.position.quantity  # type: ignore[union-attr]
    return size > spec.above, {"position_size": size}


def _explain_position_size(spec: Any, t: Target, holds: bool, seen: Seen) -> dict[str, Any]:
    return {"seen": seen["position_size"], "threshold": f"above {spec.above}",
            "distance": "holds" if holds else f"{spec.above + 1 - seen['position_size']} contract(s) to go",
            **_gap(spec.above + 1 - seen["position_size"], spec.above + 1, "contracts", holds)}


def _position_age(spec: Any, t: Target) -> tuple[bool, Seen]:
    age = (t.now - t.first_seen) if t.first_seen else timedelta(0)
    return age > spec.above, {"position_age_s": round(age.total_seconds(), 3)}


def _explain_position_age(spec: Any, t: Target, holds: bool, seen: Seen) -> dict[str, Any]:
    age = timedelta(seconds=seen["position_age_s"])
    return {"seen": format_span(age), "threshold": f"above {format_span(spec.above)}",
            "distance": "holds" if holds else f"{format_span(spec.above - age)} to go",
            **_gap((spec.above - age).total_seconds(), spec.above.total_seconds(), "s", holds)}


# ---------------------------------------------------------------------------------------------
# Account.


class AccountPnl(Level):
    expected: ClassVar[str] = "a threshold such as {below: -1000}"
    basis: Literal["total", "realized", "unrealized"] = Field("total", description="realized + unrealized (total), or one of them")
    net_of_commission: Flag = Field(False, description="subtract the session's commissions")
    once_above: Money | None = Field(None, description="a profit floor: holds only once the session P&L peak has reached this "
                                                       "(dollars); with below, the floor")

    @classmethod
    def _cross(cls, raw: dict[str, Any], misspelt: bool) -> Cross:
        problems = super()._cross(raw, misspelt)
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
    limit: DrawdownLimit = Field(description="dollars below the session P&L peak, or 'N%' of the peak")
    after: Money = Field(0.0, description="the drawdown arms once the session P&L peak has reached this (dollars)")


def _account_pnl(spec: Any, t: Target) -> tuple[bool, Seen]:
    value = t.account.pnl(spec.basis, spec.net_of_commission)
    # derived numbers are seen (audited, explained) in cents: -1100.0, not -1099.9999999999943; the check uses the exact value
    seen = {"account_pnl": round(value, 2), "basis": spec.basis, "net_of_commission": spec.net_of_commission}
    if spec.once_above is None:
        return spec.holds(value), seen
    armed = t.peak >= spec.once_above  # the peak persists for the session: once armed, the floor stays armed
    return armed and spec.holds(value), {**seen, "peak": round(t.peak, 2), "armed": armed}


def _explain_account_pnl(spec: Any, t: Target, holds: bool, seen: Seen) -> dict[str, Any]:
    row = _level(seen["account_pnl"], spec, holds)
    if spec.basis != "total" or spec.net_of_commission:
        row["threshold"] += f" ({spec.basis}{', net of commission' if spec.net_of_commission else ''})"
    if spec.once_above is not None:
        row["threshold"] += f" once the peak reached {spec.once_above:.2f} (peak {seen['peak']:.2f})"
        if not seen["armed"]:
            row["distance"] = f"inactive until the session P&L reaches {spec.once_above:.2f} (${spec.once_above - seen['peak']:.2f} to go)"
    return row


def drawdown_floor(spec: Any, peak: float) -> float:
    """Given an account_drawdown spec and the session peak, return the P&L at which it fires."""
    kind, amount = spec.limit
    return peak - (amount * peak if kind == "percent" else amount)


def _account_drawdown(spec: Any, t: Target) -> tuple[bool, Seen]:
    pnl = t.account.pnl()
    floor = drawdown_floor(spec, t.peak)
    armed = t.peak >= spec.after and (spec.limit[0] == "dollars" or t.peak > 0)  # N% of a zero peak is no limit yet
    return armed and pnl <= floor, {"account_pnl": round(pnl, 2), "peak": round(t.peak, 2), "floor": round(floor, 2), "armed": armed}


def _explain_account_drawdown(spec: Any, t: Target, holds: bool, seen: Seen) -> dict[str, Any]:
    kind, amount = spec.limit
    limit = f"{amount * 100:g}% of the peak" if kind == "percent" else f"${amount:.2f}"
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


REGISTRY: dict[str, Condition] = {c.name: c for c in (
    Condition("between", Window, "local time is inside the window [start, end); may wrap midnight",
              "clock", _between, _explain_window("between")),
    Condition("outside", Window, "local time is outside the window [start, end)",
              "clock", _outside, _explain_window("outside")),
    Condition("position_pnl", Level, "the position's unrealized P&L (dollars)",
              "position", _position_pnl, lambda spec, t, holds, seen: _level(seen["position_pnl"], spec, holds)),
    Condition("position_size", SizeLevel, "the position's absolute size (contracts)",
              "position", _position_size, _explain_position_size),
    Condition("position_age", AgeLevel, "how long the position has been open",
              "position", _position_age, _explain_position_age),
    Condition("account_pnl", AccountPnl, "the account's session P&L (dollars)",
              "account", _account_pnl, _explain_account_pnl),
    Condition("account_drawdown", Drawdown, "giveback from the session P&L peak",
              "account", _account_drawdown, _explain_account_drawdown),
    Condition("instrument_size", GroupSize, "per root, every contract month together, micros weighed against minis",
              "group", _instrument_size, _explain_size("instrument_size")),
    Condition("account_size", GroupSize, "all positions in scope together, micros weighed against minis",
              "group", _account_size, _explain_size("account_size")),
)}
