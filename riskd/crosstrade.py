"""The CrossTrade REST client: endpoints, the client-side token bucket, error mapping.

Every call returns a `Reply` that says what happened in terms riskd acts on (`outcome`), with the
request and the response body kept verbatim for the audit trail, except for the token. The token
lives only in the httpx client's default headers and in the client's `redactor`: every Reply leaves
the client through `_send`, which hides whatever the API (or a proxy in front of it) echoed of the
token (raw, URL-encoded, JSON- or HTML-escaped, base64'd; in bodies, JSON keys and error text), so
it is never logged, audited, stored or put in an exception. (A credential riskd was never told about,
found by its shape, is hidden where riskd writes: the audit trail, the store, the console.)

There is deliberately no method for `POST /positions/flatten`: with an empty body it flattens
every account, so riskd only ever flattens through `accounts/{account}/positions/flatten`, and
`_send` refuses any request whose final URL is not exactly the path it was asked for (an account
named `..` would otherwise turn `accounts/../positions/flatten` into that very call).

Faults, and what each one becomes (`Reply.outcome`):

    200 + success: true               OK        (a read: any JSON; a write must say success: true)
    400 "No positions found ..."      FLAT      already flat: the firing is done
    408 NinjaTrader disconnected      REJECTED  not applied; the caller retries on a later tick
    429 rate limited                  REJECTED  retried here (writes), honouring Retry-After
    other 4xx, success: false         REJECTED
    401 / 403                         AUTH      the token is refused: no retry storm
    5xx, read timeout, reset, a 2xx
      whose body is not what a write
      answers (malformed JSON ...)    UNKNOWN   it may have acted: settle against a fresh snapshot
    the deadline passes before the
      whole body is in, or the body
      is over MAX_BODY_BYTES          UNKNOWN   (for a GET: a failed poll) judged on the status
                                                alone: a 2xx or 5xx may have acted; a 4xx as above
    connection refused, connect
      timeout, no rate budget         UNSENT    the request never left (the error names host:port)
    an order riskd must never send    REFUSED   nothing left (see `request_for`)

Every request has a total deadline, the client `timeout`: connect, send and the whole response body
must be done within it. The body is streamed and the deadline checked after every chunk, so a body
trickled one byte at a time (each read well within the per-read timeout) still ends at the deadline
(the response is closed, the connection dropped). Limits: a socket read cannot be interrupted, so
one read in progress when the deadline passes may still take up to what was left of the deadline
when the body began; connect, send and the status line are each bounded by `timeout` (httpx's
per-phase timeouts), the deadline is enforced from the first body chunk on. A body over MAX_BODY_BYTES is cut
the same way. Either is a read that failed: `error` says which ("deadline: response body not complete
after 5.0 s").

Retry-After is a hint, not a stop order: it is capped at `RETRY_AFTER_CAP_S` (5 s) whatever the
server says (seconds or an HTTP date). A 429's Retry-After holds back later polls (`blocked_until`) up
to that cap; it never holds back an action (a close, a flatten): actions wait only for the token bucket.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Callable
from urllib.parse import quote

import httpx
import orjson
from tenacity import RetryCallState, Retrying, retry_if_result, wait_random_exponential

from riskd import __version__, wire
from riskd.errors import ApiError
from riskd.model import Account, Order, Position, Snapshot
from riskd.redact import Redactor

# What a reply means for riskd:
OK = "ok"  # success: true
FLAT = "flat"  # 400 "No positions found ...": already flat, the firing is done
REJECTED = "rejected"  # the API answered and did not act (4xx, 408, 429, success: false)
UNKNOWN = "unknown"  # it may have acted: timeout, 5xx, unreadable 200 — re-read before retrying
UNSENT = "unsent"  # the request never left (connection refused, rate budget exhausted)
REFUSED = "refused"  # riskd refused to send it (an order it must never send): nothing left
AUTH = "auth"  # 401/403: the token is refused; retrying will not help

# HTTP statuses of a refusal that a later attempt may not get: the bridge is down, the budget is spent.
TRANSIENT_STATUSES = frozenset({408, 429})

# The longest riskd waits on a server's Retry-After (seconds); a longer or later hint is cut to this.
# Five seconds: polls resume within half of the default stale_after, and a request sent too early is only
# refused again (a 429 is never applied), while a breach waiting out a long hint is a loss that runs on.
RETRY_AFTER_CAP_S = 5.0


# The largest response body riskd reads (a snapshot of many accounts is well under 1 MB); a longer
# one is cut and counts as unreadable, so a runaway answer cannot exhaust memory.
MAX_BODY_BYTES = 16 * 1024 * 1024

_EPSILON = 1e-9


class TokenBucket:
    """A thread-safe token bucket: `burst` tokens, refilled at `per_second`.

    `take(reserve=n)` only succeeds while more than n tokens remain, so polls can leave
    headroom for actions; `wait(timeout)` blocks until a token is free (for actions).
    `clock` and `sleep` are injectable so tests can run it on a simulated clock.

    `jitter_s`: the server's bucket sees each request when it arrives, not when it left. A request
    that travels `d` seconds longer than the one after it leaves the server `d * per_second` tokens
    short of what the client counted, so a client spending its last token exactly on time would be
    refused (429). The bucket therefore only spends a token while `jitter_s * per_second` more
    remain: the same rate and nearly the same burst, never over the server's limit.
    """

    def __init__(self, per_second: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, jitter_s: float = 0.1):
        self.per_second = per_second
        self.burst = burst
        self.clock = clock
        self.sleep = sleep
        self.margin = min(jitter_s * per_second, max(0.0, burst - 1.0))
        self._tokens = float(burst)
        self._stamp = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._stamp) * self.per_second)
        self._stamp = now

    @property
    def level(self) -> float:
        with self._lock:
            self._refill()
            return self._tokens

    def take(self, reserve: float = 0.0) -> bool:
        with self._lock:
            self._refill()
            if self._tokens - 1 >= max(reserve, self.margin) - _EPSILON:
                self._tokens = max(0.0, self._tokens - 1)
                return True
            return False

    def wait(self, timeout: float) -> bool:
        deadline = self.clock() + timeout
        while True:
            with self._lock:
                self._refill()
                if self._tokens >= 1 + self.margin - _EPSILON:  # float refills land a hair short of a whole token
                    self._tokens = max(0.0, self._tokens - 1)
                    return True
                needed = max((1 + self.margin - self._tokens) / self.per_second, 1e-4)
            if self.clock() + needed > deadline:
                return False
            self.sleep(needed)


@dataclass(frozen=True, slots=True)
class Reply:
    """One API exchange as the audit trail records it.

    `earlier` holds the attempts before this one that were retried (429s), as audit dicts.
    """

    method: str
    path: str
    body: dict[str, Any] | None
    status: int | None
    latency_ms: float
    outcome: str
    response: Any = None  # the JSON body verbatim, or the raw text when it was not JSON (a snapshot: a riskd.wire.Snapshot)
    error: str | None = None
    retry_after: float | None = None
    earlier: tuple[dict[str, Any], ...] = field(default=())
    budget: bool = False  # held back by riskd's own rate bucket (nothing was wrong with the API)
    text: str | None = None  # the body as received, kept when `response` holds only what riskd reads of it (verbatim())

    def verbatim(self) -> Any:
        """The response body as JSON, every field of it (what the audit trail records)."""
        return decode_json(self.text) if self.text is not None else self.response

    @property
    def ok(self) -> bool:
        return self.outcome in (OK, FLAT)

    @property
    def transient(self) -> bool:
        """A refusal worth retrying on the next tick (bridge down, rate limited, never sent)."""
        return self.outcome == UNSENT or (self.outcome == REJECTED and self.status in TRANSIENT_STATUSES)

    def request(self) -> dict[str, Any]:
        return {"method": self.method, "path": self.path, "json": self.body}

    def brief(self) -> dict[str, Any]:
        return {"status": self.status, "outcome": self.outcome, "error": self.error, "latency_ms": self.latency_ms}


def _classify(status: int, data: Any, write: bool) -> tuple[str, str | None]:
    """Given an HTTP status and the parsed body (None when not JSON), return (outcome, error).

    A write counts as done only on `success: true`; a 2xx write answer of any other shape may or
    may not have acted (UNKNOWN). A read is OK on any 2xx JSON; its parser judges the shape."""
    error = None
    if isinstance(data, dict):
        raw = data.get("error")
        error = raw if isinstance(raw, str) else (json.dumps(raw) if raw is not None else None)
        detail = data.get("detail")
        if detail:
            error = f"{error}: {detail}" if error else str(detail)
    if status in (401, 403):
        return AUTH, error or f"HTTP {status}"
    if 200 <= status < 300:
        if not isinstance(data, (dict, list, wire.Snapshot)):
            return UNKNOWN, "unreadable response body"
        if isinstance(data, dict) and data.get("success") is False:
            return REJECTED, error or "success: false"
        if write and not (isinstance(data, dict) and data.get("success") is True):
            return UNKNOWN, "unexpected response body (no success: true)"
        return OK, None
    if status == 400 and isinstance(error, str) and error.startswith("No positions found"):
        return FLAT, error
    if status >= 500:
        return UNKNOWN, error or f"HTTP {status}"
    return REJECTED, error or f"HTTP {status}"


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Given a Retry-After header (seconds or an HTTP date), return seconds to wait, or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, min(seconds, RETRY_AFTER_CAP_S))


class CrossTradeClient:
    """Given a base URL and token, make CrossTrade calls through one shared token bucket.

    `transport` swaps the network (an httpx MockTransport in tests). The bucket's clock and sleep
    are the client's too (for Retry-After and 429 back-off), so a test can run it all on a
    simulated clock. `stopping`, once set, ends 429 retries early (graceful stop).
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
        max_attempts: int = 4,
        stopping: threading.Event | None = None,
    ):
        self.bucket = bucket or TokenBucket(3.0, 20)
        self.poll_reserve = min(poll_reserve, self.bucket.burst - 1)
        self.timeout = timeout
        self.token_wait = timeout  # how long an action may wait for a rate token
        self.max_attempts = max_attempts
        self.stopping = stopping or threading.Event()
        self.blocked_until: float | None = None  # Retry-After of the last 429, on the bucket's clock
        self.observers: list[Callable[[Reply], None]] = []  # see every Reply (metrics); must not raise or block
        self.redactor = Redactor([token])  # the one ingress point: every Reply is scrubbed of the token (`_scrub`)
        self._http = httpx.Client(
            base_url=base_url.rstrip("/") + "/",
            headers={"Authorization": f"Bearer {token}", "User-Agent": f"riskd/{__version__}"},
            timeout=httpx.Timeout(timeout),
            transport=transport,
        )
        self._base_path = self._http.base_url.raw_path.decode("ascii")

    def close(self) -> None:
        self._http.close()

    @property
    def budget_s(self) -> float:
        """The longest one `execute` may take: a wait for a token, then attempts and 429 back-offs."""
        return self.token_wait + self.timeout * (1 + self.max_attempts)

    # -- transport -----------------------------------------------------------------------------

    def _send(self, method: str, path: str, body: dict[str, Any] | None, *, action: bool,
              on_send: Callable[[], None] | None = None, decode: Callable[[str], Any] | None = None) -> Reply:
        reply = self._scrub(self._exchange(method, path, body, action=action, on_send=on_send, decode=decode))
        for observe in self.observers:
            observe(reply)
        return reply

    def _scrub(self, reply: Reply) -> Reply:
        """Given a Reply as the API made it, return it with every form of the token hidden: the error
        text, the request and the earlier attempts (the response body is scrubbed as it is read, `_exchange`)."""
        r = self.redactor
        return replace(reply, path=r.text(reply.path), body=r.value(reply.body),
                       error=r.text(reply.error) if reply.error is not None else None,
                       earlier=tuple(r.value(e) for e in reply.earlier))

    def _exchange(self, method: str, path: str, body: dict[str, Any] | None, *, action: bool,
                  on_send: Callable[[], None] | None = None, decode: Callable[[str], Any] | None = None) -> Reply:
        request = self._http.build_request(method, path, json=body)
        if request.url.raw_path.decode("ascii") != self._base_path + path:
            # never let URL normalisation turn a path into another one (accounts/../positions/flatten)
            return Reply(method, path, body, None, 0.0, REFUSED, error=f"refused: the request path would become {request.url.path}")
        if self.blocked_until is not None and not action:  # a poll's back-off never holds back a close
            remaining = self.blocked_until - self.bucket.clock()
            if remaining > 0:
                return Reply(method, path, body, None, 0.0, UNSENT, error="rate limited: waiting out Retry-After",
                             retry_after=remaining, budget=True)
            self.blocked_until = None
        if action:
            if not self.bucket.wait(self.token_wait):
                return Reply(method, path, body, None, 0.0, UNSENT, error="client rate budget exhausted", budget=True)
        elif not self.bucket.take(reserve=self.poll_reserve):
            return Reply(method, path, body, None, 0.0, UNSENT, error="client rate budget kept for actions", budget=True)
        if on_send is not None:
            on_send()
        started = time.perf_counter()
        deadline = time.monotonic() + self.timeout  # network waits are real time, whatever the bucket's clock
        response = None
        try:
            response = self._http.send(request, stream=True)
            # the body's reads may take at most what is left (httpcore reads the read timeout when the body starts)
            timeouts = request.extensions.get("timeout")
            if isinstance(timeouts, dict):
                timeouts["read"] = max(0.001, deadline - time.monotonic())
            text, cut = self._read_body(response, deadline)
        except (httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ConnectError, httpx.UnsupportedProtocol) as exc:
            return Reply(method, path, body, None, _ms(started), UNSENT,
                         error=f"{exc.__class__.__name__} ({request.url.scheme}://{self._address(request)}{self._base_path}): "
                               "not reached; check crosstrade.base_url in riskd.yaml")
        except httpx.HTTPError as exc:  # read/write timeout, reset, protocol error: it may have been applied
            return Reply(method, path, body, None, _ms(started), UNKNOWN, error=exc.__class__.__name__)
        finally:
            if response is not None:
                response.close()
        latency = _ms(started)
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if response.status_code == 429 and retry_after:
            self.blocked_until = self.bucket.clock() + min(retry_after, RETRY_AFTER_CAP_S)
        if cut is not None:  # judged on its status alone: a 2xx (or 5xx) may have acted, a 4xx did not
            outcome, _ = _classify(response.status_code, None, write=action)
            return Reply(method, path, body, response.status_code, latency, outcome, error=cut, retry_after=retry_after)
        secret = self.redactor.may_hold_secret(text)  # the token may be in it: decoded as plain JSON, every value walked
        typed = decode(text) if decode is not None and text and not secret and 200 <= response.status_code < 300 else None
        data = typed if typed is not None else decode_json(text) if text else None
        outcome, error = _classify(response.status_code, data, write=action)
        kept = data if data is not None else text
        if secret:
            kept = self.redactor.value(kept)
        return Reply(method, path, body, response.status_code, latency, outcome,
                     response=kept, error=error, retry_after=retry_after, text=text if typed is not None else None)

    def _read_body(self, response: httpx.Response, deadline: float) -> tuple[str, str | None]:
        """Read a streamed body until it ends, the deadline passes or it grows over MAX_BODY_BYTES;
        return (text, None) or ("", why it was cut)."""
        too_big = f"response body over {MAX_BODY_BYTES} bytes: cut"
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return "", too_big
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                return "", too_big
            if time.monotonic() > deadline:
                return "", f"deadline: response body not complete after {self.timeout:.1f} s"
        raw = b"".join(chunks)
        chunks.clear()  # one copy of a 7 MB body at a time, not three
        encoding = response.encoding or "utf-8"
        try:
            return raw.decode(encoding, errors="replace"), None
        except LookupError:
            return raw.decode("utf-8", errors="replace"), None

    @staticmethod
    def _address(request: httpx.Request) -> str:
        """host:port of a request, for an error that never carries the token."""
        url = request.url
        return f"{url.host}:{url.port or (443 if url.scheme == 'https' else 80)}"

    # -- reads ---------------------------------------------------------------------------------

    def get_snapshot(self) -> Reply:
        """One GET /accounts/snapshot (a poll: it never spends the headroom kept for actions)."""
        return self._send("GET", "accounts/snapshot", None, action=False, decode=decode_snapshot)

    def get_executions(self, account: str, lookback_s: int) -> Reply:
        """One GET /accounts/{account}/executions?lookbackTime=N: the evidence for an outcome in doubt
        (a read: it never spends the headroom kept for actions)."""
        return self._send("GET", f"accounts/{quote(account, safe='')}/executions?lookbackTime={int(lookback_s)}", None, action=False)

    # -- writes --------------------------------------------------------------------------------

    def execute(self, order: Order, on_send: Callable[[], None] | None = None) -> Reply:
        """Send one order; a 429 is retried (it was not applied) with jittered exponential back-off,
        honouring Retry-After, within `budget_s`. `on_send` runs right before each request leaves.
        An order riskd must never send comes back UNSENT with the reason; nothing is sent."""
        try:
            method, path, body = request_for(order)
        except ValueError as exc:
            path = _PATHS[order.kind].format(quote(order.account or "", safe="")) if order.kind in _PATHS else "?"
            return self._scrub(Reply("POST", path, order.body(), None, 0.0, REFUSED, error=f"refused: {exc}"))
        clock = self.bucket.clock
        started = clock()
        attempts: list[Reply] = []

        def attempt() -> Reply:
            reply = self._send(method, path, body, action=True, on_send=on_send)
            attempts.append(reply)
            return reply

        def wait(state: RetryCallState) -> float:
            reply = state.outcome.result() if state.outcome else None
            if reply is not None and reply.retry_after is not None:
                return reply.retry_after
            return wait_random_exponential(multiplier=0.25, max=2.0)(state)

        def stop(state: RetryCallState) -> bool:
            reply = state.outcome.result() if state.outcome else None
            remaining = self.budget_s - self.timeout - (clock() - started)  # keep room for the last attempt
            too_long = reply is not None and reply.retry_after is not None and reply.retry_after > remaining
            return state.attempt_number >= self.max_attempts or remaining <= 0 or too_long or self.stopping.is_set()

        retrying = Retrying(
            retry=retry_if_result(lambda r: r.status == 429),
            wait=wait,
            stop=stop,
            sleep=self.bucket.sleep,
            retry_error_callback=lambda state: state.outcome.result(),  # type: ignore[union-attr]
            reraise=False,
        )
        final = retrying(attempt)
        if len(attempts) > 1:
            final = replace(final, earlier=tuple(a.brief() for a in attempts[:-1]))
        return final


