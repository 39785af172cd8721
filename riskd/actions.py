"""Turn fire decisions into API calls, exactly once, and audit each call.

The one dry-run switch point is `Executor.sender_for`: a dry decision goes to `DrySender`, which
answers like the API without sending anything; everything else (intents, audit, state) is the same.

Exactly once, across timeouts and kill -9:

1. `send` writes an intent (the decision and the quantities it saw) BEFORE the first request, marks
   it `sent` right before each request leaves, and records the outcome after: done (the firing
   counts: `engine.acknowledge`), failed (not applied: the engine may fire again) or unknown.
2. An unknown outcome (timeout, 5xx, reset, unreadable answer, or a crash), and a refusal of a
   partial close that reached the bridge (408, `success: false`: the relay may have applied it all
   the same), is settled by `resolve` against the evidence: a changed position in a later snapshot
   means the request was applied (done, never sent again; a partial close is never repeated). An
   unchanged one means "not applied" only once the request can no longer land (`settle_window` after
   it was sent, for a partial close; the answer timeout for an order that is harmless to repeat) AND
   the account's executions since the request left show no fill of what it touched. Executions that
   cannot be read keep it in doubt. Until settled the firing, and every firing it covered, stays in
   `State.inflight`, so the engine does not fire it again.
3. While an intent is in doubt, no other partial close or reduction is sent for the same position
   (`gate`): its quantity is what tells whether the first one was applied.

Closes to different accounts are not queued behind one slow answer: `act_all` sends each account's
decisions in order in its own thread, at most SEND_CONCURRENCY accounts at once, all through the
client's one (thread-safe) rate bucket. The sending threads only write the intent, mark it sent and
audit the answers (the Store and the trail serialize their writes); the outcome (`Sent`) is folded
into the engine state, the in-doubt list and the back-off on the tick's thread (`fold`, `collect`).
A send still running at the tick's deadline goes on in its thread (with the account's decisions
queued behind it), its firing kept in `inflight` and its account gated, and is folded by a later tick.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Protocol

import structlog

from riskd import crosstrade, trail
from riskd.audit import AuditTrail
from riskd.crosstrade import OK, UNKNOWN, Reply, request_for
from riskd.engine import State, acknowledge
from riskd.model import Account, Decision, Order, Snapshot
from riskd.state import Intent, Store

# A fill this long before riskd's own send time still counts as evidence (the bridge's clock may lag riskd's).
EXECUTION_SKEW = timedelta(seconds=1)
# The executions endpoint keeps at most this much history.
EXECUTIONS_LOOKBACK_MAX_S = 900
# A rejected firing (a 4xx that is not a rate limit or a disconnected bridge) is tried again after
# this back-off, doubling per attempt up to the cap, so a refused order does not become a request per tick.
REJECTED_BACKOFF = timedelta(seconds=2)
REJECTED_BACKOFF_CAP = timedelta(seconds=60)
# At most this many accounts' closes are in flight at once (each waits for the one rate bucket).
SEND_CONCURRENCY = 4

log = structlog.get_logger("riskd")


class Sender(Protocol):
    def execute(self, order: Order, on_send: Callable[[], None] | None = None) -> Reply: ...

    def get_executions(self, account: str, lookback_s: int) -> Reply: ...


class DrySender:
    """Answers every order with success and sends nothing."""

    def execute(self, order: Order, on_send: Callable[[], None] | None = None) -> Reply:
        try:
            method, path, body = request_for(order)
        except ValueError as exc:
            return Reply("POST", order.kind, order.body(), None, 0.0, crosstrade.REFUSED, error=f"refused: {exc}")
        return Reply(method, path, body, None, 0.0, OK, response={"success": True, "dry_run": True})

    def get_executions(self, account: str, lookback_s: int) -> Reply:
        return Reply("GET", f"accounts/{account}/executions", None, None, 0.0, OK, response={"executions": []})


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _targets(decision: Decision) -> set[tuple[str, str | None]]:
    """(account, INSTRUMENT or None for the whole account) pairs the decision's position orders touch."""
    return {(o.account.lower(), o.instrument.upper() if o.instrument else None) for o in decision.orders if o.kind != "cancel_orders"}


def _overlaps(a: set[tuple[str, str | None]], b: set[tuple[str, str | None]]) -> bool:
    for account, instrument in a:
        for other_account, other_instrument in b:
            if account == other_account and (instrument is None or other_instrument is None or instrument == other_instrument):
                return True
    return False


