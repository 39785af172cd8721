"""Risk beyond one session: each account's session closing figures and balance high-water marks.

Pure, like riskd.engine which calls it: the state maps and a snapshot's accounts come in, new maps
and per-account `History` views go out.

- The ledger (`State.ledger`) keeps, per account and session, the last figures riskd saw in it
  (realized, unrealized, commission, net liquidation): once the session is over they are its
  closing figures. It is part of the engine state, so it survives restarts and reloads, and it is
  kept LEDGER_DAYS days.
- A period's P&L (`account_pnl: {period: week | month}`) is the recorded sessions of the period
  before this one, plus what riskd did not see, plus this session's P&L. What riskd did not see is
  the balance change between the last recorded close and a session's opening balance (net
  liquidation less the session's net P&L): the P&L of days riskd was down, or of the end of a
  session it stopped watching. Each session's record keeps it, so it stays counted in the sessions
  after. It is exact when the last recorded session is in the same period.
  When it is not (riskd was down across the period's start), a loss riskd cannot place is counted
  and a gain is not (a limit is never loosened by what riskd could not see); for a week, the part
  before this session from the account's `weeklyProfitLoss` (read as the week's realized P&L net of
  commission, this session included) is counted instead when the API gives it and it is the lower
  of the two (a stale or zero `weeklyProfitLoss` never hides a loss). Either way the gap is reported
  (`History.gaps`, audited `period_gap`).
- The balance marks (`State.marks`) are per account [intraday high, end-of-day high]: the highest net
  liquidation seen on any tick (unrealized included), and the highest session close: a session's
  opening balance (the previous session's settled close), or, for a session whose next one riskd
  did not see, the last balance it saw in it while the account was flat (trades after that, unseen,
  are not known). They never go down and never reset.
"""

from __future__ import annotations

from datetime import date, timedelta
from functools import cached_property
from typing import Any

from riskd.model import Account
from riskd.schedule import period_of

LEDGER_DAYS = 40  # a month of sessions and the one before it
CENT = 0.005

Figures = list[float]  # [realized, unrealized, commission, net_liquidation, unseen before the session]


def figures(account: Account, unseen: float) -> Figures:
    return [round(account.realized_pnl, 2), round(account.unrealized_pnl, 2), round(account.commission, 2),
            round(account.net_liquidation, 2), unseen]


def _previous(sessions: dict[str, Figures], session: str) -> str | None:
    """The latest recorded session before `session`. Asked twice per account per tick over up to
    LEDGER_DAYS sessions, of maps that stay the same objects between fills: remembered per map
    (the entry holds the map, so its id() is not reused while remembered)."""
    found = _PREVIOUS.get(id(sessions))
    if found is not None and found[0] is sessions and found[1] == session:
        return found[2]
    last = max((s for s in sessions if s < session), default=None)
    if len(_PREVIOUS) >= 65536:
        _PREVIOUS.clear()
    _PREVIOUS[id(sessions)] = (sessions, session, last)
    return last


_PREVIOUS: dict[int, tuple[dict[str, Figures], str, str | None]] = {}


def unseen_before(account: Account, sessions: dict[str, Figures], session: str) -> float | None:
    """The balance change riskd did not see between the last earlier record and this session's
    opening balance (None: no earlier record)."""
    last = _previous(sessions, session)
    if last is None or not account.balance_known:
        return None
    change = opening_balance(account) - sessions[last][3]
    return 0.0 if abs(change) < CENT else round(change, 2)


def value(fig: Figures, basis: str, net_of_commission: bool) -> float:
    """A recorded session's P&L on a basis, as Account.pnl computes it for a live one."""
    realized, unrealized, commission = fig[0], fig[1], fig[2]
    out = {"total": realized + unrealized, "realized": realized, "unrealized": unrealized}[basis]
    return out - commission if net_of_commission else out


def opening_balance(account: Account) -> float:
    """The balance the session opened with: net liquidation less the session's net P&L."""
    return account.net_liquidation - account.pnl(net_of_commission=True)


def record(ledger: dict[str, dict[str, Figures]], session: str, accounts: tuple[Account, ...]) -> dict[str, dict[str, Figures]]:
    """Given the ledger, the current session and a snapshot's (well-formed) accounts, return the ledger
    with this session's figures of each account replaced by the latest (the same object when unchanged).

    A record changes when the realized P&L, the commission or being flat changes (a fill), not with
    every move of the open P&L: the state is written on change, and a session's figures matter once
    it is over, when the account is expected flat (its last flat figures are then exact)."""
    changed: dict[str, dict[str, Figures]] = {}
    for account in accounts:
        if not account.balance_known:
            continue
        name = account.name.lower()
        sessions = ledger.get(name, {})
        old = sessions.get(session)
        fig = figures(account, unseen_before(account, sessions, session) or 0.0)
        if old is not None and old[0] == fig[0] and old[2] == fig[2] and (old[1] == 0) == (fig[1] == 0) and old[4:] == fig[4:]:
            continue
        changed[name] = {**sessions, session: fig}
    return {**ledger, **changed} if changed else ledger


