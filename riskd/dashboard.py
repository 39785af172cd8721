"""The live dashboard: a read-only web page served by the daemon (opt-in: `dashboard:` in riskd.yaml).

`Dashboard` keeps, beside the daemon's live state, what the page needs that the state does not
hold: each account's session P&L so far (one point per snapshot, thinned to at most SERIES_POINTS;
after a restart it starts from the session's `sample` lines in the audit trail, see `seed`)
the recent API calls of firings with the closedPositions each returned, and the recent operator
commands. `view()` is `riskd status`'s view (riskd.status.build: figures, positions, locks, each
rule's state and distance to each threshold, pauses, the next timed firings, health) of the
ticker's live state (last snapshot, engine state, rules, poll health), with these added.

`serve(host, port)` starts a threaded stdlib HTTP server with three GET routes:

| route         | answers                                                                       |
|---------------|-------------------------------------------------------------------------------|
| `/`           | the page (riskd/dashboard.html: inline CSS and JS, no external asset)          |
| `/state.json` | the view, once                                                                |
| `/events`     | server-sent events: the view after every tick (a comment every 15 s otherwise); |
|               | the first whole, the next ones with each account's newest chart point (`tail`) |

Anything else is 404 and any other method 405: the dashboard changes nothing. Bound to 127.0.0.1
by default (reach it over an SSH tunnel); on a loopback address a request whose Host header names
another host is refused (DNS rebinding). With a token (`$CREDENTIALS_DIRECTORY/dashboard-token`)
every route needs it, as `?token=` or `Authorization: Bearer`. Every byte served passes the
daemon's Redactor.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from collections import deque
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs, urlsplit

from riskd import __version__, engine, events, samples, status
from riskd.redact import Redactor
from riskd.trail import closed_pnl, closed_positions, closed_quantity, closed_text, line_time

SERIES_POINTS = 1200  # per account: past this, every other point is dropped (the whole session stays, coarser)
RECENT_ACTIONS = 30
RECENT_COMMANDS = 10
KEEPALIVE_S = 15.0
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class Dashboard:
    """The view of one running daemon. Call `on_tick` after each tick and register `on_audit` on the
    audit trail; `view()` and `encoded()` may be called from any thread."""

    def __init__(self, ticker: Any, *, redactor: Redactor | None = None, token: str | None = None,
                 clock: Callable[[], datetime] | None = None):
        self.ticker = ticker
        self.redactor = redactor or Redactor()
        self.token = token
        self._clock = clock or ticker.clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._version = 0
        self._cache: dict[bool, tuple[int, bytes]] = {}  # full or not -> (version, body)
        self._next_build = 0.0
        self._build = threading.Lock()
        self._series: dict[str, list[list[float]]] = {}
        self._session: str | None = None
        self._seen: Any = None  # the last snapshot added to the series
        self._actions: deque[dict[str, Any]] = deque(maxlen=RECENT_ACTIONS)
        self._commands: deque[dict[str, Any]] = deque(maxlen=RECENT_COMMANDS)
        self.closed = False

    # inputs --------------------------------------------------------------------------------

    def on_tick(self) -> None:
        """After a tick: add the snapshot's P&L points (a new session starts the chart over) and wake the page."""
        snapshot = self.ticker.last_snapshot
        with self._lock:
            if snapshot is not None and snapshot is not self._seen:
                self._seen = snapshot
                session = engine.session_of(snapshot.taken_at, self.ticker.engine_settings)
                if session != self._session:
                    self._session, self._series = session, {}
                at = _ms(snapshot.taken_at)
                for account in snapshot.accounts:
                    points = self._series.setdefault(account.name, [])
                    points.append([at, round(account.pnl(), 2)])
                    if len(points) > SERIES_POINTS:
                        points[:] = points[-1::-2][::-1]  # every other point, the latest kept
            self._version += 1
            self._changed.notify_all()

    def seed(self, lines: Iterable[dict[str, Any]]) -> int:
        """Start the chart with this session's `sample` / `samples` lines from the audit trail (riskd restarted
        mid-session: its in-memory points are gone); return how many points were added."""
        session = engine.session_of(self._clock(), self.ticker.engine_settings)
        early: dict[str, list[list[float]]] = {}
        for line in samples.expand(lines):  # a `samples` line: one `sample` per account
            if events.SAMPLE.of(line) and line.get("session") == session and isinstance(line.get("pnl"), (int, float)):
                moment = line_time(line)
                if moment is not None:
                    early.setdefault(str(line.get("account")), []).append([_ms(moment), round(float(line["pnl"]), 2)])
        added = 0
        with self._lock:
            if self._session not in (None, session):
                return 0
            self._session = session
            for name, points in early.items():
                live = self._series.get(name, [])
                first = live[0][0] if live else float("inf")
                merged = [p for p in points if p[0] < first] + live
                added += len(merged) - len(live)
                while len(merged) > SERIES_POINTS:
                    merged = merged[-1::-2][::-1]
                self._series[name] = merged
            self._version += 1
            self._changed.notify_all()
        return added

    def on_audit(self, line: dict[str, Any]) -> None:
        """Keep the recent API calls of firings; wake the page on staleness changes."""
        if events.ACTION.of(line):
            request = line.get("request") or {}
            entry = {"ts": line.get("ts"), "rule": line.get("rule"), "account": line.get("account"),
                     "instrument": line.get("instrument"), "method": request.get("method"), "path": request.get("path"),
                     "body": request.get("json"), "status": line.get("status"), "ok": bool(line.get("ok")),
                     "outcome": line.get("outcome"), "error": line.get("error"), "dry_run": bool(line.get("dry_run")),
                     "latency_ms": line.get("latency_ms"),
                     "closed": [{"text": closed_text(line, c), "quantity": closed_quantity(line, c), "pnl": round(closed_pnl(line, c), 2)}
                                for c in closed_positions(line)]}
            with self._lock:
                self._actions.appendleft(entry)
                self._version += 1
                self._changed.notify_all()
        elif events.CONTROL_RESULT.of(line):
            entry = {k: line.get(k) for k in ("ts", "id", "verb", "status", "user", "account", "rule", "reason", "message")}
            with self._lock:
                self._commands.appendleft(entry)
                self._version += 1
                self._changed.notify_all()
        elif line.get("event") in (events.STALE.name, events.RECOVERED.name):
            with self._lock:
                self._version += 1
                self._changed.notify_all()

    # the view ------------------------------------------------------------------------------

    def view(self, full: bool = True) -> dict[str, Any]:
        """Everything the page shows, as JSON-ready data: `riskd status`'s view (riskd.status.build) of
        the daemon's live state, plus what only the page has: each account's P&L series (`full`: the
        whole session, else only its latest point as `tail`, what an open page appends), each
        threshold's share of the way (`used`), the recent actions and operator commands. Not yet
        scrubbed: see `encoded`."""
        t = self.ticker
        now = self._clock().astimezone(timezone.utc)
        health = {**t.health.as_json(), "updated": now.isoformat()}  # the daemon is this process: it runs
        health.pop("pid", None)
        snapshot = t.last_snapshot
        with self._lock:
            series = {name: list(points) if full else points[-1:] for name, points in self._series.items()}
            actions = list(self._actions)
            commands = list(self._commands)
        view = status.build(list(t.rules), t.state, snapshot, health, now, t.engine_settings, dry_run=t.executor.dry_run)
        for account in view["accounts"]:
            account["series" if full else "tail"] = series.get(account["account"], [])
            for row in account["rules"]:
                for condition in row["conditions"]:
                    condition["used"] = _used(condition)
        view.update({
            "version": __version__, "timezone": str(t.engine_settings.zone), "poll_interval_s": t.settings.poll_interval.total_seconds(),
            "stale_after_s": t.settings.stale_after.total_seconds(), "actions": actions, "commands": commands,
        })
        return view

    def encoded(self, full: bool = True) -> tuple[int, bytes]:
        """(version, the view as scrubbed JSON bytes), built at most once per version and kind whatever
        the number of pages open, and paced: the next build waits 4 times as long as this one took, so
        the page never takes more than a fifth of a core from the ticks (200 accounts x 10 rules: ~0.3 s)."""
        with self._build:
            with self._lock:
                version = self._version
            cached = self._cache.get(full)
            if cached is not None and cached[0] == version:
                return cached
            wait = self._next_build - time.monotonic()
            if wait > 0:
                with self._changed:
                    self._changed.wait_for(lambda: self.closed, wait)
                with self._lock:
                    version = self._version
            started = time.monotonic()
            view = self.view(full)
            raw = json.dumps(view, default=str, separators=(",", ":"), ensure_ascii=False)
            if not self.redactor.json_is_clean(raw):  # the walk is slow: only when a scan of the text finds a reason
                raw = self.redactor.text(json.dumps(self.redactor.value(view), default=str, separators=(",", ":"), ensure_ascii=False))
            self._cache[full] = (version, raw.encode())
            self._next_build = time.monotonic() + 4 * (time.monotonic() - started)
            return self._cache[full]

    def wait(self, seen: int, timeout: float) -> int:
        """Block until the view is newer than `seen`, the dashboard closes or `timeout` passes; return the version."""
        with self._changed:
            self._changed.wait_for(lambda: self._version != seen or self.closed, timeout)
            return self._version

    def close(self) -> None:
        with self._changed:
            self.closed = True
            self._changed.notify_all()

    # access --------------------------------------------------------------------------------

    def allowed(self, query: dict[str, list[str]], authorization: str | None) -> bool:
        if not self.token:
            return True
        given = (query.get("token") or [""])[0]
        if authorization and authorization.startswith("Bearer "):
            given = authorization[7:].strip()
        return hmac.compare_digest(given.encode(), self.token.encode())


