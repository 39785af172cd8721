"""What riskd sees, as one view: per account its figures, positions, locks and each rule's state
and distance to firing; the paused rules, the next timed firings, the recent operator commands
and the daemon's health.

`build` is pure (rules, the persisted state and snapshot, health, `now` in; a JSON-ready dict out),
so `riskd status` (from the state store, never the API) and any live view of the daemon can share
it; `render` is the text `riskd status` prints. The distances are riskd.conditions' own (through
`engine.explain`), in dollars and in percent of the threshold's size.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from riskd import engine, schedule
from riskd.engine import OPERATOR_LOCK, EngineSettings, State
from riskd.keys import LockKey
from riskd.model import Rule, Snapshot
from riskd.schedule import format_span, next_occurrence

# The daemon writes its health row at least this often while it runs (riskd.tick HEALTH_EVERY is 5 s).
SILENT_AFTER = timedelta(seconds=20)
# engine.explain's statuses, as an operator reads them
STATES = {"not met": "armed", "holding": "pending", "fires now": "firing", "fired": "fired", "timed": "timed",
          "disabled": "disabled", "no target in scope": "no target"}


def build(rules: list[Rule], state: State, snapshot: Snapshot | None, health: dict[str, Any] | None, now: datetime,
          settings: EngineSettings, *, snapshot_at: str | None = None, dry_run: bool = False,
          commands: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Given the loaded rules, the daemon's persisted state, last snapshot and health, return the view."""
    paused = engine.active(state.paused, now)
    account_locks = engine.active(state.account_locks, now)
    session_end = schedule.session_end(now, settings.zone, settings.session_start).isoformat()
    by_name = {r.name: r for r in rules}
    rows_of: dict[str, list[dict[str, Any]]] = {}  # by account: one pass, not one per account (200 accounts x 4,000 rows)
    for row in engine.explain(rules, state, snapshot, now, settings) if snapshot is not None else []:
        rows_of.setdefault(row.get("account") or "", []).append(row)
    accounts = []
    for account in snapshot.accounts if snapshot is not None else ():
        name = account.name.lower()
        locks = [{"by": OPERATOR_LOCK, "until": account_locks[name]}] if name in account_locks else []
        locked_by = set()
        for key, since in state.locks.items():
            lock = LockKey.parse(key)
            if lock.account == name:
                locked_by.add(lock.rule)
                rule = by_name.get(lock.rule)
                terms = state.lock_terms.get(key) or {}  # a timed lock's own end, else the session's
                until = datetime.fromisoformat(terms["until"]).astimezone(settings.zone).isoformat() if terms.get("until") else session_end
                locks.append({"by": lock.rule, "since": since, "until": until,
                              "undo": rule.action.lock_undo if rule is not None else "allowed"})
        rule_rows = []
        for row in rows_of.get(account.name, ()):
            status = STATES.get(row["status"], row["status"])
            if row["rule"] in paused:
                status = "paused"
            elif row["rule"] in locked_by:
                status = "locked"
            rule = by_name[row["rule"]]
            rule_rows.append({"rule": row["rule"], "target": row["target"], "instrument": row.get("instrument"), "state": status,
                              "dry_run": dry_run or rule.dry_run, "next": row.get("next"),
                              "conditions": [{k: c.get(k) for k in ("name", "seen", "threshold", "holds", "distance", "gap", "unit",
                                                                    "gap_percent")} for c in row["conditions"]]})
        accounts.append({
            "account": account.name, "pnl": round(account.pnl(), 2), "realized": account.realized_pnl,
            "unrealized": account.unrealized_pnl, "commission": account.commission, "net_liquidation": account.net_liquidation,
            "week_pnl": account.week_pnl, "cash_value": account.cash_value,
            "peak": round(state.peaks.get(name, 0.0), 2), "locks": locks,
            "positions": [p.as_dict() for p in account.positions], "rules": rule_rows,
        })
    timed = []
    for rule in rules:
        if rule.at is not None and rule.enabled:
            when = next_occurrence(rule, now)
            timed.append({"rule": rule.name, "at": when.isoformat() if when else None, "paused": rule.name in paused,
                          "in": format_span(when - now) if when else None})
    timed.sort(key=lambda t: (t["at"] is None, t["at"] or ""))
    updated = health.get("updated") if health else None
    silent = updated is None or now - datetime.fromisoformat(updated) > SILENT_AFTER
    return {
        "now": now.isoformat(), "session": engine.session_of(now, settings), "session_end": session_end, "dry_run": dry_run,
        "daemon": {"running": not silent, "pid": (health or {}).get("pid"), "last_heard": updated},
        "health": {k: (health or {}).get(k) for k in ("last_ok", "stale", "stale_since", "last_error", "consecutive_failures",
                                                      "ticks", "firings")},
        "snapshot": {"taken_at": snapshot.taken_at.isoformat() if snapshot else None, "saved": snapshot_at,
                     "unreadable_accounts": sorted(snapshot.unknown) if snapshot else []},
        "accounts": accounts,
        "rules": [{"rule": r.name, "enabled": r.enabled, "dry_run": dry_run or r.dry_run, "action": r.action.describe(),
                   "paused_until": paused.get(r.name), "file": r.source} for r in rules],
        "paused": [{"rule": k, "until": v} for k, v in sorted(paused.items())],
        "next_timed": timed,
        "commands": [{"id": c["id"], "verb": c["verb"], "status": c["status"], "user": c["command"].get("user"),
                      "asked_at": c["command"].get("asked_at"), "reason": c["command"].get("reason"),
                      "message": (c.get("outcome") or {}).get("message")} for c in (commands or [])[:5]],
    }


