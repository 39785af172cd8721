"""The audit trail's events: one definition each, imported by every writer and every reader.

An event has a name (the line's `event`), the fields every line of it carries, whether it is
fsync'd under `audit_fsync: actions` (`durable`), and whether it may be dropped when the trail's
in-memory backlog is over its limit (`droppable`: samples only). Writers build lines
with the event (`audit.emit(events.FIRED, ...)`); readers test and read lines through it
(`events.FIRED.of(line)`, `events.FIRED.get(line, "inputs.account_pnl")`), so renaming a field is
one edit here that the tests of every reader then catch. The README's event table is checked
against this catalogue by a test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Event:
    name: str
    written: str  # when it is written (the README table's second column)
    fields: tuple[str, ...]  # the fields every line carries; dotted paths reach into a mapping
    durable: bool = False
    droppable: bool = False

    def __str__(self) -> str:
        return self.name

    def of(self, line: dict[str, Any]) -> bool:
        return line.get("event") == self.name

    def get(self, line: dict[str, Any], path: str, default: Any = None) -> Any:
        """A field of a line of this event; only a declared field may be read (a typo fails in tests)."""
        if path not in self.fields and path.split(".", 1)[0] not in self.fields:
            raise KeyError(f"event {self.name!r} declares no field {path!r}")
        value: Any = line
        for part in path.split("."):
            if not isinstance(value, dict) or part not in value:
                return default
            value = value[part]
        return value

    def missing(self, line: dict[str, Any]) -> list[str]:
        """The declared fields a line lacks (a writer's bug)."""
        out = []
        for path in self.fields:
            value: Any = line
            for part in path.split("."):
                if not isinstance(value, dict) or part not in value:
                    out.append(path)
                    break
                value = value[part]
        return out


_DECISION = ("rule", "key", "account", "instrument", "action", "reason")

STARTED = Event("started", "riskd starts", ("version", "config", "pid", "dry_run", "base_url", "poll_interval_s", "timezone"), durable=True)
STOPPED = Event("stopped", "riskd stops", ("reason", "pid", "ticks", "firings", "in_doubt", "abandoned_tick"), durable=True)
RULES_LOADED = Event("rules_loaded", "start and every reload that took", ("source", "files", "rule_count", "reason"), durable=True)
RULES_REJECTED = Event("rules_rejected", "a reload refused (the old rules stay)", ("source", "errors", "kept_rules"), durable=True)
SAMPLE = Event("sample", "once a minute per account (by the tick's clock) and at every firing",
               ("account", "session", "reason", "pnl", "realized", "unrealized", "commission", "net_liquidation", "positions"),
               droppable=True)
SAMPLES = Event("samples", "once a minute (by the tick's clock): every account not sampled yet that minute, its figures only "
                "where they changed (riskd.samples)", ("session", "pid", "full", "accounts"), droppable=True)
FIRED = Event("fired", "a rule decided to act",
              (*_DECISION, "session", "inputs", "inputs.account_pnl", "threshold", "local_time", "orders", "covers", "dry_run"),
              durable=True)
ACTION = Event("action", "one API call of a firing", ("rule", "key", "account", "request", "status", "latency_ms", "ok", "outcome"),
               durable=True)
ACTION_RESOLVED = Event("action_resolved", "an unknown outcome settled against the evidence since",
                        ("rule", "key", "account", "seen_before", "seen_now", "verdict"), durable=True)
SUPERSEDED = Event("superseded", "a firing covered by a more severe one on the same target", _DECISION, durable=True)
SKIPPED = Event("skipped", "a timed occurrence with nothing to do", _DECISION)
MISSED = Event("missed", "a timed occurrence (or one of its accounts) passed beyond misfire_grace", _DECISION, durable=True)
RULE_FAILED = Event("rule_failed", "a rule raised while evaluated (the others still act)", _DECISION, durable=True)
LOCK_ENDED = Event("lock_ended", "a lock reached its end: the session's, the week's or its duration (positions may open again)",
                   _DECISION, durable=True)
DEFERRED = Event("deferred", "a firing held back this tick (an action in doubt on the same position, a back-off, a stop)",
                 _DECISION)
API_ERROR = Event("api_error", "a poll failed, or part of a snapshot was unreadable", ("path", "status", "error", "outcome"))
STALE = Event("stale", "the data is older than stale_after", ("last_ok", "stale_after_s", "consecutive", "last_error"))
RECOVERED = Event("recovered", "polling works again after stale", ("path", "stale_for_s", "polls_failed"))
CLOCK_STEP = Event("clock_step", "the wall clock stepped against the monotonic clock between two ticks",
                   ("step_s", "direction", "wall_expected", "wall_now"), durable=True)
SESSION_SUMMARY = Event("session_summary", "at each session end (session_start), by the daemon", ("session", "accounts", "rules"),
                        durable=True)
TICK_FAILED = Event("tick_failed", "a tick raised (the next one runs as planned)", ("reason", "error"))
TICK_OVERRUN = Event("tick_overrun", "a tick ran past its deadline (sends still running go on in their threads)",
                     ("reason", "took_s", "deadline_s", "sending"), durable=True)
ROTATED = Event("rotated", "first line of a new trail file", ("previous_file", "previous_seq", "previous_hash"), durable=True)
TRAIL_REPAIRED = Event("trail_repaired", "riskd found the trail's end not as it left it (a torn line, lines missing)", ("reason",),
                       durable=True)
TRAIL_UNWRITABLE = Event("trail_unwritable", "the trail could not be written (lines wait in memory)", ("error",), durable=True)
TRAIL_WRITABLE = Event("trail_writable", "the trail can be written again", ("since", "last_error", "held", "samples_dropped"),
                       durable=True)
DISK_FULL = Event("disk_full", "the state database could not be written: the disk is full", ("op", "error"))
STATE_WRITE_FAILED = Event("state_write_failed", "the state database could not be written for another reason", ("op", "error"))
DISK_RECOVERED = Event("disk_recovered", "the state database can be written again", ("op",))
PERIOD_GAP = Event("period_gap", "a week or month rule could not see part of its period (riskd was down, no earlier record)",
                   ("account", "session", "period", "since", "unseen", "source", "counted"), durable=True)
ROUND_TRIP = Event("round_trip", "a position of an account counted by a trades or loss_streak rule went back to flat",
                   ("account", "instrument", "session", "losing", "points", "source", "trades", "loss_streak", "reason"))

CALENDAR_WARNING = Event("calendar_warning", "at start and reload: the exchange calendar's horizon runs out, or the news event file "
                         "has no event in the next 30 days", ("warning",), durable=True)

CONTROL = Event("control", "an operator command arrived on the control socket (with the Unix user who sent it)",
                ("id", "verb", "reason", "user", "uid"), durable=True)
CONTROL_RESULT = Event("control_result", "an operator command's outcome (done, refused, failed, expired)",
                       ("id", "verb", "status", "message", "user"), durable=True)

CATALOGUE: dict[str, Event] = {e.name: e for e in (
    STARTED, STOPPED, RULES_LOADED, RULES_REJECTED, SAMPLE, SAMPLES, FIRED, ACTION, ACTION_RESOLVED, SUPERSEDED, SKIPPED, MISSED,
    RULE_FAILED, DEFERRED, API_ERROR, STALE, RECOVERED, CLOCK_STEP, SESSION_SUMMARY, TICK_FAILED, TICK_OVERRUN, ROTATED,
    TRAIL_REPAIRED, TRAIL_UNWRITABLE, TRAIL_WRITABLE,
    DISK_FULL, STATE_WRITE_FAILED, DISK_RECOVERED, CONTROL, CONTROL_RESULT, LOCK_ENDED, CALENDAR_WARNING, PERIOD_GAP,
    ROUND_TRIP,
)}
DECISIONS: dict[str, Event] = {e.name: e for e in (FIRED, SUPERSEDED, SKIPPED, MISSED, RULE_FAILED, LOCK_ENDED)}  # by Decision.kind
DURABLE = frozenset(e.name for e in CATALOGUE.values() if e.durable)
DROPPABLE = frozenset(e.name for e in CATALOGUE.values() if e.droppable)


def of(name: str) -> Event:
    """The event named `name`; a KeyError lists the names (for `riskd audit --event`)."""
    try:
        return CATALOGUE[name]
    except KeyError:
        raise KeyError(f"no event {name!r}; the events are: {', '.join(CATALOGUE)}") from None
