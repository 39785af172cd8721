"""Plain data that flows between riskd's parts: what the API showed, and what the engine decided.

Frozen dataclasses with no I/O and no riskd imports, so every other module can depend on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from typing import Any


@dataclass(frozen=True, slots=True)
class Position:
    """One open position as the API reported it (`quantity` unsigned, the side in `side`)."""

    account: str
    instrument: str
    side: str  # "Long" | "Short" | "Flat"
    quantity: int
    average_price: float
    market_price: float
    unrealized_pnl: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "instrument": self.instrument,
            "side": self.side,
            "quantity": self.quantity,
            "average_price": self.average_price,
            "market_price": self.market_price,
            "unrealized_pnl": self.unrealized_pnl,
        }


@dataclass(frozen=True, slots=True)
class Account:
    """One account's session figures (from the snapshot's `item`) and its open positions."""

    name: str
    realized_pnl: float
    unrealized_pnl: float
    commission: float
    net_liquidation: float
    positions: tuple[Position, ...] = ()
    # the item's weeklyProfitLoss and cashValue when the API gives a number (weekly_pnl: riskd.ledger; cash_value: shown only)
    weekly_pnl: float | None = None
    cash_value: float | None = None
    balance_known: bool = True  # False when the item has no netLiquidation (net_liquidation then reads 0, which is not a balance)

    def pnl(self, basis: str = "total", net_of_commission: bool = False) -> float:
        """Given a basis (total|realized|unrealized), return the session P&L on it."""
        if basis == "total":
            value = self.realized_pnl + self.unrealized_pnl
        elif basis == "realized":
            value = self.realized_pnl
        elif basis == "unrealized":
            value = self.unrealized_pnl
        else:
            raise KeyError(basis)
        return value - self.commission if net_of_commission else value


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every account and its positions, read in one request at `taken_at` (UTC)."""

    taken_at: datetime
    accounts: tuple[Account, ...]
    # accounts (lower case) whose entry was not well-formed (positions null or missing, a position
    # without a readable quantity or side, ...): riskd does not know what they hold, so they are
    # treated as not seen in this snapshot (never as flat)
    unknown: frozenset[str] = frozenset()
    problems: tuple[str, ...] = ()  # why each unknown account could not be read, for the audit trail

    def as_json(self) -> dict[str, Any]:
        """Plain JSON values (the state store keeps the last snapshot for `riskd status`)."""
        return {"taken_at": self.taken_at.isoformat(), "unknown": sorted(self.unknown), "problems": list(self.problems),
                "accounts": [{"name": a.name, "realized_pnl": a.realized_pnl, "unrealized_pnl": a.unrealized_pnl,
                              "commission": a.commission, "net_liquidation": a.net_liquidation,
                              "weekly_pnl": a.weekly_pnl, "cash_value": a.cash_value, "balance_known": a.balance_known,
                              "positions": [{"account": p.account, **p.as_dict()} for p in a.positions]} for a in self.accounts]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Snapshot":
        accounts = tuple(Account(**{**a, "positions": tuple(Position(**p) for p in a["positions"])}) for a in data["accounts"])
        return cls(datetime.fromisoformat(data["taken_at"]), accounts, frozenset(data.get("unknown", ())),
                   tuple(data.get("problems", ())))

    def account(self, name: str) -> Account | None:
        lowered = name.lower()
        return next((a for a in self.accounts if a.name.lower() == lowered), None)

    def position(self, account: str, instrument: str) -> Position | None:
        acct = self.account(account)
        if acct is None:
            return None
        wanted = instrument.upper()
        return next((p for p in acct.positions if p.instrument.upper() == wanted), None)


class Severity(IntEnum):
    """How much an action closes; the most severe action on a target wins."""

    ALERT = 0  # alert: sends no request, so it never covers or is covered by a close
    PARTIAL = 1  # close N%, close N, reduce_to
    CLOSE_ALL = 2
    FLATTEN = 3


# Orders that are safe to send again once their first outcome is settled as "not applied": a second
# flatten or cancel of something already flat is a no-op. A partial close is not (it would close a second slice).
REPEATABLE_KINDS = frozenset({"flatten", "cancel_orders"})


@dataclass(frozen=True, slots=True)
class Order:
    """One API call the engine wants made.

    kind is "close" (POST accounts/{account}/positions/close), "flatten" (POST
    accounts/{account}/positions/flatten, instrument optional) or "cancel_orders".
    """

    kind: str
    account: str
    instrument: str | None = None
    quantity: int | None = None
    percent: float | None = None  # a fraction, 0 < percent <= 1

    @property
    def repeatable(self) -> bool:
        """Is sending this order a second time harmless? (flatten, cancel, a close of the whole position)"""
        return self.kind in REPEATABLE_KINDS or (
            self.kind == "close" and self.quantity is None and (self.percent is None or self.percent >= 1))

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.instrument is not None:
            body["instrument"] = self.instrument
        if self.quantity is not None:
            body["quantity"] = self.quantity
        if self.percent is not None:
            body["percent"] = self.percent
        return body


@dataclass(frozen=True, slots=True)
class Decision:
    """What the engine decided for one rule and one target at one tick.

    kind: "fire" (act: send `orders`), "superseded" (a more severe firing covers it),
    "missed" (a timed occurrence passed while riskd was down, beyond misfire_grace),
    "skipped" (nothing to do, with `reason`).
    `key` identifies the firing: the same key is never acted on twice.
    """

    kind: str
    rule: str
    key: str
    account: str
    instrument: str | None
    action: str
    severity: Severity
    orders: tuple[Order, ...] = ()
    inputs: dict[str, Any] = field(default_factory=dict)
    threshold: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    dry_run: bool = False
    lock: bool = False
    covers: tuple[str, ...] = ()  # keys of superseded firings that this one satisfies
    local_time: str | None = None
    # the lock this firing sets once acknowledged: {"until": ISO instant, "reduce_only": bool,
    # "sizes": {position key: contracts a reduce-only lock lets stay open}}; None for a lock that ends with the session
    lock_terms: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Action:
    """A rule's `then`: kind is "close", "reduce_to", "flatten" or "alert".

    For close, `amount` is "all", a fraction 0 < f <= 1 (from `N%`), or an int number of contracts;
    for reduce_to it is the int size to keep; for alert, the text. `lock_until` is "session_end",
    "week_end" or a timedelta; `reduce_only` lets positions shrink under the lock, never grow.
    """

    kind: str
    amount: Any = None
    cancel_orders: bool = False
    lock: bool = False
    lock_undo: str = "allowed"  # "never": `riskd unlock` refuses to lift this rule's lock
    lock_until: Any = "session_end"
    reduce_only: bool = False

    @property
    def severity(self) -> Severity:
        if self.kind == "flatten":
            return Severity.FLATTEN
        if self.kind == "alert":
            return Severity.ALERT
        if self.kind == "close" and self.amount == "all":
            return Severity.CLOSE_ALL
        return Severity.PARTIAL

    @property
    def per_position(self) -> bool:
        return self.kind in ("close", "reduce_to")

    def describe(self) -> str:
        if self.kind == "flatten":
            text = "flatten"
        elif self.kind == "alert":
            text = "alert"
        elif self.kind == "reduce_to":
            text = f"reduce_to {self.amount}"
        elif isinstance(self.amount, float):
            text = f"close {self.amount * 100:g}%"
        else:
            text = f"close {self.amount}"
        if self.cancel_orders:
            text += " +cancel_orders"
        if self.lock:
            until = self.lock_until
            text += " +lock" + ("" if until == "session_end" else f" until {until}" if isinstance(until, str)
                                else f" {int(until.total_seconds() // 60)}m" if until.total_seconds() % 60 == 0
                                else f" {until.total_seconds():g}s")
            text += " reduce_only" if self.reduce_only else ""
            text += " (no undo)" if self.lock_undo == "never" else ""
        return text


@dataclass(frozen=True, slots=True)
class Rule:
    """One validated rule, ready for the engine.

    `conditions` holds (name, params) pairs for every `when` key except the time-of-day event `at`
    and the modifiers; `days` are weekday numbers (Monday = 0); `zone` is a tzinfo.
    """

    name: str
    index: int
    source: str
    accounts: tuple[str, ...]
    instruments: tuple[str, ...]
    conditions: tuple[tuple[str, Any], ...]
    action: Action
    zone: Any
    days: frozenset[int]
    at: Any = None  # datetime.time or None
    hold: Any = None  # datetime.timedelta or None
    enabled: bool = True
    dry_run: bool = False
    digest: str = ""
    position_scoped: bool = False  # a condition of the rule is evaluated per position (riskd.conditions scope)
    grouped: bool = False  # a condition counts across positions (scope `group`): per account, its action sized on the group
    market: str | None = None  # the market whose calendar its clock follows (riskd.calendar); "default": riskd.yaml's; None: none
    trading_days: bool = False  # `days: trading_days`: full holidays of the market are skipped

    @property
    def per_position(self) -> bool:
        return (self.action.per_position and not self.grouped) or self.position_scoped