def _money(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.2f}"


def _ago(iso: str | None, now: datetime) -> str:
    if not iso:
        return "never"
    return f"{iso} ({format_span(now - datetime.fromisoformat(iso))} ago)"


def render(view: dict[str, Any]) -> str:
    """The view as `riskd status` prints it."""
    now = datetime.fromisoformat(view["now"])
    d, h = view["daemon"], view["health"]
    out = [f"riskd status {view['now']}  session {view['session']} (ends {view['session_end']})"
           + ("  DRY RUN: nothing is sent" if view["dry_run"] else "")]
    if d["running"]:
        out.append(f"daemon: pid {d['pid']}, last heard {_ago(d['last_heard'], now)}")
    else:
        out.append(f"daemon: NOT RUNNING? last heard {_ago(d['last_heard'], now)}; the figures below are as it left them")
    health = f"health: last successful poll {_ago(h['last_ok'], now)}"
    if h.get("stale"):
        health += f"; STALE since {h.get('stale_since')}"
    if h.get("last_error"):
        health += f"; last API error: {h['last_error']}"
    out.append(health)
    snap = view["snapshot"]
    out.append(f"snapshot: {_ago(snap['taken_at'], now)}" + (f"; unreadable: {', '.join(snap['unreadable_accounts'])}"
                                                               if snap["unreadable_accounts"] else ""))
    if not view["accounts"]:
        out.append("accounts: none seen yet")
    for a in view["accounts"]:
        out.append(f"account {a['account']}: session P&L {a['pnl']:.2f} (realized {a['realized']:.2f}, unrealized "
                   f"{a['unrealized']:.2f}, commission {a['commission']:.2f}), peak {a['peak']:.2f}, "
                   f"week P&L {_money(a['week_pnl'])}, cash {_money(a['cash_value'])}, net liquidation {a['net_liquidation']:.2f}")
        for lock in a["locks"]:
            undo = "; cannot be undone" if lock.get("undo") == "never" else ""
            out.append(f"    LOCKED by {lock['by']} until {lock['until']}{undo}")
        for p in a["positions"]:
            out.append(f"    position {p['side']} {p['quantity']} {p['instrument']} @ {p['average_price']}, P&L {p['unrealized_pnl']:.2f}")
        if not a["positions"]:
            out.append("    flat")
        for r in a["rules"]:
            target = f" {r['instrument']}" if r["instrument"] else ""
            out.append(f"    rule {r['rule']}{target}: {r['state']}" + (" (dry run)" if r["dry_run"] else ""))
            for c in r["conditions"]:
                pct = f" ({c['gap_percent']:g}% of the limit left)" if c.get("gap_percent") is not None and not c["holds"] else ""
                seen = f"{c['seen']:.2f}" if isinstance(c["seen"], float) else c["seen"]
                out.append(f"        {c['name']}={seen} ({c['threshold']}): {c['distance']}{pct}")
    for p in view["paused"]:
        out.append(f"paused: rule {p['rule']} until {p['until']}")
    out.append("next timed firings:" if view["next_timed"] else "next timed firings: none")
    for t in view["next_timed"]:
        when = f"  (in {t['in']})" if t["in"] else ""
        out.append(f"    {t['at'] or 'never'}  {t['rule']}{when}" + ("  PAUSED" if t["paused"] else ""))
    for c in view["commands"]:
        out.append(f"command {c['asked_at']} {c['user']}: {c['verb']} -> {c['status']}: {c['message'] or ''}")
    return "\n".join(out)
