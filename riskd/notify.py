"""Webhook notifications: tell people when riskd acts or breaks, without ever slowing an action.

`Notifier.on_audit` observes every audit line (it is registered on `AuditTrail.observers`) and turns
the interesting ones into messages:

| class            | audit events                                                          |
|------------------|-----------------------------------------------------------------------|
| `fired`          | `fired`                                                               |
| `outcome`        | `action` with `ok: true` on a close or flatten: what it closed         |
| `alert`          | `fired` of an `alert` rule: sent to every target, whatever its events |
| `failed`         | `action` with `ok: false`, `tick_failed` (repeats muted for 15 min)   |
| `stale`          | `stale` (no usable snapshot for `stale_after`), `recovered`           |
| `rules_rejected` | `rules_rejected` (a reload was refused; the old rules keep running)   |
| `summary`        | `session_summary` (the daemon writes it at each session end)          |
| `control`        | `control_result`: an operator command's outcome, with who asked        |

`on_audit` only appends to a bounded in-memory queue per target (O(1), no I/O), so it never delays
the tick that emitted the line. One background thread per target sends what is queued, everything
waiting in one message, at most `max_per_minute` calls a minute (3 at once): a storm of 300 closes
reaches a phone as a few messages, each ending "… and N more" past the format's size limit (the
audit trail has them all). It retries with exponential backoff (honouring `Retry-After`, and
Telegram's `parameters.retry_after`) on connection errors, timeouts, 408, 429 and 5xx for up to
`GIVE_UP_AFTER`; other 4xx are dropped at once.

Formats: `json` (generic: `{"source", "host", "events": [{"class", "event", "text", "audit"}]}`),
`slack` (`{"text"}`), `discord` (`{"content"}`, mentions disabled), `ntfy` (plain text body with
Title/Priority/Tags headers, POSTed to the topic URL), `telegram` (`{"chat_id", "text"}` POSTed to
the bot's `sendMessage` URL, which holds the bot token: a secret like any webhook URL).

Webhook URLs are secrets (whoever has one can post): they come from a systemd credential or an
environment variable, are never logged (targets are named in logs and metrics), and are added to
the audit trail's redaction list.
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import httpx
import structlog

from riskd import __version__, events
from riskd.config import NotifyTarget, Settings
from riskd.errors import ConfigError, Problem
from riskd.redact import Redactor
from riskd.trail import closed_positions, closed_text, is_order_change

log = structlog.get_logger("riskd")

QUEUE_LIMIT = 1000  # messages kept per target while it is unreachable; the oldest go first
BURST = 3  # webhook calls at once before `max_per_minute` paces them
GIVE_UP_AFTER = 15 * 60.0  # seconds of retrying one batch
MAX_BACKOFF = 60.0
MUTE_REPEATS = 15 * 60.0  # the same failure is notified once per this many seconds


@dataclass(frozen=True, slots=True)
class Message:
    kind: str  # fired | alert | outcome | failed | stale | rules_rejected | summary | control
    event: str
    text: str
    audit: dict[str, Any]

    @property
    def urgent(self) -> bool:
        return self.kind in ("failed", "stale", "rules_rejected") and self.event != events.RECOVERED.name


# ---------------------------------------------------------------------------------------------
# Audit line -> message.


def _fmt(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def message_for(line: dict[str, Any]) -> Message | None:
    """Given an audit line, return the notification it deserves, or None."""
    event = line.get("event")
    target = " ".join(str(x) for x in (line.get("account"), line.get("instrument")) if x)
    dry = " [dry run]" if line.get("dry_run") else ""
    if event == events.FIRED.name:
        inputs = line.get("inputs") or {}
        seen = ", ".join(f"{k}={_fmt(v)}" for k, v in inputs.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool))
        threshold = ", ".join(f"{k} {v}" for k, v in (line.get("threshold") or {}).items())
        if line.get("action") == "alert":  # the trader's own words first; nothing was sent
            text = f"riskd ALERT ({line.get('rule')} on {target}){dry}: {line.get('reason')}"
            text += (f" (seen {seen}" if seen else " (") + (f"; threshold {threshold})" if threshold else ")")
            return Message("alert", event, text.replace(" ()", ""), line)
        text = f"riskd: rule {line.get('rule')} fired on {target}: {line.get('action')}{dry}"
        text += (f" (seen {seen}" if seen else " (") + (f"; threshold {threshold})" if threshold else ")")
        return Message("fired", event, text.replace(" ()", ""), line)
    if event == events.ACTION.name and line.get("ok") and is_order_change(line):
        return Message("outcome", event, outcome_text(line), line)
    if event == events.SESSION_SUMMARY.name:
        return Message("summary", event, summary_text(line), line)
    if event == events.CONTROL_RESULT.name:
        subject = " ".join(str(x) for x in (line.get("account"), line.get("rule")) if x)
        reason = f" (reason: {line['reason']})" if line.get("reason") else ""
        return Message("control", event, f"riskd: {line.get('user')} asked {line.get('verb')}{' ' + subject if subject else ''}{reason}: "
                                         f"{line.get('status')}, {line.get('message')}", line)
    if event == events.ACTION.name and not line.get("ok"):
        request = line.get("request") or {}
        status = line.get("status") or line.get("outcome")
        text = (f"riskd: FAILED {request.get('method')} {request.get('path')} for rule {line.get('rule')} on {target}: "
                f"{status} {line.get('error') or ''}".rstrip() + "; riskd retries on the next tick")
        return Message("failed", event, text, line)
    if event == events.TICK_FAILED.name:
        return Message("failed", event, f"riskd: a tick failed ({line.get('error')}); the next tick tries again", line)
    if event == events.STALE.name:
        error = f" (last error: {line['last_error']})" if line.get("last_error") else ""
        return Message("stale", event, f"riskd: STALE — no usable CrossTrade snapshot since {line.get('last_ok') or 'start'}{error}; "
                                       "rules cannot act until the API answers again", line)
    if event == events.RECOVERED.name:
        span = f" after {line['stale_for_s']:.0f}s" if isinstance(line.get("stale_for_s"), (int, float)) else ""
        return Message("stale", event, f"riskd: recovered — CrossTrade snapshots are arriving again{span}", line)
    if event in (events.DISK_FULL.name, events.STATE_WRITE_FAILED.name):
        return Message("failed", event, f"riskd: DISK FULL writing state ({line.get('op')}: {line.get('error')}); closes still go out, "
                                        "free space under state_dir", line)
    if event == events.DISK_RECOVERED.name:
        return Message("stale", event, "riskd: disk space is back; the state reserve is rebuilt", line)
    if event == events.RULES_REJECTED.name:
        errors = line.get("errors") or []
        first = f": {errors[0]}" if errors else ""
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        return Message("rules_rejected", event,
                       f"riskd: rule reload REJECTED, {line.get('kept_rules')} old rules keep running{first}{more}", line)
    return None


def outcome_text(line: dict[str, Any]) -> str:
    """What a close or flatten that the API acknowledged did, as a trader reads it."""
    target = " ".join(str(x) for x in (line.get("account"), line.get("instrument")) if x)
    closed = closed_positions(line)
    did = "; ".join(f"closed {closed_text(line, c)}" for c in closed) if closed else "the API reported nothing closed (nothing was open)"
    dry = " [dry run: nothing was sent]" if line.get("dry_run") else ""
    return f"riskd: {line.get('rule')} on {target}: {did}{dry}"


def summary_text(line: dict[str, Any]) -> str:
    """The session_summary line as one message: each account's P&L, then each rule's day."""
    out = [f"riskd: session {line.get('session')} ended"]
    for a in line.get("accounts") or []:
        lock = " (locked)" if a.get("locked") else ""
        out.append(f"{a.get('account')}: P&L {_money(a.get('pnl'))}{lock}")
    rules = [r for r in line.get("rules") or [] if r.get("firings") or r.get("failed")]  # not those that only stood aside
    for r in rules:
        failed = f", {r['failed']} failed" if r.get("failed") else ""
        out.append(f"{r.get('rule')}: {r.get('firings')} firing(s), {r.get('closes')} close(s), {r.get('contracts_closed')} contract(s) "
                   f"at {_money(r.get('pnl_at_close'))}{failed}")
    if not rules:
        out.append("no rule fired")
    return "\n".join(out)


def _money(value: Any) -> str:
    return f"{value:,.2f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _mute_key(message: Message) -> str | None:
    """Failures that repeat every tick are notified once per MUTE_REPEATS; firings never are muted."""
    a = message.audit
    if message.event == events.ACTION.name:
        return f"action|{a.get('key')}|{a.get('outcome')}|{a.get('status')}"
    if message.event == events.TICK_FAILED.name:
        return f"tick|{a.get('error')}"
    return None


# ---------------------------------------------------------------------------------------------
# Message batch -> HTTP request.


def render(fmt: str, messages: list[Message], host: str, chat_id: str | None = None) -> tuple[dict[str, str], bytes]:
    """Given a format and messages, return (headers, body) of the webhook request."""
    texts = [m.text for m in messages]
    if fmt == "slack":
        return {"Content-Type": "application/json"}, json.dumps({"text": _join(texts, 3500)}).encode()
    if fmt == "discord":
        body: dict[str, Any] = {"content": _join(texts, 1900), "allowed_mentions": {"parse": []}}
        return {"Content-Type": "application/json"}, json.dumps(body).encode()
    if fmt == "telegram":
        body = {"chat_id": chat_id, "text": _join(texts, 4000), "disable_web_page_preview": True}
        return {"Content-Type": "application/json"}, json.dumps(body).encode()
    if fmt == "ntfy":
        urgent = any(m.urgent for m in messages)
        kinds = sorted({m.kind for m in messages})
        headers = {
            "Title": f"riskd on {host}: " + ", ".join(kinds),
            "Priority": "high" if urgent else "default",
            "Tags": "rotating_light" if urgent else "chart_with_downwards_trend",
            "Content-Type": "text/plain; charset=utf-8",
        }
        return {k: v.encode("ascii", "replace").decode() for k, v in headers.items()}, _join(texts, 3800).encode()
    body = {"source": "riskd", "version": __version__, "host": host,
            "events": [{"class": m.kind, "event": m.event, "text": m.text, "audit": m.audit} for m in messages]}
    return {"Content-Type": "application/json"}, json.dumps(body, default=str).encode()


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _join(texts: list[str], limit: int) -> str:
    """The messages, one a line, as many as fit in `limit` characters; then how many did not."""
    reserve = 60  # room for the "… and N more" line
    out: list[str] = []
    used = 0
    for i, text in enumerate(texts):
        if used + len(text) <= (limit if i == len(texts) - 1 else limit - reserve):
            out.append(text)
            used += len(text) + 1
            continue
        if not out:
            out.append(_clip(text, limit - reserve))
        rest = len(texts) - len(out)
        return "\n".join(out) + (f"\n… and {rest} more (riskd audit has them all)" if rest else "")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Targets and the notifier.


def resolve_url(target: NotifyTarget, settings: Settings, env: dict[str, str] | None = None) -> str:
    """Given a target, return its URL from the credential, env var or literal; raise ConfigError if absent."""
    env = dict(os.environ) if env is None else env
    kind, value = target.url_source
    url = None
    if kind == "url":
        url = value
    elif kind == "env":
        url = env.get(value, "").strip() or None
    else:
        cred_dir = env.get("CREDENTIALS_DIRECTORY")
        path = Path(cred_dir) / value if cred_dir else None
        if path is not None and path.is_file():
            url = path.read_text(encoding="utf-8").strip() or None
    if url is None:
        where = f"${value}" if kind == "env" else f"the systemd credential {value!r} (LoadCredential={value}:/etc/riskd/{value})"
        raise ConfigError([Problem(str(settings.path or "riskd.yaml"), 1, 1, f"notify.{target.name}", f"no URL: {where} is not set")])
    if not url.startswith(("http://", "https://")):
        raise ConfigError([Problem(str(settings.path or "riskd.yaml"), 1, 1, f"notify.{target.name}", "the URL must start with http:// or https://")])
    return url


class Webhook:
    """One target: a bounded queue and the thread that delivers it."""

    def __init__(self, target: NotifyTarget, url: str, host: str, *, transport: httpx.BaseTransport | None = None,
                 on_outcome: Callable[[str, str], None] = lambda target, outcome: None,
                 sleep: Callable[[float], bool] | None = None):
        self.target = target
        self.host = host
        self._url = url
        self._queue: deque[Message] = deque(maxlen=QUEUE_LIMIT)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.observers: list[Callable[[str, str], None]] = [on_outcome]  # (target, "sent" | "retried" | "dropped"): metrics
        self.dropped = 0
        self.sent = 0
        self.in_flight = 0  # messages taken off the queue by the call being made (at most QUEUE_LIMIT)
        self._tokens = float(BURST)  # webhook calls that may go now (max_per_minute refills them)
        self._refilled = time.monotonic()
        self._http = httpx.Client(timeout=httpx.Timeout(target.timeout.total_seconds()), transport=transport, follow_redirects=False,
                                  headers={"User-Agent": f"riskd/{__version__}"})
        self._thread = threading.Thread(target=self._run, name=f"notify-{target.name}", daemon=True)
        self._thread.start()

    def put(self, message: Message) -> None:
        """Queue a message; never blocks (a full queue drops its oldest message)."""
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(message)
        self._wake.set()

    def pending(self) -> int:
        return len(self._queue)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            while self._queue and not self._stop.is_set():
                if self._pace():
                    self._deliver()
        self._final_flush()

    def _pace(self) -> bool:
        """Wait for a call slot (max_per_minute, BURST at once); False when stopping meanwhile."""
        rate = self.target.per_minute / 60.0
        now = time.monotonic()
        self._tokens = min(float(BURST), self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens < 1.0 and self._stop.wait((1.0 - self._tokens) / rate):
            return False
        now = time.monotonic()
        self._tokens = min(float(BURST), self._tokens + (now - self._refilled) * rate) - 1.0
        self._refilled = now
        return True

    def _take(self) -> list[Message]:
        batch: list[Message] = []
        while self._queue:
            batch.append(self._queue.popleft())
        return batch

    def _deliver(self) -> None:
        batch = self._take()
        self.in_flight = len(batch)
        try:
            self._send(batch)
        finally:
            self.in_flight = 0

    def _send(self, batch: list[Message]) -> None:
        headers, body = render(self.target.format, batch, self.host, self.target.chat_id)
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            outcome, retry_after = self._post(headers, body)
            if outcome == "sent":
                self.sent += len(batch)
                self._report("sent")
                return
            if outcome == "rejected" or time.monotonic() - started > GIVE_UP_AFTER:
                self._report("dropped")
                log.error("notify_dropped", target=self.target.name, messages=len(batch), attempts=attempt, reason=outcome)
                return
            self._report("retried")
            delay = retry_after if retry_after is not None else min(MAX_BACKOFF, 2 ** (attempt - 1)) * random.uniform(0.8, 1.0)
            if self._stop.wait(min(delay, MAX_BACKOFF)):
                self._queue.extendleft(reversed(batch))  # keep them for the final flush
                return

    def _report(self, outcome: str) -> None:
        for observe in self.observers:
            observe(self.target.name, outcome)

    def _post(self, headers: dict[str, str], body: bytes) -> tuple[str, float | None]:
        """POST once; return ("sent" | "retry" | "rejected", Retry-After seconds or None). Logs never name the URL."""
        try:
            response = self._http.post(self._url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            log.warning("notify_failed", target=self.target.name, error=exc.__class__.__name__, retry=True)
            return "retry", None
        status = response.status_code
        if 200 <= status < 300:
            return "sent", None
        retry_after = None
        try:
            retry_after = float(response.headers.get("Retry-After", ""))
        except ValueError:
            try:  # Telegram says it in the body: {"ok": false, "parameters": {"retry_after": 7}}
                retry_after = float(response.json()["parameters"]["retry_after"])
            except (ValueError, KeyError, TypeError):
                pass
        retry = status in (408, 425, 429) or status >= 500
        log.warning("notify_failed", target=self.target.name, status=status, retry=retry)
        return ("retry" if retry else "rejected"), retry_after

    def _final_flush(self) -> None:
        """On stop: one attempt for what is still queued, within the target's timeout."""
        while self._queue:
            batch = self._take()
            headers, body = render(self.target.format, batch, self.host, self.target.chat_id)
            outcome, _ = self._post(headers, body)
            self._report("sent" if outcome == "sent" else "dropped")
            if outcome != "sent":
                self.dropped += len(batch) + len(self._queue)
                self._queue.clear()

    def close(self, timeout: float) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._http.close()


