"""The CrossTrade REST client: endpoints, the client-side token bucket, error mapping.

Every call returns a `Reply` that says what happened in terms riskd acts on (`outcome`), with the
request and the response body kept verbatim for the audit trail. The token lives only in the
httpx client's default headers: it is never logged, audited or put in an exception.

There is deliberately no method for `POST /positions/flatten`: with an empty body it flattens
every account, so riskd only ever flattens through `accounts/{account}/positions/flatten`.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable
from urllib.parse import quote

import httpx
from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_attempt, stop_after_delay, wait_random_exponential

from riskd import __version__
from riskd.errors import ApiError
from riskd.model import Account, Order, Position, Snapshot

# What a reply means for riskd:
OK = "ok"  # success: true
FLAT = "flat"  # 400 "No positions found ...": already flat, the firing is done
REJECTED = "rejected"  # the API answered and did not act (4xx, 408, 429, success: false)
UNKNOWN = "unknown"  # it may have acted: timeout, 5xx, unreadable 200 — re-read before retrying
UNSENT = "unsent"  # the request never left (connection refused, rate budget exhausted)
AUTH = "auth"  # 401/403: the token is refused; retrying will not help


class TokenBucket:
    """A thread-safe token bucket: `burst` tokens, refilled at `per_second`.

    `take(reserve=n)` only succeeds while more than n tokens remain, so polls can leave
    headroom for actions; `wait(deadline)` blocks until a token is free (for actions).
    """

    def __init__(self, per_second: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.per_second = per_second
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.per_second)
        self._stamp = now

    @property
    def level(self) -> float:
        with self._lock:
            self._refill()
            return self._tokens

    def take(self, reserve: float = 0.0) -> bool:
        with self._lock:
            self._refill()
            if self._tokens - 1 >= reserve:
                self._tokens -= 1
                return True
            return False

    def wait(self, timeout: float, sleep: Callable[[float], None] = time.sleep) -> bool:
        deadline = self._clock() + timeout
        while True:
            with self._lock:
                self._refill()
                if self._tokens >= 1:
                    self._tokens -= 1
                    return True
                needed = (1 - self._tokens) / self.per_second
            if self._clock() + needed > deadline:
                return False
            sleep(needed)


@dataclass(frozen=True, slots=True)
class Reply:
    """One API exchange as the audit trail records it."""

    method: str
    path: str
    body: dict[str, Any] | None
    status: int | None
    latency_ms: float
    outcome: str
    response: Any = None  # the JSON body verbatim, or the raw text when it was not JSON
    error: str | None = None
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.outcome in (OK, FLAT)

    def request(self) -> dict[str, Any]:
        return {"method": self.method, "path": self.path, "json": self.body}


def _classify(status: int, data: Any, text: str) -> tuple[str, str | None]:
    error = None
    if isinstance(data, dict):
        error = data.get("error")
        if data.get("detail"):
            error = f"{error}: {data['detail']}" if error else data["detail"]
    if status in (401, 403):
        return AUTH, error or f"HTTP {status}"
    if 200 <= status < 300:
        if not isinstance(data, (dict, list)):
            return UNKNOWN, "unreadable response body"
        if isinstance(data, dict) and data.get("success") is False:
            return REJECTED, error or "success: false"
        return OK, None
    if status == 400 and isinstance(error, str) and error.startswith("No positions found"):
        return FLAT, error
    if status >= 500:
        return UNKNOWN, error or f"HTTP {status}"
    return REJECTED, error or f"HTTP {status}"


class CrossTradeClient:
    """Given a base URL and token, make CrossTrade calls through one shared token bucket.

    `transport` swaps the network (an httpx MockTransport in tests, a dry-run transport).
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 5.0,
        bucket: TokenBucket | None = None,
        transport: httpx.BaseTransport | None = None,
        poll_reserve: float = 3.0,
    ):
        self.bucket = bucket or TokenBucket(3.0, 20)
        self.poll_reserve = min(poll_reserve, self.bucket.burst - 1)
        self.timeout = timeout
        self.observers: list[Callable[[Reply], None]] = []  # see every Reply (metrics); must not raise or block
        self._http = httpx.Client(
            base_url=base_url.rstrip("/") + "/",
            headers={"Authorization": f"Bearer {token}", "User-Agent": f"riskd/{__version__}"},
            timeout=httpx.Timeout(timeout),
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    # -- transport -----------------------------------------------------------------------------

    def _send(self, method: str, path: str, body: dict[str, Any] | None, *, action: bool) -> Reply:
        reply = self._exchange(method, path, body, action=action)
        for observe in self.observers:
            observe(reply)
        return reply

    def _exchange(self, method: str, path: str, body: dict[str, Any] | None, *, action: bool) -> Reply:
        if action:
            if not self.bucket.wait(self.timeout):
                return Reply(method, path, body, None, 0.0, UNSENT, error="client rate budget exhausted")
        elif not self.bucket.take(reserve=self.poll_reserve):
            return Reply(method, path, body, None, 0.0, UNSENT, error="client rate budget kept for actions")
        started = time.perf_counter()
        try:
            response = self._http.request(method, path, json=body)
        except httpx.TimeoutException as exc:
            # a connect timeout never reached the API; any other timeout may have acted
            outcome = UNSENT if isinstance(exc, httpx.ConnectTimeout) else UNKNOWN
            return Reply(method, path, body, None, _ms(started), outcome, error=exc.__class__.__name__)
        except (httpx.ConnectError, httpx.UnsupportedProtocol) as exc:
            return Reply(method, path, body, None, _ms(started), UNSENT, error=exc.__class__.__name__)
        except httpx.HTTPError as exc:  # reset, protocol error: the request may have been applied
            return Reply(method, path, body, None, _ms(started), UNKNOWN, error=exc.__class__.__name__)
        latency = _ms(started)
        text = response.text
        try:
            data: Any = json.loads(text) if text else None
        except ValueError:
            data = None
        outcome, error = _classify(response.status_code, data, text)
        retry_after = None
        if response.headers.get("Retry-After"):
            try:
                retry_after = float(response.headers["Retry-After"])
            except ValueError:
                retry_after = None
        return Reply(method, path, body, response.status_code, latency, outcome,
                     response=data if data is not None else text, error=error, retry_after=retry_after)

    # -- reads ---------------------------------------------------------------------------------

    def get_snapshot(self) -> Reply:
        """One GET /accounts/snapshot (a poll: it never spends the headroom kept for actions)."""
        return self._send("GET", "accounts/snapshot", None, action=False)

    # -- writes --------------------------------------------------------------------------------

    def execute(self, order: Order) -> Reply:
        """Send one order; a 429 is retried (it was not applied), honouring Retry-After, within the timeout."""
        method, path, body = request_for(order)

        def wait(state: RetryCallState) -> float:
            reply = state.outcome.result() if state.outcome else None
            if reply is not None and reply.retry_after is not None:
                return min(reply.retry_after, self.timeout)
            return wait_random_exponential(multiplier=0.25, max=2.0)(state)

        retrying = Retrying(
            retry=retry_if_result(lambda r: r.status == 429),
            wait=wait,
            stop=stop_after_attempt(4) | stop_after_delay(self.timeout * 2),
            retry_error_callback=lambda state: state.outcome.result(),  # type: ignore[union-attr]
            reraise=False,
        )
        return retrying(self._send, method, path, body, action=True)


_PATHS = {
    "close": "accounts/{}/positions/close",
    "flatten": "accounts/{}/positions/flatten",
    "cancel_orders": "accounts/{}/orders/cancel",
}


def request_for(order: Order) -> tuple[str, str, dict[str, Any]]:
    """Given an order, return (method, path, JSON body); raise ValueError on an order riskd must never send."""
    if not order.account:
        raise ValueError("refusing an order without an account")
    if order.kind == "close" and not order.instrument:
        raise ValueError("refusing a close without an instrument")
    return "POST", _PATHS[order.kind].format(quote(order.account, safe="")), order.body()


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


# ---------------------------------------------------------------------------------------------
# Parsing.


def _float(obj: dict[str, Any], key: str) -> float:
    value = obj.get(key, 0.0)
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(f"field {key!r} is not a number: {value!r}")
    return float(value)


def parse_position(raw: Any, account: str) -> Position:
    if not isinstance(raw, dict) or not isinstance(raw.get("instrument"), str):
        raise ApiError(f"position without an instrument: {str(raw)[:200]}")
    quantity = raw.get("quantity", 0)
    if isinstance(quantity, bool) or not isinstance(quantity, (int, float)):
        raise ApiError(f"position quantity is not a number: {quantity!r}")
    return Position(
        account=str(raw.get("account") or account),
        instrument=raw["instrument"],
        side=str(raw.get("marketPosition", "Flat")),
        quantity=abs(int(quantity)),
        average_price=_float(raw, "averagePrice"),
        market_price=_float(raw, "marketPrice"),
        unrealized_pnl=_float(raw, "unrealizedProfitLoss"),
    )


def parse_snapshot(data: Any, taken_at: datetime) -> Snapshot:
    """Given the JSON of GET /accounts/snapshot, return a Snapshot; raise ApiError on a shape it cannot trust."""
    if not isinstance(data, dict) or not isinstance(data.get("accounts"), list):
        raise ApiError("snapshot without an 'accounts' list")
    if data.get("success") is False:
        raise ApiError(f"snapshot refused: {data.get('error')}")
    accounts = []
    for entry in data["accounts"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("account"), dict):
            raise ApiError("snapshot entry without an 'account' object")
        raw = entry["account"]
        name = raw.get("name") or raw.get("displayName")
        if not isinstance(name, str) or not name:
            raise ApiError("snapshot account without a name")
        item = raw.get("item") if isinstance(raw.get("item"), dict) else {}
        positions_raw = entry.get("positions") or []
        if not isinstance(positions_raw, list):
            raise ApiError(f"positions of {name} is not a list")
        positions = tuple(p for p in (parse_position(r, name) for r in positions_raw) if p.quantity > 0 and p.side != "Flat")
        unrealized = _float(item, "unrealizedProfitLoss") if "unrealizedProfitLoss" in item else sum(p.unrealized_pnl for p in positions)
        accounts.append(
            Account(
                name=name,
                realized_pnl=_float(item, "realizedProfitLoss"),
                unrealized_pnl=unrealized,
                commission=_float(item, "commission"),
                net_liquidation=_float(item, "netLiquidation"),
                positions=positions,
            )
        )
    return Snapshot(taken_at=taken_at, accounts=tuple(accounts))
