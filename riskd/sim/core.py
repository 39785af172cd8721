"""The simulator's state machine: accounts, positions, orders, prices, rate limit, faults.

:class:`Simulator` knows nothing about sockets. :class:`riskd.sim.server.SimServer` feeds it
HTTP requests in two steps, :meth:`Simulator.admit` (auth, rate limit, fault selection,
request log) and :meth:`Simulator.complete` (apply the request and build the response), so a
latency/timeout fault can wait between the two without holding the lock. Tests that do not
need sockets may call :meth:`Simulator.handle` (both steps, no waiting).

Everything is guarded by one re-entrant lock; every public method is thread-safe.
"""

from __future__ import annotations

import dataclasses
import difflib
import heapq
import hmac
import itertools
import json
import math
import random
import re
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import parse_qsl, unquote, urlsplit

from .faults import SNAPSHOT_ROUTE, Fault, default_fault_body
from .scenario import (
    ORDER_ACTIONS,
    ORDER_TYPES,
    ScenarioError,
    canonical_instrument,
    contract_sort_key,
    instrument_root,
    validate_scenario,
)

__all__ = ["Simulator", "RequestRecord", "SimResponse", "Ticket", "API_PREFIX"]

API_PREFIX = "/v1/api"

_ITEM_KEYS = (
    "buyingPower", "cashValue", "commission", "dailyLossLimit", "dailyProfitTrigger",
    "excessInitialMargin", "excessIntradayMargin", "excessMaintenanceMargin", "excessPositionMargin",
    "fee", "grossRealizedProfitLoss", "initialMargin", "intradayMargin", "longOptionValue",
    "longStockValue", "lookAheadMaintenanceMargin", "maintenanceMargin", "netLiquidation",
    "netLiquidationByCurrency", "positionMargin", "realizedProfitLoss", "shortOptionValue",
    "shortStockValue", "sodCashValue", "sodLiquidatingValue", "totalCashBalance",
    "trailingMaxDrawdown", "unrealizedProfitLoss", "weeklyLossLimit", "weeklyProfitLoss",
    "weeklyProfitTrigger",
)

_MONTH_CODES = "FGHJKMNQUVXZ"
_ROOT_RE = re.compile(r"^[A-Z0-9]+$")
_MONTH_CODE_RE = re.compile(r"^([A-Z0-9]+?)([FGHJKMNQUVXZ])(\d{2})$")
_CONTINUOUS_RE = re.compile(r"^([A-Z0-9]+)1!$")

# (method, template) of every route, in match order. {a} = account name.
ROUTES: tuple[tuple[str, str], ...] = (
    ("GET", "/accounts/snapshot"),
    ("GET", "/accounts"),
    ("GET", "/accounts/{a}"),
    ("GET", "/accounts/{a}/positions"),
    ("GET", "/accounts/{a}/position"),
    ("POST", "/accounts/{a}/positions/close"),
    ("POST", "/accounts/{a}/positions/flatten"),
    ("POST", "/accounts/{a}/orders/cancel"),
    ("GET", "/accounts/{a}/orders"),
    ("GET", "/accounts/{a}/watermarks"),
    ("GET", "/accounts/{a}/executions"),
    ("GET", "/positions"),
    ("POST", "/positions/flatten"),
)


@dataclass
class RequestRecord:
    """One request as the simulator received it (the Authorization header is never kept).

    ``t`` is the raw clock value at receipt; ``path`` is the full request path without the
    query string (e.g. ``/v1/api/accounts/Sim101/positions/close``); ``body`` is the parsed
    JSON object, or None when the body was empty or not a JSON object; ``status`` is the HTTP
    status the simulator produced (0 while still in progress and for ``reset``/``timeout``
    faults, where nothing is sent; for ``lost_response`` the status of the response that was
    computed and then dropped, for ``late_apply`` that of the late application, 0 until it
    happens; for ``applied_refused`` the status sent, not the one computed); ``fault`` is the
    kind of the injected fault, if any; ``applied_status``: for ``applied_refused``, the status of
    the request as carried out (200 when it was applied), else None.
    """

    t: float
    method: str
    path: str
    query: dict
    body: dict | None
    status: int
    fault: str | None
    applied_status: int | None = None