def prune(ledger: dict[str, dict[str, Figures]], session: str) -> dict[str, dict[str, Figures]]:
    """Forget sessions older than LEDGER_DAYS before `session`."""
    horizon = (date.fromisoformat(session) - timedelta(days=LEDGER_DAYS)).isoformat()
    return {name: {s: f for s, f in sessions.items() if s >= horizon} for name, sessions in ledger.items()}


def last_close(sessions: dict[str, Figures], session: str) -> float | None:
    """The balance of the latest earlier session's last figures, when the account was flat then."""
    last = _previous(sessions, session)
    return sessions[last][3] if last is not None and sessions[last][1] == 0 else None


def mark(marks: dict[str, list[float]], ledger: dict[str, dict[str, Figures]], session: str,
         accounts: tuple[Account, ...]) -> dict[str, list[float]]:
    """Given the balance marks, the ledger, the session and a snapshot's accounts, return the marks
    raised where they were passed. A close is this session's opening balance, or the last balance
    riskd saw (flat) in the session before (the one that matters when the session between was not seen)."""
    changed: dict[str, list[float]] = {}
    for account in accounts:
        if not account.balance_known:  # a missing balance is not a balance of 0
            continue
        name = account.name.lower()
        old = marks.get(name)
        intraday, eod = round(account.net_liquidation, 2), round(opening_balance(account), 2)
        closed = last_close(ledger.get(name, {}), session)
        if closed is not None:
            eod = max(eod, closed)
        if old is None or intraday > old[0] or eod > old[1]:
            changed[name] = [max(old[0], intraday), max(old[1], eod)] if old else [intraday, eod]
    return {**marks, **changed} if changed else marks


class History:
    """One account's figures beyond this session, at one tick (computed on first use)."""

    def __init__(self, account: Account, session: str, sessions: dict[str, Figures], marks: list[float] | None,
                 trades: dict[str, Any] | None = None):
        self.account = account
        self.trades = trades  # this session's round trips (riskd.trades), for the trades and loss_streak conditions
        self.session = session
        self.sessions = sessions
        self.marks = marks or [account.net_liquidation, opening_balance(account)]
        self.gaps: dict[str, dict[str, Any]] = {}  # period -> the gap a condition ran into at this tick

    def high(self, trail: str) -> float:
        """The balance high-water mark of a trail (intraday | end_of_day)."""
        return self.marks[0] if trail == "intraday" else self.marks[1]

    @cached_property
    def _last(self) -> str | None:
        return _previous(self.sessions, self.session)

    @cached_property
    def unseen(self) -> float | None:
        """The balance change riskd did not see before this session (None: no earlier record)."""
        return unseen_before(self.account, self.sessions, self.session)

    def _recorded(self, period: str, basis: str, net_of_commission: bool) -> float:
        """The recorded sessions of this session's period before it, each with what riskd did not see
        before it: all of it when the record before was in the same period, else only a loss."""
        current = period_of(self.session, period)
        total, previous = 0.0, None
        for s in sorted(self.sessions):
            if s >= self.session:
                break
            f = self.sessions[s]
            if period_of(s, period) == current:
                unseen = f[4] if len(f) > 4 and basis != "unrealized" else 0.0
                whole = previous is not None and period_of(previous, period) == current
                total += value(f, basis, net_of_commission) + (unseen if whole else min(unseen, 0.0))
            previous = s
        return total

    def before(self, period: str, basis: str, net_of_commission: bool) -> tuple[float, dict[str, Any] | None]:
        """The P&L of `period` before this session on a basis, and the gap (None when riskd saw it all)."""
        current = period_of(self.session, period)
        recorded = self._recorded(period, basis, net_of_commission)
        unseen, last = self.unseen, self._last
        if unseen == 0.0 and last is not None:
            return recorded, None
        gap: dict[str, Any] = {"period": period, "since": last, "unseen": unseen}
        if last is not None and period_of(last, period) == current:
            counted = (unseen or 0.0) if basis != "unrealized" else 0.0
            return recorded + counted, {**gap, "source": "balance" if unseen is not None else "none", "counted": counted}
        weekly = self.account.weekly_pnl
        loss = min(unseen or 0.0, 0.0)  # what the balance says, counted only as a loss
        if period == "week" and weekly is not None:
            counted = round(weekly - (self.account.realized_pnl - self.account.commission) - recorded, 2)
            if unseen is None or counted <= loss:  # the lower of the two: a stale weeklyProfitLoss never hides a loss
                return recorded + counted, {**gap, "source": "weeklyProfitLoss", "counted": counted}
        return recorded + loss, {**gap, "source": "balance" if unseen is not None else "none", "counted": loss}

    def period_pnl(self, period: str, basis: str, net_of_commission: bool) -> tuple[float, dict[str, Any] | None]:
        """The P&L of the period this session is in (this session included), and the gap."""
        now = self.account.pnl(basis, net_of_commission)
        if period == "session":
            return now, None
        earlier, gap = self.before(period, basis, net_of_commission)
        if gap is not None:
            self.gaps.setdefault(period, gap)
        return earlier + now, gap
