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


@dataclass
class Health:
    """What the console summary, `riskd once` and the watchdog need to know."""

    ticks: int = 0
    polls_ok: int = 0
    polls_failed: int = 0
    firings: int = 0
    last_ok: datetime | None = None
    stale: bool = False
    consecutive_failures: int = 0
    next_poll_at: datetime | None = None
    latencies_ms: list[float] = field(default_factory=list)


class Ticker:
    """One tick at a time: poll -> settle -> evaluate -> act, all with the same `now`."""

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

    def tick(self, reason: str = "poll") -> list[Decision] | None:
        """Run one tick; return its decisions, or None when no usable snapshot was read."""
        with self.lock:
            now = self.clock()
            if reason == "poll" and self.health.next_poll_at and now < self.health.next_poll_at:
                return None  # backing off after API errors
            self.health.ticks += 1
            snapshot = self._poll(now)
            if snapshot is None:
                return None
            self.last_snapshot = snapshot
            state = self.executor.resolve(snapshot, self.state, now)
            decisions, state = engine.evaluate(self.rules, state, snapshot, now, self.engine_settings)
            for d in decisions:
                self._audit_decision(d, now)
            self.store.save(state, now)
            for d in decisions:
                if d.kind == "fire":
                    self.health.firings += 1
                    state = self.executor.act(d, snapshot, state, now)
            self.state = state
            self._sample(snapshot, now, {d.account.lower() for d in decisions if d.kind == "fire"})  # after acting: no delay
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
        if snapshot is not None:
            self.health.polls_ok += 1
            self.health.latencies_ms.append(reply.latency_ms)
            del self.health.latencies_ms[:-2000]
            self.health.consecutive_failures = 0
            self.health.next_poll_at = None
            self.health.last_ok = now
            if self.health.stale:
                self.health.stale = False
                self.audit.emit("recovered", path=reply.path, after_failures=self.health.polls_failed)
                log.info("recovered", path=reply.path)
            return snapshot
        self.health.polls_failed += 1
        self.health.consecutive_failures += 1
        delay = self._backoff(reply.retry_after)
        self.health.next_poll_at = now + timedelta(seconds=delay)
        retry = "none: the token was refused; fix the credential" if reply.outcome == AUTH else f"next poll in {delay:.2f}s"
        self.audit.emit("api_error", path=reply.path, status=reply.status, error=error, outcome=reply.outcome,
                        response=reply.response if reply.status else None, consecutive=self.health.consecutive_failures, retry=retry)
        (log.error if reply.outcome == AUTH else log.warning)("api_error", path=reply.path, status=reply.status, error=error, retry=retry)
        since = self.health.last_ok
        if not self.health.stale and (since is None or now - since >= self.settings.stale_after) and self.health.consecutive_failures > 1:
            self.health.stale = True
            self.audit.emit("stale", last_ok=since.isoformat() if since else None, stale_after_s=self.settings.stale_after.total_seconds())
            log.error("stale", last_ok=since.isoformat() if since else None)
        return None

    def _backoff(self, retry_after: float | None) -> float:
        """Exponential backoff with jitter from the poll interval, capped at twice of it (or Retry-After)."""
        base = self.settings.poll_interval
        delay = min(base * 2, base * 0.5 * 2 ** self.health.consecutive_failures) * random.uniform(0.8, 1.0)
        return max(delay, retry_after or 0.0)

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
                                  "action": d.action, "dry_run": d.dry_run or self.executor.dry_run}
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
            return f"STALE: no usable snapshot since {h.last_ok.isoformat(timespec='seconds') if h.last_ok else 'start'}; {len(self.ticker.rules)} rules{mode}"
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

    def next_firings(self) -> list[tuple[str, datetime]]:
        return sorted(((job.id[3:], job.next_run_time) for job in self.scheduler.get_jobs() if job.id.startswith("at:")), key=lambda x: x[1])

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
        self.scheduler.shutdown(wait=True)  # an in-flight tick (and its action) completes first
        self.audit.emit("stopped", reason=self._stop_reason, pid=os.getpid(), ticks=self.ticker.health.ticks,
                        firings=self.ticker.health.firings)
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
                 store: Store, transport: Any = None, clock: Callable[[], datetime] = utc_now) -> Ticker:
    from riskd.crosstrade import TokenBucket

    client = CrossTradeClient(settings.base_url, token, timeout=settings.timeout,
                              bucket=TokenBucket(settings.rate_per_second, settings.rate_burst), transport=transport)
    executor = Executor(client, audit, store, dry_run=dry_run)
    return Ticker(settings, rules, client, executor, store, audit, clock=clock)


def state_dir_for(settings: Settings, dry_run: bool) -> Path:
    """A daemon-wide dry run keeps its own state, so its markers never suppress a live firing."""
    return settings.state_dir / "dry-run" if dry_run else settings.state_dir
