"""Operator commands: what `riskd flatten|lock|unlock|pause|resume` ask for, and what each does.

Pure, like the engine: `parse` turns a request from the control socket (riskd.channel) into a
`Command`, and `apply` (command, state, rules, snapshot, now) returns the `Outcome`: the new engine
state for lock, unlock, pause and resume; for flatten, the fire decisions the tick then sends
through the executor, exactly like a rule's (same intents, same rate budget, same exactly-once).

- lock ACCOUNT: until `until` (default: the session end), every open position of the account is
  flattened, now and whenever one opens (engine `account_locks`).
- unlock ACCOUNT: lifts the operator's lock and every rule lock on the account, unless one of those
  rules says `lock: {undo: never}`: then nothing is lifted and the refusal names the rule.
- pause RULE: the rule is not evaluated until `until` (default: the session end); its lock holds.
- resume RULE: the pause ends now.
- flatten ACCOUNT [instrument] / flatten --all: one POST accounts/{account}/positions/flatten per
  account (never the empty-body flatten-everything), to accounts the snapshot shows.

A command is keyed by its id (chosen by the client, so asking again after a lost answer never acts
twice); its flatten firings are keyed `operator:ID|account`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from riskd.engine import OPERATOR_LOCK, EngineSettings, State
from riskd.errors import RiskdError
from riskd.keys import FiringKey, LockKey, TargetKey
from riskd.model import Decision, Order, Rule, Severity, Snapshot
from riskd.schedule import session_end

VERBS = ("flatten", "lock", "unlock", "pause", "resume")
# A command still queued this long after it was asked (riskd was down meanwhile) is not carried out.
COMMAND_TTL = timedelta(minutes=2)
ID = re.compile(r"^[0-9a-f]{8,32}$")
OPERATOR = "operator"


class ControlError(RiskdError):
    """A request on the control socket that cannot be a command (its message says why)."""


@dataclass(frozen=True, slots=True)
class Command:
    id: str
    verb: str
    reason: str
    user: str  # the Unix user the socket's peer credentials name
    uid: int
    asked_at: datetime
    account: str | None = None
    instrument: str | None = None
    rule: str | None = None
    until: datetime | None = None  # the end of a lock or pause (None: the session end)
    all: bool = False
    claimed_user: str | None = None  # $SUDO_USER or $LOGNAME as the client reported it (not verified)

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "verb": self.verb, "reason": self.reason, "user": self.user, "uid": self.uid,
                "asked_at": self.asked_at.isoformat(), "account": self.account, "instrument": self.instrument, "rule": self.rule,
                "until": self.until.isoformat() if self.until else None, "all": self.all, "claimed_user": self.claimed_user}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Command":
        return cls(data["id"], data["verb"], data["reason"], data["user"], data["uid"], datetime.fromisoformat(data["asked_at"]),
                   data.get("account"), data.get("instrument"), data.get("rule"),
                   datetime.fromisoformat(data["until"]) if data.get("until") else None, bool(data.get("all")),
                   data.get("claimed_user"))

    def describe(self) -> str:
        what = "--all" if self.all else (self.account or self.rule or "")
        if self.instrument:
            what += f" {self.instrument}"
        return f"{self.verb} {what}".strip()


@dataclass(frozen=True, slots=True)
class Outcome:
    """`status`: done, refused, or acting (a flatten: `decisions` to send); `message` for the operator."""

    status: str
    message: str
    state: State
    decisions: tuple[Decision, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)


def parse(raw: Any, *, user: str, uid: int, now: datetime) -> Command:
    """Given a decoded request and the peer's identity, return the command; raise ControlError."""
    if not isinstance(raw, dict):
        raise ControlError("a request is one JSON object")
    verb = raw.get("verb")
    if verb not in VERBS:
        raise ControlError(f"unknown command {verb!r}; the commands are: {', '.join(VERBS)}")
    cid = raw.get("id")
    if not isinstance(cid, str) or not ID.match(cid):
        raise ControlError("the request needs an id: 8 to 32 lower-case hex digits")
    reason = raw.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise ControlError(f"{verb} needs --reason: say why, for the audit trail")

    def text(key: str) -> str | None:
        value = raw.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ControlError(f"{key} must be a non-empty string")
        return value.strip() if isinstance(value, str) else None

    account, instrument, rule = text("account"), text("instrument"), text("rule")
    everything = raw.get("all") is True
    if verb in ("flatten", "lock", "unlock") and not account and not (verb == "flatten" and everything):
        raise ControlError(f"{verb} needs an ACCOUNT" + (" (or --all --yes)" if verb == "flatten" else ""))
    if everything and (account or verb != "flatten"):
        raise ControlError("--all is for flatten, without an ACCOUNT")
    if everything and raw.get("yes") is not True:
        raise ControlError("flatten --all flattens every account: add --yes to confirm")
    if instrument and verb != "flatten":
        raise ControlError("--instrument is for flatten")
    if verb in ("pause", "resume") and not rule:
        raise ControlError(f"{verb} needs a RULE")
    until = None
    if raw.get("until") is not None:
        try:
            until = datetime.fromisoformat(str(raw["until"]))
        except ValueError:
            raise ControlError(f"until: not an ISO time: {raw['until']!r}") from None
        if until.tzinfo is None:
            raise ControlError("until: give a time with its UTC offset")
        if until <= now:
            raise ControlError(f"until: {until.isoformat()} has passed")
        if verb not in ("lock", "pause"):
            raise ControlError("--for / --until are for lock and pause")
    claimed = raw.get("claimed_user") if isinstance(raw.get("claimed_user"), str) else None
    return Command(cid, verb, reason.strip(), user, uid, now, account, instrument, rule, until, everything, claimed)