def fingerprint(decision: Decision, positions: dict[str, int]) -> dict[str, int]:
    """Given a decision and {INSTRUMENT: quantity} of its account, return the quantities its orders touch."""
    if any(o.instrument is None for o in decision.orders):
        return dict(positions)
    touched = {o.instrument.upper() for o in decision.orders if o.instrument}
    return {inst: positions.get(inst, 0) for inst in sorted(touched)}


def positions_by_instrument(snapshot_account: Account | None) -> dict[str, int]:
    if snapshot_account is None:
        return {}
    return {p.instrument.upper(): p.quantity for p in snapshot_account.positions}


def repeatable(order: Order) -> bool:
    """Is sending `order` a second time harmless? (flatten, cancel, a close of the whole position)"""
    return order.repeatable


def is_idempotent(decision: Decision) -> bool:
    return all(repeatable(o) for o in decision.orders)


def fills_since(executions: Any, account: str, closing: dict[str, str], whole_account: bool,
                since: datetime) -> list[dict[str, Any]] | None:
    """Given an executions answer, the fills of `account` at or after `since` (less EXECUTION_SKEW)
    that reduce a position: `closing` maps INSTRUMENT to the fill direction that reduces it ("Short"
    for a long position); `whole_account`: any instrument. A fill the other way (the trader adding)
    is not evidence. None when the answer is not the documented shape (no evidence)."""
    rows = executions.get("executions") if isinstance(executions, dict) else executions
    if not isinstance(rows, list):
        return None
    floor_ms = (since - EXECUTION_SKEW).timestamp() * 1000
    found = []
    for row in rows:
        if not isinstance(row, dict):
            return None
        epoch, name, inst = row.get("epoch"), row.get("account"), row.get("instrument")
        if isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or not isinstance(name, str) or not isinstance(inst, str):
            return None
        if name.lower() != account.lower() or epoch < floor_ms or (inst.upper() not in closing and not whole_account):
            continue
        direction = row.get("marketPosition")
        reduces = closing.get(inst.upper())
        if reduces is None or not isinstance(direction, str) or direction.lower() == reduces.lower():
            found.append(row)  # an unreadable direction counts: sending a close twice is the worse mistake
    return found


def settled_as_applied(intent_decision: Decision, seen: dict[str, int], now_seen: dict[str, int]) -> bool:
    """Given what an intent saw and what the snapshot shows now, was the firing applied?

    A close (not idempotent) counts as applied when any quantity it touches changed: it must never
    be sent twice. A flatten counts only when every position it touches changed; otherwise it is
    sent again (harmless: flattening what is already flat does nothing)."""
    changed = {inst for inst in set(seen) | set(now_seen) if seen.get(inst, 0) != now_seen.get(inst, 0)}
    if not is_idempotent(intent_decision):
        return bool(changed)
    open_before = {inst for inst, qty in seen.items() if qty}
    return bool(open_before) and open_before <= changed


@dataclass(frozen=True, slots=True)
class Sent:
    """What sending one decision came to (`Executor.send`), to be folded into the state (`Executor.fold`).

    `status`: done | failed | unknown | refused (a refusal that may have landed); `sent`: when each
    request left; `unavailable`: why the API could not take it (then no other action starts this tick)."""

    decision: Decision
    seen: dict[str, int]
    now: datetime
    status: str
    last: Reply | None
    sent: tuple[datetime, ...]
    finished: datetime
    unavailable: str | None


@dataclass
class _Sends:
    """One account's decisions of one tick, sent in order by one thread."""

    decisions: list[Decision]
    outcomes: list[Sent] = field(default_factory=list)
    skipped: list[tuple[Decision, str]] = field(default_factory=list)
    thread: threading.Thread | None = None


class _Batch:
    """What the send threads of one tick share: whether a decision may still start."""

    def __init__(self, stopping: threading.Event):
        self.stopping = stopping
        self._lock = threading.Lock()
        self._refused: str | None = None

    def refuse(self, why: str) -> None:
        with self._lock:
            self._refused = self._refused or why

    def why_not(self) -> str | None:
        if self.stopping.is_set():
            return "riskd is stopping; the rule is evaluated again at start"
        with self._lock:
            refused = self._refused
        if refused:  # the bridge is down or the budget spent: one probe per account and tick, not a volley
            return f"the API refused the previous action ({refused}); next tick"
        return None