@dataclass
class SimResponse:
    """What the server should do: ``action`` is "respond", "close" (FIN, no response) or "reset" (RST).
    ``pace`` (``trickle`` fault): send the body ``pace[0]`` bytes at a time, ``pace[1]`` seconds apart."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    action: str = "respond"
    pace: tuple[int, float] | None = None


@dataclass
class Ticket:
    """An admitted request between :meth:`Simulator.admit` and :meth:`Simulator.complete`."""

    method: str
    path: str  # after /v1/api (or the raw path when outside it)
    full_path: str
    query: dict
    body: dict | None
    body_error: str | None
    record: RequestRecord
    fault: Fault | None = None
    response: SimResponse | None = None  # set when rejected at admission (401 / 429)
    delay: float = 0.0  # seconds the server waits before complete() (latency / timeout / late_apply faults)
    apply_at: float | None = None  # late_apply: sim time the request gets applied
    token: str = field(default="", repr=False)  # the bearer token presented (echo_token); never logged
    completed: bool = False


class _ApiError(Exception):
    def __init__(self, status: int, body: dict):
        super().__init__(body)
        self.status = status
        self.body = body


def _err(status: int, code: str, detail: str, **extra: Any) -> _ApiError:
    return _ApiError(status, {"success": False, "error": code, "detail": detail, **extra})


def _no_position(instrument: Any) -> _ApiError:
    return _ApiError(400, {"error": f"No positions found for instrument '{instrument}'"})


@dataclass
class _Position:
    instrument: str
    qty: int  # signed: > 0 long, < 0 short
    avg: float


@dataclass
class _Order:
    order_id: str
    instrument: str
    action: str
    order_type: str
    quantity: int
    limit: float | None
    stop: float | None


@dataclass
class _Account:
    id: int
    name: str
    cash: float
    realized: float = 0.0  # gross realized P&L this session
    commission: float = 0.0
    last_tx: float = 0.0
    positions: dict[str, _Position] = field(default_factory=dict)
    orders: dict[str, _Order] = field(default_factory=dict)
    flat_instruments: list[str] = field(default_factory=list)  # closed this session (includeFlat)
    marks: dict[str, float] = field(default_factory=dict)
    executions: list[tuple[float, dict]] = field(default_factory=list)  # (sim time of the fill, Execution)
    week: float = 0.0  # realized P&L net of commission of the earlier sessions of this week (weeklyProfitLoss)


LOOKBACK_DEFAULT = 320  # GET /accounts/{a}/executions?lookbackTime=N: seconds, default 320, max 900
LOOKBACK_MAX = 900
SERVER_NAME = "riskd-sim"


WALK_KEPT = 1024  # random-walk steps kept per instrument (older ones are never asked for)


class _Prices:
    """Lazy price path: pinned override > latest scripted step <= t > initial price, plus walk."""

    def __init__(self, prices: Mapping[str, float], steps: list[dict], walk: dict | None):
        self.initial = dict(prices)
        self.steps: dict[str, list[tuple[float, float]]] = {}
        for s in steps:
            self.steps.setdefault(s["instrument"], []).append((s["at"], s["price"]))
        self.walk = walk
        self.walk_instruments = set(walk["instruments"]) if walk else set()
        self.pinned: dict[str, float] = {}
        # per instrument: its generator, the step number of the first kept value, the kept values
        self._walk_cache: dict[str, tuple[random.Random, list[int], list[int]]] = {}

    def known(self, inst: str) -> bool:
        return inst in self.pinned or inst in self.initial or inst in self.steps

    def walk_ticks(self, inst: str, t: float) -> int:
        """The walk's offset (in ticks) at time t: deterministic for a seed, O(1) memory over a long run
        (only the latest WALK_KEPT steps are kept: requests arrive in clock order, give or take a thread)."""
        w = self.walk
        assert w is not None  # only instruments of a walk are walked
        n = max(0, int(math.floor(t / w["every"] + 1e-9)))
        rng, first, cum = self._walk_cache.setdefault(inst, (random.Random(f"{w['seed']}:{inst}"), [0], [0]))
        bound = None if w["max_offset"] is None else int(math.floor(w["max_offset"] / w["tick"] + 1e-9))
        while first[0] + len(cum) <= n:
            nxt = cum[-1] + rng.randint(-w["max_ticks"], w["max_ticks"])
            if bound is not None:
                nxt = max(-bound, min(bound, nxt))
            cum.append(nxt)
            if len(cum) > 2 * WALK_KEPT:
                del cum[:WALK_KEPT]
                first[0] += WALK_KEPT
        return cum[max(n, first[0]) - first[0]]

    def price(self, inst: str, t: float) -> float | None:
        if inst in self.pinned:
            return self.pinned[inst]
        base = self.initial.get(inst)
        for at, p in self.steps.get(inst, ()):
            if at <= t:
                base = p
            else:
                break
        if base is None:
            return None
        if inst in self.walk_instruments:
            assert self.walk is not None  # walk_instruments is empty without a walk
            base = base + self.walk_ticks(inst, t) * self.walk["tick"]
        return base


def _wall_now() -> datetime:
    """The wall clock every timestamp the API reports is on (snapshot ``timestamp``/``epoch``,
    Execution ``time``/``epoch``): the machine's local time, not the sim clock."""
    return datetime.now().astimezone()


def _nt_time(moment: datetime) -> str:
    """NT8's local time string without offset, 7 fractional digits: ``2025-09-26T18:09:38.3736787``."""
    return moment.replace(tzinfo=None).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}0"


def _side(qty: int) -> str:
    return "Long" if qty > 0 else "Short" if qty < 0 else "Flat"