def _used(condition: dict[str, Any]) -> float | None:
    """How much of the way to its threshold a condition has come (0..1; 1 once it holds); None when not numeric."""
    if condition.get("holds"):
        return 1.0
    left = condition.get("gap_percent")
    if not isinstance(left, (int, float)):
        return None
    return round(min(1.0, max(0.0, 1.0 - left / 100)), 4)


def page() -> bytes:
    return resources.files("riskd").joinpath("dashboard.html").read_bytes()


_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
                                "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
}


class _Handler(BaseHTTPRequestHandler):
    server: "DashboardServer"
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the request line holds ?token=: never logged
        return

    def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        for key, value in {**_HEADERS, "Content-Type": content_type, "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _refused(self) -> str | None:
        if self.server.loopback:
            host = self.headers.get("Host") or ""
            name = host[1:].split("]")[0] if host.startswith("[") else host.rsplit(":", 1)[0]
            if name.lower() not in LOOPBACK:
                return "the dashboard answers on a loopback name only (open it as http://127.0.0.1:PORT/ through an SSH tunnel)"
        return None

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        dash = self.server.dashboard
        url = urlsplit(self.path)
        refused = self._refused()
        if refused:
            self._send(403, refused.encode())
            return
        if not dash.allowed(parse_qs(url.query), self.headers.get("Authorization")):
            self._send(401, b"this dashboard needs its access token: open /?token=TOKEN (the dashboard-token credential)")
            return
        if url.path in ("/", "/index.html"):
            self._send(200, page(), "text/html; charset=utf-8")
        elif url.path == "/state.json":
            self._send(200, dash.encoded()[1], "application/json")
        elif url.path == "/events":
            self._stream(dash)
        else:
            self._send(404, b"not found: the dashboard has /, /state.json and /events")

    do_HEAD = do_GET

    def _stream(self, dash: Dashboard) -> None:
        self.send_response(200)
        for key, value in {**_HEADERS, "Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        seen = -1
        try:
            while not dash.closed:
                if seen == -1 or dash.wait(seen, KEEPALIVE_S) != seen:
                    if dash.closed:
                        break
                    seen, body = dash.encoded(full=seen == -1)  # the whole chart first, then each tick's new point
                    self.wfile.write(b"data: " + body + b"\n\n")
                else:
                    self.wfile.write(b": keepalive\n\n")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            return

    def _not_allowed(self) -> None:
        self.send_response(405)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], dashboard: Dashboard):
        if ":" in address[0]:
            import socket

            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.dashboard = dashboard
        self.loopback = address[0] in LOOPBACK
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), self.server_address[1]
        return f"http://{f'[{host}]' if ':' in str(host) else host}:{port}/"

    def start(self) -> "DashboardServer":
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2}, name="riskd-dashboard", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.dashboard.close()  # the event streams end
        self.shutdown()
        self.server_close()


def serve(host: str, port: int, dashboard: Dashboard) -> DashboardServer:
    """Start the dashboard on host:port (a daemon thread); raise OSError when the address cannot be bound."""
    return DashboardServer((host, port), dashboard).start()
