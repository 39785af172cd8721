"""Account samples in the audit trail: what the ticker writes (`Sampler`) and how readers get them back (`expand`).

Once a minute (by the tick's clock) one `samples` line names every account of the snapshot not yet
sampled that minute, in snapshot order, with its figures (session P&L, realized, unrealized,
commission, net liquidation, positions: the fields of a `sample` line) when they differ from the
ones the same process wrote last for it, or null when they do not. At rest that is a name and a
null per account instead of a full line each. A process's first line, a new session's, one an hour,
every line while the trail cannot be written (lines may then be dropped) and the first after carry every figure,
so a reader needs at most an hour of trail before the moment it shows.

A firing still gets a `sample` line of its own in the tick it fires (reason "firing", the P&L the rule saw).

`expand` turns `samples` lines back into one `sample` line per account (reason "minute"), so the
report, the dashboard's chart seed and `riskd audit` show the same day from either form, and
trails written before keep working.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from riskd import events

if TYPE_CHECKING:
    from riskd.audit import AuditTrail
    from riskd.model import Account, Snapshot

FULL_EVERY = timedelta(hours=1)  # a `samples` line with every figure at least this often


def figures(account: Account) -> dict[str, Any]:
    """An account's figures as a sample carries them (pnl is a sum: in cents; the API's own values verbatim)."""
    return {"pnl": round(account.pnl(), 2), "realized": account.realized_pnl, "unrealized": account.unrealized_pnl,
            "commission": account.commission, "net_liquidation": account.net_liquidation,
            "positions": [{"instrument": p.instrument, "side": p.side, "quantity": p.quantity, "pnl": p.unrealized_pnl}
                          for p in account.positions]}


def _held(figs: dict[str, Any]) -> tuple[Any, ...]:
    """A sample's figures as the Sampler keeps them to compare with the next (tuples: a third of the dicts'
    memory, at 3000 accounts ~3 MB)."""
    return (*(v for k, v in figs.items() if k != "positions"), *(tuple(p.values()) for p in figs["positions"]))


class Sampler:
    """Writes the samples of each tick's snapshot (see the module docstring)."""

    def __init__(self, audit: AuditTrail):
        self.audit = audit
        self._sampled: dict[str, datetime] = {}  # account (lower case) -> minute of its last sample
        self._written: dict[str, tuple[Any, ...]] = {}  # account (lower case) -> figures of its last `samples` entry (_held)
        self._full_at: datetime | None = None
        self._session: str | None = None
        self._failing = False  # the trail could not be written at the last `samples` line

    def sample(self, snapshot: Snapshot, now: datetime, session: str, firing: set[str]) -> None:
        """Sample the accounts of `firing` (lower-case names) at once, and every account once a minute."""
        minute = now.replace(second=0, microsecond=0)
        due: list[tuple[str, dict[str, Any]]] = []
        for account in snapshot.accounts:
            name = account.name.lower()
            if name in firing:
                self._sampled[name] = minute
                self.audit.emit(events.SAMPLE, account=account.name, session=session, reason="firing", **figures(account))
            elif self._sampled.get(name) != minute:
                self._sampled[name] = minute
                due.append((account.name, figures(account)))
        if not due:
            return
        failing = self.audit.failing  # lines held in memory may be dropped: none may lean on one of them
        full = (self._full_at is None or session != self._session or minute - self._full_at >= FULL_EVERY
                or failing or self._failing)
        self._failing = failing
        if full:
            self._full_at, self._session = minute, session
        accounts: dict[str, dict[str, Any] | None] = {}
        for name, figs in due:
            key = name.lower()
            held = _held(figs)
            accounts[name] = None if not full and self._written.get(key) == held else figs
            self._written[key] = held
        self.audit.emit(events.SAMPLES, session=session, pid=os.getpid(), full=full, accounts=accounts)


def expand(lines: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The lines with each `samples` line replaced by one `sample` line per account it names (with the
    line's ts, seq and session, reason "minute"); a null entry takes the figures of the same process's
    latest entry for that account, and is left out when the lines read do not reach back to one."""
    latest: dict[Any, dict[str, dict[str, Any]]] = {}  # pid -> account (lower case) -> figures
    for line in lines:
        if not events.SAMPLES.of(line):
            yield line
            continue
        known = latest.setdefault(line.get("pid"), {})
        entries = events.SAMPLES.get(line, "accounts") or {}
        for name, figs in entries.items():
            key = name.lower()
            if isinstance(figs, dict):
                known[key] = figs
            else:
                figs = known.get(key)
                if figs is None:
                    continue
            yield {"ts": line.get("ts"), "seq": line.get("seq"), "event": events.SAMPLE.name, "account": name,
                   "session": line.get("session"), "reason": "minute", **figs}