class Executor:
    """Given a live sender, act on decisions: intent first, then the calls, then the outcome.

    `resend_after`: how long after riskd gave up on an answer an order that is harmless to repeat
    (flatten, close-all) is settled against the position alone (riskd uses the client timeout).
    `settle_window`: how long after a partial close was sent it may still land (the relay's worst
    case; the `settle_window` setting). `clock`: the time of sends and outcomes. `concurrency`: how
    many accounts' closes may be in flight at once (`act_all`). `stopping`, once set, starts no other send.
    """

    def __init__(self, live: crosstrade.CrossTradeClient | Sender, audit: AuditTrail, store: Store, dry_run: bool = False, *,
                 resend_after: timedelta = timedelta(seconds=5), settle_window: timedelta = timedelta(seconds=30),
                 clock: Callable[[], datetime] = _utc_now, concurrency: int = SEND_CONCURRENCY,
                 stopping: threading.Event | None = None, monotonic: Callable[[], float] = time.monotonic):
        self.live = live
        self.dry = DrySender()
        self.audit = audit
        self.store = store
        self.dry_run = dry_run
        self.resend_after = resend_after
        self.settle_window = max(settle_window, resend_after)
        self.clock = clock
        self.monotonic = monotonic  # back-offs and settle times of this process run on it: a wall-clock step moves neither
        self._settle_mono: dict[str, float] = {}  # in-doubt key -> monotonic time from which it may be settled "not applied"
        self._in_doubt: list[Intent] = []
        self._retry_at: dict[str, tuple[float, int]] = {}  # key -> (not before, monotonic; rejected attempts)
        self._no_evidence: set[str] = set()  # intents whose executions could not be read (audited once)
        # why the last action did not get through (408, 429, 5xx, timeout, refused, no budget): no
        # other action starts on that tick, so a sick API gets one probe per account and tick
        self.unavailable: str | None = None
        self.stopping = stopping or getattr(live, "stopping", None) or threading.Event()
        self._slots = threading.BoundedSemaphore(max(1, concurrency))
        self._sending: list[_Sends] = []  # send groups started and not yet folded (`collect`)
        self._acting: list[str] = []
        self._acting_lock = threading.Lock()

    def is_dry(self, decision: Decision) -> bool:
        """The one dry-run switch: a daemon-wide --dry-run, or the rule's own `dry_run: true`."""
        return self.dry_run or decision.dry_run

    def sender_for(self, decision: Decision) -> Sender:
        return self.dry if self.is_dry(decision) else self.live  # type: ignore[return-value]

    # -- before acting -------------------------------------------------------------------------

    def gate(self, decision: Decision, now: datetime) -> str | None:
        """Return why the decision must wait (and not be sent on this tick), or None to act now."""
        for sends in self._sending:
            if sends.thread is not None and sends.thread.is_alive() and sends.decisions[0].account.lower() == decision.account.lower():
                return f"waiting for the actions still in flight to {sends.decisions[0].account}"
        retry = self._retry_at.get(decision.key)
        left = retry[0] - self.monotonic() if retry is not None else 0.0
        if retry is not None and left > 0:
            return f"rejected {retry[1]} time(s); next attempt at {(now + timedelta(seconds=left)).isoformat(timespec='seconds')}"
        if not is_idempotent(decision):
            mine = _targets(decision)
            for intent in self._in_doubt:
                if intent.key != decision.key and _overlaps(mine, _targets(intent.decision)):
                    return f"waiting for the outcome of {intent.key} on the same position"
        return None

    # -- acting --------------------------------------------------------------------------------

    def act(self, decision: Decision, snapshot: Snapshot, state: State, now: datetime) -> State:
        """Send the decision's orders; return the state (acknowledged when the firing counts)."""
        return self.fold(self.send(decision, snapshot, now), state)

    def act_all(self, decisions: list[Decision], snapshot: Snapshot, state: State, now: datetime, *, wait_s: float,
                on_start: Callable[[Decision], None] = lambda d: None) -> tuple[State, list[tuple[Decision, str]]]:
        """Send the decisions (each passed `gate`) with bounded concurrency; return the state folded with
        every outcome that came back within `wait_s` seconds, and the decisions not sent with why.

        Decisions for one account go out one after another, in order (a later one waits for the
        earlier one's outcome); different accounts go out side by side, at most `concurrency` at a
        time, all inside the client's one rate bucket. A send still running after `wait_s` (the
        tick's deadline) goes on in its thread, and so do the account's decisions queued behind it (a
        close is never put off to the next tick); their firings stay in `inflight`, their account is
        gated, and their outcomes are folded by `collect` on a later tick. `on_start` runs in the sending thread right before a
        decision's intent is written."""
        batch = _Batch(self.stopping)
        groups: dict[str, list[Decision]] = {}
        for d in decisions:
            groups.setdefault(d.account.lower(), []).append(d)
        for group in groups.values():
            sends = _Sends(group)
            thread = threading.Thread(target=self._send_group, args=(sends, batch, snapshot, now, on_start),
                                      name=f"riskd-send-{group[0].account}", daemon=True)
            sends.thread = thread
            self._sending.append(sends)
            thread.start()
        deadline = time.monotonic() + max(0.0, wait_s)
        for sends in list(self._sending):
            if sends.thread is not None:
                sends.thread.join(max(0.0, deadline - time.monotonic()))
        state, skipped = self.collect(state)
        return state, skipped

    def collect(self, state: State) -> tuple[State, list[tuple[Decision, str]]]:
        """Fold the outcomes of every send group that has finished (in the order they were started);
        return the state and the decisions those groups did not send, with why. The firings of groups
        still sending stay in `inflight`."""
        skipped: list[tuple[Decision, str]] = []
        running: list[_Sends] = []
        for sends in self._sending:
            if sends.thread is not None and sends.thread.is_alive():
                running.append(sends)
                continue
            for outcome in sends.outcomes:
                state = self.fold(outcome, state)
            skipped.extend(sends.skipped)
        self._sending = running
        busy = frozenset(k for sends in running for d in sends.decisions for k in (d.key, *d.covers))
        return replace(state, inflight=state.inflight | busy), skipped

    def _send_group(self, sends: _Sends, batch: _Batch, snapshot: Snapshot, now: datetime,
                    on_start: Callable[[Decision], None]) -> None:
        with self._slots:  # at most `concurrency` accounts at a time
            doubt: str | None = None
            for d in sends.decisions:
                why = batch.why_not()
                if why is None and doubt is not None:
                    why = f"waiting for the outcome of {doubt} on the same account"
                if why is not None:
                    sends.skipped.append((d, why))
                    continue
                try:
                    on_start(d)
                    outcome = self.send(d, snapshot, now)
                except Exception as exc:  # noqa: BLE001 - a bug in one send must not lose the others' outcomes
                    sends.skipped.append((d, f"the send failed: {exc.__class__.__name__}: {exc}"))
                    continue
                sends.outcomes.append(outcome)
                if outcome.unavailable:
                    batch.refuse(outcome.unavailable)
                if outcome.status != "done" and outcome.status != "failed":
                    doubt = d.key

    def send(self, decision: Decision, snapshot: Snapshot, now: datetime) -> Sent:
        """Write the intent, send the decision's orders, audit each answer; return the outcome for `fold`.
        Safe to run in several threads at once (the store and the trail serialize their writes)."""
        with self._acting_lock:
            self._acting.append(decision.key)
        try:
            return self._send(decision, snapshot, now)
        finally:
            with self._acting_lock:
                self._acting.remove(decision.key)

    def _send(self, decision: Decision, snapshot: Snapshot, now: datetime) -> Sent:
        dry = self.is_dry(decision)
        seen = fingerprint(decision, positions_by_instrument(snapshot.account(decision.account)))
        self.store.begin(decision, seen, now)
        status = "done"
        last: Reply | None = None
        sender = self.sender_for(decision)

        sent: list[datetime] = []

        def on_send() -> None:
            sent.append(self.clock())
            self.store.mark_sent(decision.key, sent[-1])

        for order in decision.orders:
            try:
                reply = sender.execute(order, on_send=on_send)
            except Exception as exc:  # a bug or an unexpected library error: the request may have left
                reply = Reply("POST", order.kind, order.body(), None, 0.0, UNKNOWN, error=f"{exc.__class__.__name__}: {exc}")
            last = reply
            line = self.audit.emit(
                "action",
                rule=decision.rule,
                key=decision.key,
                account=order.account,
                instrument=order.instrument,
                request=reply.request(),
                status=reply.status,
                latency_ms=reply.latency_ms,
                ok=reply.ok,
                outcome=reply.outcome,
                response=reply.response,
                error=reply.error,
                dry_run=dry,
                **({"earlier_attempts": list(reply.earlier)} if reply.earlier else {}),
            )
            (log.info if reply.ok else log.warning)("action", rule=decision.rule, account=order.account, instrument=order.instrument,
                                                    result=trail.outcome(line or {"request": reply.request(), "ok": reply.ok,
                                                                                  "dry_run": dry, "outcome": reply.outcome}))
            if reply.ok:
                continue
            if order.kind == "cancel_orders":
                continue  # the close it follows counted; the failure is in the trail
            status = "unknown" if reply.outcome == UNKNOWN else "failed"
            if reply.outcome == crosstrade.AUTH:
                self.audit.emit("api_error", path=reply.path, status=reply.status, error=reply.error,
                                retry="none: the token was refused; fix the credential and restart")
            break
        if status == "failed" and sent and last is not None and self._may_have_landed(decision, last):
            status = "refused"  # the bridge saw it and said no: verify against the evidence before sending again
        unavailable = None
        if last is not None and status != "done" and (last.outcome == UNKNOWN or last.transient):
            unavailable = f"{last.status or last.outcome}: {last.error}"
        return Sent(decision, seen, now, status, last, tuple(sent), self.clock(), unavailable)

    def fold(self, outcome: Sent, state: State) -> State:
        """Given a send's outcome, record it (done, failed, or in doubt) and return the state that counts it.
        Runs on the tick's thread only (it owns the in-doubt list and the back-off)."""
        decision, now, status, last = outcome.decision, outcome.now, outcome.status, outcome.last
        sent, finished = outcome.sent, outcome.finished
        result = last.outcome if last is not None else None
        self.unavailable = outcome.unavailable
        if last is not None and status in ("failed", "refused") and not last.transient:
            _, attempts = self._retry_at.get(decision.key, (0.0, 0))
            delay = min(REJECTED_BACKOFF * 2 ** attempts, REJECTED_BACKOFF_CAP)
            self._retry_at[decision.key] = (self.monotonic() + delay.total_seconds(), attempts + 1)
        if status == "done":
            self._retry_at.pop(decision.key, None)
            state = acknowledge(state, decision, now)
            self.store.finish(decision.key, "done", finished, state, outcome=result)
        elif status in ("unknown", "refused"):
            settle_at = finished if status == "refused" else self._settle_at(decision, sent[-1] if sent else finished, finished)
            self.store.finish(decision.key, "unknown", finished, settle_at=settle_at, outcome=result)
            self._settle_mono[decision.key] = self.monotonic() + (settle_at - finished).total_seconds()
            self._in_doubt.append(Intent(decision.key, decision, outcome.seen, "unknown", now, sent[-1] if sent else None,
                                         settle_at, result))
            state = replace(state, inflight=state.inflight | {decision.key, *decision.covers})
        else:
            self.store.finish(decision.key, "failed", finished, outcome=result)
        return state

    def wait_sends(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the send threads still running."""
        deadline = time.monotonic() + timeout
        for sends in list(self._sending):
            if sends.thread is not None:
                sends.thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def acting(self) -> list[str]:
        """The keys of the firings being sent right now (their intents are in the store, `sending`): what a
        stop reports as in doubt (settled by `resolve` at the next start)."""
        with self._acting_lock:
            return list(self._acting)

    def _may_have_landed(self, decision: Decision, reply: Reply) -> bool:
        """A refused order that reached the bridge may have been applied all the same: a 408 (NinjaTrader
        disconnected) or a 2xx `success: false` come from the relay, which may have passed it on. A 429
        or another 4xx is CrossTrade's own refusal, before anything was relayed. Settled against the
        next snapshot: a partial close is then never repeated; a flatten or close-all whose position
        changed counts as done (the firing is acknowledged), one whose position did not is sent again."""
        return (reply.outcome == crosstrade.REJECTED
                and (reply.status == 408 or reply.status is not None and 200 <= reply.status < 300))

    def _settle_at(self, decision: Decision, sent: datetime, finished: datetime) -> datetime:
        """From when an unchanged position (and no fill) means "not applied"."""
        if is_idempotent(decision):
            return finished + self.resend_after  # sending it again is harmless
        return sent + self.settle_window

    # -- settling unknown outcomes -------------------------------------------------------------

    def resolve(self, snapshot: Snapshot, state: State, now: datetime) -> State:
        """Settle every intent whose outcome is unknown (timeout, crash, a refusal that may have
        landed) against the evidence: a later snapshot, then the account's executions.

        A changed position means the firing happened (done, acknowledged). An unchanged one means
        it did not once the request can no longer land (`settle_at`) and, for an order that must not
        be repeated, the executions since it was sent show no fill of what it touched; the firing
        may then act again. Until then it stays in doubt: its key and the keys it covers go to `inflight`."""
        in_doubt: list[Intent] = []
        executions: dict[str, Reply] = {}  # one read per account per tick
        busy = {k for sends in self._sending for d in sends.decisions for k in (d.key, *d.covers)}
        for intent in self.store.open_intents():
            if intent.key in busy:
                continue  # still being sent (past a tick's deadline): `collect` folds its outcome
            account = snapshot.account(intent.decision.account)
            if account is None:
                in_doubt.append(intent)
                continue
            now_seen = fingerprint(intent.decision, positions_by_instrument(account))
            settle_at = intent.settle_at if intent.settle_at is not None else self._settle_after_crash(intent)
            evidence: dict[str, Any] = {}
            if settled_as_applied(intent.decision, intent.seen, now_seen):
                verdict = "done: the position changed since the request was sent"
            elif (now < settle_at if intent.key not in self._settle_mono else self.monotonic() < self._settle_mono[intent.key]):
                in_doubt.append(intent)  # may still land (on the monotonic clock for this process's own intents)
                continue
            elif intent.sent is None or is_idempotent(intent.decision):
                verdict = "not applied: the position is unchanged; the rule may act again"
            else:
                fills = self._fills(intent, account, executions, now)
                if fills is None:
                    in_doubt.append(intent)
                    continue
                evidence = {"fills": fills}
                verdict = ("done: the executions show a fill since the request was sent" if fills else
                           "not applied: the position is unchanged and no fill since the request was sent; the rule may act again")
            self._no_evidence.discard(intent.key)
            if verdict.startswith("done"):
                state = acknowledge(state, intent.decision, now)
                self.store.finish(intent.key, "done", now, state)
                self._retry_at.pop(intent.key, None)
            else:
                self.store.finish(intent.key, "failed", now)
            self.audit.emit("action_resolved", rule=intent.decision.rule, key=intent.key, account=intent.decision.account,
                            seen_before=intent.seen, seen_now=now_seen, previous_status=intent.status,
                            previous_outcome=intent.outcome, verdict=verdict, **evidence)
        self._in_doubt = in_doubt
        self._settle_mono = {i.key: self._settle_mono[i.key] for i in in_doubt if i.key in self._settle_mono}
        mono = self.monotonic()
        self._retry_at = {k: v for k, v in self._retry_at.items()
                          if mono - v[0] < REJECTED_BACKOFF_CAP.total_seconds()}  # targets long gone
        inflight = frozenset(k for intent in in_doubt for k in (intent.key, *intent.decision.covers)) | busy
        return replace(state, inflight=inflight)

    def _fills(self, intent: Intent, seen: Account, cache: dict[str, Reply], now: datetime) -> list[dict[str, Any]] | None:
        """The fills since `intent` was sent, from the account's executions; None when they cannot be read."""
        assert intent.sent is not None
        account = intent.decision.account
        reply = cache.get(account.lower())
        if reply is None:
            lookback = min(EXECUTIONS_LOOKBACK_MAX_S, max(60, int((now - intent.sent + EXECUTION_SKEW).total_seconds()) + 30))
            try:
                reply = self.sender_for(intent.decision).get_executions(account, lookback)
            except Exception as exc:  # evidence that cannot be read is no evidence: stay in doubt
                reply = Reply("GET", f"accounts/{account}/executions", None, None, 0.0, UNKNOWN, error=f"{exc.__class__.__name__}: {exc}")
            cache[account.lower()] = reply
        whole = any(o.instrument is None for o in intent.decision.orders)
        touched = {o.instrument.upper() for o in intent.decision.orders if o.instrument}
        closing = {p.instrument.upper(): "Short" if p.side.lower() == "long" else "Long"
                   for p in seen.positions if whole or p.instrument.upper() in touched}
        fills = fills_since(reply.response, account, closing, whole, intent.sent) if reply.outcome == OK else None
        if fills is None and intent.key not in self._no_evidence:
            self._no_evidence.add(intent.key)
            self.audit.emit("deferred", rule=intent.decision.rule, key=intent.key, account=account, instrument=intent.decision.instrument,
                            action=intent.decision.action,
                            reason=f"in doubt: the executions cannot be read ({reply.status or reply.outcome}: "
                            f"{reply.error or 'not the documented shape'}); not sent again until they can")
        return fills

    def _settle_after_crash(self, intent: Intent) -> datetime:
        if intent.sent is None:
            return intent.created  # crashed before any request left: nothing can land
        return self._settle_at(intent.decision, intent.sent, intent.sent + self.resend_after)

    @property
    def in_doubt(self) -> list[Intent]:
        return list(self._in_doubt)