def _accounts(snapshot: Snapshot) -> str:
    return ", ".join(a.name for a in snapshot.accounts) or "none"


def apply(command: Command, state: State, rules: list[Rule], snapshot: Snapshot, now: datetime,
          settings: EngineSettings) -> Outcome:
    """Given a command and what riskd knows at `now`, return what it does (see the module docstring)."""
    verb = command.verb
    end = (command.until or session_end(now, settings.zone, settings.session_start)).astimezone(timezone.utc)
    by_name = {r.name: r for r in rules}
    if verb in ("pause", "resume"):
        name = command.rule or ""
        if verb == "pause":
            if name not in by_name:
                return Outcome("refused", f"no rule {name!r} is loaded (rules: {', '.join(by_name) or 'none'})", state)
            return Outcome("done", f"rule {name} paused until {end.isoformat(timespec='seconds')}",
                           replace(state, paused={**state.paused, name: end.isoformat()}), details={"until": end.isoformat()})
        if name not in state.paused:
            return Outcome("refused", f"rule {name!r} is not paused", state)
        return Outcome("done", f"rule {name} resumed", replace(state, paused={k: v for k, v in state.paused.items() if k != name}))
    if command.all:
        targets = list(snapshot.accounts)
        if not targets:
            return Outcome("refused", "the snapshot shows no account to flatten", state)
    else:
        account = snapshot.account(command.account or "")
        if account is None:
            if verb == "unlock":
                name = (command.account or "").lower()
                return _unlock(command, state, rules, name, now)
            unreadable = " (its entry in the snapshot is unreadable)" if (command.account or "").lower() in snapshot.unknown else ""
            return Outcome("refused", f"account {command.account!r} is not in the snapshot{unreadable} "
                                      f"(accounts: {_accounts(snapshot)})", state)
        targets = [account]
    if verb == "lock":
        account = targets[0]
        name = account.name.lower()
        until = max(end.isoformat(), state.account_locks.get(name, ""))
        open_now = len(account.positions)
        return Outcome("done", f"account {account.name} locked until {until}"
                               + (f"; its {open_now} open position(s) are flattened now" if open_now else ""),
                       replace(state, account_locks={**state.account_locks, name: until}), details={"until": until})
    if verb == "unlock":
        return _unlock(command, state, rules, targets[0].name.lower(), now)
    decisions = []
    for account in targets:
        key = str(FiringKey(f"{OPERATOR}:{command.id}", TargetKey(account.name)))
        order = Order("flatten", account.name, command.instrument)
        decisions.append(Decision(
            kind="fire", rule=f"{OPERATOR}:{command.id}", key=key, account=account.name, instrument=command.instrument,
            action="flatten", severity=Severity.FLATTEN, orders=(order,),
            inputs={"command": command.id, "positions": [p.as_dict() for p in account.positions
                                                         if not command.instrument or p.instrument.upper() == command.instrument.upper()]},
            threshold={}, reason=f"{command.user}: {command.reason}"))
    return Outcome("acting", f"flattening {len(decisions)} account(s)", state, tuple(decisions))


def _unlock(command: Command, state: State, rules: list[Rule], name: str, now: datetime) -> Outcome:
    by_name = {r.name: r for r in rules}
    rule_locks = {k: v for k, v in state.locks.items() if LockKey.parse(k).account == name}
    for key, since in rule_locks.items():
        rule = by_name.get(LockKey.parse(key).rule)
        if rule is not None and rule.action.lock_undo == "never":
            return Outcome("refused", f"account {name} is locked by rule {rule.name} (since {since}), whose lock cannot be undone "
                                      "(lock: {undo: never}); it ends with the session", state, details={"locked_by": rule.name})
    if name not in state.account_locks and not rule_locks:
        return Outcome("refused", f"account {name} is not locked", state)
    lifted = ([OPERATOR_LOCK] if name in state.account_locks else []) + [LockKey.parse(k).rule for k in rule_locks]
    return Outcome("done", f"account {name} unlocked (lifted: {', '.join(lifted)})",
                   replace(state, account_locks={k: v for k, v in state.account_locks.items() if k != name},
                           locks={k: v for k, v in state.locks.items() if k not in rule_locks}),
                   details={"lifted": lifted})


def expired(command: Command, now: datetime) -> bool:
    """Was the command asked so long ago (riskd was down meanwhile) that it must not be carried out now?"""
    return now - command.asked_at > COMMAND_TTL
