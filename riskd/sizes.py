"""Contract sizes across positions: every contract month of a root together, micros weighed
against their full-size contract, and which positions give up an excess.

A micro counts as `weight` of its full-size contract (MICROS below; `micro_weight` in a rule
overrides the weight of every micro) and is counted in the full-size root's group, so 5 NQ and 3
MNQ are 5.3 NQ. An excess is taken from the most recently opened positions first (by the time riskd
first saw each one; ties by instrument name), whole contracts at a time: a full-size contract
closes even when only a part of it is over, so a reduction never leaves more than the cap and may
leave up to one full-size contract less.

Pure: positions in, numbers and (position, contracts) out.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Iterable

from riskd.model import Position

# CME Group micro contracts that are a tenth of a full-size one: micro root -> full-size root.
MICROS: dict[str, str] = {
    "MES": "ES",  # Micro E-mini S&P 500: $5 a point, ES $50
    "MNQ": "NQ",  # Micro E-mini Nasdaq-100: $2, NQ $20
    "M2K": "RTY",  # Micro E-mini Russell 2000: $5, RTY $50
    "MYM": "YM",  # Micro E-mini Dow: $0.50, YM $5
    "MCL": "CL",  # Micro WTI crude oil: 100 barrels, CL 1,000
    "MGC": "GC",  # Micro gold: 10 troy ounces, GC 100
    "M6E": "6E",  # Micro EUR/USD: 12,500 euros, 6E 125,000
    "M6A": "6A",  # Micro AUD/USD: 10,000 dollars, 6A 100,000
    "M6B": "6B",  # Micro GBP/USD: 6,250 pounds, 6B 62,500
}
MICRO_WEIGHT = 0.1
EPSILON = 1e-9  # weighted sums of tenths are not exact in binary


def root_of(instrument: str) -> str:
    """'MNQ 12-26' -> 'MNQ'."""
    return instrument.strip().upper().split(" ", 1)[0]


def weigh(instrument: str, micro_weight: float | None = None) -> tuple[str, float]:
    """Given an instrument, return (the root it counts under, the weight of one contract)."""
    root = root_of(instrument)
    full = MICROS.get(root)
    if full is None:
        return root, 1.0
    return full, MICRO_WEIGHT if micro_weight is None else micro_weight


def weighted(positions: Iterable[Position], micro_weight: float | None = None) -> float:
    """The size of positions in full-size contracts."""
    return round(sum(p.quantity * weigh(p.instrument, micro_weight)[1] for p in positions), 6)


def by_root(positions: Iterable[Position], micro_weight: float | None = None) -> dict[str, list[Position]]:
    """Positions grouped by the full-size root they count under (every contract month together)."""
    groups: dict[str, list[Position]] = {}
    for p in positions:
        groups.setdefault(weigh(p.instrument, micro_weight)[0], []).append(p)
    return groups


def excess(positions: Iterable[tuple[Position, datetime]], keep: float, micro_weight: float | None = None) -> list[tuple[Position, int]]:
    """Given positions with the time each was first seen and the size to keep (full-size contracts),
    return (position, contracts to close) taking the newest first, until at most `keep` is left."""
    ordered = sorted(positions, key=lambda ps: (-ps[1].timestamp(), ps[0].instrument))
    over = weighted((p for p, _ in ordered), micro_weight) - keep
    closes: list[tuple[Position, int]] = []
    for p, _ in ordered:
        if over <= EPSILON:
            break
        w = weigh(p.instrument, micro_weight)[1]
        n = min(p.quantity, math.ceil(over / w - EPSILON))
        closes.append((p, n))
        over -= n * w
    return closes
