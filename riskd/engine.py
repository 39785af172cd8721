"""The pure core: evaluate(rules, state, snapshot, now) -> (decisions, new state).

No I/O and no clock: `now` comes in, decisions and the next state go out. The daemon sends the
orders of each "fire" decision and, once the API acknowledged them, folds them back with
`acknowledge`, which is what makes a firing count.

Firing semantics (docs/how-it-works.md, "How firing works"):
- a rule is evaluated per target: per matched position when it has a position condition or a
  per-position action (close, reduce_to), per account otherwise;
- `at` rules fire once per occurrence for the targets in scope at that instant; an occurrence found
  later than `misfire_grace` is `missed` (if the rule already existed then). An occurrence is the
  first instant the rule zone's clock reads `at` on that day (DST: the end of a spring-forward gap,
  the first of two fall-back times);
- other rules fire on the edge: while their conditions hold and the target carries no fired marker;
  conditions seen false clear the marker (re-arm); a reopened position is a new target; an account
  missing from a snapshot keeps its markers and first-seen times;
- `for` holds a condition continuously before firing;
- `between` windows that wrap midnight belong to the day they open on (for `days`);
- a lock (set when a `lock:` firing is acknowledged) closes any position in scope at once, until it
  ends: the session's end (`lock: true`), the week's end, or a duration after it was set; a timed
  lock outlives the session boundary. A `reduce_only` lock lets positions shrink (the size it allows
  follows a shrink seen in two consecutive snapshots) and closes back any increase or new position;
  a lock reaching its end is a `lock_ended` decision (audited, nothing sent);
- on one target in one tick, the most severe action wins (flatten > close all > partial, ties by
  file order); the others are `superseded`: counted as done when a winner that closes everything
  (flatten, close all) is acknowledged, evaluated again next tick after a partial winner;
- markers, holds, peaks, session locks and first-seen times reset at the session boundary; occurrence
  records are keyed by instant and kept (8 days), so a past session's occurrence is never `missed`;
- a rule whose digest changed (edited) forgets its state; unchanged rules keep theirs;
- an operator's controls (riskd.control) are state too: a paused rule is not evaluated until its
  pause ends (its lock, if any, still holds); a locked account (`account_locks`) has every open
  position flattened until the lock ends. Both outlive a session boundary until they end.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, time, timedelta, timezone, tzinfo
from fnmatch import fnmatchcase
from functools import lru_cache
from itertools import repeat
from typing import Any, Iterable

from riskd import ledger, sizes
from riskd.conditions import REGISTRY, Target
from riskd.fields import SessionTime
from riskd.keys import FiringKey, LockKey, OccurrenceKey, PositionKey, TargetKey, rule_of
from riskd.model import Account, Decision, Order, Position, Rule, Severity, Snapshot
from riskd.schedule import format_span, last_occurrence, next_occurrence, next_session_start, week_bounds


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """The parts of riskd.yaml the engine needs (riskd.config.Settings.engine)."""

    zone: tzinfo
    session_start: time = time(18, 0)
    misfire_grace: timedelta = timedelta(seconds=60)
    calendar: Any = None  # riskd.calendar.Calendar: the exchange calendar and news events (None: the built-in one)


@dataclass(frozen=True, slots=True)
class State:
    """Everything the engine remembers between ticks. Treat the dicts as read-only. Keys are the
    string forms of the types in riskd.keys.

    fired:       edge/lock FiringKey -> ISO time acknowledged
    pending:     `for` hold FiringKey -> ISO time the conditions started to hold
    occurrences: OccurrenceKey -> {TargetKey: "pending" | "done" | "gone" | "waiting" | "seen" | "missed"}
    peaks:       account (lower case) -> session P&L peak
    locks:       LockKey -> ISO time the lock was set
    lock_terms:  LockKey -> {"until": ISO end, "reduce_only": bool, "sizes": {PositionKey: contracts allowed},
                 "closing": {PositionKey: the size its last acknowledged close-back was sized on}}
                 (a lock without terms, written by an older riskd, ends with the session)
    first_seen:  PositionKey -> ISO time the position was first seen (also its identity)
    known:       rule name -> [digest, ISO time first loaded]
    tracked:     position identity -> [last quantity seen, snapshots it has been absent from, confirmed 0|1]
    inflight:    firing keys whose last action has an unresolved outcome: never fire them again
    paused:      rule name -> ISO time its operator pause ends
    account_locks: account (lower case) -> ISO time its operator lock ends
    ledger:      account -> {session: [realized, unrealized, commission, net liquidation, balance change unseen before it]}
                 (riskd.ledger; kept across sessions)
    marks:       account -> [intraday balance high, end-of-day balance high] (riskd.ledger; never reset)
    trades:      account -> {"count": round trips closed, "streak": losing ones in a row, "open": {INSTRUMENT: points}}
                 (riskd.trades; this session)
    gaps:        account -> what riskd could not see of a period before this session (riskd.ledger; this session)
    """

    session: str | None = None
    fired: dict[str, str] = field(default_factory=dict)
    pending: dict[str, str] = field(default_factory=dict)
    occurrences: dict[str, dict[str, str]] = field(default_factory=dict)
    peaks: dict[str, float] = field(default_factory=dict)
    locks: dict[str, str] = field(default_factory=dict)
    lock_terms: dict[str, dict[str, Any]] = field(default_factory=dict)
    first_seen: dict[str, str] = field(default_factory=dict)
    known: dict[str, list[str]] = field(default_factory=dict)
    tracked: dict[str, list[int]] = field(default_factory=dict)
    inflight: frozenset[str] = frozenset()
    paused: dict[str, str] = field(default_factory=dict)
    account_locks: dict[str, str] = field(default_factory=dict)
    ledger: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    marks: dict[str, list[float]] = field(default_factory=dict)
    trades: dict[str, dict[str, Any]] = field(default_factory=dict)
    gaps: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "session": self.session,
            "fired": self.fired,
            "pending": self.pending,
            "occurrences": self.occurrences,
            "peaks": self.peaks,
            "locks": self.locks,
            "lock_terms": self.lock_terms,
            "first_seen": self.first_seen,
            "known": self.known,
            "tracked": self.tracked,
            "paused": self.paused,
            "account_locks": self.account_locks,
            "ledger": self.ledger,
            "marks": self.marks,
            "trades": self.trades,
            "gaps": self.gaps,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "State":
        state = cls(**{k: data[k] for k in cls.__slots__ if k in data and k != "inflight"})  # type: ignore[attr-defined]
        if data.get("version", 1) < 2 and "tracked" not in data:
            # version 1: target keys kept the API's letter case, and position identities had no confirmation record
            state = replace(state, fired={str(FiringKey.parse(k)): v for k, v in state.fired.items()},
                            pending={str(FiringKey.parse(k)): v for k, v in state.pending.items()},
                            occurrences={k: {str(TargetKey.parse(t)): v for t, v in r.items()} for k, r in state.occurrences.items()},
                            locks={str(LockKey.parse(k)): v for k, v in state.locks.items()},
                            first_seen={str(p): v for k, v in state.first_seen.items() if (p := _position_or_none(k))},
                            tracked={str(p): [0, 0, 1] for k in state.first_seen if (p := _position_or_none(k))})
        return state


STATE_VERSION = 3  # 2: case-insensitive keys (riskd.keys) and `tracked`; 3: `ledger`, `marks`, `trades`, `gaps` (empty from a 2)


def _position_or_none(text: str) -> PositionKey | None:
    try:
        return PositionKey.parse(text)
    except ValueError:  # written before a position's side was part of its identity: it starts over
        return None


# ---------------------------------------------------------------------------------------------
# Sessions.


def session_of(now: datetime, settings: EngineSettings) -> str:
    """Given a UTC instant, return the trading date of its session (the day after an 18:00 start). With
    an exchange calendar, the next date its market trades: a weekend or a full holiday has no session of
    its own, so the state resets once, at the start of the session that trades next (an early-close
    day's session still ends at the next session_start, the Globex open)."""
    local = now.astimezone(settings.zone)
    day = local.date()
    if local.time() >= settings.session_start:
        day += timedelta(days=1)
    calendar = settings.calendar
    if calendar is not None:
        for _ in range(10):  # a long closure (a week of holidays in a correction) still ends
            if calendar.trading_day(calendar.market, day):
                break
            day += timedelta(days=1)
    return day.isoformat()


def session_end(now: datetime, settings: EngineSettings) -> datetime:
    """Given an instant, return when its session ends: the next `session_start` that opens another
    session (with an exchange calendar, the evening before a holiday opens none: its session runs on)."""
    session = session_of(now, settings)
    end = next_session_start(now, settings.zone, settings.session_start)
    for _ in range(10):  # a long closure still ends
        if session_of(end, settings) != session:
            break
        end = next_session_start(end, settings.zone, settings.session_start)
    return end


def active(ends: dict[str, str], now: datetime) -> dict[str, str]:
    """The entries of a {name: ISO end} map (pauses, account locks) that have not ended at `now`."""
    return {k: v for k, v in ends.items() if datetime.fromisoformat(v) > now}


# Pseudo-rule names of operator controls in firing keys (a rule name cannot hold ':').
OPERATOR_LOCK = "operator:lock"


# ---------------------------------------------------------------------------------------------
# Scope.


@lru_cache(maxsize=65536)
def _account_matches(patterns: tuple[str, ...], account: str) -> bool:
    name = account.lower()
    return any(p == "*" or fnmatchcase(name, p) for p in patterns)


@lru_cache(maxsize=65536)
def _instrument_matches(patterns: tuple[str, ...], instrument: str) -> bool:
    name = instrument.upper()
    root = name.split(" ", 1)[0]
    for p in patterns:
        if p == "*":
            return True
        if any(c in p for c in "*?["):
            if fnmatchcase(name, p):
                return True
        elif " " in p:
            if name == p:
                return True
        elif root == p:
            return True
    return False


def in_scope(rule: Rule, account: str, instrument: str | None = None) -> bool:
    """Does the rule's account (and, given one, instrument) filter match?"""
    if not _account_matches(rule.accounts, account):
        return False
    return instrument is None or _instrument_matches(rule.instruments, instrument)


def _describe(spec: Any) -> Any:
    """A condition's parameters as plain JSON values, for the audit trail."""
    if hasattr(type(spec), "model_fields"):
        return {k: _describe(v) for k, v in vars(spec).items() if v is not None}
    if isinstance(spec, (tuple, list)):
        return [_describe(x) for x in spec]
    if isinstance(spec, (time, SessionTime)):
        return spec.isoformat()
    if isinstance(spec, timedelta):
        return spec.total_seconds()
    return spec


def check(rule: Rule, target: Target) -> tuple[bool, dict[str, Any]]:
    """Given a rule and a target, return (all conditions hold, the inputs seen)."""
    holds = True
    inputs: dict[str, Any] = {}
    for name, spec in rule.conditions:
        ok, seen = REGISTRY[name].check(spec, target)
        inputs.update(seen)
        holds = holds and ok
    if rule.action.kind == "reduce_to" and target.position is not None:
        holds = holds and target.position.quantity > rule.action.amount
    return holds, inputs


def threshold_of(rule: Rule) -> dict[str, Any]:
    out = {name: _describe(spec) for name, spec in rule.conditions}
    if rule.at is not None:
        out["at"] = rule.at.isoformat()
    if rule.hold is not None:
        out["for_s"] = rule.hold.total_seconds()
    return out


# ---------------------------------------------------------------------------------------------
# Orders.


def orders_for(rule: Rule, account: Account, position: Position | None) -> tuple[Order, ...]:
    """Given a rule and a target, return the API calls its action needs."""
    action, name = rule.action, account.name
    if action.kind == "alert":
        return ()  # audited and notified: no request
    if action.kind == "flatten":
        if position is not None:
            return (Order("flatten", name, position.instrument),)
        if rule.instruments == ("*",):
            return (Order("flatten", name),)
        return tuple(Order("flatten", name, p.instrument) for p in account.positions if in_scope(rule, name, p.instrument))
    assert position is not None
    inst = position.instrument
    if action.kind == "reduce_to":
        orders: list[Order] = [Order("close", name, inst, quantity=position.quantity - action.amount)]
    elif action.amount == "all":
        orders = [Order("close", name, inst)]
    elif isinstance(action.amount, float):
        orders = [Order("close", name, inst, percent=action.amount)]
    else:
        orders = [Order("close", name, inst, quantity=min(action.amount, position.quantity))]  # never more than is open
    if action.cancel_orders:
        orders.append(Order("cancel_orders", name, inst))
    return tuple(orders)


# ---------------------------------------------------------------------------------------------
# Evaluation.


def _position_key(account: str, position: Position) -> str:
    """A position's identity: a long that turns short between two snapshots is a new position."""
    return _position_text(account, position.instrument, position.side)


@lru_cache(maxsize=65536)
def _position_text(account: str, instrument: str, side: str) -> str:
    return str(PositionKey(account, instrument, side))


@lru_cache(maxsize=65536)
def _rival(key: str) -> str:
    return str(_position(key).rival())


def _confirmed_quantity(previous: int, current: int) -> int:
    """Given the quantity the previous snapshot showed and this one's, return the one to act on."""
    return previous if 0 < previous and current > 2 * previous else current


# Parsed forms of the stored keys, cached: the same few thousand keys come back every tick.
_position = lru_cache(maxsize=65536)(PositionKey.parse)
_firing = lru_cache(maxsize=65536)(FiringKey.parse)


@lru_cache(maxsize=65536)
def _account_of(key: str) -> str:
    """A position identity's account (PositionKey.parse(key).account, without keeping a PositionKey per position)."""
    return key.rsplit("|", 2)[0].lower()


# First-seen times are stored as ISO text and the same strings come back every tick: parsed once.
_instant = lru_cache(maxsize=65536)(datetime.fromisoformat)


def _builtin_calendar() -> Any:
    """The built-in exchange calendar, for settings that carry none (it reads its packaged data file once)."""
    from riskd.calendar import builtin

    return builtin()


class _Tick:
    """The working set of one evaluation: the old state in, the new maps being built."""

    def __init__(self, state: State, snapshot: Snapshot, now: datetime, settings: EngineSettings):
        self.old = state
        self.snapshot = snapshot
        self.now = now
        self.settings = settings
        self.calendar = settings.calendar or _builtin_calendar()
        self.occurrences = dict(state.occurrences)
        self.decisions: list[Decision] = []
        self.lock_terms: dict[str, dict[str, Any]] = dict(state.lock_terms)
        present = {a.name.lower() for a in snapshot.accounts}
        self.present = present
        # an account missing from one snapshot (or unreadable in it) keeps its positions' identities and its markers
        self.first_seen = {k: v for k, v in state.first_seen.items() if _account_of(k) not in present}
        self.tracked: dict[str, list[int]] = {}
        tracked_by_account: dict[str, list[str]] = {}  # the present accounts' identities, in one pass
        for key, remembered in state.tracked.items():
            holder = _account_of(key)
            if holder in present:
                tracked_by_account.setdefault(holder, []).append(key)
            else:
                self.tracked[key] = remembered
        # Position identity across glitchy snapshots (docs/how-it-works.md, "Bad snapshots"):
        # - a remembered identity is gone only when absent from two consecutive well-formed snapshots
        #   (one snapshot without it, or with the other side, does not re-arm its rules);
        # - a new identity for an instrument whose other side is still remembered (a reversal, or a
        #   one-tick side flip) is a target only once a second consecutive snapshot confirms it;
        # - a quantity more than double the previous snapshot's is not trusted until a second
        #   snapshot agrees (the previous one is used meanwhile), so one implausible jump never sizes a close.
        kept_targets: set[str] = set()
        self._targets_of: dict[int, tuple[Position, ...]] = {}
        self._pkey_of: dict[int, str] = {}  # a target position's identity (riskd.keys.PositionKey), by id()
        pkey_of, first_seen, tracked = self._pkey_of, self.first_seen, self.tracked
        old_first_seen, old_tracked = state.first_seen, state.tracked
        for account in snapshot.accounts:
            lname = account.name.lower()
            now_ids = {_position_key(account.name, p): p for p in account.positions if p.quantity > 0}
            for key in tracked_by_account.get(lname, ()):
                remembered = state.tracked[key]
                if key not in now_ids and remembered[2] and remembered[1] < 1 and key in state.first_seen:
                    self.tracked[key] = [remembered[0], remembered[1] + 1, 1]  # absent once: remembered, not a target now
                    self.first_seen[key] = state.first_seen[key]
                    kept_targets.add(str(_position(key).target(state.first_seen[key])))
            targets: list[Position] = []
            for key, p in now_ids.items():
                entry = old_tracked.get(key)
                if entry is not None and entry[2] and key in old_first_seen:
                    first_seen[key] = old_first_seen[key]
                    quantity = p.quantity
                    tracked[key] = entry if entry[0] == quantity and not entry[1] else [quantity, 0, 1]
                    if 0 < entry[0] and quantity > 2 * entry[0]:
                        quantity = entry[0]  # _confirmed_quantity, inline: this is once per position per tick
                elif entry is None and _rival(key) in state.tracked and state.tracked[_rival(key)][2]:
                    self.tracked[key] = [p.quantity, 0, 0]  # a candidate: confirmed by the next snapshot
                    continue
                else:
                    self.first_seen[key] = now.isoformat()
                    self.tracked[key] = [p.quantity, 0, 1]
                    quantity = _confirmed_quantity(entry[0], p.quantity) if entry is not None else p.quantity
                if quantity != p.quantity:
                    p = replace(p, quantity=quantity)
                targets.append(p)
                pkey_of[id(p)] = key
            self._targets_of[id(account)] = tuple(targets)

        def carried(key: str) -> bool:
            target = _firing(key).target
            return target.account not in present or str(target) in kept_targets

        self.fired = {k: v for k, v in state.fired.items() if carried(k)}
        self.pending = {k: v for k, v in state.pending.items() if carried(k)}
        self.peaks = dict(state.peaks)
        for account in snapshot.accounts:
            name = account.name.lower()
            self.peaks[name] = max(self.peaks.get(name, 0.0), account.pnl())
        # beyond one session (riskd.ledger): this session's figures, the balance marks, a History per account
        self.ledger = ledger.record(state.ledger, state.session or "", snapshot.accounts)
        self.marks = ledger.mark(state.marks, self.ledger, state.session or "", snapshot.accounts)
        self._history_of: dict[int, ledger.History] = {}  # made on first use (history())
        self._origin_of: dict[int, Account] = {id(a): a for a in snapshot.accounts}  # a scoped account -> the snapshot's
        # Per-tick caches for the hot path (rules x targets): the local time per zone, and per
        # snapshot object (keyed by id(); the snapshot outlives this tick) its peak, position
        # key and parsed first-seen time. Pure memoisation: same values as computing them inline.
        self._locals: dict[Any, datetime] = {}
        self._peak_of: dict[int, float] = {id(a): self.peaks.get(a.name.lower(), 0.0) for a in snapshot.accounts}
        first_seen = self.first_seen
        self._seen_of: dict[int, datetime] = {i: _instant(first_seen[k]) for i, k in pkey_of.items()}
        self._target_of_id: dict[int, TargetKey] = {}
        self._scoped_of: dict[tuple[int, tuple[str, ...]], Account] = {}
        # the scope index: accounts per account-pattern tuple, positions per account and instrument-pattern
        # tuple, each matched once per tick whatever the number of rules sharing them
        self._accounts_in: dict[tuple[str, ...], list[Account]] = {}
        self._positions_in: dict[tuple[int, tuple[str, ...]], tuple[Position, ...]] = {}
        self._scope_of: dict[tuple[Any, ...], list[tuple[Account, tuple[Position, ...]]]] = {}
        # a bound's figure for every target position (True) or account (False), its places and extremes (narrowed())
        self._figures_of: dict[tuple[bool, Any], tuple[list[Any], Any, Any]] = {}
        self._figure_rows: dict[bool, tuple[list[Any], ...]] = {}

    def target(self, rule: Rule, account: Account, position: Position | None) -> Target:
        local = self._locals.get(rule.zone)
        if local is None:
            local = self._locals[rule.zone] = self.now.astimezone(rule.zone)
        peak = self._peak_of.get(id(account))
        if peak is None:
            peak = self.peaks.get(account.name.lower(), 0.0)
        seen = None
        if position is not None:
            seen = self._seen_of.get(id(position)) or datetime.fromisoformat(self.first_seen[_position_key(account.name, position)])
        history = self.history(account)
        return Target(account, position, self.now, local, rule.days, peak, seen, self.calendar, self.market(rule), rule.trading_days,
                      history)

    def history(self, account: Account) -> ledger.History:
        """An account's History (riskd.ledger) for this tick, one per snapshot account (a scoped view shares its account's)."""
        found = self._history_of.get(id(account))
        if found is None:
            origin = self._origin_of.get(id(account))
            if origin is None:  # not an account of this snapshot
                return ledger.History(account, self.old.session or "", {}, None)
            found = self._history_of.get(id(origin))
            if found is None:
                name = origin.name.lower()
                found = self._history_of[id(origin)] = ledger.History(
                    origin, self.old.session or "", self.ledger.get(name, {}), self.marks.get(name), self.old.trades.get(name))
            self._history_of[id(account)] = found
        return found

    def market(self, rule: Rule) -> str | None:
        return self.calendar.market if rule.market == "default" else rule.market

    def gaps(self) -> dict[str, dict[str, Any]]:
        """The gaps of this session: those already known, and those this tick's conditions ran into."""
        out = dict(self.old.gaps)
        for history in self._history_of.values():
            name = history.account.name.lower()
            for period, gap in history.gaps.items():
                if period not in out.get(name, {}):
                    out[name] = {**out.get(name, {}), period: gap}
        return out

    def target_key(self, rule: Rule, account: Account, position: Position | None) -> str:
        return str(self._target(account, position))

    def _target(self, account: Account, position: Position | None) -> TargetKey:
        """A target's identity: account and instrument compared as the API matches them (case-insensitively)."""
        cache_key = id(position) if position is not None else id(account)
        target = self._target_of_id.get(cache_key)
        if target is None:
            if position is None:
                target = TargetKey(account.name)
            else:
                pkey = self._pkey_of.get(id(position)) or _position_key(account.name, position)
                target = _position(pkey).target(self.first_seen[pkey])
            self._target_of_id[cache_key] = target
        return target

    def decide(self, kind: str, rule: Rule, key: str, account: Account, position: Position | None, inputs: dict[str, Any],
               **extra: Any) -> None:
        if position is not None:
            inputs = {**inputs, "position": position.as_dict()}
        inputs.setdefault("account_pnl", account.pnl())
        if rule.action.kind == "alert":
            extra.setdefault("reason", rule.action.amount)
        orders = (self.group_orders(rule, account) if rule.grouped else orders_for(rule, account, position)) if kind == "fire" else ()
        if kind == "fire" and rule.action.lock:
            terms = self.lock_terms_for(rule, account, orders)
            extra["lock_terms"] = terms
            inputs = {**inputs, "lock_until": terms["until"], "reduce_only": terms["reduce_only"]}
        self.decisions.append(
            Decision(
                kind=kind,
                rule=rule.name,
                key=key,
                account=account.name,
                instrument=position.instrument if position is not None else None,
                action=rule.action.describe(),
                severity=rule.action.severity,
                orders=orders,
                inputs=inputs,
                threshold=threshold_of(rule),
                dry_run=rule.dry_run,
                lock=rule.action.lock,
                local_time=self.now.astimezone(rule.zone).isoformat(timespec="milliseconds"),
                **extra,
            )
        )

    def lock_terms_for(self, rule: Rule, account: Account, orders: tuple[Order, ...]) -> dict[str, Any]:
        """The lock a firing sets: when it ends, and for a reduce-only lock the size each position in
        scope may keep (0 for one this firing closes entirely, else what is open now)."""
        terms: dict[str, Any] = {"until": lock_end(rule.action.lock_until, self.now, self.settings).astimezone(timezone.utc).isoformat(),
                                 "reduce_only": rule.action.reduce_only}
        if rule.action.reduce_only:
            allowed = {}
            for p in self._targets_of.get(id(account), ()):
                if _instrument_matches(rule.instruments, p.instrument):
                    allowed[self._pkey_of.get(id(p)) or _position_key(account.name, p)] = _allowed_after(p, orders)
            terms["sizes"] = allowed
        return terms

    def accounts_in(self, patterns: tuple[str, ...]) -> list[Account]:
        """The snapshot's accounts that an account filter matches (matched once per tick)."""
        found = self._accounts_in.get(patterns)
        if found is None:
            found = self._accounts_in[patterns] = [a for a in self.snapshot.accounts if _account_matches(patterns, a.name)]
        return found

    def positions_in(self, account: Account, instruments: tuple[str, ...]) -> tuple[Position, ...]:
        """An account's target positions (confirmed across snapshots) that an instrument filter matches (once per tick)."""
        key = (id(account), instruments)
        found = self._positions_in.get(key)
        if found is None:
            targets = self._targets_of[id(account)]
            found = targets if instruments == ("*",) else tuple(p for p in targets if _instrument_matches(instruments, p.instrument))
            self._positions_in[key] = found
        return found

    def scope(self, rule: Rule) -> list[tuple[Account, tuple[Position, ...]]]:
        """The accounts a rule sees (a `group` rule: as _scoped shows them) with their target positions in its
        scope; a per-position rule sees only the accounts that hold one. Built once per tick per filter pair."""
        key = (rule.accounts, rule.instruments, rule.per_position, rule.grouped)
        found = self._scope_of.get(key)
        if found is None:
            if rule.per_position:
                pairs = ((a, self.positions_in(a, rule.instruments)) for a in self.accounts_in(rule.accounts))
                found = [(a, ps) for a, ps in pairs if ps]
            elif rule.grouped:
                found = [(self._scoped(a, rule.instruments), ()) for a in self.accounts_in(rule.accounts)]
            else:
                found = [(a, ()) for a in self.accounts_in(rule.accounts)]
            self._scope_of[key] = found
        return found

    def narrowed(self, rule: Rule) -> list[tuple[Account, tuple[Position, ...]]]:
        """A rule's scope (as scope() gives it, in its order) without the targets that a condition's
        bound (riskd.conditions.Bound) rules out. A bound's figure is computed once per tick for every
        position (or account) with its extremes, so a threshold beyond them rules the whole rule out at
        once (at rest, nearly every rule); otherwise only the targets on the threshold's side are kept.
        With several bounds, the one letting the fewest targets through is used; with none, the whole scope."""
        best: list[int] | None = None
        level = False
        for name, spec in rule.conditions:
            condition = REGISTRY[name]
            bound = condition.bound(spec) if condition.bound is not None else None
            if bound is None:
                continue
            per_position = condition.scope == "position"
            values, low, high = self._figures(per_position, bound.figure)
            x = bound.threshold
            if bound.op == "<":
                picked = [] if low is None or not low < x else [k for k, v in enumerate(values) if v < x]
            elif bound.op == ">":
                picked = [] if high is None or not high > x else [k for k, v in enumerate(values) if v > x]
            else:
                picked = [] if high is None or not high >= x else [k for k, v in enumerate(values) if v >= x]
            if not picked:
                return []
            if best is None or len(picked) < len(best):
                best, level = picked, per_position
        if best is None:
            return self.scope(rule)
        owners, positions = self._rows(level)[:2]
        if not level:  # candidate accounts: each with its scope
            out: list[tuple[Account, tuple[Position, ...]]] = []
            for k in best:
                account = owners[k]
                if not _account_matches(rule.accounts, account.name):
                    continue
                if rule.per_position:
                    held = self.positions_in(account, rule.instruments)
                    if held:
                        out.append((account, held))
                else:
                    out.append((self._scoped(account, rule.instruments) if rule.grouped else account, ()))
            return out
        kept: dict[int, tuple[Account, list[Position]]] = {}  # candidate positions by account, in the snapshot's order
        for k in best:
            account, position = owners[k], positions[k]
            if _account_matches(rule.accounts, account.name) and _instrument_matches(rule.instruments, position.instrument):
                kept.setdefault(id(account), (account, []))[1].append(position)
        return [(account, tuple(held)) for account, held in kept.values()]

    def _figures(self, per_position: bool, figure: Any) -> tuple[list[Any], Any, Any]:
        """One figure of every target position (or account) of the snapshot, in the order of _rows(),
        and its extremes (None: no target)."""
        found = self._figures_of.get((per_position, figure))
        if found is None:
            values = list(map(figure, *self._rows(per_position), repeat(self.now)))
            found = self._figures_of[(per_position, figure)] = (values, min(values) if values else None, max(values) if values else None)
        return found

    def _rows(self, per_position: bool) -> tuple[list[Any], ...]:
        """Every target position (or account) of the snapshot as a figure reads it (riskd.conditions.Figure:
        account, position, peak, first-seen time), column by column, in the snapshot's order."""
        rows = self._figure_rows.get(per_position)
        if rows is None:
            peak_of, seen_of, accounts = self._peak_of, self._seen_of, self.snapshot.accounts
            if per_position:
                positions = [p for a in accounts for p in self._targets_of[id(a)]]
                owners = [a for a in accounts for _ in self._targets_of[id(a)]]
                rows = (owners, positions, [peak_of[id(a)] for a in owners], [seen_of[id(p)] for p in positions])
            else:
                rows = (list(accounts), [None] * len(accounts), [peak_of[id(a)] for a in accounts], [None] * len(accounts))
            self._figure_rows[per_position] = rows
        return rows

    def targets(self, rule: Rule) -> Iterable[tuple[Account, Position | None]]:
        per_position, instruments = rule.per_position, rule.instruments
        for account in self.accounts_in(rule.accounts):
            if per_position:
                for pos in self.positions_in(account, instruments):
                    yield account, pos
            elif rule.grouped:
                yield self._scoped(account, instruments), None
            else:
                yield account, None

    def _scoped(self, account: Account, instruments: tuple[str, ...]) -> Account:
        """The account as a `group` condition sees it: only its positions in the rule's scope, as
        confirmed across snapshots (kept for the tick, so the per-tick caches keyed by id() hold)."""
        key = (id(account), instruments)
        scoped = self._scoped_of.get(key)
        if scoped is None:
            positions = self.positions_in(account, instruments)
            scoped = self._scoped_of[key] = replace(account, positions=positions)
            self._targets_of[id(scoped)] = positions
            self._peak_of[id(scoped)] = self._peak_of.get(id(account), self.peaks.get(account.name.lower(), 0.0))
            if id(account) in self._origin_of:
                self._origin_of[id(scoped)] = self._origin_of[id(account)]
        return scoped

    def group_orders(self, rule: Rule, account: Account) -> tuple[Order, ...]:
        """The orders of a rule with a `group` condition: its action on every group over the cap
        (reduce_to: the excess, newest positions first; close: all and flatten: each position)."""
        name, spec = next((n, s) for n, s in rule.conditions if REGISTRY[n].scope == "group")
        weight, action = spec.micro_weight, rule.action
        if action.kind == "alert":
            return ()
        groups = [list(account.positions)] if name == "account_size" else list(sizes.by_root(account.positions, weight).values())
        over = [g for g in groups if sizes.weighted(g, weight) > spec.above]
        if action.kind == "flatten" and name == "account_size" and rule.instruments == ("*",):
            return (Order("flatten", account.name),)
        orders: list[Order] = []
        for group in over:
            if action.kind == "reduce_to":
                seen = [(p, self._seen_of[id(p)]) for p in group]  # confirmed positions: each has its first-seen time
                orders += [Order("close", account.name, p.instrument, quantity=n) for p, n in sizes.excess(seen, action.amount, weight)]
            else:
                orders += [Order("flatten" if action.kind == "flatten" else "close", account.name, p.instrument) for p in group]
        if action.cancel_orders:
            orders += [Order("cancel_orders", account.name, inst) for inst in dict.fromkeys(o.instrument for o in orders if o.instrument)]
        return tuple(orders)

    def run(self, rule: Rule) -> None:
        """Evaluate one rule; a rule that raises is reported (`rule_failed`) and keeps its state as it
        was, and the other rules still act (one broken rule never silences the others)."""
        decided = len(self.decisions)
        try:
            if rule.at is not None:
                self.timed(rule)
            else:
                self.edge(rule)
        except Exception as exc:  # noqa: BLE001 - isolation is the point
            del self.decisions[decided:]
            self.fired.update({k: v for k, v in self.old.fired.items() if rule_of(k) == rule.name})
            self.pending.update({k: v for k, v in self.old.pending.items() if rule_of(k) == rule.name})
            self.occurrences.update({k: v for k, v in self.old.occurrences.items() if rule_of(k) == rule.name})
            self._skip(rule, rule.name, f"{exc.__class__.__name__}: {exc}"[:500], kind="rule_failed")

    def edge(self, rule: Rule) -> None:
        # The hot path (every rule x every target in its scope). A target holds when every condition
        # does; the conditions are pure, so each is asked where its answer can change: a clock
        # condition once per rule, an account condition once per account, a position condition per
        # position, as a bare predicate. Only a target that holds is checked again in full (check())
        # for the inputs its decision carries.
        local = self._locals.get(rule.zone) or self._locals.setdefault(rule.zone, self.now.astimezone(rule.zone))
        now, days, peak_of, seen_of, history_of = self.now, rule.days, self._peak_of, self._seen_of, self.history
        calendar, market, trading_days = self.calendar, self.market(rule), rule.trading_days
        stages: dict[str, list[tuple[Any, Any]]] = {"clock": [], "account": [], "position": []}
        for name, spec in rule.conditions:
            condition = REGISTRY[name]
            stages["position" if condition.scope == "position" else "account" if condition.scope == "group" else condition.scope].append(
                (condition.predicate, spec))
        clock, account_level, position_level = stages["clock"], stages["account"], stages["position"]
        reduce_to = rule.action.amount if rule.action.kind == "reduce_to" else None
        per_position = rule.per_position
        for account, positions in self.narrowed(rule):
            peak, history = peak_of[id(account)], history_of(account)
            target = None
            if clock or account_level or not per_position:
                target = Target(account, None, now, local, days, peak, None, calendar, market, trading_days, history)
                if clock:  # the same for every target: asked once, at the rule's first target
                    if not all(test(spec, target) for test, spec in clock):
                        return  # no target holds: markers and holds not carried over, the rule re-arms
                    clock = []
                if not all(test(spec, target) for test, spec in account_level):
                    continue
            if not per_position:
                self._holds(rule, account, None, target)  # type: ignore[arg-type]
                continue
            for position in positions:
                if reduce_to is not None and position.quantity <= reduce_to:
                    continue
                target = Target(account, position, now, local, days, peak, seen_of[id(position)], calendar, market, trading_days, history)
                for test, spec in position_level:
                    if not test(spec, target):
                        break
                else:
                    self._holds(rule, account, position, target)

    def _holds(self, rule: Rule, account: Account, position: Position | None, target: Target) -> None:
        """A target whose conditions hold: it fires unless it already fired, is holding (`for`) or in flight."""
        holds, inputs = check(rule, target)
        if not holds:
            return
        key = str(FiringKey(rule.name, self._target(account, position)))
        if key in self.old.fired:
            self.fired[key] = self.old.fired[key]
            return
        if rule.hold is not None:
            since = self.old.pending.get(key) or self.now.isoformat()
            self.pending[key] = since
            if self.now - _instant(since) < rule.hold:
                return
            inputs["held_s"] = round((self.now - _instant(since)).total_seconds(), 3)
        if key not in self.old.inflight:
            self.decide("fire", rule, key, account, position, inputs)

    def timed(self, rule: Rule) -> None:
        """An `at` occurrence acts on the targets in scope at that instant. An account in scope that
        the snapshot at that instant did not show (missing, or unreadable; seen before, or named by the
        rule) is `waiting`: its targets
        join the occurrence when it is seen again within misfire_grace, and it is `missed` (audited,
        with the reason) when it is not."""
        occ = last_occurrence(rule, self.now, self.calendar)
        if occ is None:
            return
        okey = str(OccurrenceKey(rule.name, occ.isoformat()))
        record = self.occurrences.get(okey)
        late = self.now - occ
        grace = self.settings.misfire_grace
        if record is None:
            known_since = datetime.fromisoformat(self.old.known.get(rule.name, ["", self.now.isoformat()])[1])
            market = self.market(rule)
            closed = self.calendar.closed_reason(market, occ) if market is not None else None
            if closed is not None:  # a fixed time on an early-close day, a session-relative time outside the session
                record = {}
                if late <= grace:
                    self._skip(rule, okey, f"{closed}; nothing sent")
            elif late <= grace:
                record = {}
                for account, position in self.targets(rule):
                    holds, _ = check(rule, self.target(rule, account, position))
                    if holds:
                        record[self.target_key(rule, account, position)] = "pending"
                # accounts seen this session that this snapshot does not show, accounts it shows unreadable, and
                # accounts the rule names (riskd may never have seen them: its polls before the instant failed)
                named = {p.lower() for p in rule.accounts if not any(c in p for c in "*?[")}
                for name in set(self.old.peaks) | set(self.snapshot.unknown) | named:
                    if name not in self.present and _account_matches(rule.accounts, name):
                        record[str(TargetKey(name, waiting=True))] = "waiting"
                if not record:
                    self._skip(rule, okey, "no target in scope at the scheduled time")
            else:
                record = {}
                if occ >= known_since - grace:
                    self._skip(rule, okey,
                               f"riskd was not running at {occ.isoformat()} "
                               f"(found {late.total_seconds():.0f}s late, misfire_grace {grace.total_seconds():.0f}s)", kind="missed")
            self.occurrences[okey] = record
        if "pending" not in record.values() and "waiting" not in record.values():
            return
        record = dict(record)
        present = {self.target_key(rule, a, p): (a, p) for a, p in self.targets(rule)}
        for wkey, status in list(record.items()):
            if status != "waiting":
                continue
            name = TargetKey.parse(wkey).account
            if name in self.present and late <= grace:
                record[wkey] = "seen"
                for tkey, (account, position) in present.items():
                    if account.name.lower() == name and tkey not in record and check(rule, self.target(rule, account, position))[0]:
                        record[tkey] = "pending"
            elif late > grace:
                record[wkey] = "missed"
                self._skip(rule, str(FiringKey(rule.name, TargetKey(name), occurrence=occ.isoformat())),
                           f"account {name} was not visible (missing or unreadable in every snapshot) "
                           f"from {occ.isoformat()} until misfire_grace ({grace.total_seconds():.0f}s) ran out", kind="missed")
        for tkey, status in record.items():
            if status != "pending":
                continue
            if tkey not in present:
                if TargetKey.parse(tkey).account in self.present:  # a well-formed snapshot shows it gone
                    record[tkey] = "gone"
                continue
            account, position = present[tkey]
            _, inputs = check(rule, self.target(rule, account, position))
            key = str(FiringKey(rule.name, TargetKey.parse(tkey), occurrence=occ.isoformat()))
            if key not in self.old.inflight:
                self.decide("fire", rule, key, account, position, {**inputs, "scheduled": occ.isoformat()})
        self.occurrences[okey] = record

    def _skip(self, rule: Rule, key: str, reason: str, kind: str = "skipped") -> None:
        self.decisions.append(
            Decision(kind=kind, rule=rule.name, key=key, account="*", instrument=None, action=rule.action.describe(),
                     severity=rule.action.severity, threshold=threshold_of(rule), reason=reason, dry_run=rule.dry_run)
        )

    def enforce_locks(self, rules_by_name: dict[str, Rule]) -> None:
        """Close what a lock does not allow; return nothing, but leave in `self.lock_terms` the
        locks still running (a reduce-only lock's allowed sizes follow the positions down)."""
        self.lock_terms = {}
        for name, until in self.old.account_locks.items():
            account = self.snapshot.account(name)
            if account is None:
                continue
            for position in self._targets_of[id(account)]:
                key = str(FiringKey(OPERATOR_LOCK, self._target(account, position), lock=True))
                if key in self.old.fired:
                    self.fired[key] = self.old.fired[key]
                elif key not in self.old.inflight:
                    self.decisions.append(
                        Decision(kind="fire", rule=OPERATOR_LOCK, key=key, account=account.name, instrument=position.instrument,
                                 action="lock: flatten", severity=Severity.FLATTEN,
                                 orders=(Order("flatten", account.name, position.instrument),),
                                 inputs={"position": position.as_dict(), "locked_until": until},
                                 threshold={"account_lock_until": until}, reason="the operator locked this account")
                    )
        for lock_key, since in self.old.locks.items():
            lock = LockKey.parse(lock_key)
            rule = rules_by_name.get(lock.rule)
            terms = self.old.lock_terms.get(lock_key)
            if terms is not None:
                self.lock_terms[lock_key] = terms
            account = self.snapshot.account(lock.account)
            if rule is None or account is None:
                continue
            reduce_only = bool(terms and terms.get("reduce_only"))
            allowed: dict[str, int] = dict(terms.get("sizes", {})) if terms else {}
            closing: dict[str, int] = dict(terms.get("closing", {})) if terms else {}  # position -> the size its close-back saw
            kept: dict[str, int] = {}
            still_closing: dict[str, int] = {}
            for position in self._targets_of[id(account)]:
                if not _instrument_matches(rule.instruments, position.instrument):
                    continue
                key = str(FiringKey(rule.name, self._target(account, position), lock=True))
                pkey = self._pkey_of.get(id(position)) or _position_key(account.name, position)
                limit = allowed.get(pkey, 0) if reduce_only else 0
                if position.quantity <= limit:
                    previous = self.old.tracked.get(pkey)
                    # a shrink counts once two consecutive snapshots show it (one low reading is not trusted)
                    low = max(position.quantity, previous[0]) if previous else position.quantity
                    kept[pkey] = min(limit, low)
                    continue
                kept[pkey] = limit
                if pkey in closing:
                    still_closing[pkey] = closing[pkey]
                # an acknowledged close-back counts while the position shows the size it was sized on (the
                # snapshot lags behind it); a different size over the allowance (the trader added again) is closed back anew
                if key in self.old.fired:
                    self.fired[key] = self.old.fired[key]
                if (key not in self.old.fired or (reduce_only and closing.get(pkey) != position.quantity)) and key not in self.old.inflight:
                    if limit:
                        orders: tuple[Order, ...] = (Order("close", account.name, position.instrument, quantity=position.quantity - limit),)
                        action, severity = f"lock: close back to {limit}", Severity.PARTIAL
                        reason = f"position grew past the {limit} contract(s) the reduce-only lock allows"
                    else:
                        orders = (Order("flatten", account.name, position.instrument),)
                        action, severity = "lock: flatten", Severity.FLATTEN
                        reason = "position opened while the account is locked"
                    inputs: dict[str, Any] = {"position": position.as_dict(), "locked_since": since}
                    if terms is not None:
                        inputs.update(locked_until=terms["until"], reduce_only=reduce_only)
                    if reduce_only:
                        inputs["allowed"] = limit
                    self.decisions.append(
                        Decision(kind="fire", rule=rule.name, key=key, account=account.name, instrument=position.instrument,
                                 action=action, severity=severity, orders=orders, inputs=inputs,
                                 threshold=threshold_of(rule), reason=reason, dry_run=rule.dry_run)
                    )
            if reduce_only and terms is not None:
                # a position remembered through a glitchy snapshot keeps its allowance; one gone for good allows nothing
                unseen = {k for k in self.tracked if k not in kept}
                kept.update({k: v for k, v in allowed.items() if k in unseen})
                still_closing.update({k: v for k, v in closing.items() if k in unseen})
                self.lock_terms[lock_key] = {**terms, "sizes": kept, "closing": still_closing}


def _arbitrate(decisions: list[Decision], order: dict[str, int]) -> list[Decision]:
    """Most severe firing per target wins; the rest become `superseded` and are covered by the winner."""
    fires = [d for d in decisions if d.kind == "fire"]
    others = [d for d in decisions if d.kind != "fire"]
    fires.sort(key=lambda d: (-d.severity, order.get(d.rule, 0)))
    covered: dict[str, set[str | None]] = {}
    winners: list[Decision] = []
    losers: list[tuple[Decision, int]] = []
    for d in fires:
        if not d.orders:  # nothing open in scope: counts at once, covers nothing
            winners.append(d)
            continue
        acct = d.account.lower()
        cover = covered.setdefault(acct, set())
        instruments = {o.instrument.upper() if o.instrument else None for o in d.orders}
        if None in cover or (instruments and instruments <= cover):
            by = next(i for i, w in enumerate(winners) if w.account.lower() == acct and (None in _touches(w) or instruments & _touches(w)))
            losers.append((d, by))
            continue
        if instruments - {None} and cover:
            d = replace(d, orders=tuple(o for o in d.orders if (o.instrument or "").upper() not in cover))
        cover |= instruments if instruments else {None}
        winners.append(d)
    for loser, by in losers:
        winner = winners[by]
        if winner.severity >= Severity.CLOSE_ALL:  # nothing left in scope: the loser's firing is done too
            winners[by] = replace(winner, covers=winner.covers + (loser.key,))
            reason = f"rule {winner.rule} ({winner.action}) covers this target"
        else:  # a partial close leaves a position: the loser looks at it again next tick
            reason = f"rule {winner.rule} ({winner.action}) acts on this target first; this rule is evaluated again next tick"
        others.append(replace(loser, kind="superseded", orders=(), reason=reason))
    return winners + others


def _touches(d: Decision) -> set[str | None]:
    return {o.instrument.upper() if o.instrument else None for o in d.orders}


def evaluate(rules: list[Rule], state: State, snapshot: Snapshot, now: datetime, settings: EngineSettings) -> tuple[list[Decision], State]:
    """Given the rules, the remembered state, a fresh snapshot and the current instant, return the
    decisions of this tick and the state to remember (fired markers only change on `acknowledge`)."""
    now = now.astimezone(timezone.utc)
    session = session_of(now, settings)
    by_name = {r.name: r for r in rules if r.enabled}
    ended = [k for k, t in state.lock_terms.items() if k in state.locks and datetime.fromisoformat(t["until"]) <= now]
    lock_ends = [_lock_ended(by_name[LockKey.parse(k).rule], k, state) for k in ended if LockKey.parse(k).rule in by_name]
    if state.session != session:  # a new session: markers, holds, peaks, locks and first-seen times start over
        horizon = now - timedelta(days=8)  # occurrences are keyed by their instant, so they stay (for `missed`)
        occurrences = {k: v for k, v in state.occurrences.items() if datetime.fromisoformat(OccurrenceKey.parse(k).instant) >= horizon}
        running = {k: t for k, t in state.lock_terms.items() if k in state.locks and datetime.fromisoformat(t["until"]) > now}
        state = State(session=session, known=state.known, inflight=state.inflight, occurrences=occurrences,
                      locks={k: state.locks[k] for k in running}, lock_terms=running,  # a timed lock outlives the session
                      paused=state.paused, account_locks=state.account_locks,
                      ledger=ledger.prune(state.ledger, session), marks=state.marks,
                      trades={k: v for k, v in state.trades.items() if v.get("session") == session})
    state = replace(state, paused=active(state.paused, now), account_locks=active(state.account_locks, now))
    if ended:
        state = replace(state, locks={k: v for k, v in state.locks.items() if k not in ended},
                        lock_terms={k: v for k, v in state.lock_terms.items() if k not in ended})
    known = {}
    for rule in rules:
        entry = state.known.get(rule.name)
        known[rule.name] = entry if entry and entry[0] == rule.digest else [rule.digest, now.isoformat()]
    changed = {name for name, entry in state.known.items() if known.get(name) != entry}
    if changed:  # a rule edited or removed: its markers go, unchanged rules keep theirs
        state = _forget(state, changed)
    state = replace(state, known=known)

    tick = _Tick(state, snapshot, now, settings)
    for rule in rules:
        if not rule.enabled or rule.name in state.paused:
            continue
        tick.run(rule)
    tick.enforce_locks(by_name)
    decisions = _arbitrate(tick.decisions, {r.name: r.index for r in rules}) + lock_ends
    # Under a 3 req/s budget a burst of account flattens (say at 16:58 on 300 accounts) takes a
    # while: accounts holding positions go first, flat ones (working orders only) after them.
    holding = {a.name.lower() for a in snapshot.accounts if a.positions}
    decisions.sort(key=lambda d: d.kind == "fire" and d.account.lower() not in holding)
    new_state = replace(
        state,
        fired=tick.fired,
        pending=tick.pending,
        occurrences=tick.occurrences,
        peaks=tick.peaks,
        first_seen=tick.first_seen,
        tracked=tick.tracked,
        ledger=tick.ledger,
        marks=tick.marks,
        gaps=tick.gaps(),
        locks={k: v for k, v in state.locks.items() if LockKey.parse(k).rule in by_name},
        lock_terms={k: v for k, v in tick.lock_terms.items() if LockKey.parse(k).rule in by_name},
    )
    return decisions, new_state


def _forget(state: State, names: set[str]) -> State:
    def keep(key: str) -> bool:
        return rule_of(key) not in names

    return replace(
        state,
        fired={k: v for k, v in state.fired.items() if keep(k)},
        pending={k: v for k, v in state.pending.items() if keep(k)},
        occurrences={k: v for k, v in state.occurrences.items() if keep(k)},
        locks={k: v for k, v in state.locks.items() if keep(k)},
        lock_terms={k: v for k, v in state.lock_terms.items() if keep(k)},
    )


def acknowledge(state: State, decision: Decision, now: datetime) -> State:
    """Given the state and a fire decision the API acknowledged, return the state that counts it
    (and the firings it covered) as done, and sets its lock."""
    fired = dict(state.fired)
    occurrences = dict(state.occurrences)
    for key in (decision.key, *decision.covers):
        firing = FiringKey.parse(key)
        occurrence = firing.occurrence_key()
        if occurrence is not None:
            record = dict(occurrences.get(str(occurrence), {}))
            record[str(firing.target)] = "done"
            occurrences[str(occurrence)] = record
        else:
            fired[key] = now.isoformat()
    locks, lock_terms = state.locks, state.lock_terms
    lock_key = str(LockKey(decision.rule, decision.account))
    if FiringKey.parse(decision.key).lock and decision.inputs.get("reduce_only") and lock_key in lock_terms:
        seen = decision.inputs["position"]  # a close-back counts while the position shows the size it was sized on
        pkey = str(PositionKey(decision.account, seen["instrument"], seen["side"]))
        closing = {**lock_terms[lock_key].get("closing", {}), pkey: seen["quantity"]}
        lock_terms = {**lock_terms, lock_key: {**lock_terms[lock_key], "closing": closing}}
    if decision.lock and not FiringKey.parse(decision.key).lock:
        running = lock_key in locks
        locks = {**locks, lock_key: locks[lock_key] if running else now.isoformat()}
        if decision.lock_terms is not None:
            lock_terms = {**lock_terms, lock_key: _merge_terms(lock_terms.get(lock_key) if running else None, decision.lock_terms)}
    return replace(state, fired=fired, occurrences=occurrences, locks=locks, lock_terms=lock_terms)


def _lock_ended(rule: Rule, lock_key: str, state: State) -> Decision:
    terms = state.lock_terms[lock_key]
    return Decision(kind="lock_ended", rule=rule.name, key=lock_key, account=LockKey.parse(lock_key).account, instrument=None,
                    action=rule.action.describe(), severity=Severity.ALERT, threshold=threshold_of(rule), dry_run=rule.dry_run,
                    reason=f"the lock set at {state.locks[lock_key]} ended at {terms['until']}"
                           + (" (reduce only)" if terms.get("reduce_only") else ""))


def _merge_terms(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """A lock set again while it runs: it ends at the later end, and a reduce-only lock allows each
    position the smaller of the two sizes (a position the running lock did not allow stays at 0)."""
    if old is None:
        return new
    until = max(old["until"], new["until"], key=datetime.fromisoformat)
    merged = {**new, "until": until, "reduce_only": old.get("reduce_only", False) and new.get("reduce_only", False)}
    if "sizes" in new:
        merged["sizes"] = {k: min(v, old.get("sizes", {}).get(k, 0)) for k, v in new["sizes"].items()}
    return merged


def _lock_row(rule: Rule, state: State, account: str, now: datetime) -> dict[str, Any] | None:
    """A running lock of `rule` on `account`, as `riskd once` shows it."""
    key = str(LockKey(rule.name, account))
    if not rule.action.lock or key not in state.locks:
        return None
    terms = state.lock_terms.get(key) or {}
    until = terms.get("until")
    kind = "no position may open"
    if terms.get("reduce_only"):
        allowed = ", ".join(f"{k.instrument} {k.side.lower()} {n}" for k, n in
                            ((PositionKey.parse(p), n) for p, n in sorted(terms.get("sizes", {}).items())) if n)
        kind = f"reduce only: allows {allowed or 'no position'}"
    return {"name": "lock", "seen": f"locked since {state.locks[key]} ({kind})", "holds": True,
            "threshold": f"until {until}" if until else "until the session ends",
            "distance": f"ends in {format_span(datetime.fromisoformat(until) - now)}" if until else "ends with the session"}


def lock_end(until: Any, now: datetime, settings: EngineSettings) -> datetime:
    """Given a lock's `until` ("session_end", "week_end" or a timedelta) and the instant it is set, return when it ends."""
    if until == "session_end":
        return session_end(now, settings)
    if until == "week_end":
        return week_bounds(now, settings.zone, settings.session_start)[1]
    return now + until


def _allowed_after(position: Position, orders: tuple[Order, ...]) -> int:
    """The size a reduce-only lock lets `position` keep once `orders` are sent: 0 when they close all
    of it; otherwise what is open now, until two snapshots show it smaller (a partial close is never
    sent twice because a snapshot lags behind it)."""
    for o in orders:
        if o.kind == "cancel_orders" or (o.instrument is not None and o.instrument.upper() != position.instrument.upper()):
            continue
        if o.repeatable:
            return 0
    return position.quantity


def explain(rules: list[Rule], state: State, snapshot: Snapshot, now: datetime, settings: EngineSettings) -> list[dict[str, Any]]:
    """Given the same inputs as evaluate, return one row per rule and target: its status (disabled,
    fired, fires now, holding (a `for` is running), not met, timed, no target in scope), its account and
    instrument (a target's), and per condition the value seen, the threshold, whether it holds and how far
    it is from holding; `next` is the next occurrence of a timed rule."""
    now = now.astimezone(timezone.utc)
    decisions, state = evaluate(rules, state, snapshot, now, settings)
    firing = {(d.rule, d.account, d.instrument) for d in decisions if d.kind == "fire"}
    tick = _Tick(state, snapshot, now, settings)
    rows: list[dict[str, Any]] = []
    for rule in rules:
        nxt = next_occurrence(rule, now, tick.calendar) if rule.at is not None else None
        base = {"rule": rule.name, "next": nxt.isoformat() if nxt else None, "account": None, "instrument": None}
        if not rule.enabled:
            rows.append({**base, "target": "-", "status": "disabled", "conditions": []})
            continue
        targets = list(tick.targets(rule))
        for account, position in targets:
            target = tick.target(rule, account, position)
            key = str(FiringKey(rule.name, tick._target(account, position)))
            holds, _ = check(rule, target)
            conditions = [REGISTRY[name].row(spec, target) for name, spec in rule.conditions]
            if rule.at is not None:
                conditions.insert(0, {"name": "at", "seen": target.local.strftime("%H:%M:%S"), "threshold": rule.at.isoformat(),
                                      "holds": False,
                                      "distance": f"next {nxt.isoformat()} (in {format_span(nxt - now)})" if nxt else "never"})
            if rule.hold is not None:
                since = state.pending.get(key)
                held = (now - datetime.fromisoformat(since)) if since else timedelta(0)
                distance = "holds" if since and held >= rule.hold else (
                    f"{format_span(rule.hold - held)} to go" if since else "starts when the other conditions hold")
                conditions.append({"name": "for", "seen": format_span(held), "threshold": format_span(rule.hold),
                                   "holds": bool(since) and held >= rule.hold, "distance": distance})
            lock_row = _lock_row(rule, state, account.name, now)
            if lock_row is not None:
                conditions.append(lock_row)
            if (rule.name, account.name, position.instrument if position else None) in firing:
                status = "fires now"
            elif rule.at is not None:
                status = "timed"
            elif key in state.fired:
                status = "fired"
            else:
                status = "holding" if holds else "not met"
            rows.append({**base, "target": account.name + (f" {position.instrument}" if position else ""), "status": status,
                         "conditions": conditions, "account": account.name, "instrument": position.instrument if position else None})
        if not targets:
            rows.append({**base, "target": "-", "status": "no target in scope", "conditions": []})
    return rows
