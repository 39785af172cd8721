"""Turn fire decisions into API calls, exactly once, and audit each call.

The one dry-run switch point is `Executor.sender_for`: a dry decision goes to `DrySender`, which
answers like the API without sending anything; everything else (intents, audit, state) is the same.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Protocol

from riskd import crosstrade
from riskd.audit import AuditTrail
from riskd.crosstrade import FLAT, OK, UNKNOWN, Reply, request_for
from riskd.engine import State, acknowledge
from riskd.model import Decision, Order, Snapshot
from riskd.state import Store, fingerprint, positions_by_instrument

# Orders that are safe to send again when their first outcome is unknown: a second flatten or
# cancel of something already flat is a no-op. A close is not (it would close a second slice).
IDEMPOTENT = frozenset({"flatten", "cancel_orders"})


class Sender(Protocol):
    def execute(self, order: Order) -> Reply: ...


class DrySender:
    """Answers every order with success and sends nothing."""

    def execute(self, order: Order) -> Reply:
        method, path, body = request_for(order)
        return Reply(method, path, body, None, 0.0, OK, response={"success": True, "dry_run": True})


class Executor:
    """Given a live sender, act on decisions: intent first, then the calls, then the outcome."""

    def __init__(self, live: Sender, audit: AuditTrail, store: Store, dry_run: bool = False):
        self.live = live
        self.dry = DrySender()
        self.audit = audit
        self.store = store
        self.dry_run = dry_run

    def sender_for(self, decision: Decision) -> Sender:
        return self.dry if (self.dry_run or decision.dry_run) else self.live

    def act(self, decision: Decision, snapshot: Snapshot, state: State, now: datetime) -> State:
        """Send the decision's orders; return the state (acknowledged when the firing counts)."""
        dry = self.dry_run or decision.dry_run
        seen = fingerprint(decision, positions_by_instrument(snapshot.account(decision.account)))
        self.store.begin(decision, seen, now)
        status = "done"
        sender = self.sender_for(decision)
        for order in decision.orders:
            reply = sender.execute(order)
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
        if status == "done":
            state = acknowledge(state, decision, now)
            self.store.finish(decision.key, "done", now, state)
        else:
            self.store.finish(decision.key, status, now)
        return state

    def resolve(self, snapshot: Snapshot, state: State, now: datetime) -> State:
        """Settle every intent whose outcome is unknown (timeout, crash) against a fresh snapshot:
        a changed position means the firing happened; an unchanged one may be retried."""
        open_keys: set[str] = set()
        for intent in self.store.open_intents():
            account = snapshot.account(intent.decision.account)
            if account is None:
                open_keys.add(intent.key)
                continue
            now_seen = fingerprint(intent.decision, positions_by_instrument(account))
            idempotent = all(o.kind in IDEMPOTENT for o in intent.decision.orders)
            if now_seen != intent.seen:
                state = acknowledge(state, intent.decision, now)
                self.store.finish(intent.key, "done", now, state)
                verdict = "done: the position changed since the request was sent"
            else:
                self.store.finish(intent.key, "failed", now)
                verdict = "not applied: the position is unchanged; the rule may act again" + (" (idempotent)" if idempotent else "")
            self.audit.emit("action_resolved", rule=intent.decision.rule, key=intent.key, account=intent.decision.account,
                            seen_before=intent.seen, seen_now=now_seen, previous_status=intent.status, verdict=verdict)
        return replace(state, inflight=frozenset(open_keys))
