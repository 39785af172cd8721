"""Engine test kit: rules from YAML text, snapshots from a few numbers, and a harness that runs
ticks at injected instants and acknowledges firings the way the daemon does after the API said yes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from riskd import engine, rules
from riskd.engine import EngineSettings, State
from riskd.model import Account, Decision, Position, Rule, Snapshot

NY = ZoneInfo("America/New_York")
CHICAGO = ZoneInfo("America/Chicago")
UTC = timezone.utc
SETTINGS = EngineSettings(zone=NY)


def ny(year: int, month: int, day: int, hour: int = 12, minute: int = 0, second: int = 0, fold: int = 0) -> datetime:
    """A New York wall-clock time as a UTC instant (what the daemon passes as `now`)."""
    return datetime(year, month, day, hour, minute, second, tzinfo=NY, fold=fold).astimezone(UTC)


# 2026-11-27 is a Friday: a plain trading day, far from DST changes.
MORNING = ny(2026, 11, 27, 10, 0)


def policy(body: str, zone: Any = NY) -> list[Rule]:
    """Rules from the text under `rules:` (indented as list items)."""
    return rules.parse("rules:\n" + body, zone)


def rule(name: str = "r", when: str = "position_pnl: {below: -500}", then: str = "close: all", **keys: str) -> str:
    """One rule as YAML list-item text; `keys` add rule-level keys such as instruments='MES'."""
    extra = "".join(f"    {k}: {v}\n" for k, v in keys.items())
    return f"  - name: {name}\n{extra}    when: {{{when}}}\n    then: {{{then}}}\n"


def pos(instrument: str = "MES 12-26", quantity: int = 2, pnl: float = 0.0, side: str = "Long") -> Position:
    return Position("", instrument, side, quantity, 6000.0, 6000.0, pnl)


def acct(name: str = "Sim101", *positions: Position, realized: float = 0.0, unrealized: float | None = None,
         commission: float = 0.0, cash: float = 50000.0, weekly: float | None = None) -> Account:
    """An account whose session opened with `cash` (net liquidation = cash + realized + unrealized - commission)."""
    from dataclasses import replace

    owned = tuple(replace(p, account=name) for p in positions)
    open_pnl = sum(p.unrealized_pnl for p in owned) if unrealized is None else unrealized
    return Account(name, realized, open_pnl, commission, cash + realized + open_pnl - commission, owned, weekly_pnl=weekly)


class Harness:
    """Runs the pure engine tick by tick; acknowledges every fire decision unless told not to."""

    def __init__(self, rule_text: str | list[Rule], settings: EngineSettings = SETTINGS):
        self.rules = policy(rule_text) if isinstance(rule_text, str) else rule_text
        self.settings = settings
        self.state = State()
        self.history: list[tuple[datetime, Decision]] = []

    def tick(self, now: datetime, *accounts: Account, ack: bool = True) -> list[Decision]:
        snapshot = Snapshot(now, tuple(accounts) if accounts else (acct(),))
        decisions, self.state = engine.evaluate(self.rules, self.state, snapshot, now, self.settings)
        for d in decisions:
            self.history.append((now, d))
            if ack and d.kind == "fire":
                self.state = engine.acknowledge(self.state, d, now)
        return decisions

    def reload(self, rule_text: str) -> None:
        self.rules = policy(rule_text)

    def explain(self, now: datetime, *accounts: Account) -> list[dict[str, Any]]:
        return engine.explain(self.rules, self.state, Snapshot(now, tuple(accounts)), now, self.settings)


def fires(decisions: list[Decision]) -> list[tuple[str, str, str | None]]:
    """(rule, account, instrument) of every fire decision."""
    return [(d.rule, d.account, d.instrument) for d in decisions if d.kind == "fire"]


def bodies(decisions: list[Decision]) -> list[tuple[str, dict[str, Any]]]:
    """(kind, request body) of every order of every fire decision."""
    return [(o.kind, o.body()) for d in decisions if d.kind == "fire" for o in d.orders]


def seconds(n: float) -> timedelta:
    return timedelta(seconds=n)


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)
