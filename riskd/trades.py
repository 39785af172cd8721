"""Round trips and losing streaks (`trades`, `loss_streak`), counted from an account's executions.

Pure: two consecutive snapshots of an account and the fills between them come in, the account's
count for this session goes out. The tick (riskd.tick) does the one read this needs.

- When: the executions (`GET /accounts/{account}/executions`) are read only for an account whose
  snapshot shows a position shrink, close or reversal since the previous snapshot, or a change of
  its realized P&L with no such change (a round trip opened and closed between two polls). Every
  other tick costs no request. The read is a poll-class request: it spends a token only while the
  client's reserve for closes is left (riskd.crosstrade), and it is made after the tick's actions,
  so it never delays a close (a `trades` / `loss_streak` rule sees the round trip one poll later).
- How: the fills between the two snapshots (by `epoch`, and never one `id` twice) are replayed,
  oldest first, on the positions that snapshot showed (side, size, average price), average-cost
  as NinjaTrader keeps positions. A round trip ends when a position is back to flat (a reversal
  ends one and starts another); its result is the sum over its exits of (exit price - average
  price) x contracts, in price points: its sign is the sign of its gross dollar P&L whatever the
  point value (commissions are not counted: a trade closed at its entry price is not a loss).
  A losing round trip adds one to the streak; any other ends it.
- Limits: when the executions cannot be read (an error, the budget kept for closes, an unknown
  shape), or the replay does not end at the positions the snapshot shows (fills older than the
  900 s the endpoint keeps, a clock skew between riskd and NinjaTrader larger than a poll, a
  fill the endpoint has not listed yet), the count falls back on the snapshots: each position
  that closed or reversed is one round trip, losing when the account's realized P&L fell over
  that interval (with several closes in one interval, the sign of their sum). Partial exits before
  a session boundary stay with that session. Counts start at 0 each session.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from riskd.model import Account, Position

IDS_KEPT = 256  # execution ids remembered per account, so a fill listed by two reads counts once
LOOKBACK_MAX_S = 900


class RoundTrip(NamedTuple):
    instrument: str
    points: float | None  # None: its result is not known from fills (the snapshot fallback)
    losing: bool
    source: str  # "executions" | "snapshot"


def _signed(position: Position) -> int:
    return position.quantity if position.side == "Long" else -position.quantity


def _book(account: Account) -> dict[str, int]:
    return {p.instrument.upper(): _signed(p) for p in account.positions}


def needs_fills(previous: Account, current: Account) -> bool:
    """Does the change from `previous` to `current` call for reading the executions?"""
    before, after = _book(previous), _book(current)
    for instrument, q in before.items():
        now = after.get(instrument, 0)
        if now == 0 or (now > 0) != (q > 0) or abs(now) < abs(q):
            return True
    return abs(current.realized_pnl - previous.realized_pnl) >= 0.005


def lookback_s(since: datetime, now: datetime) -> int:
    """The executions history to ask for: the interval since the previous snapshot, with a margin."""
    return max(10, min(LOOKBACK_MAX_S, int((now - since).total_seconds()) + 5))


def _fills(answer: Any, account: str, since: datetime, until: datetime, seen: set[str]) -> list[dict[str, Any]] | None:
    rows = answer.get("executions") if isinstance(answer, dict) else answer
    if not isinstance(rows, list):
        return None
    floor_ms, ceiling_ms = since.timestamp() * 1000, until.timestamp() * 1000
    out = []
    for row in rows:
        if not isinstance(row, dict):
            return None
        epoch, name, inst, side = row.get("epoch"), row.get("account"), row.get("instrument"), row.get("marketPosition")
        qty, price, ident = row.get("quantity"), row.get("price"), row.get("id")
        if (isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or not isinstance(name, str) or not isinstance(inst, str)
                or side not in ("Long", "Short") or isinstance(qty, bool) or not isinstance(qty, int) or qty < 1
                or isinstance(price, bool) or not isinstance(price, (int, float))):
            return None
        if name.lower() != account.lower() or not floor_ms < epoch <= ceiling_ms or (isinstance(ident, str) and ident in seen):
            continue
        out.append(row)
    return sorted(out, key=lambda r: r["epoch"])


def replay(previous: Account, fills: list[dict[str, Any]], open_points: dict[str, float]
           ) -> tuple[dict[str, int], list[tuple[str, float]], dict[str, float]]:
    """Given the positions of `previous`, fills oldest first and the points of the open round trips,
    return (signed sizes after the fills, closed round trips (INSTRUMENT, points), open points)."""
    size = {p.instrument.upper(): _signed(p) for p in previous.positions}
    average = {p.instrument.upper(): p.average_price for p in previous.positions}
    points = dict(open_points)
    closed: list[tuple[str, float]] = []
    for fill in fills:
        inst, qty, price = fill["instrument"].upper(), int(fill["quantity"]), float(fill["price"])
        direction = 1 if fill["marketPosition"] == "Long" else -1
        q = size.get(inst, 0)
        if q == 0 or (q > 0) == (direction > 0):
            average[inst] = (average.get(inst, 0.0) * abs(q) + price * qty) / (abs(q) + qty)
            size[inst] = q + direction * qty
            continue
        closing = min(abs(q), qty)
        points[inst] = points.get(inst, 0.0) + (price - average[inst]) * closing * (1 if q > 0 else -1)
        q += direction * closing
        if q == 0:
            closed.append((inst, round(points.pop(inst), 6)))  # price points: a break-even trip is 0, not float noise
            rest = qty - closing
            if rest:
                q, average[inst] = direction * rest, price
        size[inst] = q
    return {k: v for k, v in size.items() if v}, closed, points


def fold(entry: dict[str, Any] | None, session: str, previous: Account, current: Account, since: datetime,
         until: datetime, answer: Any) -> tuple[dict[str, Any], list[RoundTrip]]:
    """Given an account's count (None or another session's: it starts over), its previous and current
    snapshot and their times, and the executions answer (None: not read), return the new count and
    the round trips closed in between (the fills after `since`, up to `until`)."""
    if entry is None or entry.get("session") != session:
        entry = {"session": session, "count": 0, "streak": 0, "open": {}, "ids": []}
    seen = set(entry["ids"])
    fills = _fills(answer, current.name, since, until, seen) if answer is not None else None
    trips: list[RoundTrip] = []
    open_points = dict(entry["open"])
    after = _book(current)
    if fills is not None:
        sizes, closed, open_points = replay(previous, fills, open_points)
        if sizes == after:
            trips = [RoundTrip(inst, pts, pts < 0, "executions") for inst, pts in closed]
            seen_ids = [str(f["id"]) for f in fills if isinstance(f.get("id"), str)]
            entry = {**entry, "ids": (entry["ids"] + seen_ids)[-IDS_KEPT:]}
        else:
            fills = None
            open_points = dict(entry["open"])
    if fills is None:
        losing = current.realized_pnl - previous.realized_pnl < -0.005
        for inst, q in _book(previous).items():
            now = after.get(inst, 0)
            if now == 0 or (now > 0) != (q > 0):
                open_points.pop(inst, None)
                trips.append(RoundTrip(inst, None, losing, "snapshot"))
    count, streak = entry["count"], entry["streak"]
    for trip in trips:
        count += 1
        streak = streak + 1 if trip.losing else 0
    open_points = {k: v for k, v in open_points.items() if k in after}
    return {**entry, "count": count, "streak": streak, "open": open_points}, trips
