"""What riskd did, counted for people and for Prometheus.

`Telemetry` observes three things and nothing else: every API `Reply` (through
`CrossTradeClient.observers`), every audit line (through `AuditTrail.observers`) and every tick (from
the daemon). From them it keeps

- a window for the console summary line (`window()`, once a minute: ticks, API latency p50/p99,
  bucket level, accounts and positions watched, firings, failures, errors), and
- Prometheus metrics in its own registry, served by `serve()` when `metrics:` is set in riskd.yaml
  (loopback by default).

Observers run on the tick thread: they only count, never block or do I/O.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector

from riskd import __version__, events
from riskd.crosstrade import Reply
from riskd.redact import Redactor

log = structlog.get_logger("riskd")

TICK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
API_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def endpoint_of(path: str) -> str:
    """Given a request path, return it with the account name replaced (bounded label values):
    `accounts/Sim101/positions/close` -> `accounts/{account}/positions/close`."""
    parts = path.strip("/").split("?", 1)[0].split("/")
    if len(parts) >= 3 and parts[0] == "accounts":
        parts[1] = "{account}"
    return "/".join(parts)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of the values; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100)
    return ordered[int(rank) - 1]


class ProcessMetrics(ProcessCollector):
    """prometheus_client's process metrics (`process_start_time_seconds`, CPU, memory, fds) without
    /proc/stat: the unit's `ProcSubset=pid` hides it, and the stock collector then reports nothing.
    The boot time is now (wall) minus CLOCK_BOOTTIME, the clock /proc/<pid>/stat's start time counts on."""

    def _boot_time(self) -> float:
        return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


class Telemetry:
    """Given the client's token bucket level (a callable), count ticks, API calls and audit events."""

    def __init__(self, bucket_level: Callable[[], float] = lambda: float("nan"), registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.monotonic, redactor: Redactor | None = None):
        self.registry = registry or CollectorRegistry()
        self.redactor = redactor or Redactor()  # label values come from rule names, paths and outcomes
        self._clock = clock
        self._bucket_level = bucket_level
        r = self.registry
        self.tick_seconds = Histogram("riskd_tick_duration_seconds", "Duration of one tick (poll, evaluate, act)",
                                      ["reason"], buckets=TICK_BUCKETS, registry=r)
        self.api_seconds = Histogram("riskd_api_request_duration_seconds", "CrossTrade API call latency",
                                     ["endpoint", "status"], buckets=API_BUCKETS, registry=r)
        self.firings = Counter("riskd_firings_total", "Rule firings decided", ["rule"], registry=r)
        self.failures = Counter("riskd_action_failures_total", "API actions not acknowledged", ["rule", "outcome"], registry=r)
        self.errors = Counter("riskd_errors_total", "Failed polls and failed ticks", ["kind"], registry=r)
        self.notifications = Counter("riskd_notifications_total", "Webhook notifications by outcome", ["target", "outcome"], registry=r)
        self.last_poll = Gauge("riskd_last_successful_poll_timestamp_seconds", "Unix time of the last usable snapshot", registry=r)
        self.stale = Gauge("riskd_stale", "1 while no usable snapshot arrived within stale_after", registry=r)
        self.accounts = Gauge("riskd_accounts_watched", "Accounts in the last snapshot", registry=r)
        self.positions = Gauge("riskd_positions_watched", "Open positions in the last snapshot", registry=r)
        self.rules = Gauge("riskd_rules_loaded", "Rules running", registry=r)
        bucket = Gauge("riskd_rate_bucket_tokens", "Tokens left in the client-side rate bucket", registry=r)
        bucket.set_function(lambda: self._bucket_level())
        Info("riskd_build", "riskd version", registry=r).info({"version": __version__})
        ProcessMetrics(registry=r)
        self._lock = threading.Lock()  # ticks, the reload and the summary job run on different threads
        self._window_start = clock()
        self._latencies: deque[float] = deque(maxlen=50_000)  # bounded even if nobody reads the window
        self._counts = dict.fromkeys(("ticks", "polls_ok", "polls_failed", "firings", "failures", "errors"), 0)
        self._accounts = 0
        self._positions = 0
        self._stale = False

    # observers ---------------------------------------------------------------------------------

    def on_reply(self, reply: Reply) -> None:
        status = str(reply.status) if reply.status is not None else reply.outcome
        self.api_seconds.labels(self._label(endpoint_of(reply.path)), self._label(status)).observe(reply.latency_ms / 1000)
        with self._lock:
            if reply.status is not None:
                self._latencies.append(reply.latency_ms)
            if reply.ok and reply.method == "GET" and reply.path == "accounts/snapshot":
                self._counts["polls_ok"] += 1

    def on_tick(self, reason: str, seconds: float, ticker: Any) -> None:
        """After a tick that returned: its duration and what the ticker saw."""
        self.tick_seconds.labels("poll" if reason == "poll" else ("timed" if reason.startswith("at:") else reason)).observe(seconds)
        with self._lock:
            self._counts["ticks"] += 1
        snapshot = ticker.last_snapshot
        if snapshot is not None:
            self._accounts = len(snapshot.accounts)
            self._positions = sum(len(a.positions) for a in snapshot.accounts)
            self.accounts.set(self._accounts)
            self.positions.set(self._positions)
        if ticker.health.last_ok is not None:
            self.last_poll.set(ticker.health.last_ok.timestamp())
        self.rules.set(len(ticker.rules))

    def on_audit(self, line: dict[str, Any]) -> None:
        with self._lock:
            self._count_audit(line)

    def _count_audit(self, line: dict[str, Any]) -> None:
        event = line.get("event")
        if event == events.FIRED.name:
            self.firings.labels(self._label(line.get("rule", ""))).inc()
            self._counts["firings"] += 1
        elif event == events.ACTION.name and not line.get("ok"):
            self.failures.labels(self._label(line.get("rule", "")), self._label(line.get("outcome"))).inc()
            self._counts["failures"] += 1
        elif event == events.API_ERROR.name:
            self.errors.labels("poll").inc()
            self._counts["errors"] += 1
            self._counts["polls_failed"] += 1
        elif event == events.TICK_FAILED.name:
            self.errors.labels("tick").inc()
            self._counts["errors"] += 1
        elif event == events.STALE.name:
            self._stale = True
            self.stale.set(1)
        elif event == events.RECOVERED.name:
            self._stale = False
            self.stale.set(0)

    def on_notification(self, target: str, outcome: str) -> None:
        self.notifications.labels(self._label(target), self._label(outcome)).inc()

    def _label(self, value: Any) -> str:
        return self.redactor.text(str(value))

    # the summary line ---------------------------------------------------------------------------

    def window(self) -> dict[str, Any]:
        """Return the figures since the last call (for the summary line) and start a new window."""
        with self._lock:
            now = self._clock()
            latencies = list(self._latencies)
            counts = self._counts
            self._window_start, start = now, self._window_start
            self._latencies.clear()
            self._counts = dict.fromkeys(counts, 0)
        p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
        out: dict[str, Any] = {
            "window_s": round(now - start, 1),
            **counts,
            "api_calls": len(latencies),
            "api_p50_ms": round(p50, 1) if p50 is not None else None,
            "api_p99_ms": round(p99, 1) if p99 is not None else None,
            "bucket": round(self._bucket_level(), 1),
            "accounts": self._accounts,
            "positions": self._positions,
            "stale": self._stale,
        }
        return out


def serve(host: str, port: int, registry: CollectorRegistry) -> Any:
    """Start the Prometheus endpoint on host:port (a daemon thread); return the server (`.server_port`,
    `.shutdown()`). Raise OSError when the address cannot be bound."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
