"""Scenario files for the CrossTrade simulator: parsing, validation, helpers.

A scenario is a YAML mapping. Every key is optional; unknown keys are errors.

``rate_limit``
    ``{per_second: 3, burst: 20}`` (the default, matching CrossTrade's per-user bucket),
    or ``null`` to disable rate limiting. ``per_second`` > 0 (float), ``burst`` >= 1 (int).
``commission_per_contract``
    Commission charged per contract on every fill: contracts closed through the API and
    contracts traded by ``Simulator.open_position``. Default ``0.0``. Positions listed in
    the scenario are treated as already open at session start and are not charged.
``point_values``
    ``{ROOT: dollars_per_point}``; extends/overrides the built-in table
    (ES 50, MES 5, NQ 20, MNQ 2, YM 5, MYM 0.5, RTY 50, M2K 5, CL 1000, MCL 100, GC 100, MGC 10, ...).
``accounts``
    List of accounts, each:

    ``name`` (required, unique case-insensitively), ``cash`` (starting cash, default 50000),
    ``positions`` (list of ``{instrument, side: long|short, quantity: int >= 1, price}``),
    ``orders`` (list of working orders ``{instrument, action: Buy|Sell|BuyToCover|SellShort,
    type: Market|Limit|StopMarket|StopLimit|MIT, quantity: int >= 1, stop?, limit?}``).
    Orders are never filled by the simulator; they stay ``Working`` until cancelled.
``prices``
    ``{instrument: price}`` initial market prices. Default for an instrument: the entry price
    of its first scenario position, else the price of its first ``path.steps`` entry.
``path``
    How prices move with sim time (seconds since the Simulator was created, read from its clock):

    ``steps``: list of ``{at: duration, instrument, price}``; from time ``at`` on, the
    instrument trades at ``price`` (a step function, latest step wins).

    ``random_walk``: ``{seed: int (default 0), every: duration (default 1s), tick: float
    (default 0.25), max_ticks: int (default 4), max_offset: float|null (default null),
    instruments: [..] (required)}``; every ``every`` seconds each listed instrument moves by
    a uniformly drawn whole number of ticks in ``[-max_ticks, max_ticks]``; the walk is an
    offset added to the scripted price, clamped to ``+-max_offset`` when that is set. It is
    deterministic for a given seed (and independent of the order in which it is sampled).
``faults``
    List of fault rules, each a mapping of :class:`riskd.sim.faults.Fault` fields
    (``kind``, ``match``, ``count``, ``start``, ``duration``, ``status``, ``body``, ``ms``,
    ``retry_after``, ``bytes``, ``apply_ms``, ``form``, ``mutation``, ``value``, ``account``,
    ``instrument``). ``start``/``duration`` are durations in sim time.

Durations are ``"500ms"``, ``"5s"``, ``"2m"``, ``"1h"`` or plain numbers (seconds).
Instruments are contract names ``"ROOT MM-YY"`` (e.g. ``"MES 12-26"``), matched case-insensitively.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import AbstractSet, Any, Mapping

import yaml

from ._util import ScenarioError, parse_duration
from .faults import Fault

__all__ = [
    "ScenarioError",
    "load_scenario",
    "validate_scenario",
    "parse_duration",
    "POINT_VALUES",
    "DEFAULT_RATE_LIMIT",
    "canonical_instrument",
    "instrument_root",
    "contract_sort_key",
]

#: Built-in dollars-per-point by root symbol.
POINT_VALUES: dict[str, float] = {
    "ES": 50.0,
    "MES": 5.0,
    "NQ": 20.0,
    "MNQ": 2.0,
    "YM": 5.0,
    "MYM": 0.5,
    "RTY": 50.0,
    "M2K": 5.0,
    "CL": 1000.0,
    "MCL": 100.0,
    "GC": 100.0,
    "MGC": 10.0,
    "SI": 5000.0,
    "HG": 25000.0,
    "NG": 10000.0,
    "ZB": 1000.0,
    "ZN": 1000.0,
    "6E": 125000.0,
}

DEFAULT_RATE_LIMIT = {"per_second": 3.0, "burst": 20}
DEFAULT_CASH = 50000.0

ORDER_ACTIONS = ("Buy", "Sell", "BuyToCover", "SellShort")
ORDER_TYPES = ("Market", "Limit", "StopMarket", "StopLimit", "MIT")

_CONTRACT_RE = re.compile(r"^([A-Z0-9]+) (\d{2})-(\d{2})$")


def canonical_instrument(name: Any, *, where: str = "instrument") -> str:
    """Normalise a contract name to ``"ROOT MM-YY"`` upper case; raise ScenarioError if it is not one."""
    if not isinstance(name, str):
        raise ScenarioError(f"{where}: expected a contract name like 'MES 12-26', got {name!r}")
    canon = " ".join(name.split()).upper()
    m = _CONTRACT_RE.match(canon)
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise ScenarioError(f"{where}: expected a contract name like 'MES 12-26' (ROOT MM-YY), got {name!r}")
    return canon


def instrument_root(contract: str) -> str:
    return contract.split(" ", 1)[0].upper()


def contract_sort_key(contract: str) -> tuple[int, int, str]:
    """Sort key putting the front month first (year, month)."""
    m = _CONTRACT_RE.match(contract.upper())
    if not m:
        return (9999, 99, contract)
    return (int(m.group(3)), int(m.group(2)), contract)


def _number(value: Any, where: str, *, positive: bool = False, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ScenarioError(f"{where}: expected a number, got {value!r}")
    value = float(value)
    if positive and value <= 0:
        raise ScenarioError(f"{where}: must be > 0, got {value!r}")
    if minimum is not None and value < minimum:
        raise ScenarioError(f"{where}: must be >= {minimum}, got {value!r}")
    return value


def _int(value: Any, where: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool):
        raise ScenarioError(f"{where}: expected an integer, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise ScenarioError(f"{where}: expected an integer, got {value!r}")
    if value < minimum:
        raise ScenarioError(f"{where}: must be >= {minimum}, got {value!r}")
    return value


def _mapping(value: Any, where: str, allowed: set[str], required: AbstractSet[str] = frozenset()) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ScenarioError(f"{where}: expected a mapping, got {type(value).__name__}")
    for key in value:
        if key not in allowed:
            raise ScenarioError(f"{where}: unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")
    for key in required:
        if key not in value:
            raise ScenarioError(f"{where}: missing required key {key!r}")
    return value


def _list(value: Any, where: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ScenarioError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def _choice(value: Any, where: str, choices: tuple[str, ...]) -> str:
    if isinstance(value, str):
        for c in choices:
            if c.lower() == value.strip().lower():
                return c
    raise ScenarioError(f"{where}: expected one of {', '.join(choices)}, got {value!r}")


# ---------------------------------------------------------------- validation

_TOP_KEYS = {"rate_limit", "commission_per_contract", "point_values", "accounts", "prices", "path", "faults"}


def validate_scenario(data: Any, *, source: str = "scenario") -> dict[str, Any]:
    """Validate and normalise a scenario mapping (idempotent: its output is valid input).

    Returns a plain dict with every key present: ``rate_limit`` (dict or None),
    ``commission_per_contract`` (float), ``point_values`` (dict root -> float, built-ins merged),
    ``accounts`` (list), ``prices`` (dict contract -> float), ``path`` (``{"steps": [...],
    "random_walk": dict|None}``), ``faults`` (list of Fault).
    """
    try:
        return _validate(data)
    except ScenarioError as exc:
        raise ScenarioError(f"{source}: {exc}") from None


def _validate(data: Any) -> dict[str, Any]:
    if data is None:
        data = {}
    _mapping(data, "top level", _TOP_KEYS)

    # rate limit
    if "rate_limit" in data:
        rl = data["rate_limit"]
        if rl is None:
            rate_limit = None
        else:
            _mapping(rl, "rate_limit", {"per_second", "burst"})
            rate_limit = {
                "per_second": _number(rl.get("per_second", DEFAULT_RATE_LIMIT["per_second"]),
                                      "rate_limit.per_second", positive=True),
                "burst": _int(rl.get("burst", DEFAULT_RATE_LIMIT["burst"]), "rate_limit.burst"),
            }
    else:
        rate_limit = dict(DEFAULT_RATE_LIMIT)

    commission = data.get("commission_per_contract")
    commission = 0.0 if commission is None else _number(commission, "commission_per_contract", minimum=0.0)

    point_values = dict(POINT_VALUES)
    pv = data.get("point_values") or {}
    if not isinstance(pv, Mapping):
        raise ScenarioError("point_values: expected a mapping ROOT: dollars_per_point")
    for root, value in pv.items():
        if not isinstance(root, str) or not re.fullmatch(r"[A-Za-z0-9]+", root):
            raise ScenarioError(f"point_values: {root!r} is not a root symbol like 'MES'")
        point_values[root.upper()] = _number(value, f"point_values.{root}", positive=True)

    def contract(name: Any, where: str) -> str:
        canon = canonical_instrument(name, where=where)
        if instrument_root(canon) not in point_values:
            raise ScenarioError(
                f"{where}: no point value known for root {instrument_root(canon)!r}; add it under point_values"
            )
        return canon

    # accounts
    accounts: list[dict[str, Any]] = []
    seen: set[str] = set()
    first_entry: dict[str, float] = {}
    for i, acc in enumerate(_list(data.get("accounts"), "accounts")):
        w = f"accounts[{i}]"
        _mapping(acc, w, {"name", "cash", "positions", "orders"}, {"name"})
        name = acc["name"]
        if not isinstance(name, str) or not name.strip() or "/" in name:
            raise ScenarioError(f"{w}.name: expected a non-empty account name without '/', got {name!r}")
        name = name.strip()
        if name.lower() in seen:
            raise ScenarioError(f"{w}.name: duplicate account {name!r} (names are case-insensitive)")
        seen.add(name.lower())
        cash = _number(acc.get("cash", DEFAULT_CASH), f"{w}.cash")
        positions = []
        for j, pos in enumerate(_list(acc.get("positions"), f"{w}.positions")):
            pw = f"{w}.positions[{j}]"
            _mapping(pos, pw, {"instrument", "side", "quantity", "price"}, {"instrument", "side", "quantity", "price"})
            inst = contract(pos["instrument"], f"{pw}.instrument")
            price = _number(pos["price"], f"{pw}.price", positive=True)
            first_entry.setdefault(inst, price)
            positions.append({
                "instrument": inst,
                "side": _choice(pos["side"], f"{pw}.side", ("long", "short")),
                "quantity": _int(pos["quantity"], f"{pw}.quantity"),
                "price": price,
            })
        orders = []
        for j, order in enumerate(_list(acc.get("orders"), f"{w}.orders")):
            ow = f"{w}.orders[{j}]"
            _mapping(order, ow, {"instrument", "action", "type", "quantity", "stop", "limit"},
                     {"instrument", "action", "type", "quantity"})
            otype = _choice(order["type"], f"{ow}.type", ORDER_TYPES)
            stop = order.get("stop")
            limit = order.get("limit")
            if otype in ("StopMarket", "StopLimit", "MIT") and stop is None:
                raise ScenarioError(f"{ow}: a {otype} order needs 'stop'")
            if otype in ("Limit", "StopLimit") and limit is None:
                raise ScenarioError(f"{ow}: a {otype} order needs 'limit'")
            orders.append({
                "instrument": contract(order["instrument"], f"{ow}.instrument"),
                "action": _choice(order["action"], f"{ow}.action", ORDER_ACTIONS),
                "type": otype,
                "quantity": _int(order["quantity"], f"{ow}.quantity"),
                "stop": None if stop is None else _number(stop, f"{ow}.stop", positive=True),
                "limit": None if limit is None else _number(limit, f"{ow}.limit", positive=True),
            })
        accounts.append({"name": name, "cash": cash, "positions": positions, "orders": orders})

    # prices
    prices: dict[str, float] = {}
    raw_prices = data.get("prices") or {}
    if not isinstance(raw_prices, Mapping):
        raise ScenarioError("prices: expected a mapping instrument: price")
    for inst, price in raw_prices.items():
        canon = contract(inst, f"prices[{inst!r}]")
        prices[canon] = _number(price, f"prices[{inst!r}]", positive=True)

    # path
    raw_path = data.get("path") or {}
    _mapping(raw_path, "path", {"steps", "random_walk"})
    steps: list[dict[str, Any]] = []
    for j, step in enumerate(_list(raw_path.get("steps"), "path.steps")):
        sw = f"path.steps[{j}]"
        _mapping(step, sw, {"at", "instrument", "price"}, {"at", "instrument", "price"})
        steps.append({
            "at": parse_duration(step["at"], where=f"{sw}.at"),
            "instrument": contract(step["instrument"], f"{sw}.instrument"),
            "price": _number(step["price"], f"{sw}.price", positive=True),
        })
    steps.sort(key=lambda s: s["at"])  # stable: equal times keep file order (the later one wins)
    walk: dict[str, Any] | None = None
    if raw_path.get("random_walk") is not None:
        rw = _mapping(raw_path["random_walk"], "path.random_walk",
                      {"seed", "every", "tick", "max_ticks", "max_offset", "instruments"}, {"instruments"})
        seed = rw.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ScenarioError(f"path.random_walk.seed: expected an integer, got {seed!r}")
        every = parse_duration(rw.get("every", 1.0), where="path.random_walk.every")
        if every <= 0:
            raise ScenarioError("path.random_walk.every: must be > 0")
        instruments = [contract(x, f"path.random_walk.instruments[{k}]")
                       for k, x in enumerate(_list(rw["instruments"], "path.random_walk.instruments"))]
        if not instruments:
            raise ScenarioError("path.random_walk.instruments: must list at least one instrument")
        max_offset = rw.get("max_offset")
        walk = {
            "seed": seed,
            "every": every,
            "tick": _number(rw.get("tick", 0.25), "path.random_walk.tick", positive=True),
            "max_ticks": _int(rw.get("max_ticks", 4), "path.random_walk.max_ticks"),
            "max_offset": None if max_offset is None else _number(max_offset, "path.random_walk.max_offset",
                                                                  minimum=0.0),
            "instruments": instruments,
        }

    # default initial prices: first scenario position's entry, else first step
    for inst, price in first_entry.items():
        prices.setdefault(inst, price)
    for step in steps:
        prices.setdefault(step["instrument"], step["price"])
    if walk:
        for inst in walk["instruments"]:
            if inst not in prices:
                raise ScenarioError(
                    f"path.random_walk.instruments: {inst!r} has no price; give it one under prices"
                )

    # faults
    faults: list[Fault] = []
    for j, f in enumerate(_list(data.get("faults"), "faults")):
        if isinstance(f, Fault):
            faults.append(f)
            continue
        try:
            faults.append(Fault.from_dict(f))
        except (ValueError, TypeError) as exc:
            raise ScenarioError(f"faults[{j}]: {exc}") from None

    return {
        "rate_limit": rate_limit,
        "commission_per_contract": commission,
        "point_values": point_values,
        "accounts": accounts,
        "prices": prices,
        "path": {"steps": steps, "random_walk": walk},
        "faults": faults,
    }


def load_scenario(path: str | Path) -> dict[str, Any]:
    """Read and validate a scenario YAML file; raise :class:`ScenarioError` (a ValueError) when bad."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{p}: cannot read scenario file: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ScenarioError(f"{p}{loc}: invalid YAML: {problem}") from None
    return validate_scenario(data, source=str(p))
