"""The composition root: wires settings, rules, client, engine, executor, store and audit together,
schedules ticks with APScheduler 3.x, and handles signals (SIGTERM/SIGINT stop, SIGHUP reload).

`Ticker` does one tick (read the clock once, poll, settle unknown outcomes, evaluate, act);
`Daemon` decides when ticks run and swaps rule sets on reload.
"""

from __future__ import annotations

import gc
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from riskd import __version__, engine, rules as rules_mod
from riskd.actions import Executor
from riskd.audit import AuditTrail
from riskd.config import Settings
from riskd.crosstrade import AUTH, CrossTradeClient, parse_snapshot
from riskd.engine import EngineSettings, State
from riskd.errors import ApiError, ConfigError
from riskd.metrics import Telemetry
from riskd.model import Decision, Rule, Snapshot
from riskd.notify import Notifier
from riskd.sdnotify import Systemd
from riskd.state import Store

log = structlog.get_logger("riskd")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def engine_settings(settings: Settings) -> EngineSettings:
    return EngineSettings(zone=settings.zone, session_start=settings.session_start, misfire_grace=settings.misfire_grace)


# A refused token (401/403) is retried this rarely: one loud error, then one quiet attempt a minute.
AUTH_BACKOFF_S = 60.0
# The health row (`riskd once` shows it) is written on every change of staleness and at most this often otherwise.
HEALTH_EVERY = timedelta(seconds=5)
# Finished intents are kept this long (the audit trail has them for good).
INTENTS_KEPT = timedelta(days=3)


@dataclass
class Health:
    """What the console summary, `riskd once` and the watchdog need to know."""

    ticks: int = 0
    polls_ok: int = 0
    polls_failed: int = 0
    firings: int = 0
    last_ok: datetime | None = None
    stale: bool = False
    stale_since: datetime | None = None
    consecutive_failures: int = 0
    next_poll_at: datetime | None = None
    last_error: str | None = None
    latencies_ms: list[float] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "ticks": self.ticks, "polls_ok": self.polls_ok, "polls_failed": self.polls_failed,
                "firings": self.firings, "last_ok": self.last_ok.isoformat() if self.last_ok else None, "stale": self.stale,
                "stale_since": self.stale_since.isoformat() if self.stale_since else None,
                "consecutive_failures": self.consecutive_failures, "last_error": self.last_error}


