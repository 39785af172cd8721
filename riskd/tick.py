"""One tick: read the clock once, poll, settle unknown outcomes, evaluate, act, with that one `now`.

`Ticker.tick` is the whole of it; the poll health and back-off policy is `riskd.poll.PollHealth`,
the decisions are `riskd.engine`'s, the calls `riskd.actions.Executor`'s. `build_ticker` wires a
ticker from settings (the daemon, `riskd once` and the tests all use it).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import structlog

from riskd import control, engine, events, trades, trail
from riskd.actions import Executor
from riskd.audit import AuditTrail
from riskd.config import Settings
from riskd.crosstrade import CrossTradeClient, TokenBucket, parse_snapshot
from riskd.engine import State
from riskd.errors import ApiError
from riskd.keys import FiringKey
from riskd.model import Decision, Rule, Snapshot
from riskd.poll import Event, Health, PollHealth
from riskd.samples import Sampler
from riskd.state import Store

log = structlog.get_logger("riskd")

# The health row (`riskd once` shows it) is written on every change of staleness and at most this often otherwise.
HEALTH_EVERY = timedelta(seconds=5)
# Finished intents are kept this long (the audit trail has them for good).
INTENTS_KEPT = timedelta(days=3)
# A change of the wall clock against the monotonic clock between two ticks larger than this is a step (audited `clock_step`).
CLOCK_STEP_S = 2.0


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def state_dir_for(settings: Settings, dry_run: bool) -> Path:
    """A daemon-wide dry run keeps its own state, so its markers never suppress a live firing."""
    return settings.state_dir / "dry-run" if dry_run else settings.state_dir


class Ticker:
    """One tick at a time: poll -> settle -> evaluate -> act, all with the same `now`.

    `stopping`, once set, lets an action in flight finish and starts no other (graceful stop).
    `deadline_s`: how long a tick waits for its closes (sent side by side per account, see
    `Executor.act_all`) before it returns; one that overruns it is audited `tick_overrun`.
    """

    def __init__(self, settings: Settings, rules: list[Rule], client: CrossTradeClient, executor: Executor,
                 store: Store, audit: AuditTrail, clock: Callable[[], datetime] = utc_now,
                 monotonic: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.rules = rules
        self.client = client
        self.executor = executor
        self.store = store
        self.audit = audit
        self.clock = clock
        self.monotonic = monotonic
        self.engine_settings = settings.engine
        self.state: State = store.load()
        self.polls = PollHealth(settings.poll_interval, settings.stale_after)
        self.last_snapshot: Snapshot | None = None
        self.sampler = Sampler(audit)
        self.lock = threading.Lock()
        self.stopping = client.stopping
        self.started_at: datetime | None = None
        self._started_mono: float | None = None
        self._wall_offset: float | None = None  # wall minus monotonic seconds at the last tick
        self._deferred: dict[str, str] = {}
        self._health_saved: float | None = None
        # A tick waits this long (from its start) for its closes: one request deadline for the poll plus one
        # poll interval. A close still in flight then goes on in its thread; the next poll is not held back.
        self.deadline_s = (settings.timeout + settings.poll_interval).total_seconds()
        self._snapshot_saved: Snapshot | None = None
        # operator commands (riskd.control): the socket's threads wait on this for an outcome
        self.command_progress = threading.Condition()
        self._acted_commands: set[str] = set()  # operator flatten keys this process has sent
        self._closed: dict[str, str] = {}  # operator flatten key -> what its answer says it closed
        self._counting = _counting(rules)

    @property
    def health(self) -> Health:
        return self.polls.health

    def tick(self, reason: str = "poll") -> list[Decision] | None:
        """Run one tick; return its decisions, or None when no usable snapshot was read."""
        with self.lock:
            now, mono = self.clock(), self.monotonic()  # wall time for at/between/sessions; intervals on the monotonic clock
            self._check_clock(now, mono)
            return self._tick(now, mono, reason)

    def _check_clock(self, now: datetime, mono: float) -> None:
        """Audit a step of the wall clock (NTP, an operator): its offset to the monotonic clock jumped."""
        offset = now.timestamp() - mono
        previous, self._wall_offset = self._wall_offset, offset
        if previous is None or abs(offset - previous) <= CLOCK_STEP_S:
            return
        step = offset - previous
        self.audit.emit("clock_step", step_s=round(step, 3), direction="forward" if step > 0 else "back",
                        wall_expected=datetime.fromtimestamp(mono + previous, timezone.utc).isoformat(), wall_now=now.isoformat())
        log.warning("clock_step", step_s=round(step, 3), message="the wall clock stepped: polls keep their cadence (monotonic); "
                    "at/between/session times follow the new wall time")

    def _tick(self, now: datetime, mono: float, reason: str) -> list[Decision] | None:
        if self.stopping.is_set():
            return None
        if self.started_at is None:
            self.started_at = now
            self._started_mono = mono
            self.store.prune(now - INTENTS_KEPT)
        if reason == "control" and not self.store.has_open_commands():
            return None  # a command already carried out by an earlier tick
        if reason == "poll" and not self.polls.due(mono):
            self._check_stale(now, mono)  # backing off after API errors
            return None
        self.health.ticks += 1
        deadline = mono + self.deadline_s
        self.state, late = self.executor.collect(self.state)  # sends a past tick left running past its deadline
        for d, reason_late in late:
            self._defer(d, reason_late)
        snapshot = self._poll(now, mono)
        if snapshot is None:
            if self.last_snapshot is not None:  # an outage: lock, unlock, pause and resume need no fresh snapshot
                self.state = self._commands(self.last_snapshot, self.state, now, offline=True)
            self._check_stale(now, mono)
            return None
        previous, self.last_snapshot = self.last_snapshot, snapshot
        state = self.executor.resolve(snapshot, self.state, now)
        state = self._commands(snapshot, state, now)
        decisions, state = engine.evaluate(self.rules, state, snapshot, now, self.engine_settings)
        self._audit_gaps(state)
        if state.session != self.state.session and self.state.session is not None:
            self.store.prune(now - INTENTS_KEPT)
        self.store.save(state, now)
        self.state = state
        fire_keys = {d.key for d in decisions if d.kind == "fire"}
        self._deferred = {k: v for k, v in self._deferred.items() if k in fire_keys}
        ready: list[Decision] = []
        for d in decisions:
            if d.kind != "fire":
                continue
            why = "riskd is stopping; the rule is evaluated again at start" if self.stopping.is_set() else self.executor.gate(d, now)
            if why is not None:
                self._defer(d, why)
                continue
            ready.append(d)
        acted: set[str] = set()
        if ready:
            counted = threading.Lock()

            def start(d: Decision) -> None:  # in the sending thread, right before the intent is written
                self._deferred.pop(d.key, None)
                self._audit_decision(d, now)
                with counted:
                    self.health.firings += 1
                    acted.add(d.account.lower())

            wait_s = max(0.0, deadline - self.monotonic())
            state, skipped = self.executor.act_all(ready, snapshot, state, now, wait_s=wait_s, on_start=start)
            self.state = state
            for d, why in skipped:
                self._defer(d, why)
        # after acting: an executions read never holds back a close
        if previous is not None and self._counting and not self.stopping.is_set():
            self.state = self._count_trades(previous, snapshot, self.state, now)
            self.store.save(self.state, now)
        for d in decisions:  # after acting: 10,000 `superseded` lines never hold back a close
            if d.kind != "fire":
                self._audit_decision(d, now)
        self._sample(snapshot, now, acted)  # after acting: no delay
        self._save_health(now, mono)
        self._check_overrun(mono, reason)
        return decisions

    def _check_overrun(self, mono: float, reason: str) -> None:
        """Audit a tick that ran past its deadline (`tick_overrun`), with the firings still being sent."""
        took = self.monotonic() - mono
        if took <= self.deadline_s:
            return
        self.audit.emit(events.TICK_OVERRUN, reason=reason, took_s=round(took, 3), deadline_s=round(self.deadline_s, 3),
                        sending=self.executor.acting)
        log.warning("tick_overrun", took_s=round(took, 3), deadline_s=round(self.deadline_s, 3), sending=self.executor.acting)

    def _count_trades(self, previous: Snapshot, snapshot: Snapshot, state: State, now: datetime) -> State:
        """Fold the round trips closed since the previous snapshot into the state (riskd.trades): one
        executions read per account in scope whose snapshot shows a position shrink or close. It runs
        after this tick's actions, so a `trades` / `loss_streak` rule sees a round trip on the next tick."""
        session = engine.session_of(now, self.engine_settings)
        before = {a.name.lower(): a for a in previous.accounts}
        counts = dict(state.trades)
        for account in snapshot.accounts:
            name = account.name.lower()
            earlier = before.get(name)
            if earlier is None or not any(engine.in_scope(r, account.name) for r in self._counting):
                continue
            if not trades.needs_fills(earlier, account):
                continue
            reply = self.client.get_executions(account.name, trades.lookback_s(previous.taken_at, now))
            entry, trips = trades.fold(counts.get(name), session, earlier, account, previous.taken_at, snapshot.taken_at,
                                       reply.response if reply.ok else None)
            counts[name] = entry
            for trip in trips:
                self.audit.emit("round_trip", account=account.name, instrument=trip.instrument, session=session, losing=trip.losing,
                                points=trip.points, source=trip.source, trades=entry["count"], loss_streak=entry["streak"],
                                reason=None if trip.source == "executions" else
                                (f"executions not read ({reply.status or reply.outcome}: {reply.error})" if not reply.ok
                                 else "the executions do not account for the snapshot's positions"))
        return replace(state, trades=counts)

    def _audit_gaps(self, state: State) -> None:
        """Audit what a period rule could not see of its period (riskd.ledger), once per account and period a session."""
        for account, periods in state.gaps.items():
            for period, gap in periods.items():
                if period not in self.state.gaps.get(account, {}):
                    self.audit.emit("period_gap", account=account, session=state.session, **gap)
                    log.warning("period_gap", account=account, period=period, unseen=gap.get("unseen"), source=gap.get("source"))

    def _emit(self, events: list[Event]) -> None:
        for e in events:
            self.audit.emit(e.name, **e.fields)
            if e.level is not None:
                getattr(log, e.level)(e.log_name or e.name, **e.log)

    def _poll(self, now: datetime, mono: float) -> Snapshot | None:
        reply = self.client.get_snapshot()
        error = reply.error
        snapshot = None
        if reply.ok:
            try:
                snapshot = parse_snapshot(reply.response, now)
            except ApiError as exc:
                error = f"unexpected snapshot: {exc}"
        if snapshot is None:
            self._emit(self.polls.on_failure(reply, error, now, mono))
            return None
        self._emit(self.polls.on_problems(reply, snapshot.problems, snapshot.unknown))  # those accounts count as not seen: never as flat
        recovered = self.polls.on_success(reply, now, mono)
        self._emit(recovered)
        if recovered:
            self._save_health(now, mono, force=True)
        return snapshot

    def _check_stale(self, now: datetime, mono: float) -> None:
        stale = self.polls.check_stale(now, mono, self._started_mono)
        self._emit(stale)
        self._save_health(now, mono, force=bool(stale))

    def _save_health(self, now: datetime, mono: float, force: bool = False) -> None:
        if force or self._health_saved is None or mono - self._health_saved >= HEALTH_EVERY.total_seconds():
            self.store.save_health(self.health.as_json(), now)
            self._health_saved = mono
            if self.last_snapshot is not None and self.last_snapshot is not self._snapshot_saved:
                self.store.save_snapshot(self.last_snapshot, now)  # for `riskd status`
                self._snapshot_saved = self.last_snapshot

    # -- operator commands ---------------------------------------------------------------------

    def _commands(self, snapshot: Snapshot, state: State, now: datetime, offline: bool = False) -> State:
        """Carry out the operator commands not finished (riskd.control), with this tick's snapshot:
        lock, unlock, pause and resume change the state before the rules see it; a flatten is sent
        through the executor like a firing, and finishes when its intents do. `offline`: no usable
        snapshot this tick (`snapshot` is the last one): flattens wait, the others go ahead."""
        for cid, status, doc in self.store.open_commands():
            command = control.Command.from_json(doc)
            if offline and command.verb == "flatten":
                continue
            if status == "queued":
                if control.expired(command, now):
                    self._finish_command(command, "expired", f"asked at {command.asked_at.isoformat(timespec='seconds')} and not "
                                         f"carried out within {control.COMMAND_TTL.total_seconds():.0f}s (riskd was not running, or the "
                                         "API did not answer): ask again", now)
                    continue
                outcome = control.apply(command, state, self.rules, snapshot, now, self.engine_settings)
                if outcome.status != "acting":
                    state = outcome.state
                    message = outcome.message
                    if offline and command.verb == "lock" and outcome.status == "done":
                        message += (f" (the API is not answering; positions as of {snapshot.taken_at.isoformat(timespec='seconds')}: "
                                    "they are flattened once it answers)")
                    self._finish_command(command, outcome.status, message, now, state=state, details=outcome.details)
                    continue
                doc = {**doc, "keys": [d.key for d in outcome.decisions]}
                self.store.update_command(cid, "acting", now, doc=doc)
            state = self._flatten(command, doc["keys"], snapshot, state, now)
        return state

    def _flatten(self, command: control.Command, keys: list[str], snapshot: Snapshot, state: State, now: datetime) -> State:
        decisions = {d.key: d for d in control.apply(command, state, self.rules, snapshot, now, self.engine_settings).decisions}
        statuses: dict[str, str | None] = {}
        errors: list[str] = []
        for key in keys:
            d = decisions.get(key)
            status = self.store.intent_status(key)
            if d is not None and (status is None or (status == "failed" and key not in self._acted_commands)):
                # never sent, or settled "not applied" after a restart: send it (again)
                why = "riskd is stopping" if self.stopping.is_set() else None
                why = why or ("waiting for the outcome of an earlier request" if key in state.inflight else self.executor.gate(d, now))
                if why is not None:
                    self._defer(d, why)
                    statuses[key] = "waiting"
                    continue
                self._audit_decision(d, now)
                self._acted_commands.add(key)
                sent = self.executor.send(d, snapshot, now)
                state = self.executor.fold(sent, state)
                status = self.store.intent_status(key)
                reply = sent.last
                if status == "done" and reply is not None and reply.ok:
                    line = {"response": reply.response}
                    self._closed[key] = trail.closed_summary(line) if trail.closed_positions(line) else "nothing was open"
                if status == "failed" and reply is not None:
                    if reply.transient and not control.expired(command, now):
                        self._acted_commands.discard(key)  # a busy or rate-limited API: the next tick tries again
                        statuses[key] = "waiting"
                        continue
                    errors.append(f"{d.account}: {reply.status or reply.outcome} {reply.error or ''}".strip())
            statuses[key] = status
        if any(s in ("sending", "unknown", "waiting") for s in statuses.values()) or len(statuses) < len(keys):
            return state  # settled by a later tick (Executor.resolve), or sent by it
        dry = " (dry run: nothing was sent)" if self.executor.dry_run else ""
        names = {k: decisions[k].account if k in decisions else FiringKey.parse(k).target.account for k in keys}
        accounts = "; ".join(names[k] + (f": {self._closed.pop(k)}" if k in self._closed else "") for k in keys)
        if all(s == "done" for s in statuses.values()):
            self._finish_command(command, "done", f"flattened {accounts}{dry}", now, details={"keys": keys})
        else:
            failed = [names[k] for k, s in statuses.items() if s != "done"]
            self._finish_command(command, "failed", f"the flatten of {', '.join(failed)} failed: {'; '.join(errors) or 'not applied'}"
                                 " (see the action lines)", now, details={"keys": keys, "failed": failed})
        return state

    def _finish_command(self, command: control.Command, status: str, message: str, now: datetime, *, state: State | None = None,
                        details: dict[str, Any] | None = None) -> None:
        self.store.update_command(command.id, status, now, outcome={"status": status, "message": message, **(details or {})},
                                  state=state)
        self.audit.emit(events.CONTROL_RESULT, id=command.id, verb=command.verb, status=status, message=message, user=command.user,
                        account=command.account, rule=command.rule, reason=command.reason, **(details or {}))
        log.info("control_result", id=command.id, verb=command.verb, status=status, message=message, user=command.user)
        with self.command_progress:
            self.command_progress.notify_all()

    def _defer(self, d: Decision, why: str) -> None:
        if self._deferred.get(d.key) == why:
            return
        self._deferred[d.key] = why
        self.audit.emit("deferred", rule=d.rule, key=d.key, account=d.account, instrument=d.instrument, action=d.action, reason=why)

    def _sample(self, snapshot: Snapshot, now: datetime, firing: set[str]) -> None:
        """Audit each account's session P&L as this tick's snapshot showed it (before any close),
        once a minute by the tick's clock and at every firing, so a day can be reconstructed (riskd.samples)."""
        self.sampler.sample(snapshot, now, engine.session_of(now, self.engine_settings), firing)

    def _audit_decision(self, d: Decision, now: datetime) -> None:
        common: dict[str, Any] = {"rule": d.rule, "key": d.key, "account": d.account, "instrument": d.instrument,
                                  "action": d.action, "dry_run": self.executor.is_dry(d)}
        if d.kind == "fire":
            self.audit.emit("fired", **common, session=engine.session_of(now, self.engine_settings), inputs=d.inputs,
                            threshold=d.threshold, local_time=d.local_time,
                            reason=d.reason, orders=[o.body() | {"kind": o.kind} for o in d.orders], covers=list(d.covers))
            log.info("fired", rule=d.rule, account=d.account, instrument=d.instrument, action=d.action,
                     **({"dry_run": "decided and audited, nothing will be sent"} if common["dry_run"] else {}))
        else:
            self.audit.emit(d.kind, **common, reason=d.reason, inputs=d.inputs or None)
            if d.kind == "missed":
                log.warning("missed", rule=d.rule, reason=d.reason)

    def swap_rules(self, rules: list[Rule], calendar: Any = None) -> None:
        with self.lock:
            self.rules = rules
            if calendar is not None:  # the event and correction files read again
                self.settings = dataclasses.replace(self.settings, calendar=calendar)
                self.engine_settings = dataclasses.replace(self.engine_settings, calendar=calendar)
            self._counting = _counting(rules)


def _counting(rules: list[Rule]) -> list[Rule]:
    """The rules that count round trips: only for their accounts are the executions ever read for it."""
    return [r for r in rules if r.enabled and any(name in ("trades", "loss_streak") for name, _ in r.conditions)]


def build_ticker(settings: Settings, rules: list[Rule], token: str, audit: AuditTrail, *, dry_run: bool,
                 store: Store, transport: Any = None, clock: Callable[[], datetime] = utc_now,
                 monotonic: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> Ticker:
    """Wire client, executor and ticker. `clock` (UTC datetimes), `monotonic` and `sleep` (the rate
    bucket's and the 429 back-off's) are injectable so tests can run riskd on one simulated clock."""
    client = CrossTradeClient(settings.base_url, token, timeout=settings.timeout.total_seconds(),
                              bucket=TokenBucket(settings.rate_per_second, settings.rate_burst, clock=monotonic, sleep=sleep),
                              transport=transport)
    executor = Executor(client, audit, store, dry_run=dry_run, resend_after=settings.timeout,
                        settle_window=settings.settle_window, clock=clock, monotonic=monotonic)
    return Ticker(settings, rules, client, executor, store, audit, clock=clock, monotonic=monotonic)
