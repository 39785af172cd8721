"""Turn fire decisions into API calls, exactly once, and audit each call.

The one dry-run switch point is `Executor.sender_for`: a dry decision goes to `DrySender`, which
answers like the API without sending anything; everything else (intents, audit, state) is the same.

Exactly once, across timeouts and kill -9:

1. `act` writes an intent (the decision and the quantities it saw) BEFORE the first request, marks
   it `sent` right before each request leaves, and records the outcome after: done (the firing
   counts: `engine.acknowledge`), failed (not applied: the engine may fire again) or unknown.
2. An unknown outcome (timeout, 5xx, reset, unreadable answer, or a crash) is settled by `resolve`
   against the next snapshot: a changed position means the request was applied (done, never sent
   again; a partial close is never repeated). An unchanged one means "not applied" only once the
   request can no longer land (`settle` after the answer was given up on); until then the firing,
   and every firing it covered, stays in `State.inflight`, so the engine does not fire it again.
3. While an intent is in doubt, no other partial close or reduction is sent for the same position
   (`gate`): its quantity is what tells whether the first one was applied.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Callable, Protocol

from riskd import crosstrade
from riskd.audit import AuditTrail
from riskd.crosstrade import OK, UNKNOWN, Reply, request_for
from riskd.engine import State, acknowledge
from riskd.model import Decision, Order, Snapshot
from riskd.state import Intent, Store, fingerprint, positions_by_instrument

# Orders that are safe to send again once their first outcome is settled as "not applied": a second
# flatten or cancel of something already flat is a no-op. A close is not (it would close a second slice).
IDEMPOTENT = frozenset({"flatten", "cancel_orders"})
# A rejected firing (a 4xx that is not a rate limit or a disconnected bridge) is tried again after
# this back-off, doubling per attempt up to the cap, so a refused order does not become a request per tick.
REJECTED_BACKOFF = timedelta(seconds=2)
REJECTED_BACKOFF_CAP = timedelta(seconds=60)


class Sender(Protocol):
    def execute(self, order: Order, on_send: Callable[[], None] | None = None) -> Reply: ...


class DrySender:
    """Answers every order with success and sends nothing."""

    def execute(self, order: Order, on_send: Callable[[], None] | None = None) -> Reply:
        try:
            method, path, body = request_for(order)
        except ValueError as exc:
            return Reply("POST", order.kind, order.body(), None, 0.0, crosstrade.REFUSED, error=f"refused: {exc}")
        return Reply(method, path, body, None, 0.0, OK, response={"success": True, "dry_run": True})


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


def is_idempotent(decision: Decision) -> bool:
    return all(o.kind in IDEMPOTENT for o in decision.orders)


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


class Executor:
    """Given a live sender, act on decisions: intent first, then the calls, then the outcome.

    `settle`: how long after riskd gave up waiting for an answer the request may still be applied
    (the relay's worst case; riskd uses the client timeout). `clock`: the time of sends and outcomes.
    """

    def __init__(self, live: crosstrade.CrossTradeClient | Sender, audit: AuditTrail, store: Store, dry_run: bool = False, *,
                 settle: timedelta = timedelta(seconds=5), clock: Callable[[], datetime] = _utc_now):
        self.live = live
        self.dry = DrySender()
        self.audit = audit
        self.store = store
        self.dry_run = dry_run
        self.settle = settle
        self.clock = clock
        self._in_doubt: list[Intent] = []
        self._retry_at: dict[str, tuple[datetime, int]] = {}  # key -> (not before, rejected attempts)
        # why the last action did not get through (408, 429, 5xx, timeout, refused, no budget): the
        # ticker then sends no other action on that tick, so a sick API gets one probe per tick
        self.unavailable: str | None = None
        # the key of the firing being acted on right now (its intent is in the store, `sending`), else None:
        # what a stop that abandons a stuck tick reports as in doubt (settled by `resolve` at the next start)
        self.acting: str | None = None

    def is_dry(self, decision: Decision) -> bool:
        """The one dry-run switch: a daemon-wide --dry-run, or the rule's own `dry_run: true`."""
        return self.dry_run or decision.dry_run

    def sender_for(self, decision: Decision) -> Sender:
        return self.dry if self.is_dry(decision) else self.live  # type: ignore[return-value]

    # -- before acting -------------------------------------------------------------------------

    def gate(self, decision: Decision, now: datetime) -> str | None:
        """Return why the decision must wait (and not be sent on this tick), or None to act now."""
        retry = self._retry_at.get(decision.key)
        if retry is not None and now < retry[0]:
            return f"rejected {retry[1]} time(s); next attempt at {retry[0].isoformat(timespec='seconds')}"
        if not is_idempotent(decision):
            mine = _targets(decision)
            for intent in self._in_doubt:
                if intent.key != decision.key and _overlaps(mine, _targets(intent.decision)):
                    return f"waiting for the outcome of {intent.key} on the same position"
        return None

    # -- acting --------------------------------------------------------------------------------

    def act(self, decision: Decision, snapshot: Snapshot, state: State, now: datetime) -> State:
        """Send the decision's orders; return the state (acknowledged when the firing counts)."""
        self.acting = decision.key
        try:
            return self._act(decision, snapshot, state, now)
        finally:
            self.acting = None

    def _act(self, decision: Decision, snapshot: Snapshot, state: State, now: datetime) -> State:
        dry = self.is_dry(decision)
        seen = fingerprint(decision, positions_by_instrument(snapshot.account(decision.account)))
        self.store.begin(decision, seen, now)
        status = "done"
        last: Reply | None = None
        sender = self.sender_for(decision)

        def on_send() -> None:
            self.store.mark_sent(decision.key, self.clock())

        for order in decision.orders:
            try:
                reply = sender.execute(order, on_send=on_send)
            except Exception as exc:  # a bug or an unexpected library error: the request may have left
                reply = Reply("POST", order.kind, order.body(), None, 0.0, UNKNOWN, error=f"{exc.__class__.__name__}: {exc}")
            last = reply
            self.audit.emit(
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
            if reply.ok:
                continue
            if order.kind == "cancel_orders":
                continue  # the close it follows counted; the failure is in the trail
            status = "unknown" if reply.outcome == UNKNOWN else "failed"
            if reply.outcome == crosstrade.AUTH:
                self.audit.emit("api_error", path=reply.path, status=reply.status, error=reply.error,
                                retry="none: the token was refused; fix the credential and restart")
            break
        finished = self.clock()
        outcome = last.outcome if last is not None else None
        self.unavailable = None
        if last is not None and (status == "unknown" or (status == "failed" and last.transient)):
            self.unavailable = f"{last.status or last.outcome}: {last.error}"
        if status == "done":
            self._retry_at.pop(decision.key, None)
            state = acknowledge(state, decision, now)
            self.store.finish(decision.key, "done", finished, state, outcome=outcome)
        elif status == "unknown":
            self.store.finish(decision.key, "unknown", finished, settle_at=finished + self.settle, outcome=outcome)
            intent = Intent(decision.key, decision, seen, "unknown", now, finished, finished + self.settle, outcome)
            self._in_doubt.append(intent)
            state = replace(state, inflight=state.inflight | {decision.key, *decision.covers})
        else:
            if last is not None and not last.transient:
                _, attempts = self._retry_at.get(decision.key, (now, 0))
                delay = min(REJECTED_BACKOFF * 2 ** attempts, REJECTED_BACKOFF_CAP)
                self._retry_at[decision.key] = (now + delay, attempts + 1)
            self.store.finish(decision.key, "failed", finished, outcome=outcome)
        return state

    # -- settling unknown outcomes -------------------------------------------------------------

    def resolve(self, snapshot: Snapshot, state: State, now: datetime) -> State:
        """Settle every intent whose outcome is unknown (timeout, crash) against a fresh snapshot.

        A changed position means the firing happened (done, acknowledged). An unchanged one means
        it did not, once the request can no longer land (`settle_at`); the firing may then act
        again. Until then it stays in doubt: its key and the keys it covers go to `inflight`."""
        in_doubt: list[Intent] = []
        for intent in self.store.open_intents():
            account = snapshot.account(intent.decision.account)
            if account is None:
                in_doubt.append(intent)
                continue
            now_seen = fingerprint(intent.decision, positions_by_instrument(account))
            settle_at = self._settle_at(intent)
            if settled_as_applied(intent.decision, intent.seen, now_seen):
                state = acknowledge(state, intent.decision, now)
                self.store.finish(intent.key, "done", now, state)
                self._retry_at.pop(intent.key, None)
                verdict = "done: the position changed since the request was sent"
            elif now >= settle_at:
                self.store.finish(intent.key, "failed", now)
                verdict = "not applied: the position is unchanged; the rule may act again"
            else:
                in_doubt.append(intent)
                continue
            self.audit.emit("action_resolved", rule=intent.decision.rule, key=intent.key, account=intent.decision.account,
                            seen_before=intent.seen, seen_now=now_seen, previous_status=intent.status,
                            previous_outcome=intent.outcome, verdict=verdict)
        self._in_doubt = in_doubt
        self._retry_at = {k: v for k, v in self._retry_at.items() if now - v[0] < REJECTED_BACKOFF_CAP}  # targets long gone
        inflight = frozenset(k for intent in in_doubt for k in (intent.key, *intent.decision.covers))
        return replace(state, inflight=inflight)

    def _settle_at(self, intent: Intent) -> datetime:
        if intent.settle_at is not None:
            return intent.settle_at
        if intent.sent is None:
            return intent.created  # crashed before any request left: nothing can land
        return intent.sent + self.settle + self.settle  # crashed waiting: the answer was due by sent + timeout

    @property
    def in_doubt(self) -> list[Intent]:
        return list(self._in_doubt)
