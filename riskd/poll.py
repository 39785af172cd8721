"""Poll health: given each poll's reply at `now`, when to poll next and what to audit.

`PollHealth` holds the bookkeeping of the snapshot polls (counters, consecutive failures, the
back-off, a refused token, staleness and recovery) and answers in `Event`s; it does no I/O and reads
no clock (the tick passes `now`, the wall time it records, and `mono`, the monotonic seconds every
interval is measured on, so a step of the wall clock neither stops polls nor hides staleness), so
the policy can be tested by calling it. The tick emits the events to the audit trail and the console.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from riskd.crosstrade import AUTH, Reply

# A refused token (401/403) is retried this rarely: one loud error, then one quiet attempt a minute.
AUTH_BACKOFF_S = 60.0


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


@dataclass(frozen=True)
class Event:
    """One audit event to emit (`name`, `fields`), and the console line that goes with it (`level` None: none)."""

    name: str
    fields: dict[str, Any]
    level: str | None = None  # "info", "warning" or "error"
    log_name: str | None = None  # the console event name, when it is not `name`
    log: dict[str, Any] = field(default_factory=dict)


class PollHealth:
    """Given each poll's outcome at `now`, update `health` and return the events to emit.

    `poll_interval` sets the back-off, `stale_after` when no usable snapshot counts as stale.
    `rng` draws the back-off jitter (injectable for tests)."""

    def __init__(self, poll_interval: timedelta, stale_after: timedelta, rng: random.Random | None = None):
        self.poll_interval = poll_interval
        self.stale_after = stale_after
        self.rng = rng or random.Random()
        self.health = Health()
        self.next_poll_mono: float | None = None  # no poll before this (monotonic seconds): back-off, Retry-After
        self.last_ok_mono: float | None = None
        self._stale_since_mono: float | None = None
        self._auth_reported = False
        self._problems: tuple[str, ...] = ()

    def due(self, mono: float) -> bool:
        """Whether a poll may go out at `mono` (False while backing off after errors or a Retry-After)."""
        return self.next_poll_mono is None or mono >= self.next_poll_mono

    def _next_poll(self, now: datetime, mono: float, delay: float | None) -> None:
        self.next_poll_mono = mono + delay if delay else None
        self.health.next_poll_at = now + timedelta(seconds=delay) if delay else None

    def on_problems(self, reply: Reply, problems: tuple[str, ...], unknown: frozenset[str]) -> list[Event]:
        """A usable snapshot with unreadable account entries: audited when they change, not every tick."""
        if problems == self._problems:
            return []
        self._problems = problems
        if not problems:
            return []
        return [Event("api_error", {"path": reply.path, "status": reply.status, "outcome": "partial",
                                    "error": "unreadable account entries: " + "; ".join(problems), "accounts": sorted(unknown),
                                    "retry": "those accounts are treated as not seen until a snapshot shows them well-formed"})]

    def on_success(self, reply: Reply, now: datetime, mono: float) -> list[Event]:
        """A usable snapshot arrived at `now`: return `recovered` when riskd was stale."""
        h = self.health
        h.polls_ok += 1
        h.latencies_ms.append(reply.latency_ms)
        del h.latencies_ms[:-2000]
        h.consecutive_failures = 0
        self._next_poll(now, mono, None)
        h.last_ok = now
        self.last_ok_mono = mono
        self._auth_reported = False
        if not h.stale:
            return []
        since = self._stale_since_mono
        h.stale = False
        h.stale_since = None
        return [Event("recovered", {"path": reply.path, "stale_for_s": round(mono - since, 3) if since is not None else None,
                                    "polls_failed": h.polls_failed}, level="info", log={"path": reply.path})]

    def on_failure(self, reply: Reply, error: str | None, now: datetime, mono: float) -> list[Event]:
        """No usable snapshot at `now` (`error` says why): set the next poll time, return the `api_error`."""
        h = self.health
        h.polls_failed += 1
        h.last_error = error
        if reply.budget:  # held back by riskd's own rate budget or a Retry-After: not an API failure
            self._next_poll(now, mono, reply.retry_after)
            retry = f"after Retry-After, in {reply.retry_after:.2f}s" if reply.retry_after else "next tick: the rate budget went to actions"
            return [Event("api_error", {"path": reply.path, "status": None, "error": error, "outcome": reply.outcome,
                                        "consecutive": h.consecutive_failures, "retry": retry},
                          level="warning", log={"path": reply.path, "error": error, "retry": retry})]
        h.consecutive_failures += 1
        delay = self.backoff(reply)
        self._next_poll(now, mono, delay)
        if reply.outcome == AUTH:
            retry = f"the token was refused: fix the credential; next attempt in {delay:.0f}s"
        else:
            retry = f"next poll in {delay:.2f}s"
        fields = {"path": reply.path, "status": reply.status, "error": error, "outcome": reply.outcome,
                  "response": reply.verbatim() if reply.status else None, "consecutive": h.consecutive_failures,
                  "latency_ms": reply.latency_ms, "retry": retry}
        if reply.outcome == AUTH and not self._auth_reported:
            self._auth_reported = True
            return [Event("api_error", fields, level="error", log_name="auth_refused",
                          log={"path": reply.path, "status": reply.status, "error": error,
                               "message": "CrossTrade refused the API token (401/403): riskd cannot see or close positions until "
                                          "the credential is fixed; it retries once a minute"})]
        return [Event("api_error", fields, level="warning", log={"path": reply.path, "status": reply.status, "error": error,
                                                                 "retry": retry})]

    def check_stale(self, now: datetime, mono: float, started_mono: float | None) -> list[Event]:
        """No usable snapshot this tick: return `stale` once `stale_after` has passed since the last one (or the start)."""
        h = self.health
        since = self.last_ok_mono if self.last_ok_mono is not None else started_mono
        if h.stale or since is None or mono - since < self.stale_after.total_seconds():
            return []
        h.stale = True
        h.stale_since = now
        self._stale_since_mono = mono
        last_ok = h.last_ok.isoformat() if h.last_ok else None
        return [Event("stale", {"last_ok": last_ok, "stale_after_s": self.stale_after.total_seconds(),
                                "consecutive": h.consecutive_failures, "last_error": h.last_error},
                      level="error", log={"last_ok": last_ok,
                                          "message": f"no successful poll for {self.stale_after.total_seconds():g}s: "
                                                     "riskd cannot see positions"})]

    def backoff(self, reply: Reply) -> float:
        """Seconds until the next poll after a failed one: bounded exponential back-off with jitter from
        the poll interval, capped at twice it (so a bridge that is back is seen within two ticks), or
        Retry-After when that is longer; a refused token waits AUTH_BACKOFF_S."""
        if reply.outcome == AUTH:
            return AUTH_BACKOFF_S
        base = self.poll_interval.total_seconds()
        delay = min(base * 2, base * 0.5 * 2 ** self.health.consecutive_failures) * self.rng.uniform(0.8, 1.0)
        return max(delay, reply.retry_after or 0.0)