class Simulator:
    """Pure state machine of a CrossTrade account set. See the package docstring for the API.

    ``scenario``: a mapping as returned by :func:`riskd.sim.load_scenario` (or any raw scenario
    mapping, validated here; None = empty). ``token``: the bearer token every request must
    carry. ``clock``: returns seconds (monotonic); sim time is ``clock() - clock()@creation``.
    ``wall``: the bridge's wall clock (aware datetimes) that snapshot and execution times are on
    (default: the machine's local time); a test gives the clock riskd runs on.
    """

    def __init__(self, scenario: Mapping[str, Any] | None = None, token: str | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], datetime] = _wall_now):
        if not isinstance(token, str) or not token:
            raise ValueError("Simulator needs a non-empty bearer token (token=...)")
        sc = validate_scenario(scenario if scenario is not None else {}, source="scenario")
        self._lock = threading.RLock()
        self._pending: list[tuple[float, int, Ticket]] = []  # late_apply: heap of (due sim time, seq, ticket)
        self._pending_seq = itertools.count()
        self._as_of: float | None = None  # sim time a late application is computed at
        self._token = token.encode()
        self._clock = clock
        self._wall = wall
        self._t0 = clock()
        self._commission = sc["commission_per_contract"]
        self._point_values = dict(sc["point_values"])
        self._prices = _Prices(sc["prices"], sc["path"]["steps"], sc["path"]["random_walk"])
        self._accounts: dict[str, _Account] = {}
        self._faults: list[list] = []  # [Fault, remaining count or None]
        self._requests: list[RequestRecord] = []
        self._in_progress = 0  # admitted, not yet completed (held by latency/timeout faults, or being handled)
        self._rate: dict | None = None
        self._bucket = 0.0
        self._bucket_t = self._t0
        rl = sc["rate_limit"]
        if rl is None:
            self.set_rate_limit(None)
        else:
            self.set_rate_limit(rl["per_second"], rl["burst"])
        for acc in sc["accounts"]:
            a = self._add_account(acc["name"], acc["cash"])
            for p in acc["positions"]:
                self._open(a, p["instrument"], p["quantity"] * (1 if p["side"] == "long" else -1),
                           p["price"], commission=False)
            for o in acc["orders"]:
                self._add_order(a, o["instrument"], o["action"], o["type"], o["quantity"], o["limit"], o["stop"])
        for f in sc["faults"]:
            self.inject(f)
        with self._guard():
            self._observe_all()

    # ------------------------------------------------------------------ clock & prices

    def now(self) -> float:
        """Sim time: seconds since this Simulator was created (per its clock)."""
        return self._clock() - self._t0

    def _t(self) -> float:
        """Sim time the state is being computed at: now, or a late application's due time."""
        return self.now() if self._as_of is None else self._as_of

    @contextmanager
    def _guard(self):
        """The lock, after applying every ``late_apply`` request that has come due (so nothing
        reads or changes the state as if the clock had not passed it)."""
        with self._lock:
            self._run_due()
            yield

    def run_due(self) -> int:
        """Apply the ``late_apply`` requests due by now (sim clock); returns how many. Called by
        every public method, and by SimServer's timers, so there is rarely a reason to call it."""
        with self._lock:
            return self._run_due()

    def _run_due(self) -> int:
        done = 0
        if self._as_of is not None:  # already applying (re-entered)
            return done
        while self._pending and self._pending[0][0] <= self.now():
            at, _, ticket = heapq.heappop(self._pending)
            self._as_of = at
            try:
                resp = self._dispatch(ticket)
            finally:
                self._as_of = None
            ticket.record.status = resp.status
            done += 1
        return done

    def next_due(self) -> float | None:
        """Sim time of the next pending ``late_apply`` application (None: none pending)."""
        with self._lock:
            return self._pending[0][0] if self._pending else None

    def price(self, instrument: str) -> float | None:
        """Current market price of a contract (None if it has none)."""
        inst = canonical_instrument(instrument)
        with self._guard():
            return self._prices.price(inst, self._t())

    def set_price(self, instrument: str, price: float) -> None:
        """Pin a contract's price from now on (overrides the scripted path and random walk)."""
        inst = self._contract(instrument)
        price = float(price)
        if not math.isfinite(price) or price <= 0:
            raise ValueError(f"price must be > 0, got {price!r}")
        with self._guard():
            self._prices.pinned[inst] = price
            self._observe_all()

    def _contract(self, instrument: str) -> str:
        inst = canonical_instrument(instrument)
        if instrument_root(inst) not in self._point_values:
            raise ScenarioError(f"no point value known for root {instrument_root(inst)!r}")
        return inst

    def _px(self, inst: str) -> float:
        p = self._prices.price(inst, self._t())
        if p is None:
            raise ValueError(f"no market price for {inst}; call set_price() first")
        return p

    # ------------------------------------------------------------------ controls

    def add_account(self, name: str, cash: float = 50000.0) -> None:
        """Create an (empty) account. Names are unique case-insensitively."""
        self._add_account(name, cash)

    def _add_account(self, name: str, cash: float) -> _Account:
        if not isinstance(name, str) or not name.strip() or "/" in name:
            raise ValueError(f"bad account name {name!r}")
        with self._guard():
            key = name.strip().lower()
            if key in self._accounts:
                raise ValueError(f"account {name!r} already exists")
            acc = _Account(id=len(self._accounts) + 1, name=name.strip(), cash=float(cash))
            self._accounts[key] = acc
            self._observe(acc)
            return acc

    def _account(self, name: str) -> _Account:
        acc = self._accounts.get(str(name).strip().lower())
        if acc is None:
            raise KeyError(f"Account {name} not found")
        return acc

    def open_position(self, account: str, instrument: str, side: str = "long", quantity: int = 1,
                      price: float | None = None) -> dict | None:
        """Fill ``quantity`` contracts on ``side`` at ``price`` (default: market); returns the
        position afterwards (API shape) or None if it ended flat. Same side adds (weighted
        average price); opposite side reduces, realizing P&L, and flips past zero. Charges
        ``commission_per_contract`` per contract traded."""
        if side not in ("long", "short"):
            raise ValueError(f"side must be 'long' or 'short', got {side!r}")
        if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 1:
            raise ValueError(f"quantity must be an int >= 1, got {quantity!r}")
        inst = self._contract(instrument)
        with self._guard():
            acc = self._account(account)
            if price is None:
                price = self._px(inst)
            price = float(price)
            if not self._prices.known(inst):
                self._prices.initial[inst] = price
            self._open(acc, inst, quantity if side == "long" else -quantity, price, commission=True, fill=True)
            self._observe_all()
            pos = acc.positions.get(inst)
            return None if pos is None else self._position_dict(acc, pos)

    def _open(self, acc: _Account, inst: str, signed_qty: int, price: float, *, commission: bool,
              fill: bool = False) -> None:
        """Trade ``signed_qty`` at ``price``. ``fill``: record Executions (scenario start positions
        are state that already exists, not fills)."""
        before = acc.positions[inst].qty if inst in acc.positions else 0
        self._apply_open(acc, inst, signed_qty, price, commission=commission)
        if fill:
            after = acc.positions[inst].qty if inst in acc.positions else 0
            order_id = uuid.uuid4().hex
            closing = min(abs(before), abs(signed_qty)) if before and (before > 0) != (signed_qty > 0) else 0
            if closing:  # reduces (and maybe flips): an Exit for the closed part, an Entry for the rest
                self._record_execution(acc, inst, signed_qty > 0, closing, price, "Exit", order_id,
                                       abs(before) - closing)
            if abs(signed_qty) > closing:
                self._record_execution(acc, inst, signed_qty > 0, abs(signed_qty) - closing, price, "Entry",
                                       order_id, abs(after))

    def _apply_open(self, acc: _Account, inst: str, signed_qty: int, price: float, *, commission: bool) -> None:
        if not self._prices.known(inst):
            self._prices.initial[inst] = price
        pv = self._point_values[instrument_root(inst)]
        if commission:
            acc.commission += abs(signed_qty) * self._commission
        pos = acc.positions.get(inst)
        if pos is None or pos.qty == 0:
            acc.positions[inst] = _Position(inst, signed_qty, price)
        elif (pos.qty > 0) == (signed_qty > 0):
            total = pos.qty + signed_qty
            pos.avg = (pos.avg * abs(pos.qty) + price * abs(signed_qty)) / abs(total)
            pos.qty = total
        else:
            closing = min(abs(pos.qty), abs(signed_qty))
            pnl = (price - pos.avg) * closing * pv * (1 if pos.qty > 0 else -1)
            acc.realized += pnl
            acc.last_tx = pnl
            remaining = pos.qty + signed_qty
            if remaining == 0:
                del acc.positions[inst]
                self._mark_flat(acc, inst)
            elif (remaining > 0) == (pos.qty > 0):
                pos.qty = remaining
            else:
                acc.positions[inst] = _Position(inst, remaining, price)
        if inst in acc.positions and inst in acc.flat_instruments:
            acc.flat_instruments.remove(inst)

    def _mark_flat(self, acc: _Account, inst: str) -> None:
        if inst not in acc.flat_instruments:
            acc.flat_instruments.append(inst)

    def add_order(self, account: str, instrument: str, action: str = "Sell", order_type: str = "StopMarket",
                  quantity: int = 1, limit_price: float | None = None, stop_price: float | None = None) -> str:
        """Add a working order (never filled by the simulator); returns its orderId."""
        inst = self._contract(instrument)
        action = _pick(action, ORDER_ACTIONS, "action")
        order_type = _pick(order_type, ORDER_TYPES, "order_type")
        if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 1:
            raise ValueError(f"quantity must be an int >= 1, got {quantity!r}")
        with self._guard():
            return self._add_order(self._account(account), inst, action, order_type, quantity,
                                   limit_price, stop_price)

    def _add_order(self, acc: _Account, inst: str, action: str, order_type: str, quantity: int,
                   limit: float | None, stop: float | None) -> str:
        oid = uuid.uuid4().hex
        acc.orders[oid] = _Order(oid, inst, action, order_type, quantity,
                                 None if limit is None else float(limit), None if stop is None else float(stop))
        return oid

    def positions(self, account: str | None = None) -> list[dict]:
        """Open positions (API shape), of one account or of all."""
        with self._guard():
            self._observe_all()
            accs = [self._account(account)] if account is not None else list(self._accounts.values())
            return [self._position_dict(a, p) for a in accs for p in self._sorted_positions(a)]

    def orders(self, account: str | None = None) -> list[dict]:
        """Working orders (API shape), of one account or of all."""
        with self._guard():
            accs = [self._account(account)] if account is not None else list(self._accounts.values())
            return [self._order_dict(a, o) for a in accs for o in a.orders.values()]

    def executions(self, account: str | None = None, lookback: float | None = None) -> list[dict]:
        """Executions (API shape, oldest first) of one account or of all, from the last ``lookback``
        sim seconds (None: every one still kept, i.e. the last ``LOOKBACK_MAX`` seconds)."""
        with self._guard():
            accs = [self._account(account)] if account is not None else list(self._accounts.values())
            return [e for a in accs for e in self._executions(a, lookback)]

    def _executions(self, acc: _Account, lookback: float | None) -> list[dict]:
        now = self._t()
        return [dict(e) for t, e in acc.executions if lookback is None or now - t <= lookback]

    def _record_execution(self, acc: _Account, inst: str, bought: bool, quantity: int, price: float,
                          name: str, order_id: str, position_after: int) -> None:
        """One fill. ``marketPosition`` is the side of the fill (Long = bought, Short = sold, as NT8
        reports it), ``position`` the account's size in the contract after it (unsigned), and
        ``positionStrategy`` 0 (no NinjaScript strategy owns simulator positions)."""
        t = self._t()
        moment = self._wall() - timedelta(seconds=max(0.0, self.now() - t))  # a late application: when due
        acc.executions.append((t, {
            "id": uuid.uuid4().hex,
            "type": "NinjaTrader.Cbi.Execution",
            "time": _nt_time(moment),
            "epoch": int(moment.timestamp() * 1000),
            "name": name,
            "orderId": order_id,
            "account": acc.name,
            "serverName": SERVER_NAME,
            "instrument": inst,
            "instrumentType": "Future",
            "position": int(position_after),
            "marketPosition": "Long" if bought else "Short",
            "positionStrategy": 0,
            "price": float(price),
            "quantity": int(quantity),
        }))
        while acc.executions and t - acc.executions[0][0] > LOOKBACK_MAX:  # never asked for again
            del acc.executions[0]

    def account_pnl(self, account: str) -> dict[str, float]:
        """``realized`` (gross), ``unrealized``, ``total`` (= realized + unrealized, gross),
        ``commission``, ``net`` (= total - commission), ``netLiquidation``."""
        with self._guard():
            acc = self._account(account)
            self._observe(acc)
            unreal = self._unrealized(acc)
            total = acc.realized + unreal
            return {
                "realized": acc.realized,
                "unrealized": unreal,
                "total": total,
                "commission": acc.commission,
                "net": total - acc.commission,
                "netLiquidation": acc.cash + acc.realized - acc.commission + unreal,
            }

    def end_session(self, new_week: bool = False) -> None:
        """The session break: every account's realized P&L less commission settles into its cash (the
        next session's opening balance) and the session figures start at 0; open positions carry
        over. ``new_week``: the session that opens starts a week (weeklyProfitLoss starts at 0)."""
        with self._guard():
            for acc in self._accounts.values():
                settled = acc.realized - acc.commission
                acc.cash += settled
                acc.week = 0.0 if new_week else acc.week + settled
                acc.realized = acc.commission = acc.last_tx = 0.0
                acc.flat_instruments.clear()
            self._observe_all()

    def accounts(self) -> list[str]:
        with self._guard():
            return [a.name for a in self._accounts.values()]

    def inject(self, fault: Fault | Mapping[str, Any]) -> Fault:
        """Add a fault rule (a Fault or a mapping of its fields); returns the Fault."""
        if not isinstance(fault, Fault):
            fault = Fault.from_dict(fault)
        with self._guard():
            self._faults.append([fault, fault.count])
        return fault

    def clear_faults(self) -> None:
        with self._guard():
            self._faults.clear()

    def faults(self) -> list[Fault]:
        """Active (not used-up) fault rules."""
        with self._guard():
            return [f for f, _ in self._faults]

    def set_rate_limit(self, per_second: float | None = 3.0, burst: int = 20) -> None:
        """Configure the token bucket (refilled to ``burst``); ``per_second=None`` disables it."""
        with self._guard():
            if per_second is None:
                self._rate = None
                return
            if per_second <= 0 or isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
                raise ValueError("rate limit needs per_second > 0 and an integer burst >= 1")
            self._rate = {"per_second": float(per_second), "burst": burst}
            self._bucket = float(burst)
            self._bucket_t = self._clock()

    @property
    def requests(self) -> list[RequestRecord]:
        """Snapshot copy of the request log (same as :meth:`request_log`)."""
        return self.request_log()

    def request_log(self) -> list[RequestRecord]:
        with self._guard():
            return [dataclasses.replace(r, query=dict(r.query),
                                        body=None if r.body is None else json.loads(json.dumps(r.body)))
                    for r in self._requests]

    def clear_requests(self) -> None:
        with self._guard():
            self._requests.clear()

    # ------------------------------------------------------------------ P&L helpers

    def _unrealized_pos(self, pos: _Position) -> tuple[float, float]:
        px = self._px(pos.instrument)
        pv = self._point_values[instrument_root(pos.instrument)]
        return px, (px - pos.avg) * pos.qty * pv

    def _unrealized(self, acc: _Account) -> float:
        return float(sum((self._unrealized_pos(p)[1] for p in acc.positions.values()), 0.0))

    def _sorted_positions(self, acc: _Account) -> list[_Position]:
        return list(acc.positions.values())  # insertion (opening) order

    def _position_dict(self, acc: _Account, pos: _Position) -> dict[str, Any]:
        px, unreal = self._unrealized_pos(pos)
        return {
            "type": "NinjaTrader.Cbi.Position",
            "account": acc.name,
            "instrument": pos.instrument,
            "instrumentType": "Future",
            "marketPosition": _side(pos.qty),
            "quantity": abs(pos.qty),
            "averagePrice": float(pos.avg),
            "marketPrice": float(px),
            "unrealizedProfitLoss": float(unreal),
        }

    def _flat_position_dict(self, acc: _Account, inst: str) -> dict[str, Any]:
        px = self._prices.price(inst, self._t())
        return {
            "type": "NinjaTrader.Cbi.Position",
            "account": acc.name,
            "instrument": inst,
            "instrumentType": "Future",
            "marketPosition": "Flat",
            "quantity": 0,
            "averagePrice": 0.0,
            "marketPrice": float(px or 0.0),
            "unrealizedProfitLoss": 0.0,
        }

    def _order_dict(self, acc: _Account, o: _Order) -> dict[str, Any]:
        return {
            "orderId": o.order_id,
            "account": acc.name,
            "instrument": o.instrument,
            "action": o.action,
            "orderType": o.order_type,
            "quantity": o.quantity,
            "limitPrice": float(o.limit or 0.0),
            "stopPrice": float(o.stop or 0.0),
            "orderState": "Working",
        }

    def _account_dict(self, acc: _Account) -> dict[str, Any]:
        unreal = self._unrealized(acc)
        cash_value = acc.cash + acc.realized - acc.commission
        netliq = cash_value + unreal
        item = dict.fromkeys(_ITEM_KEYS, 0.0)
        item.update({
            "buyingPower": netliq,
            "cashValue": cash_value,
            "commission": acc.commission,
            "excessInitialMargin": netliq,
            "excessIntradayMargin": netliq,
            "excessMaintenanceMargin": netliq,
            "excessPositionMargin": netliq,
            "grossRealizedProfitLoss": acc.realized,
            "netLiquidation": netliq,
            "netLiquidationByCurrency": netliq,
            "realizedProfitLoss": acc.realized,
            "sodCashValue": acc.cash,
            "sodLiquidatingValue": acc.cash,
            "totalCashBalance": cash_value,
            "unrealizedProfitLoss": unreal,
            "weeklyProfitLoss": acc.week + acc.realized - acc.commission,
        })
        item = {k: float(v) for k, v in item.items()}
        return {
            "id": acc.id,
            "name": acc.name,
            "displayName": acc.name,
            "primaryUser": "sim",
            "provider": "Simulator",
            "denomination": "UsDollar",
            "status": "Enabled",
            "dailyLossLimit": 0.0,
            "minCashValue": 0.0,
            "maxOrderSize": 0,
            "maxPositionSize": 0,
            "connection": "Simulator",
            "connectionStatus": "Connected",
            "lastTransactionSum": float(acc.last_tx),
            "item": item,
        }

    def _observe(self, acc: _Account) -> dict[str, float]:
        # Same basis as account_pnl() and the Account item: realized/total are gross (NT8),
        # netliq is net of commission. pnlhigh is the high of `total`.
        unreal = self._unrealized(acc)
        pnl = acc.realized
        total = pnl + unreal
        netliq = acc.cash + acc.realized - acc.commission + unreal
        m = acc.marks
        if not m:
            m.update(pnlhigh=total, netliqhigh=netliq, unrealhigh=unreal)
        m["pnlhigh"] = max(m["pnlhigh"], total)
        m["netliqhigh"] = max(m["netliqhigh"], netliq)
        m["unrealhigh"] = max(m["unrealhigh"], unreal)
        return {
            "pnlhigh": m["pnlhigh"], "netliqhigh": m["netliqhigh"], "unrealhigh": m["unrealhigh"],
            "pnl": pnl, "total": total, "unrealized": unreal, "poscount": len(acc.positions), "netliq": netliq,
        }

    def _observe_all(self) -> None:
        for acc in self._accounts.values():
            self._observe(acc)

    # ------------------------------------------------------------------ instrument matching

    def _instrument_predicate(self, instrument: Any) -> Callable[[str], bool]:
        """Contract name (exact, case-insensitive), root ("MES": every MES contract, never MESX),
        month-code form ("MESZ26") or continuous form ("MES1!")."""
        if not isinstance(instrument, str) or not instrument.strip():
            raise _err(400, "invalid_argument", "instrument must be a non-empty string")
        key = " ".join(instrument.split()).upper()
        if " " in key:
            return lambda c: c == key
        m = _CONTINUOUS_RE.match(key)
        if m:
            root = m.group(1)
            return lambda c: instrument_root(c) == root
        m = _MONTH_CODE_RE.match(key)
        if m and m.group(1) in self._point_values and key not in self._point_values:
            contract = f"{m.group(1)} {_MONTH_CODES.index(m.group(2)) + 1:02d}-{m.group(3)}"
            return lambda c: c == contract
        if _ROOT_RE.match(key):
            return lambda c: instrument_root(c) == key
        return lambda c: False

    def _find_position(self, acc: _Account, instrument: Any) -> _Position | None:
        pred = self._instrument_predicate(instrument)
        matches = [p for p in acc.positions.values() if pred(p.instrument)]
        if not matches:
            return None
        return min(matches, key=lambda p: contract_sort_key(p.instrument))  # front month

    # ------------------------------------------------------------------ request handling

    def admit(self, method: str, target: str, headers: Mapping[str, str] | None = None,
              body: bytes | None = b"") -> Ticket:
        """Step 1: log the request, check the token, the rate limit, pick a fault."""
        method = method.upper()
        split = urlsplit(target)
        full_path = split.path or "/"
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        parsed: dict | None = None
        body_error: str | None = None
        raw = body or b""
        if raw.strip():
            try:
                value = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                body_error = f"Request body is not valid JSON: {exc}"
            else:
                if isinstance(value, dict):
                    parsed = value
                else:
                    body_error = "Request body must be a JSON object"
        path = full_path[len(API_PREFIX):] if full_path.startswith(API_PREFIX + "/") else full_path
        if full_path.rstrip("/") == API_PREFIX:
            path = "/"
        if len(path) > 1:
            path = path.rstrip("/")
        auth = ""
        for k, v in (headers or {}).items():
            if k.lower() == "authorization":
                auth = v
        with self._guard():
            record = RequestRecord(t=self._clock(), method=method, path=full_path, query=query,
                                   body=parsed, status=0, fault=None)
            self._requests.append(record)
            ticket = Ticket(method, path, full_path, query, parsed, body_error, record)
            scheme, _, presented = auth.strip().partition(" ")
            ticket.token = presented.strip()
            if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), self._token):
                return self._reject(ticket, 401, {"success": False, "error": "unauthorized",
                                                  "detail": "Invalid or missing API key"})
            if not self._take_token():
                return self._reject(ticket, 429, {"error": "Rate limit exceeded"})
            now = self.now()
            self._in_progress += 1
            for entry in self._faults:
                fault, remaining = entry
                if fault.kind == "refuse":  # the server's listening socket, not a request (SimServer)
                    continue
                if fault.kind == "mutate" and (method, path.lower()) != SNAPSHOT_ROUTE:
                    continue
                if fault.in_window(now) and fault.matches(method, path):
                    if remaining is not None:
                        entry[1] = remaining - 1
                        if entry[1] <= 0:
                            self._faults.remove(entry)
                    ticket.fault = fault
                    record.fault = fault.kind
                    if fault.kind in ("latency", "timeout", "late_apply"):
                        ticket.delay = fault.ms / 1000.0
                    if fault.kind == "late_apply":
                        ticket.apply_at = now + fault.apply_ms / 1000.0
                        heapq.heappush(self._pending, (ticket.apply_at, next(self._pending_seq), ticket))
                    break
            return ticket

    def _reject(self, ticket: Ticket, status: int, body: dict) -> Ticket:
        ticket.response = _json_response(status, body)
        ticket.record.status = status
        return ticket

    def _take_token(self) -> bool:
        if self._rate is None:
            return True
        now = self._clock()
        elapsed = max(0.0, now - self._bucket_t)
        self._bucket = min(float(self._rate["burst"]), self._bucket + elapsed * self._rate["per_second"])
        self._bucket_t = now
        if self._bucket >= 1.0 - 1e-9:
            self._bucket -= 1.0
            return True
        return False

    def in_progress(self) -> int:
        """How many admitted requests are not completed yet (a latency, timeout or late_apply
        fault holds them, or a late_apply request is not applied yet although its connection is
        gone): a request counted here may still be applied later."""
        with self._guard():
            return self._in_progress + sum(1 for _, _, t in self._pending if t.completed)

    def complete(self, ticket: Ticket) -> SimResponse:
        """Step 2: apply the request (unless the fault forbids it) and build the response."""
        if ticket.response is not None:
            return ticket.response
        try:
            return self._complete(ticket)
        finally:
            with self._guard():
                self._in_progress -= 1
                ticket.completed = True

    def _complete(self, ticket: Ticket) -> SimResponse:
        f = ticket.fault
        if f is None:
            with self._guard():
                resp = self._dispatch(ticket)
                ticket.record.status = resp.status
                return resp
        kind = f.kind
        with self._guard():
            if kind == "status":
                resp = _fault_response(f)
            elif kind == "echo_token":
                assert f.status is not None and f.form is not None  # Fault sets both for echo_token
                resp = _json_response(f.status, _echo_body(f.form, ticket.token))
            elif kind in ("timeout", "reset"):
                resp = SimResponse(0, action="close" if kind == "timeout" else "reset")
            elif kind == "late_apply":  # applied by _run_due when due; nothing is ever sent
                return SimResponse(0, action="close")
            else:
                resp = self._dispatch(ticket)
                if kind == "malformed":
                    resp = SimResponse(200, resp.body[: max(1, len(resp.body) // 2)], resp.headers)
                elif kind == "lost_response":
                    ticket.record.status = resp.status
                    return SimResponse(resp.status, action="close")
                elif kind == "applied_refused":
                    ticket.record.applied_status = resp.status
                    resp = _fault_response(f)
                elif kind == "trickle":
                    assert f.bytes is not None and f.ms is not None  # required for trickle (Fault validates)
                    resp.pace = (f.bytes, f.ms / 1000.0)
                elif kind == "mutate" and resp.status == 200:
                    resp = SimResponse(resp.status, self._mutate(f, resp.body), resp.headers)
            ticket.record.status = resp.status
            return resp

    def _mutate(self, f: Fault, body: bytes) -> bytes:
        """The ``mutate`` fault: change a snapshot body (see riskd.sim.faults)."""
        m = f.mutation
        if m == "deep_nesting":
            return b"[" * 100_000 + b"]" * 100_000
        data = json.loads(body)
        key = None if f.account is None else f.account.strip().lower()
        chosen = [e for e in data["accounts"] if key is None or e["account"]["name"].lower() == key]
        pred = (lambda c: True) if f.instrument is None else self._instrument_predicate(f.instrument)
        if m == "account_missing":
            gone = {id(e) for e in chosen}
            data["accounts"] = [e for e in data["accounts"] if id(e) not in gone]
            return json.dumps(data).encode()
        for entry in chosen:
            if m == "positions_null":
                entry["positions"] = None
                continue
            if m == "positions_missing":
                entry.pop("positions", None)
                continue
            if m == "account_case":
                a = entry["account"]
                a["name"], a["displayName"] = a["name"].upper(), a["displayName"].upper()
            for pos in entry["positions"]:
                if m == "account_case":
                    pos["account"] = pos["account"].upper()
                    continue
                if not pred(pos["instrument"]):
                    continue
                if m == "side_flat":
                    pos["marketPosition"] = "Flat"
                elif m == "quantity_missing":
                    pos.pop("quantity", None)
                elif m == "side_missing":
                    pos.pop("marketPosition", None)
                elif m == "side_lowercase":
                    pos["marketPosition"] = pos["marketPosition"].lower()
                elif m == "side_flip":
                    pos["marketPosition"] = {"Long": "Short", "Short": "Long"}.get(pos["marketPosition"],
                                                                                  pos["marketPosition"])
                elif m == "instrument_case":
                    pos["instrument"] = pos["instrument"].lower()
                elif m == "quantity_absurd":
                    pos["quantity"] = f.value
        return json.dumps(data).encode()

    def handle(self, method: str, target: str, headers: Mapping[str, str] | None = None,
               body: bytes | dict | None = b"") -> SimResponse:
        """admit() + complete() without any waiting (no sockets; for unit tests and tools)."""
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        return self.complete(self.admit(method, target, headers, body))

    def _dispatch(self, ticket: Ticket) -> SimResponse:
        self._observe_all()
        try:
            handler, account = self._route(ticket.method, ticket.path, ticket.full_path)
            if ticket.body_error is not None:
                raise _err(400, "invalid_json", ticket.body_error)
            body = ticket.body or {}
            if account is not None:
                acc = self._accounts.get(account.lower())
                if acc is None:
                    raise _err(404, "invalid_account", f"Account {account} not found")
                result = handler(acc, ticket.query, body)
            else:
                result = handler(ticket.query, body)
            self._observe_all()
            return _json_response(200, result)
        except _ApiError as exc:
            return _json_response(exc.status, exc.body)

    def _route(self, method: str, path: str, full_path: str):
        parts = [unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []
        table = {
            ("GET", ("accounts", "snapshot")): (self._h_snapshot, None),
            ("GET", ("accounts",)): (self._h_accounts, None),
            ("GET", ("positions",)): (self._h_positions, None),
            ("POST", ("positions", "flatten")): (self._h_flatten_all, None),
        }
        per_account = {
            (): ("GET", self._h_account),
            ("positions",): ("GET", self._h_account_positions),
            ("position",): ("GET", self._h_account_position),
            ("positions", "close"): ("POST", self._h_close),
            ("positions", "flatten"): ("POST", self._h_flatten_account),
            ("orders", "cancel"): ("POST", self._h_cancel),
            ("orders",): ("GET", self._h_orders),
            ("watermarks",): ("GET", self._h_watermarks),
            ("executions",): ("GET", self._h_executions),
        }
        in_api = full_path.startswith(API_PREFIX + "/") or full_path.rstrip("/") == API_PREFIX
        allowed: str | None = None
        if in_api:
            key = tuple(p.lower() for p in parts)
            for (m, route), target in table.items():
                if key == route:
                    if m == method:
                        return target
                    allowed = m
            if allowed is None and len(parts) >= 2 and key[0] == "accounts" and key[:2] != ("accounts", "snapshot"):
                rest = key[2:]
                if rest in per_account:
                    m, handler = per_account[rest]
                    if m == method:
                        return handler, parts[1]
                    allowed = m
        if allowed is not None:
            raise _ApiError(405, {"success": False, "error": "method_not_allowed",
                                  "detail": f"{method} is not allowed on {full_path}; use {allowed}"})
        raise _err(404, "not_found", f"No route for {method} {full_path}",
                   did_you_mean=self._did_you_mean(method, parts))

    def _did_you_mean(self, method: str, parts: list[str]) -> str:
        account = None
        if parts and parts[0].lower() in ("accounts", "account") and len(parts) >= 2:
            account = parts[1]
        if account is None and self._accounts:
            account = next(iter(self._accounts.values())).name
        candidates = {}
        for m, template in ROUTES:
            concrete = template.replace("{a}", account or "{account}")
            candidates[concrete.lower()] = API_PREFIX + concrete
        probe = "/" + "/".join(parts).lower()
        best = difflib.get_close_matches(probe, list(candidates), n=1, cutoff=0.0)
        return candidates[best[0]] if best else API_PREFIX + "/accounts/snapshot"

    # ------------------------------------------------------------------ endpoint handlers

    def _h_snapshot(self, query, body):
        now = self._wall()
        return {
            "type": "snapshot",
            "timestamp": now.isoformat(timespec="milliseconds"),
            "epoch": int(now.timestamp() * 1000),
            "accounts": [
                {
                    "account": {**self._account_dict(a), "type": "NinjaTrader.Cbi.Account",
                                "isAccountFlat": not a.positions},
                    "positions": [self._position_dict(a, p) for p in self._sorted_positions(a)],
                }
                for a in self._accounts.values()
            ],
        }

    def _h_accounts(self, query, body):
        return {"accounts": [self._account_dict(a) for a in self._accounts.values()], "success": True}

    def _h_account(self, acc, query, body):
        return {**self._account_dict(acc), "success": True}

    def _h_account_positions(self, acc, query, body):
        return {"positions": [self._position_dict(acc, p) for p in self._sorted_positions(acc)], "success": True}

    def _h_positions(self, query, body):
        include_flat = str(query.get("includeFlat", "false")).strip().lower() in ("true", "1", "yes")
        out = []
        for a in self._accounts.values():
            out.extend({**self._position_dict(a, p), "tag": None} for p in self._sorted_positions(a))
            if include_flat:
                out.extend({**self._flat_position_dict(a, i), "tag": None} for i in a.flat_instruments)
        return {"positions": out, "count": len(out), "success": True}

    def _h_account_position(self, acc, query, body):
        instrument = query.get("instrument")
        if instrument is None or not instrument.strip():
            raise _err(400, "invalid_argument", "query parameter 'instrument' is required")
        pos = self._find_position(acc, instrument)
        if pos is None:
            raise _no_position(instrument)
        return {**self._position_dict(acc, pos), "success": True}

    def _h_close(self, acc, query, body):
        instrument = body.get("instrument")
        if instrument is None:
            raise _err(400, "invalid_argument", "'instrument' is required")
        pred = self._instrument_predicate(instrument)  # validates the type
        quantity = body.get("quantity")
        percent = body.get("percent")
        if quantity is not None:
            if isinstance(quantity, bool) or not isinstance(quantity, (int, float)) or \
                    not float(quantity).is_integer() or quantity < 1:
                raise _err(400, "invalid_argument", f"quantity must be an integer >= 1, got {quantity!r}")
            quantity = int(quantity)
        if percent is not None:
            if isinstance(percent, bool) or not isinstance(percent, (int, float)) or \
                    not math.isfinite(percent) or not 0 < percent <= 1:
                raise _err(400, "invalid_argument",
                           f"percent must be a fraction in (0, 1] (0.5 = half), got {percent!r}")
        matches = [p for p in acc.positions.values() if pred(p.instrument)]
        if not matches:
            raise _no_position(instrument)
        pos = min(matches, key=lambda p: contract_sort_key(p.instrument))
        size = abs(pos.qty)
        if quantity is not None:
            n = min(quantity, size)
        elif percent is not None:
            n = min(size, max(1, math.ceil(round(size * float(percent), 9))))
        else:
            n = size
        before = self._position_dict(acc, pos)
        self._close(acc, pos, n)
        return {"closedPositions": [before], "success": True}

    def _close(self, acc: _Account, pos: _Position, n: int) -> None:
        px = self._px(pos.instrument)
        pv = self._point_values[instrument_root(pos.instrument)]
        sign = 1 if pos.qty > 0 else -1
        pnl = (px - pos.avg) * n * pv * sign
        acc.realized += pnl
        acc.commission += n * self._commission
        acc.last_tx = pnl
        pos.qty -= sign * n
        self._record_execution(acc, pos.instrument, sign < 0, n, px, "Exit", uuid.uuid4().hex, abs(pos.qty))
        if pos.qty == 0:
            del acc.positions[pos.instrument]
            self._mark_flat(acc, pos.instrument)

    def _flatten(self, acc: _Account, pred: Callable[[str], bool], side: str | None) -> tuple[list, list]:
        closed = []
        instruments = set()
        for pos in list(acc.positions.values()):
            if not pred(pos.instrument):
                continue
            if side is not None and _side(pos.qty).lower() != side:
                continue
            closed.append(self._position_dict(acc, pos))
            instruments.add(pos.instrument)
            self._close(acc, pos, abs(pos.qty))
        cancelled = []
        for oid, order in list(acc.orders.items()):
            if pred(order.instrument) and (side is None or order.instrument in instruments):
                cancelled.append(oid)
                del acc.orders[oid]
        return closed, cancelled

    def _optional_pred(self, body: dict) -> Callable[[str], bool]:
        instrument = body.get("instrument")
        if instrument is None:
            return lambda c: True
        return self._instrument_predicate(instrument)

    def _h_flatten_account(self, acc, query, body):
        closed, _ = self._flatten(acc, self._optional_pred(body), None)
        return {"closedPositions": closed, "success": True}

    def _h_flatten_all(self, query, body):
        account = body.get("account")
        side = body.get("marketPosition")
        if side is not None:
            if not isinstance(side, str) or side.strip().lower() not in ("long", "short"):
                raise _err(400, "invalid_argument", f"marketPosition must be 'long' or 'short', got {side!r}")
            side = side.strip().lower()
        pred = self._optional_pred(body)
        if account is not None:
            if not isinstance(account, str):
                raise _err(400, "invalid_argument", "account must be a string")
            acc = self._accounts.get(account.strip().lower())
            if acc is None:
                raise _err(404, "invalid_account", f"Account {account} not found")
            accs = [acc]
        else:
            accs = list(self._accounts.values())
        closed_all, ids = [], []
        for acc in accs:
            closed, cancelled = self._flatten(acc, pred, side)
            closed_all.extend(closed)
            ids.extend(cancelled)
        return {"orderIds": ids, "closedPositions": closed_all, "success": True}

    def _h_cancel(self, acc, query, body):
        pred = self._optional_pred(body)
        ids = [oid for oid, o in acc.orders.items() if pred(o.instrument)]
        for oid in ids:
            del acc.orders[oid]
        return {"orderIds": ids, "success": True}

    def _h_orders(self, acc, query, body):
        return {"orders": [self._order_dict(acc, o) for o in acc.orders.values()], "success": True}

    def _h_watermarks(self, acc, query, body):
        return {**self._observe(acc), "success": True}

    def _h_executions(self, acc, query, body):
        raw = query.get("lookbackTime")
        lookback = LOOKBACK_DEFAULT
        if raw is not None:
            text = raw.strip()
            if not text.isdigit() or not 1 <= int(text) <= LOOKBACK_MAX:
                raise _err(400, "invalid_argument",
                           f"lookbackTime must be a whole number of seconds from 1 to {LOOKBACK_MAX} "
                           f"(default {LOOKBACK_DEFAULT}), got {raw!r}")
            lookback = int(text)
        return {"executions": self._executions(acc, lookback)}  # the documented shape: no "success"


def _pick(value: str, choices: Iterable[str], what: str) -> str:
    for c in choices:
        if isinstance(value, str) and c.lower() == value.lower():
            return c
    raise ValueError(f"{what} must be one of {', '.join(choices)}, got {value!r}")


def _fault_response(f: Fault) -> SimResponse:
    """The answer of a ``status`` / ``applied_refused`` fault: its status, body and Retry-After."""
    assert f.status is not None  # a status / applied_refused fault always has one (Fault defaults it)
    resp = _json_response(f.status, f.body if f.body is not None else default_fault_body(f.status))
    ra = f.retry_after
    if isinstance(ra, str):  # an HTTP date, verbatim
        resp.headers.append(("Retry-After", ra))
    elif ra is not None:
        resp.headers.append(("Retry-After", str(int(ra)) if float(ra).is_integer() else str(ra)))
    return resp


def _echo_body(form: str, token: str) -> dict[str, Any]:
    """An ``echo_token`` fault's body: the caller's bearer token where a careless server puts it."""
    if form == "detail":
        return {"error": "Internal Server Error", "detail": f"{{'Authorization': 'Bearer {token}'}}"}
    if form == "key":
        return {"success": True, token: {"status": "active"}}
    return {"error": f"invalid token {token}"}


def _json_response(status: int, body: Any) -> SimResponse:
    data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    return SimResponse(status, data, [("Content-Type", "application/json")])