_PATHS = {
    "close": "accounts/{}/positions/close",
    "flatten": "accounts/{}/positions/flatten",
    "cancel_orders": "accounts/{}/orders/cancel",
}


def request_for(order: Order) -> tuple[str, str, dict[str, Any]]:
    """Given an order, return (method, path, JSON body); raise ValueError on an order riskd must never send."""
    if order.kind not in _PATHS:
        raise ValueError(f"unknown order kind {order.kind!r}")
    if not order.account or not order.account.strip():
        raise ValueError("refusing an order without an account")
    if order.account.strip() in (".", ".."):
        raise ValueError(f"refusing an order for account {order.account!r}: the name would change the request path")
    if order.kind == "close" and not order.instrument:
        raise ValueError("refusing a close without an instrument")
    return "POST", _PATHS[order.kind].format(quote(order.account, safe="")), order.body()


def decode_json(text: str) -> Any:
    """The JSON value of a body, or None when it is not JSON. orjson first (a desk's snapshot is 1.4 MB);
    what it refuses and the standard library reads (NaN, 1e400, a lone surrogate) is read as the
    standard library reads it, so one account's absurd figure is that account's problem, not the snapshot's."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # a body nested too deep to decode is as unreadable as bad JSON
        return None


def decode_snapshot(text: str) -> wire.Snapshot | None:
    """A snapshot body read straight into riskd.wire's Structs (the fields riskd reads), or None: then it is
    decoded as any other body (decode_json), classified and judged as such (NaN, a refusal, not a snapshot)."""
    doc = wire.decode(text)
    if doc is None or type(doc.accounts) is not list or doc.success is False:
        return None
    return doc


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


# ---------------------------------------------------------------------------------------------
# Parsing.


def _float(value: Any, key: str) -> float:
    """A figure riskd needs (missing or null: 0.0); raise ApiError when it is not a finite number."""
    kind = type(value)
    if kind is float:
        if value - value == 0.0:  # finite (inf - inf and nan - nan are nan)
            return value  # type: ignore[no-any-return]
    elif kind is int:
        return float(value)
    elif value is None or value is wire.UNSET:
        return 0.0
    raise ApiError(f"field {key!r} is not a finite number: {str(value)[:40]}")


def _shown(value: Any) -> float | None:
    """A figure of the API's that may be missing: None when absent, null or not a finite number (never a zero)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