class Ticker:
    """One tick at a time: poll -> settle -> evaluate -> act, all with the same `now`.

    `stopping`, once set, lets an action in flight finish and starts no other (graceful stop).
    """

    def __init__(self, settings: Settings, rules: list[Rule], client: CrossTradeClient, executor: Executor,
                 store: Store, audit: AuditTrail, clock: Callable[[], datetime] = utc_now):
        self.settings = settings
        self.rules = rules
        self.client = client
        self.executor = executor
        self.store = store
        self.audit = audit
        self.clock = clock
        self.engine_settings = engine_settings(settings)
        self.state: State = store.load()
        self.health = Health()
        self.last_snapshot: Snapshot | None = None
        self._sampled: dict[str, datetime] = {}  # account (lower case) -> minute of its last `sample`
        self.lock = threading.Lock()
        self.stopping = client.stopping
        self.started_at: datetime | None = None
        self._deferred: dict[str, str] = {}
        self._health_saved: datetime | None = None
        self._auth_reported = False
        self._problems: tuple[str, ...] = ()

    def tick(self, reason: str = "poll") -> list[Decision] | None:
        """Run one tick; return its decisions, or None when no usable snapshot was read."""
        with self.lock:
            now = self.clock()
            if self.stopping.is_set():
                return None
            if self.started_at is None:
                self.started_at = now
                self.store.prune(now - INTENTS_KEPT)
            if reason == "poll" and self.health.next_poll_at and now < self.health.next_poll_at:
                self._check_stale(now)  # backing off after API errors
                return None
            self.health.ticks += 1
            snapshot = self._poll(now)
            if snapshot is None:
                self._check_stale(now)
                return None
            self.last_snapshot = snapshot
            state = self.executor.resolve(snapshot, self.state, now)
            decisions, state = engine.evaluate(self.rules, state, snapshot, now, self.engine_settings)
            if state.session != self.state.session and self.state.session is not None:
                self.store.prune(now - INTENTS_KEPT)
            for d in decisions:
                if d.kind != "fire":
                    self._audit_decision(d, now)
            self.store.save(state, now)
            self.state = state
            fire_keys = {d.key for d in decisions if d.kind == "fire"}
            self._deferred = {k: v for k, v in self._deferred.items() if k in fire_keys}
            unavailable: str | None = None
            acted: set[str] = set()
            for d in decisions:
                if d.kind != "fire":
                    continue
                if self.stopping.is_set():
                    why: str | None = "riskd is stopping; the rule is evaluated again at start"
                elif unavailable:  # the bridge is down or the budget spent: one probe per tick, not a volley
                    why = f"the API refused the previous action ({unavailable}); next tick"
                else:
                    why = self.executor.gate(d, now)
                if why is not None:
                    self._defer(d, why)
                    continue
                self._deferred.pop(d.key, None)
                self._audit_decision(d, now)
                self.health.firings += 1
                acted.add(d.account.lower())
                self.state = state = self.executor.act(d, snapshot, state, now)
                unavailable = self.executor.unavailable
            self._sample(snapshot, now, acted)  # after acting: no delay
            self._save_health(now)
            return decisions

    def _poll(self, now: datetime) -> Snapshot | None:
        reply = self.client.get_snapshot()
        error = reply.error
        snapshot = None
        if reply.ok:
            try:
                snapshot = parse_snapshot(reply.response, now)
            except ApiError as exc:
                error = f"unexpected snapshot: {exc}"
        if snapshot is not None and snapshot.problems != self._problems:
            self._problems = snapshot.problems  # audited when they change, not every tick
            if snapshot.problems:  # those accounts count as not seen: never as flat
                self.audit.emit("api_error", path=reply.path, status=reply.status, outcome="partial",
                                error="unreadable account entries: " + "; ".join(snapshot.problems), accounts=sorted(snapshot.unknown),
                                retry="those accounts are treated as not seen until a snapshot shows them well-formed")
        if snapshot is not None:
            self.health.polls_ok += 1
            self.health.latencies_ms.append(reply.latency_ms)
            del self.health.latencies_ms[:-2000]
            self.health.consecutive_failures = 0
            self.health.next_poll_at = None
            self.health.last_ok = now
            self._auth_reported = False
            if self.health.stale:
                since = self.health.stale_since
                self.health.stale = False
                self.health.stale_since = None
                self.audit.emit("recovered", path=reply.path, stale_for_s=round((now - since).total_seconds(), 3) if since else None,
                                polls_failed=self.health.polls_failed)
                log.info("recovered", path=reply.path)
                self._save_health(now, force=True)
            return snapshot
        self.health.polls_failed += 1
        self.health.last_error = error
        if reply.budget:  # held back by riskd's own rate budget or a Retry-After: not an API failure
            self.health.next_poll_at = now + timedelta(seconds=reply.retry_after) if reply.retry_after else None
            retry = f"after Retry-After, in {reply.retry_after:.2f}s" if reply.retry_after else "next tick: the rate budget went to actions"
            self.audit.emit("api_error", path=reply.path, status=None, error=error, outcome=reply.outcome,
                            consecutive=self.health.consecutive_failures, retry=retry)
            log.warning("api_error", path=reply.path, error=error, retry=retry)
            return None
        self.health.consecutive_failures += 1
        delay = self._backoff(reply)
        self.health.next_poll_at = now + timedelta(seconds=delay)
        if reply.outcome == AUTH:
            retry = f"the token was refused: fix the credential; next attempt in {delay:.0f}s"
        else:
            retry = f"next poll in {delay:.2f}s"
        self.audit.emit("api_error", path=reply.path, status=reply.status, error=error, outcome=reply.outcome,
                        response=reply.response if reply.status else None, consecutive=self.health.consecutive_failures,
                        latency_ms=reply.latency_ms, retry=retry)
        if reply.outcome == AUTH and not self._auth_reported:
            self._auth_reported = True
            log.error("auth_refused", path=reply.path, status=reply.status, error=error,
                      message="CrossTrade refused the API token (401/403): riskd cannot see or close positions until the "
                              "credential is fixed; it retries once a minute")
        else:
            log.warning("api_error", path=reply.path, status=reply.status, error=error, retry=retry)
        return None

    def _check_stale(self, now: datetime) -> None:
        since = self.health.last_ok or self.started_at
        if not self.health.stale and since is not None and now - since >= self.settings.stale_after:
            self.health.stale = True
            self.health.stale_since = now
            self.audit.emit("stale", last_ok=self.health.last_ok.isoformat() if self.health.last_ok else None,
                            stale_after_s=self.settings.stale_after.total_seconds(), consecutive=self.health.consecutive_failures,
                            last_error=self.health.last_error)
            log.error("stale", last_ok=self.health.last_ok.isoformat() if self.health.last_ok else None,
                      message=f"no successful poll for {self.settings.stale_after.total_seconds():g}s: riskd cannot see positions")
            self._save_health(now, force=True)
        else:
            self._save_health(now)

    def _backoff(self, reply: Any) -> float:
        """Seconds until the next poll after a failed one: bounded exponential back-off with jitter from
        the poll interval, capped at twice it (so a bridge that is back is seen within two ticks), or
        Retry-After when that is longer; a refused token waits AUTH_BACKOFF_S."""
        if reply.outcome == AUTH:
            return AUTH_BACKOFF_S
        base = self.settings.poll_interval
        delay = min(base * 2, base * 0.5 * 2 ** self.health.consecutive_failures) * random.uniform(0.8, 1.0)
        return max(delay, reply.retry_after or 0.0)

    def _save_health(self, now: datetime, force: bool = False) -> None:
        if force or self._health_saved is None or now - self._health_saved >= HEALTH_EVERY:
            self.store.save_health(self.health.as_json(), now)
            self._health_saved = now

    def _defer(self, d: Decision, why: str) -> None:
        if self._deferred.get(d.key) == why:
            return
        self._deferred[d.key] = why
        self.audit.emit("deferred", rule=d.rule, key=d.key, account=d.account, instrument=d.instrument, action=d.action, reason=why)

    def _sample(self, snapshot: Snapshot, now: datetime, firing: set[str]) -> None:
        """Audit each account's session P&L as this tick's snapshot showed it (before any close),
        once a minute by the tick's clock and at every firing, so a day can be reconstructed."""
        minute = now.replace(second=0, microsecond=0)
        session = engine.session_of(now, self.engine_settings)
        for account in snapshot.accounts:
            name = account.name.lower()
            if self._sampled.get(name) == minute and name not in firing:
                continue
            self._sampled[name] = minute
            self.audit.emit("sample", account=account.name, session=session, reason="firing" if name in firing else "minute",
                            pnl=account.pnl(), realized=account.realized_pnl, unrealized=account.unrealized_pnl,
                            commission=account.commission, net_liquidation=account.net_liquidation,
                            positions=[{"instrument": p.instrument, "side": p.side, "quantity": p.quantity, "pnl": p.unrealized_pnl}
                                       for p in account.positions])

    def _audit_decision(self, d: Decision, now: datetime) -> None:
        common: dict[str, Any] = {"rule": d.rule, "key": d.key, "account": d.account, "instrument": d.instrument,
                                  "action": d.action, "dry_run": self.executor.is_dry(d)}
        if d.kind == "fire":
            self.audit.emit("fired", **common, session=engine.session_of(now, self.engine_settings), inputs=d.inputs,
                            threshold=d.threshold, local_time=d.local_time,
                            reason=d.reason, orders=[o.body() | {"kind": o.kind} for o in d.orders], covers=list(d.covers))
            log.info("fired", rule=d.rule, account=d.account, instrument=d.instrument, action=d.action)
        else:
            self.audit.emit(d.kind, **common, reason=d.reason, inputs=d.inputs or None)
            if d.kind == "missed":
                log.warning("missed", rule=d.rule, reason=d.reason)

    def swap_rules(self, rules: list[Rule]) -> None:
        with self.lock:
            self.rules = rules