class Notifier:
    """Given resolved targets, route audit lines to them (register `on_audit` as an audit observer)."""

    def __init__(self, webhooks: Iterable[Webhook], clock: Callable[[], float] = time.monotonic, redactor: Redactor | None = None):
        self.webhooks = list(webhooks)
        self.redactor = redactor or Redactor()  # messages quote API errors: scrubbed before they are queued
        self._clock = clock
        self._muted: dict[str, float] = {}
        self._lock = threading.Lock()  # audit lines come from tick threads and the reload

    @classmethod
    def from_settings(cls, settings: Settings, *, env: dict[str, str] | None = None, transport: httpx.BaseTransport | None = None,
                      on_outcome: Callable[[str, str], None] = lambda target, outcome: None) -> "Notifier":
        """Resolve every target's URL (raise ConfigError when one is missing) and start their threads."""
        urls = [resolve_url(t, settings, env) for t in settings.notify]
        host = socket.gethostname()
        return cls(Webhook(t, url, host, transport=transport, on_outcome=on_outcome) for t, url in zip(settings.notify, urls))

    @property
    def secrets(self) -> list[str]:
        return [w._url for w in self.webhooks]

    def on_audit(self, line: dict[str, Any]) -> None:
        if not self.webhooks:
            return
        message = message_for(line)
        if message is None:
            return
        message = Message(message.kind, message.event, self.redactor.text(message.text), self.redactor.value(message.audit))
        key = _mute_key(message)
        if key is not None:
            with self._lock:
                now = self._clock()
                if now - self._muted.get(key, -MUTE_REPEATS - 1) < MUTE_REPEATS:
                    return
                self._muted[key] = now
                if len(self._muted) > 10_000:  # bounded: forget the oldest half
                    for old in sorted(self._muted, key=self._muted.__getitem__)[:5_000]:
                        del self._muted[old]
        for hook in self.webhooks:
            if message.kind in hook.target.events or message.kind == "alert":  # an alert rule names no channel: all of them
                hook.put(message)

    def close(self, timeout: float = 3.0) -> None:
        """Stop every target, giving queued messages one last try within `timeout` seconds in total."""
        deadline = time.monotonic() + timeout
        for hook in self.webhooks:
            hook._stop.set()
            hook._wake.set()
        for hook in self.webhooks:
            hook.close(max(0.0, deadline - time.monotonic()))
