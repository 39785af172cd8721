"""The daemon: decides when ticks run (polls on the monotonic clock in their own thread, `at` rules
and the summary with APScheduler 3.x), handles signals (SIGTERM/SIGINT stop, SIGHUP reload,
SIGUSR1 reopen), swaps rule sets on reload, speaks to systemd, serves metrics, the live dashboard
(riskd/dashboard.py) and the operator commands' control socket (riskd.channel; a command asks for
a tick, which carries it out).

One tick itself is `riskd.tick.Ticker`; the wiring of a ticker is `riskd.tick.build_ticker`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from riskd import __version__, calendar as calendar_mod, engine, events, lint, rules as rules_mod, schedule, trail
from riskd.audit import AuditTrail
from riskd.config import Settings
from riskd.dashboard import Dashboard
from riskd.errors import ConfigError
from riskd.keys import LockKey
from riskd.memory import settle_gc, settle_malloc
from riskd.metrics import Telemetry
from riskd.notify import Notifier
from riskd.redact import Redactor
from riskd.schedule import wall_occurrences
from riskd.sdnotify import Systemd
from riskd.tick import Ticker, utc_now

log = structlog.get_logger("riskd")

# SIGTERM is honoured within STOP_BUDGET_S: a stop waits at most STOP_GRACE_S for the tick in flight
# (an answer being read, a close being sent); a tick still running then is abandoned (see `_stop`), and
# queued notifications get what is left of the budget.
STOP_GRACE_S = 1.5
STOP_BUDGET_S = 2.0


class CalendarTrigger(BaseTrigger):
    """The occurrences of an `at` rule that follows the exchange calendar (riskd.schedule), for APScheduler."""

    def __init__(self, rule: Any, calendar: Any):
        self.rule = rule
        self.calendar = calendar

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        after = previous_fire_time or now - timedelta(microseconds=1)
        return schedule.next_occurrence(self.rule, max(after, now - timedelta(microseconds=1)), self.calendar)


class Daemon:
    """Schedules the ticker (the poll loop + one job per `at` rule: cron, or the exchange calendar's
    occurrences for a rule that follows it) and handles signals.

    Around the ticks (see riskd/sdnotify.py, riskd/metrics.py, riskd/notify.py): systemd READY /
    STATUS / WATCHDOG (pinged by healthy ticks and completed actions only) / RELOADING / STOPPING;
    telemetry (a summary log line every `summary_interval`, the optional Prometheus endpoint);
    webhook notifications fed by the audit trail; `session_summary` at each session end; the
    optional live dashboard (riskd/dashboard.py), fed after every tick and by the audit trail.
    """

    def __init__(self, settings: Settings, ticker: Ticker, audit: AuditTrail, hashes: dict[str, str], *,
                 systemd: Systemd | None = None, telemetry: Telemetry | None = None, notifier: Notifier | None = None,
                 redactor: Redactor | None = None, dashboard_token: str | None = None):
        self.settings = settings
        self.ticker = ticker
        self.audit = audit
        self.hashes = hashes
        # the token (and any other secret) is scrubbed from STATUS, metrics labels and notifications: defence in depth
        # behind the client, which already hides whatever the API echoes of it
        self.redactor = redactor or ticker.client.redactor
        self.systemd = systemd or Systemd()
        self.telemetry = telemetry or Telemetry(bucket_level=lambda: ticker.client.bucket.level)
        self.notifier = notifier or Notifier([])
        for part in (self.systemd, self.telemetry, self.notifier):
            if not part.redactor:
                part.redactor = self.redactor
        self.metrics_server: Any = None
        self.control_server: Any = None
        self.dashboard = Dashboard(ticker, redactor=self.redactor, token=dashboard_token) if settings.dashboard else None
        self.dashboard_server: Any = None
        self._status_at = 0.0
        ticker.client.observers.append(self.telemetry.on_reply)
        for webhook in self.notifier.webhooks:  # riskd_notifications_total{target,outcome}
            webhook.observers.append(self.telemetry.on_notification)
        audit.observers.extend([self.telemetry.on_audit, self.notifier.on_audit, self._on_audit])
        if self.dashboard is not None:
            audit.observers.append(self.dashboard.on_audit)
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(4)},
            job_defaults={"coalesce": True, "max_instances": 1},
            timezone=timezone.utc,
        )
        self._wake = threading.Event()
        self._halt = threading.Event()  # ends the poll loop
        self._poller: threading.Thread | None = None
        self._stop_reason: str | None = None
        self._stop_at: float | None = None  # monotonic time of the stop request
        self._reload = False
        self.abandoned = False  # the stop left a tick running (the caller must then end the process at once)

    def _safe_tick(self, reason: str) -> None:
        started = time.perf_counter()
        try:
            self.ticker.tick(reason)
        except Exception as exc:  # a tick must never kill the scheduler; the next one tries again
            self.audit.emit(events.TICK_FAILED, reason=reason, error=f"{exc.__class__.__name__}: {exc}")
            log.exception("tick_failed", reason=reason)
            return  # no watchdog ping: ticks that keep failing get riskd restarted by systemd
        self.telemetry.on_tick(reason, time.perf_counter() - started, self.ticker)
        if self.dashboard is not None:
            self.dashboard.on_tick()
        # The watchdog watches riskd (a hung or crashing tick, a dead scheduler), not CrossTrade: a
        # tick that handled an API error is healthy; the outage shows in STATUS, `stale` and metrics.
        now = time.monotonic()
        refresh = now - self._status_at >= 5.0
        if refresh:
            self._status_at = now
        self.systemd.watchdog(self.status() if refresh else None)

    def _on_audit(self, line: dict[str, Any]) -> None:
        event = line.get("event")
        if event == events.ACTION.name:
            self.systemd.watchdog()  # an answered API call is progress, even inside a long tick
        elif event in (events.STALE.name, events.RECOVERED.name):
            self._status_at = 0.0  # refresh the status line at the next ping

    def status(self) -> str:
        """One line for `systemctl status` (scrubbed: it quotes the last API error)."""
        return self.redactor.text(self._status())

    def _status(self) -> str:
        h = self.ticker.health
        snap = self.ticker.last_snapshot
        watched = f"{len(snap.accounts)} accounts, {sum(len(a.positions) for a in snap.accounts)} positions" if snap else "no snapshot yet"
        mode = " (dry run)" if self.ticker.executor.dry_run else ""
        if h.stale:
            error = f" ({h.last_error})" if h.last_error else ""
            since = h.last_ok.isoformat(timespec='seconds') if h.last_ok else 'start'
            return f"STALE: no usable snapshot since {since}{error}; {len(self.ticker.rules)} rules{mode}"
        return f"{watched}, {len(self.ticker.rules)} rules; {h.ticks} ticks, {h.firings} firings{mode}"

    def _summary(self) -> None:
        log.info("summary", **self.telemetry.window())

    def session_summary(self, now: datetime | None = None) -> dict[str, Any] | None:
        """At a session end: audit `session_summary` (and so notify it): each account's P&L as last
        seen, whether it is locked, and each rule's day (riskd.trail.summary over the trail). Runs every
        day at session_start; an evening that opens no new session (a weekend, a holiday) sums up nothing."""
        now = now or self.ticker.clock()
        es = self.ticker.engine_settings
        boundary = next(o for o in wall_occurrences(es.session_start, frozenset(range(7)), es.zone, now, -1) if o <= now)
        ended = engine.session_of(boundary - timedelta(seconds=1), es)
        if engine.session_of(boundary, es) == ended:
            return None
        state, snapshot = self.ticker.state, self.ticker.last_snapshot
        locked = {LockKey.parse(k).account for k in state.locks} if state.session == ended else set()
        locked |= set(engine.active(state.account_locks, now))  # an operator's lock outlives the session
        accounts = [{"account": a.name, "pnl": round(a.pnl(), 2), "realized": a.realized_pnl, "commission": a.commission,
                     "locked": a.name.lower() in locked} for a in (snapshot.accounts if snapshot is not None else ())]
        rules: list[dict[str, Any]] = []
        if self.settings.audit_log != "-":
            self.audit.flush()
            try:  # the live file and the one rotated before it hold the session (rotation is daily at most)
                lines = trail.read(trail.default_files(Path(self.settings.audit_log))[-2:])
                rules = [{k: v for k, v in row.items() if k != "day"} for row in trail.summary(lines) if row["day"] == ended]
            except (OSError, trail.TrailError) as exc:
                log.warning("session_summary_partial", error=f"{exc.__class__.__name__}: {exc}", note="the rules' day is left out")
        return self.audit.emit(events.SESSION_SUMMARY, session=ended, accounts=accounts, rules=rules)

    def _schedule_timed(self) -> None:
        for job in self.scheduler.get_jobs():
            if job.id.startswith("at:"):
                job.remove()
        for rule in self.ticker.rules:
            if rule.at is None or not rule.enabled:
                continue
            days = ",".join(["mon", "tue", "wed", "thu", "fri", "sat", "sun"][d] for d in sorted(rule.days))
            trigger: BaseTrigger
            if rule.market is not None:  # close-5m, trading_days: the exchange calendar says when
                trigger = CalendarTrigger(rule, self.settings.calendar)
            else:
                trigger = CronTrigger(day_of_week=days, hour=rule.at.hour, minute=rule.at.minute, second=rule.at.second, timezone=rule.zone)
            self.scheduler.add_job(self._safe_tick, trigger, args=[f"at:{rule.name}"], id=f"at:{rule.name}",
                                   misfire_grace_time=int(self.settings.misfire_grace.total_seconds()) or 1)

    def _calendar_warnings(self) -> None:
        """A calendar that ran out (or an event file with nothing ahead) is loud: the trail, the console."""
        calendar, now = self.settings.calendar, self.ticker.clock()
        if calendar is None:
            return
        for warning in (calendar.horizon_warning(now.date()), calendar.events_warning(now)):
            if warning:
                self.audit.emit(events.CALENDAR_WARNING, warning=warning)
                log.warning("calendar_warning", warning=warning)

    def reload(self) -> bool:
        """Reload the rule files: all or nothing. Return True when the new rules are running."""
        self.systemd.reloading()
        try:
            new_rules, hashes = rules_mod.load(self.settings.rules, self.settings.zone, allow_empty=self.settings.allow_empty_policy)
            new_calendar = calendar_mod.rebuilt(self.settings.calendar)  # the event file (and corrections file) read again
        except Exception as exc:  # whatever the loader raises, a reload never kills the daemon: the old rules run on
            errors = [str(p) for p in exc.problems] if isinstance(exc, ConfigError) else [f"{exc.__class__.__name__}: {exc}"[:2000]]
            self.audit.emit(events.RULES_REJECTED, source=[str(p) for p in self.settings.rules], errors=errors,
                            kept_rules=len(self.ticker.rules))
            log.error("rules_rejected", errors=errors, kept_rules=len(self.ticker.rules))
            self.systemd.ready(f"reload REJECTED ({len(errors)} errors), old rules kept; " + self.status())
            return False
        changes = rules_mod.changes(self.ticker.rules, new_rules)
        self.ticker.swap_rules(new_rules, new_calendar)
        self.settings = dataclasses.replace(self.settings, calendar=new_calendar)
        self.hashes = hashes
        self._calendar_warnings()
        self._schedule_timed()
        self.audit.emit(events.RULES_LOADED, source=[str(p) for p in self.settings.rules], files=hashes, rule_count=len(new_rules),
                        reason="reload",
                        **changes)
        log.info("rules_loaded", rule_count=len(new_rules), reason="reload")
        lint.log_warnings(new_rules)
        self.systemd.ready(self.status())
        return True

    def request_stop(self, reason: str) -> None:
        if self._stop_at is None:
            self._stop_at = time.monotonic()
        self._stop_reason = reason
        self.ticker.stopping.set()  # an action in flight finishes; no other starts
        self._wake.set()

    def request_reload(self) -> None:
        self._reload = True
        self._wake.set()

    def request_reopen(self) -> None:
        self.audit.request_reopen()  # logrotate's postrotate
        self._wake.set()

    def install_signals(self, pending: list[int] | None = None) -> None:
        """Install the handlers; then act on `pending`, the signals queued while riskd was starting."""
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop("SIGTERM"))
        signal.signal(signal.SIGINT, lambda *_: self.request_stop("SIGINT"))
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())
        signal.signal(signal.SIGUSR1, lambda *_: self.request_reopen())
        for sig in list(pending or ()):
            self.request_reload() if sig == signal.SIGHUP else self.request_reopen()

    def run(self, on_ready: Callable[[], None] = lambda: None) -> int:
        """Run until a stop signal; return the exit code."""
        settle_malloc()
        self.audit.emit(events.STARTED, version=__version__, config=str(self.settings.path) if self.settings.path else None,
                        pid=os.getpid(), dry_run=self.ticker.executor.dry_run, base_url=self.settings.base_url,
                        poll_interval_s=self.settings.poll_interval.total_seconds(), timezone=str(self.settings.zone),
                        session_start=self.settings.session_start.isoformat(timespec="minutes"))
        self.audit.emit(events.RULES_LOADED, source=[str(p) for p in self.settings.rules], files=self.hashes,
                        rule_count=len(self.ticker.rules), reason="start")
        log.info("started", version=__version__, config=str(self.settings.path) if self.settings.path else "none (the demo)",
                 api=urlsplit(self.settings.base_url).netloc, rules=len(self.ticker.rules),
                 poll_interval_s=self.settings.poll_interval.total_seconds(),
                 dry_run=self.ticker.executor.dry_run)
        self._start_control()
        self._calendar_warnings()
        # The first tick runs in its own (daemon) thread so a stop during it is honoured like any other.
        first = threading.Thread(target=self._first_tick, name="riskd-start-tick", daemon=True)
        first.start()
        while first.is_alive() and self._stop_reason is None:
            self._wake.wait()
            self._wake.clear()
        self._wake.set()  # a reload or reopen requested meanwhile is handled below
        if self._stop_reason is None:
            self._serve(on_ready)
        return self._stop()

    def _poll_loop(self) -> None:
        """The poll ticks, every poll_interval on the monotonic clock (a step of the wall clock, back an
        hour or forward, neither stops nor bunches them), phased half an interval off the whole seconds
        where `at` rules fire. A tick that runs long delays the next one; missed ones are not made up."""
        interval = self.settings.poll_interval.total_seconds()
        wall = utc_now()
        due = time.monotonic() + (poll_phase(self.settings.poll_interval, wall) - wall).total_seconds()
        while not self._halt.wait(max(0.0, due - time.monotonic())):
            self._safe_tick("poll")
            now = time.monotonic()
            due += interval
            if due <= now:  # the tick overran: the next poll is the next one on the grid, not a burst
                due += interval * math.ceil((now - due) / interval)

    def _first_tick(self) -> None:
        self._safe_tick("start")
        self._wake.set()

    def _serve(self, on_ready: Callable[[], None]) -> None:
        settle_gc()
        self._poller = threading.Thread(target=self._poll_loop, name="riskd-poll", daemon=True)
        self._schedule_timed()
        self.scheduler.add_job(self.session_summary, session_end_trigger(self.settings), id="session_end",
                               misfire_grace_time=int(self.settings.misfire_grace.total_seconds()) or 1)
        if self.settings.summary_interval > timedelta(0):
            self.scheduler.add_job(self._summary, IntervalTrigger(seconds=self.settings.summary_interval.total_seconds()), id="summary")
        self._start_metrics()
        self._start_dashboard()
        interval = self.systemd.watchdog_interval
        if interval is not None and self.settings.poll_interval.total_seconds() > interval / 2:
            log.error("watchdog_too_short", watchdog_s=interval, poll_interval_s=self.settings.poll_interval.total_seconds(),
                      fix="ticks feed the watchdog: set WatchdogSec= to at least twice poll_interval (systemctl edit riskd)")
        self.scheduler.start()
        self._poller.start()
        self.systemd.ready(self.status())
        on_ready()
        while self._stop_reason is None:
            self._wake.wait()
            self._wake.clear()
            if self._reload:
                self._reload = False
                self.reload()
            self.audit.flush()  # reopen after SIGUSR1 now, not at the next line

    def _stop(self) -> int:
        """Stop within STOP_BUDGET_S of the request: wait up to STOP_GRACE_S for the tick in flight, then
        write `stopped` as the trail's last line. A tick still running is abandoned (`self.abandoned`):
        it is stuck in a request bounded only by the client deadline. If it is a close, its intent is
        already durable as `sending` with `sent` set (Store.begin / mark_sent before the request left)
        and is settled against the next start's first snapshot by Executor.resolve, exactly as after a
        kill -9; `stopped` names it in `in_doubt`. Lines the abandoned tick emits later go to the
        console, never into the trail after `stopped` (AuditTrail.close_with)."""
        started = self._stop_at if self._stop_at is not None else time.monotonic()
        self.systemd.stopping(f"stopping ({self._stop_reason}): finishing the tick in flight")
        self._halt.set()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)  # no new ticks; the one running is waited for below, bounded
        # Holding the ticker lock from here on: no tick starts after `stopped` (a queued one waits, then exits with us).
        idle = self.ticker.lock.acquire(timeout=max(0.0, STOP_GRACE_S - (time.monotonic() - started)))
        executor = self.ticker.executor
        while idle and executor.acting and time.monotonic() - started < STOP_GRACE_S:
            executor.wait_sends(0.05)  # closes a past tick left in flight past its deadline
        acting = executor.acting
        self.abandoned = not idle or bool(acting)
        in_doubt = [i.key for i in executor.in_doubt]
        # sent (or about to be) when the stop came: their outcomes are settled at the next start
        in_doubt += [key for key in acting if key not in in_doubt]
        if self.control_server is not None:
            self.control_server.close()  # no command is taken after `stopped`; one not carried out stays queued
        self.audit.close_with(events.STOPPED, reason=self._stop_reason, pid=os.getpid(), ticks=self.ticker.health.ticks,
                              firings=self.ticker.health.firings, in_doubt=in_doubt, abandoned_tick=self.abandoned,
                              stop_s=round(time.monotonic() - started, 3))
        log.info("stopped", reason=self._stop_reason, abandoned_tick=self.abandoned, in_doubt=in_doubt)
        left = STOP_BUDGET_S - (time.monotonic() - started)
        self.notifier.close(timeout=max(0.25, left - 0.1))  # queued notifications get one last try, within the budget
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        if self.dashboard_server is not None:
            self.dashboard_server.stop()
        return 0

    def _start_control(self) -> None:
        """Open the control socket (riskd.channel); riskd keeps protecting accounts without it."""
        from riskd.channel import ControlServer, socket_path

        path = socket_path(self.settings)
        try:
            self.control_server = ControlServer(path, self.ticker.store.inbox(), self.audit, lambda: self._safe_tick("control"),
                                                self.ticker.command_progress, self.ticker.clock).start()
        except OSError as exc:
            log.error("control_unavailable", path=str(path), error=f"{exc.__class__.__name__}: {exc}",
                      fix="riskd lock/flatten/... cannot reach this daemon; set control_socket to a writable, short path")
            return
        log.info("control_listening", path=str(path))

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


    def _start_dashboard(self) -> None:
        if self.settings.dashboard is None or self.dashboard is None:
            return
        from riskd.dashboard import serve

        host, port = self.settings.dashboard
        try:
            self.dashboard_server = serve(host, port, self.dashboard)
        except OSError as exc:  # riskd keeps protecting accounts without its dashboard
            log.error("dashboard_unavailable", address=f"{host}:{port}", error=f"{exc.__class__.__name__}: {exc.strerror}")
            return
        log.info("dashboard_listening", url=self.dashboard_server.url, guarded=bool(self.dashboard.token))
        if self.settings.audit_log != "-":
            threading.Thread(target=self._seed_dashboard, name="riskd-dashboard-seed", daemon=True).start()
        if host not in ("127.0.0.1", "::1", "localhost"):
            log.warning("dashboard_exposed", url=self.dashboard_server.url,
                        note="the dashboard is not on loopback: anyone who reaches the port sees balances and positions; "
                             "keep it on 127.0.0.1 and use an SSH tunnel (docs/dashboard.md)"
                             + ("" if self.dashboard.token else ", or at least set the dashboard-token credential"))


    def _seed_dashboard(self) -> None:
        """The session's P&L chart from before this start, read off the live trail file (off the tick thread)."""
        assert self.dashboard is not None
        try:
            self.dashboard.seed(trail.read(trail.default_files(Path(self.settings.audit_log))[-1:]))
        except (OSError, trail.TrailError) as exc:
            log.warning("dashboard_seed_failed", error=f"{exc.__class__.__name__}: {exc}", note="the chart starts at this start")


def session_end_trigger(settings: Settings) -> CronTrigger:
    """Every day at session_start in the configured zone: the session that was running ends."""
    start = settings.session_start
    return CronTrigger(hour=start.hour, minute=start.minute, second=start.second, timezone=settings.zone)


def poll_phase(interval: timedelta, now: datetime | None = None) -> datetime:
    """The phase of the poll ticks (the poll loop runs them at that wall time + k * interval, counted on
    the monotonic clock): half an interval off whole seconds, where `at` rules fire, so a
    timed tick does not wait for a poll tick to release the ticker."""
    now = now or utc_now()
    offset = (interval.total_seconds() / 2) % 1.0 or 0.5
    return now.replace(microsecond=0) + timedelta(seconds=offset)