class Daemon:
    """Schedules the ticker (poll interval + one cron job per `at` rule) and handles signals.

    Around the ticks (see riskd/sdnotify.py, riskd/metrics.py, riskd/notify.py): systemd READY /
    STATUS / WATCHDOG (pinged by healthy ticks and completed actions only) / RELOADING / STOPPING;
    telemetry (a summary log line every `summary_interval`, the optional Prometheus endpoint);
    webhook notifications fed by the audit trail.
    """

    def __init__(self, settings: Settings, ticker: Ticker, audit: AuditTrail, hashes: dict[str, str], *,
                 systemd: Systemd | None = None, telemetry: Telemetry | None = None, notifier: Notifier | None = None):
        self.settings = settings
        self.ticker = ticker
        self.audit = audit
        self.hashes = hashes
        self.systemd = systemd or Systemd()
        self.telemetry = telemetry or Telemetry(bucket_level=lambda: ticker.client.bucket.level)
        self.notifier = notifier or Notifier([])
        self.metrics_server: Any = None
        self._status_at = 0.0
        ticker.client.observers.append(self.telemetry.on_reply)
        audit.observers.extend([self.telemetry.on_audit, self.notifier.on_audit, self._on_audit])
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(4)},
            job_defaults={"coalesce": True, "max_instances": 1},
            timezone=timezone.utc,
        )
        self._wake = threading.Event()
        self._stop_reason: str | None = None
        self._reload = False

    def _safe_tick(self, reason: str) -> None:
        started = time.perf_counter()
        try:
            self.ticker.tick(reason)
        except Exception as exc:  # a tick must never kill the scheduler; the next one tries again
            self.audit.emit("tick_failed", reason=reason, error=f"{exc.__class__.__name__}: {exc}")
            log.exception("tick_failed", reason=reason)
            return  # no watchdog ping: ticks that keep failing get riskd restarted by systemd
        self.telemetry.on_tick(reason, time.perf_counter() - started, self.ticker)
        # The watchdog watches riskd (a hung or crashing tick, a dead scheduler), not CrossTrade: a
        # tick that handled an API error is healthy; the outage shows in STATUS, `stale` and metrics.
        now = time.monotonic()
        refresh = now - self._status_at >= 5.0
        if refresh:
            self._status_at = now
        self.systemd.watchdog(self.status() if refresh else None)

    def _on_audit(self, line: dict[str, Any]) -> None:
        event = line.get("event")
        if event == "action":
            self.systemd.watchdog()  # an answered API call is progress, even inside a long tick
        elif event in ("stale", "recovered"):
            self._status_at = 0.0  # refresh the status line at the next ping

    def status(self) -> str:
        """One line for `systemctl status`."""
        h = self.ticker.health
        snap = self.ticker.last_snapshot
        watched = f"{len(snap.accounts)} accounts, {sum(len(a.positions) for a in snap.accounts)} positions" if snap else "no snapshot yet"
        mode = " (dry run)" if self.ticker.executor.dry_run else ""
        if h.stale:
            error = f" ({h.last_error})" if h.last_error else ""
            return f"STALE: no usable snapshot since {h.last_ok.isoformat(timespec='seconds') if h.last_ok else 'start'}{error}; {len(self.ticker.rules)} rules{mode}"
        return f"{watched}, {len(self.ticker.rules)} rules; {h.ticks} ticks, {h.firings} firings{mode}"

    def _summary(self) -> None:
        log.info("summary", **self.telemetry.window())

    def _schedule_timed(self) -> None:
        for job in self.scheduler.get_jobs():
            if job.id.startswith("at:"):
                job.remove()
        for rule in self.ticker.rules:
            if rule.at is None or not rule.enabled:
                continue
            days = ",".join(["mon", "tue", "wed", "thu", "fri", "sat", "sun"][d] for d in sorted(rule.days))
            trigger = CronTrigger(day_of_week=days, hour=rule.at.hour, minute=rule.at.minute, second=rule.at.second, timezone=rule.zone)
            self.scheduler.add_job(self._safe_tick, trigger, args=[f"at:{rule.name}"], id=f"at:{rule.name}",
                                   misfire_grace_time=int(self.settings.misfire_grace.total_seconds()) or 1)

    def reload(self) -> bool:
        """Reload the rule files: all or nothing. Return True when the new rules are running."""
        self.systemd.reloading()
        try:
            new_rules, hashes = rules_mod.load(self.settings.rules, self.settings.zone)
        except ConfigError as exc:
            self.audit.emit("rules_rejected", source=[str(p) for p in self.settings.rules], errors=[str(p) for p in exc.problems],
                            kept_rules=len(self.ticker.rules))
            log.error("rules_rejected", errors=[str(p) for p in exc.problems], kept_rules=len(self.ticker.rules))
            self.systemd.ready(f"reload REJECTED ({len(exc.problems)} errors), old rules kept; " + self.status())
            return False
        changes = rules_mod.changes(self.ticker.rules, new_rules)
        self.ticker.swap_rules(new_rules)
        self.hashes = hashes
        self._schedule_timed()
        self.audit.emit("rules_loaded", source=[str(p) for p in self.settings.rules], files=hashes, rule_count=len(new_rules), reason="reload",
                        **changes)
        log.info("rules_loaded", rule_count=len(new_rules), reason="reload")
        self.systemd.ready(self.status())
        return True

    def request_stop(self, reason: str) -> None:
        self._stop_reason = reason
        self.ticker.stopping.set()  # an action in flight finishes; no other starts
        self._wake.set()

    def request_reload(self) -> None:
        self._reload = True
        self._wake.set()

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop("SIGTERM"))
        signal.signal(signal.SIGINT, lambda *_: self.request_stop("SIGINT"))
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())
        signal.signal(signal.SIGUSR1, lambda *_: (self.audit.request_reopen(), self._wake.set()))  # logrotate's postrotate

    def run(self, on_ready: Callable[[], None] = lambda: None) -> int:
        """Run until a stop signal; return the exit code."""
        self.audit.emit("started", version=__version__, config=str(self.settings.path) if self.settings.path else None,
                        pid=os.getpid(), dry_run=self.ticker.executor.dry_run, base_url=self.settings.base_url,
                        poll_interval_s=self.settings.poll_interval, timezone=str(self.settings.zone),
                        session_start=self.settings.session_start.isoformat(timespec="minutes"))
        self.audit.emit("rules_loaded", source=[str(p) for p in self.settings.rules], files=self.hashes, rule_count=len(self.ticker.rules), reason="start")
        log.info("started", version=__version__, rules=len(self.ticker.rules), poll_interval_s=self.settings.poll_interval,
                 dry_run=self.ticker.executor.dry_run)
        self._safe_tick("start")
        gc.collect()
        gc.freeze()  # startup objects live forever: keep them out of every later GC pass (shorter tick tails)
        self.scheduler.add_job(self._safe_tick, IntervalTrigger(seconds=self.settings.poll_interval, start_date=poll_phase(self.settings.poll_interval)),
                               args=["poll"], id="poll", misfire_grace_time=max(1, int(self.settings.poll_interval)))
        self._schedule_timed()
        if self.settings.summary_interval > 0:
            self.scheduler.add_job(self._summary, IntervalTrigger(seconds=self.settings.summary_interval), id="summary")
        self._start_metrics()
        interval = self.systemd.watchdog_interval
        if interval is not None and self.settings.poll_interval > interval / 2:
            log.error("watchdog_too_short", watchdog_s=interval, poll_interval_s=self.settings.poll_interval,
                      fix="ticks feed the watchdog: set WatchdogSec= to at least twice poll_interval (systemctl edit riskd)")
        self.scheduler.start()
        self.systemd.ready(self.status())
        on_ready()
        while self._stop_reason is None:
            self._wake.wait()
            self._wake.clear()
            if self._reload:
                self._reload = False
                self.reload()
            self.audit.flush()  # reopen after SIGUSR1 now, not at the next line
        self.systemd.stopping(f"stopping ({self._stop_reason}): finishing the tick in flight")
        self.scheduler.shutdown(wait=True)  # an in-flight tick finishes its action (bounded by the client timeouts)
        with self.ticker.lock:
            in_doubt = [i.key for i in self.ticker.executor.in_doubt]
        self.audit.emit("stopped", reason=self._stop_reason, pid=os.getpid(), ticks=self.ticker.health.ticks,
                        firings=self.ticker.health.firings, in_doubt=in_doubt)
        log.info("stopped", reason=self._stop_reason)
        self.notifier.close(timeout=3.0)  # queued notifications get one last try, bounded
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        return 0

    def _start_metrics(self) -> None:
        if self.settings.metrics is None:
            return
        from riskd.metrics import serve

        host, port = self.settings.metrics
        try:
            self.metrics_server = serve(host, port, self.telemetry.registry)
        except OSError as exc:  # riskd keeps protecting accounts without its metrics endpoint
            log.error("metrics_unavailable", address=f"{host}:{port}", error=f"{exc.__class__.__name__}: {exc.strerror}")
            return
        bound = self.metrics_server.server_port
        log.info("metrics_listening", address=f"{host}:{bound}", url=f"http://{host if ':' not in host else f'[{host}]'}:{bound}/metrics")
        if host not in ("127.0.0.1", "::1", "localhost"):
            log.warning("metrics_exposed", address=f"{host}:{bound}", note="the endpoint is not on loopback; firewall it")