# A position larger than this is not a reading riskd trusts (10**30, 1e15 seen from glitchy bridges).
MAX_PLAUSIBLE_QUANTITY = 100_000
_SIDES = {"long": "Long", "short": "Short", "flat": "Flat", "Long": "Long", "Short": "Short", "Flat": "Flat"}


# (the item's field, its JSON key)
_FIGURES = (("realized_profit_loss", "realizedProfitLoss"), ("unrealized_profit_loss", "unrealizedProfitLoss"),
            ("commission", "commission"), ("net_liquidation", "netLiquidation"))


# Each instrument's name as one string, whatever the number of positions in it (bounded: the instruments traded).
_INSTRUMENTS: dict[str, str] = {}


class UnknownEntry(Exception):
    """An account entry riskd cannot read: the account counts as not seen in this snapshot."""


def parse_position(raw: Any, account: str) -> Position | None:
    """Given one raw position (a wire.Position, or whatever JSON value stood in its place), return it
    (None when it is flat); raise UnknownEntry when a field that says what is held (instrument,
    quantity, side, P&L) is missing, null, of the wrong type, absurd, or contradicts another (`Flat`
    with a quantity): unknown is never read as flat."""
    instrument = raw.instrument if type(raw) is wire.Position else None
    if type(instrument) is not str or not instrument.strip():
        raise UnknownEntry("a position without an instrument")
    quantity = raw.quantity
    if type(quantity) is not int:
        if type(quantity) is not float or quantity - quantity != 0.0 or quantity != int(quantity):
            shown = None if quantity is wire.UNSET else quantity
            raise UnknownEntry(f"position {instrument!r}: quantity is not a whole number ({str(shown)[:40]})")
        quantity = int(quantity)
    if quantity < 0:
        quantity = -quantity
    if quantity > MAX_PLAUSIBLE_QUANTITY:
        raise UnknownEntry(f"position {instrument!r}: quantity {str(quantity)[:40]} is implausible")
    market_position = raw.market_position
    side = (_SIDES.get(market_position) or _SIDES.get(market_position.lower())) if type(market_position) is str else None
    if side is None:
        shown = None if market_position is wire.UNSET else market_position
        raise UnknownEntry(f"position {instrument!r}: unreadable marketPosition {str(shown)[:40]}")
    if (side == "Flat") != (quantity == 0):
        raise UnknownEntry(f"position {instrument!r}: {side} with quantity {quantity}")
    average, market, pnl = raw.average_price, raw.market_price, raw.unrealized_profit_loss
    if pnl is None:
        raise UnknownEntry(f"position {instrument!r}: unrealizedProfitLoss is null")
    if side == "Flat":
        return None
    owner = raw.account or account
    if owner == account:
        owner = account  # one string per account, not one per position (a desk keeps 15,000 positions twice)
    shared = _INSTRUMENTS.get(instrument)
    if shared is None:
        if len(_INSTRUMENTS) >= 4096:  # a bridge sending garbage names: never a growing table
            _INSTRUMENTS.clear()
        shared = _INSTRUMENTS[instrument] = instrument
    if type(average) is float and type(market) is float and type(pnl) is float and average - average + market - market + pnl - pnl == 0.0:
        return Position(owner if type(owner) is str else str(owner), shared, side, quantity, average, market, pnl)  # finite floats
    try:
        return Position(str(owner), shared, side, quantity,
                        _float(average, "averagePrice"), _float(market, "marketPrice"), _float(pnl, "unrealizedProfitLoss"))
    except ApiError as exc:
        raise UnknownEntry(f"position {instrument!r}: {exc}") from None