def poll_phase(interval: float, now: datetime | None = None) -> datetime:
    """The phase of the poll ticks (APScheduler runs them at start + k * interval, the first one
    within an interval from now): half an interval off whole seconds, where `at` rules fire, so a
    timed tick does not wait for a poll tick to release the ticker."""
    now = now or utc_now()
    offset = (interval / 2) % 1.0 or 0.5
    return now.replace(microsecond=0) + timedelta(seconds=offset)


def build_ticker(settings: Settings, rules: list[Rule], token: str, audit: AuditTrail, *, dry_run: bool,
                 store: Store, transport: Any = None, clock: Callable[[], datetime] = utc_now,
                 monotonic: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> Ticker:
    """Wire client, executor and ticker. `clock` (UTC datetimes), `monotonic` and `sleep` (the rate
    bucket's and the 429 back-off's) are injectable so tests can run riskd on one simulated clock."""
    from riskd.crosstrade import TokenBucket

    client = CrossTradeClient(settings.base_url, token, timeout=settings.timeout,
                              bucket=TokenBucket(settings.rate_per_second, settings.rate_burst, clock=monotonic, sleep=sleep),
                              transport=transport)
    executor = Executor(client, audit, store, dry_run=dry_run, settle=timedelta(seconds=settings.timeout), clock=clock)
    return Ticker(settings, rules, client, executor, store, audit, clock=clock)


def state_dir_for(settings: Settings, dry_run: bool) -> Path:
    """A daemon-wide dry run keeps its own state, so its markers never suppress a live firing."""
    return settings.state_dir / "dry-run" if dry_run else settings.state_dir