def parse_snapshot(data: Any, taken_at: datetime) -> Snapshot:
    """Given the JSON of GET /accounts/snapshot, return a Snapshot; raise ApiError on a shape it cannot trust
    (and only ApiError, whatever the JSON)."""
    try:
        return _parse_snapshot(data, taken_at)
    except ApiError:
        raise
    except (ValueError, TypeError, AttributeError, KeyError, OverflowError, RecursionError) as exc:
        raise ApiError(f"unexpected snapshot shape ({exc.__class__.__name__})") from None


def _parse_snapshot(data: Any, taken_at: datetime) -> Snapshot:
    doc = data if type(data) is wire.Snapshot else wire.convert(data)
    if doc is None or type(doc.accounts) is not list:
        raise ApiError("snapshot without an 'accounts' list")
    if doc.success is False:
        raise ApiError(f"snapshot refused: {None if doc.error is wire.UNSET else doc.error}")
    accounts: dict[str, Account] = {}  # by lower-case name
    unknown: set[str] = set()
    problems: list[str] = []
    for entry in doc.accounts:
        if not isinstance(entry, wire.Entry) or not isinstance(entry.account, wire.Account):
            raise ApiError("snapshot entry without an 'account' object")
        raw = entry.account
        name = raw.name or raw.display_name
        if not isinstance(name, str) or not name:
            raise ApiError("snapshot account without a name")
        item = raw.item if type(raw.item) is wire.Item else wire.EMPTY_ITEM
        try:
            positions_raw = entry.positions
            if type(positions_raw) is not list:  # null or missing: riskd does not know what is open
                raise UnknownEntry(f"positions is {'missing' if positions_raw is wire.UNSET else type(positions_raw).__name__}")
            parsed = [parse_position(r, name) for r in positions_raw]
            positions = tuple(p for p in parsed if p is not None)
            null = [key for attr, key in _FIGURES if getattr(item, attr) is None]
            if null:  # a null P&L is not a zero P&L
                raise UnknownEntry(f"account figures {', '.join(null)} are null")
            realized, commission = _float(item.realized_profit_loss, "realizedProfitLoss"), _float(item.commission, "commission")
            net_liquidation = _float(item.net_liquidation, "netLiquidation")
            unrealized = (_float(item.unrealized_profit_loss, "unrealizedProfitLoss") if item.unrealized_profit_loss is not wire.UNSET
                          else sum(p.unrealized_pnl for p in positions))
        except (UnknownEntry, ApiError) as exc:
            unknown.add(name.lower())
            problems.append(f"{name}: {exc}")
            continue
        lname = name.lower()
        if lname in unknown or lname in accounts:
            unknown.add(lname)  # the same account twice (in any letter case): which one is right is unknown
            problems.append(f"{name}: listed twice")
            accounts.pop(lname, None)
            continue
        accounts[lname] = Account(
            name=name,
            realized_pnl=realized,
            unrealized_pnl=unrealized,
            commission=commission,
            net_liquidation=net_liquidation,
            positions=positions,
            weekly_pnl=_shown(item.weekly_profit_loss),
            cash_value=_shown(item.cash_value),
            balance_known=item.net_liquidation is not wire.UNSET,
        )
    return Snapshot(taken_at=taken_at, accounts=tuple(accounts.values()), unknown=frozenset(unknown), problems=tuple(problems))
