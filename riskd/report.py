"""`riskd report --date D`: one self-contained HTML page for one trading day, from the audit trail.

The page has no scripts and no external assets (inline CSS and SVG only), so it can be mailed,
archived next to the trail, and opened years later. Sections: the trail's verification result;
every rule set in force during the day (its files' SHA-256 and what each reload changed, from
`rules_loaded`); per rule the day's summary; per
account a chart of its session P&L over the day (from the `sample` lines; total solid, realized
dashed) with every firing marked and numbered, and a table of that account's firings, the API
calls they made and the closedPositions each call returned; then every other decision of the day
(superseded, missed, skipped, api_error, trail events).
"""

from __future__ import annotations

import html
import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from riskd import __version__, events, samples
from riskd.trail import (
    Days,
    TrailError,
    Verdict,
    chain_order,
    closed_pnl,
    closed_positions,
    closed_quantity,
    is_order_change,
    line_time,
    read,
    summary,
    threshold_text,
    verify,
)

OTHER_EVENTS = tuple(e.name for e in (
    events.SUPERSEDED, events.MISSED, events.SKIPPED, events.RULE_FAILED, events.API_ERROR, events.STALE, events.RECOVERED,
    events.RULES_REJECTED, events.TICK_FAILED, events.CLOCK_STEP, events.TRAIL_REPAIRED, events.TRAIL_UNWRITABLE,
    events.TRAIL_WRITABLE, events.ROTATED, events.ACTION_RESOLVED, events.DISK_FULL, events.STATE_WRITE_FAILED, events.DISK_RECOVERED))


@dataclass
class AccountDay:
    name: str
    samples: list[tuple[datetime, float, float]] = field(default_factory=list)  # (ts, total, realized)
    firings: list[dict[str, Any]] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Day:
    day: str
    accounts: dict[str, AccountDay] = field(default_factory=dict)
    lifecycle: list[dict[str, Any]] = field(default_factory=list)
    rules_loaded: list[dict[str, Any]] = field(default_factory=list)
    other: list[dict[str, Any]] = field(default_factory=list)
    lines: list[dict[str, Any]] = field(default_factory=list)
    carried_rules: bool = False  # rules_loaded[0] was loaded before the day began
    zone: Any = None  # the rules' zone (riskd.yaml timezone, from the latest `started` line), for the time axis

    def account(self, name: str) -> AccountDay:
        key = name.lower()
        if key not in self.accounts:
            self.accounts[key] = AccountDay(name)
        return self.accounts[key]


def collect(lines: Iterable[dict[str, Any]], day: str) -> Day:
    """Given trail lines in order and a trading day, return what the page shows for that day."""
    days = Days()
    result = Day(day)
    in_force: dict[str, Any] | None = None  # the rules loaded before the day began still apply in it
    for line in samples.expand(lines):  # a `samples` line: one `sample` per account
        if line.get("event") == events.STARTED.name and line.get("timezone") and (not result.lines or days(line) == day):
            try:
                result.zone = ZoneInfo(str(line["timezone"]))
            except (ValueError, ZoneInfoNotFoundError):
                pass
        if days(line) != day:
            if line.get("event") == events.RULES_LOADED.name and not result.lines:
                in_force = line
            continue
        if in_force is not None:
            result.rules_loaded.append(in_force)
            result.carried_rules, in_force = True, None
        result.lines.append(line)
        event = line.get("event")
        ts = line_time(line)
        if event == events.SAMPLE.name and ts is not None and line.get("account"):
            result.account(str(line["account"])).samples.append((ts, float(line.get("pnl") or 0.0), float(line.get("realized") or 0.0)))
        elif event == events.FIRED.name and line.get("account"):
            result.account(str(line["account"])).firings.append(line)
        elif event == events.ACTION.name and line.get("account"):
            result.account(str(line["account"])).actions.append(line)
        elif event in (events.STARTED.name, events.STOPPED.name):
            result.lifecycle.append(line)
        elif event == events.RULES_LOADED.name:
            result.rules_loaded.append(line)
        elif event in OTHER_EVENTS:
            result.other.append(line)
    return result


def days_in(lines: Iterable[dict[str, Any]]) -> list[str]:
    """The trading days that have samples or firings, in order."""
    days = Days()
    found = {days(line) for line in samples.expand(lines) if line.get("event") in (events.SAMPLE.name, events.FIRED.name)}
    return sorted(found)


# ---------------------------------------------------------------------------------------------
# The chart.

W, H = 1040, 300
ML, MR, MT, MB = 78, 24, 34, 46
X_STEPS = [60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600]


def _nice_step(span: float, target: int = 6) -> float:
    raw = span / max(target, 1)
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for mult in (1, 2, 2.5, 5, 10):
        if raw <= mult * power:
            return mult * power
    return 10 * power


def steps(curve: list[tuple[datetime, float]]) -> list[tuple[datetime, float]]:
    """A curve drawn as steps: each value holds until the next sample (realized P&L changes at a fill, it is never in between)."""
    out: list[tuple[datetime, float]] = []
    for at, value in curve:
        if out and out[-1][1] != value:
            out.append((at, out[-1][1]))
        out.append((at, value))
    return out


def chart(account: AccountDay, start: datetime, end: datetime, numbers: dict[int, int], zone: Any = None) -> str:
    """An inline SVG: the account's session P&L (total solid, realized dashed, as steps) with firings
    marked; the time axis in the rules' zone (`zone`), with UTC in a second row."""
    zone = zone or timezone.utc
    values = [v for _, v, _ in account.samples] + [r for _, _, r in account.samples]
    values += [_firing_pnl(f) for f in account.firings if _firing_pnl(f) is not None]  # type: ignore[misc]
    low, high = min(values + [0.0]), max(values + [0.0])
    if high - low < 1:
        high, low = high + 50, low - 50
    pad = (high - low) * 0.08
    low, high = low - pad, high + pad
    span_s = max((end - start).total_seconds(), 60.0)

    def x(moment: datetime) -> float:
        return ML + (moment - start).total_seconds() / span_s * (W - ML - MR)

    def y(value: float) -> float:
        return MT + (high - value) / (high - low) * (H - MT - MB)

    parts = [f'<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
             f'aria-label="session P&amp;L of {html.escape(account.name)}">',
             f'<rect x="{ML}" y="{MT}" width="{W - ML - MR}" height="{H - MT - MB}" class="plot"/>']
    step = _nice_step(high - low)
    tick = math.ceil(low / step) * step
    while tick <= high:
        parts.append(f'<line x1="{ML}" x2="{W - MR}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" class="grid"/>'
                     f'<text x="{ML - 6}" y="{y(tick) + 4:.1f}" class="ylab">{tick:,.0f}</text>')
        tick += step
    parts.append(f'<line x1="{ML}" x2="{W - MR}" y1="{y(0):.1f}" y2="{y(0):.1f}" class="zero"/>')
    xstep = next((s for s in X_STEPS if span_s / s <= 8), X_STEPS[-1])
    first = start.timestamp() - start.timestamp() % xstep + xstep
    t = first
    while t < end.timestamp() + 1e-6:
        grid_at = datetime.fromtimestamp(t, timezone.utc)
        parts.append(f'<line x1="{x(grid_at):.1f}" x2="{x(grid_at):.1f}" y1="{MT}" y2="{H - MB}" class="grid"/>'
                     f'<text x="{x(grid_at):.1f}" y="{H - MB + 14}" class="xlab">{grid_at.astimezone(zone):%H:%M}</text>'
                     + (f'<text x="{x(grid_at):.1f}" y="{H - MB + 27}" class="utc">{grid_at:%H:%M}</text>' if zone != timezone.utc else ""))
        t += xstep
    axis = f"time ({zone}; UTC below)" if zone != timezone.utc else "time (UTC)"
    parts.append(f'<text x="{(ML + W - MR) / 2:.0f}" y="{H - 4}" class="xlab">{html.escape(axis)}</text>')
    if account.samples:
        for style, curve in (("realized", steps([(s[0], s[2]) for s in account.samples])),
                             ("total", [(s[0], s[1]) for s in account.samples])):
            points = " ".join(f"{x(at):.1f},{y(value):.1f}" for at, value in curve)
            parts.append(f'<polyline points="{points}" class="{style}"/>')
        if len(account.samples) == 1:
            s = account.samples[0]
            parts.append(f'<circle cx="{x(s[0]):.1f}" cy="{y(s[1]):.1f}" r="3" class="dot"/>')
    for fired in account.firings:
        moment = line_time(fired)
        if moment is None:
            continue
        pnl = _firing_pnl(fired)
        number = numbers.get(id(fired), 0)
        local = f"{moment.astimezone(zone):%H:%M:%S} {zone}, " if zone != timezone.utc else ""
        label = (f"#{number} {local}{moment:%H:%M:%S} UTC: {fired.get('rule')} — {fired.get('action')}"
                 + (f" ({fired.get('instrument')})" if fired.get("instrument") else "")
                 + (f", P&L {pnl:,.2f}" if pnl is not None else ""))
        parts.append(f'<g class="firing"><title>{html.escape(label)}</title>'
                     f'<line x1="{x(moment):.1f}" x2="{x(moment):.1f}" y1="{MT}" y2="{H - MB}"/>')
        if pnl is not None:
            parts.append(f'<circle cx="{x(moment):.1f}" cy="{y(pnl):.1f}" r="5"/>')
        parts.append(f'<text x="{x(moment) + 4:.1f}" y="{MT + 12 + 12 * ((number - 1) % 3)}">{number}</text></g>')
    parts.append(f'<g class="legend"><line x1="{ML}" x2="{ML + 24}" y1="12" y2="12" class="total"/>'
                 f'<text x="{ML + 30}" y="16">session P&amp;L (total)</text>'
                 f'<line x1="{ML + 180}" x2="{ML + 204}" y1="12" y2="12" class="realized"/>'
                 f'<text x="{ML + 210}" y="16">realized</text>'
                 f'<circle cx="{ML + 290}" cy="12" r="5" class="mark"/>'
                 f'<text x="{ML + 300}" y="16">firing (number = row in the table)</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def _firing_pnl(fired: dict[str, Any]) -> float | None:
    value = events.FIRED.get(fired, "inputs.account_pnl")
    return float(value) if isinstance(value, (int, float)) else None


# ---------------------------------------------------------------------------------------------
# The page.

CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,"Liberation Sans",sans-serif;margin:24px;color:#1d2330;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d6dae3;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}.meta{color:#5a6275}
.ok{background:#e8f6ec;border:1px solid #9fd3ae;padding:8px 12px;border-radius:4px}
.bad{background:#fdecec;border:1px solid #e6a1a1;padding:8px 12px;border-radius:4px;font-weight:600}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}th,td{border:1px solid #d6dae3;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f2f4f8}td.n{text-align:right;font-variant-numeric:tabular-nums}code{font-size:12px}
.neg{color:#b42318}.pos{color:#067647}.stats{margin:4px 0}
svg{display:block;max-width:100%;height:auto}svg .plot{fill:#fbfcfe;stroke:#c8cdd8}svg .grid{stroke:#e6e9ef}
svg .zero{stroke:#8a93a6;stroke-width:1.2}svg .ylab{font-size:11px;fill:#5a6275;text-anchor:end}
svg .xlab{font-size:11px;fill:#5a6275;text-anchor:middle}svg .utc{font-size:10px;fill:#8a93a6;text-anchor:middle}svg .total{fill:none;stroke:#1f5fbf;stroke-width:2}
svg .realized{fill:none;stroke:#7a8599;stroke-width:1.5;stroke-dasharray:5 4}svg .dot{fill:#1f5fbf}
svg .firing line{stroke:#c0362c;stroke-width:1.2;stroke-dasharray:3 3}svg .firing circle,svg .mark{fill:#c0362c;stroke:#fff;stroke-width:1.5}
svg .firing text{font-size:12px;font-weight:700;fill:#c0362c}svg .legend text{font-size:12px;fill:#1d2330}
"""  # noqa: E501 - CSS, one selector group a line


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _money(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return _e(value)
    cls = "neg" if number < 0 else "pos" if number > 0 else ""
    return f'<span class="{cls}">{number:,.2f}</span>'


def _time(line: dict[str, Any]) -> str:
    return _e(str(line.get("ts", ""))[11:23])


def build(day: Day, verdict: Verdict | None, sources: list[str], generated: datetime) -> str:
    """Given a collected Day, the trail's verification and its files, return the HTML page."""
    out: list[str] = []
    w = out.append
    w(f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>riskd report {_e(day.day)}</title>'
      f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body>')
    w(f"<h1>riskd — trading day {_e(day.day)}</h1>")
    w(f'<p class="meta">From the audit trail {", ".join(_e(s) for s in sources)}; generated {generated:%Y-%m-%d %H:%M:%S} UTC '
      f"by riskd {_e(__version__)}. Tables are in UTC unless marked local; charts in the rules' zone"
      f"{f' ({_e(day.zone)})' if day.zone else ''}, UTC below.</p>")
    if verdict is not None:
        w(f'<p class="{"ok" if verdict.ok else "bad"}">'
          f'{"Trail verified" if verdict.ok else "TRAIL DOES NOT VERIFY"}: {_e(verdict.message)}</p>')
        if verdict.notes:
            w("<ul>" + "".join(f"<li>{_e(n)}</li>" for n in verdict.notes) + "</ul>")
    _lifecycle(day, w)
    _rules(day, w)
    numbers = _number_firings(day)
    start, end = _span(day)
    w("<h2>Accounts</h2>")
    if not day.accounts:
        w("<p>No samples or firings on this day.</p>")
    for key in sorted(day.accounts):
        _account(day.accounts[key], start, end, numbers, w, day.zone)
    _other(day, w)
    w("</body></html>")
    return "".join(out)


def _lifecycle(day: Day, w: Any) -> None:
    if not day.lifecycle:
        return
    w("<h2>riskd runs</h2><table><tr><th>time</th><th>event</th><th>detail</th></tr>")
    for line in day.lifecycle:
        detail = (f"riskd {line.get('version')}, pid {line.get('pid')}, config {line.get('config')}"
                  + (", dry run" if line.get("dry_run") else "")
                  if line.get("event") == events.STARTED.name
                  else f"{line.get('reason')}: {line.get('ticks')} ticks, {line.get('firings')} firings")
        w(f"<tr><td>{_time(line)}</td><td>{_e(line.get('event'))}</td><td>{_e(detail)}</td></tr>")
    w("</table>")


def _rules(day: Day, w: Any) -> None:
    rows = summary(day.lines)
    w("<h2>Rules</h2>")
    if day.rules_loaded:
        w("<p>Every rule set in force during the day, in order: the one loaded before the day began, then each start "
          "and reload (what it changed).</p>")
        w("<table><tr><th>in force from (UTC)</th><th>why</th><th>rules</th><th>changes</th><th>rule files (SHA-256)</th></tr>")
        for i, line in enumerate(day.rules_loaded):
            before_day = i == 0 and day.carried_rules
            since = "before the day" if before_day else str(line.get("ts", ""))[:19].replace("T", " ")
            files = "<br>".join(f"{_e(name)} <code>{_e(str(digest)[:16])}</code>"
                                for name, digest in sorted((line.get("files") or {}).items()))
            w(f"<tr><td>{_e(since)}</td><td>{_e(line.get('reason'))}</td><td class=n>{_e(line.get('rule_count'))}</td>"
              f"<td>{_e(_changes(line))}</td><td>{files}</td></tr>")
        w("</table>")
    if not rows:
        w("<p>No rule fired on this day.</p>")
        return
    w("<table><tr><th>rule</th><th>firings</th><th>dry run</th><th>closes</th><th>contracts closed</th><th>P&amp;L at close</th>"
      "<th>failed calls</th><th>superseded</th><th>missed</th></tr>")
    for r in rows:
        w(f"<tr><td>{_e(r['rule'])}</td><td class=n>{r['firings']}</td><td class=n>{r['dry_run']}</td><td class=n>{r['closes']}</td>"
          f"<td class=n>{r['contracts_closed']}</td><td class=n>{_money(r['pnl_at_close'])}</td><td class=n>{r['failed']}</td>"
          f"<td class=n>{r['superseded']}</td><td class=n>{r['missed']}</td></tr>")
    w("</table>")


def _changes(line: dict[str, Any]) -> str:
    """What a reload changed, from its rules_loaded line: "changed: a; added: b" (unchanged rules keep their state)."""
    said = [f"{kind}: {', '.join(map(str, line[kind]))}" for kind in ("changed", "added", "removed") if line.get(kind)]
    if said:
        return "; ".join(said) + (f"; {len(line['unchanged'])} unchanged" if line.get("unchanged") else "")
    return "none" if line.get("unchanged") is not None else ""


def _number_firings(day: Day) -> dict[int, int]:
    firings = sorted((f for a in day.accounts.values() for f in a.firings), key=lambda f: (str(f.get("ts")), f.get("seq", 0)))
    return {id(f): i for i, f in enumerate(firings, start=1)}


def _span(day: Day) -> tuple[datetime, datetime]:
    moments = [s[0] for a in day.accounts.values() for s in a.samples]
    moments += [m for a in day.accounts.values() for f in a.firings if (m := line_time(f)) is not None]
    if not moments:
        now = datetime.now(timezone.utc)
        return now, now + timedelta(minutes=1)
    start, end = min(moments), max(moments)
    if end - start < timedelta(minutes=1):
        end = start + timedelta(minutes=1)
    return start, end


def _account(account: AccountDay, start: datetime, end: datetime, numbers: dict[int, int], w: Any, zone: Any = None) -> None:
    w(f"<h3>{_e(account.name)}</h3>")
    if account.samples:
        totals = [s[1] for s in account.samples]
        w(f'<p class="stats">session P&amp;L: first {_money(totals[0])}, last {_money(totals[-1])}, low {_money(min(totals))}, '
          f"high {_money(max(totals))} ({len(account.samples)} samples); {len(account.firings)} firing(s)</p>")
    w(chart(account, start, end, numbers, zone))
    if not account.firings and not account.actions:
        return
    actions_by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for action in account.actions:
        actions_by_key[str(action.get("key"))].append(action)
    w("<table><tr><th>#</th><th>time</th><th>local time</th><th>rule</th><th>target</th><th>decision</th><th>API call</th>"
      "<th>result</th><th>closedPositions (before the close)</th><th>closed</th><th>P&amp;L at close</th></tr>")
    seen_keys: set[str] = set()
    for fired in account.firings:
        key = str(fired.get("key"))
        calls = actions_by_key.get(key, []) if key not in seen_keys else []
        seen_keys.add(key)
        _firing_rows(fired, calls, numbers.get(id(fired), 0), w)
    for key, calls in actions_by_key.items():  # calls whose firing was on another day (retries)
        if key not in seen_keys:
            _firing_rows(None, calls, 0, w)
    w("</table>")


def _firing_rows(fired: dict[str, Any] | None, calls: list[dict[str, Any]], number: int, w: Any) -> None:
    span = max(1, len(calls))
    head = ""
    if fired is not None:
        inputs = fired.get("inputs") or {}
        seen = ", ".join(f"{k} {v:,.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in inputs.items() if k != "position")
        head = (f'<td rowspan="{span}" class=n>{number}</td><td rowspan="{span}">{_time(fired)}</td>'
                f'<td rowspan="{span}">{_e(str(fired.get("local_time") or "")[11:23])}</td>'
                f'<td rowspan="{span}">{_e(fired.get("rule"))}</td>'
                f'<td rowspan="{span}">{_e(fired.get("instrument") or "account")}</td>'
                f'<td rowspan="{span}">{_e(fired.get("action"))}{" (dry run)" if fired.get("dry_run") else ""}<br><small>{_e(seen)}; '
                f'threshold: {_e(threshold_text(fired.get("threshold")))}</small></td>')
    else:
        head = (f'<td rowspan="{span}"></td><td rowspan="{span}">{_time(calls[0])}</td><td rowspan="{span}"></td>'
                f'<td rowspan="{span}">{_e(calls[0].get("rule"))}</td><td rowspan="{span}">{_e(calls[0].get("instrument"))}</td>'
                f'<td rowspan="{span}">(fired earlier)</td>')
    if not calls:
        what = "no API call recorded"
        if fired is not None and fired.get("action") == "alert":
            what = f"alert (no request; sent to the notify targets): {_e(fired.get('reason'))}"
        w(f"<tr>{head}<td colspan=5>{what}</td></tr>")
        return
    for i, call in enumerate(calls):
        req = call.get("request") or {}
        closed = closed_positions(call)
        closed_txt = "<br>".join(
            f"{_e(c.get('marketPosition'))} {_e(c.get('quantity'))} {_e(c.get('instrument'))} avg {_e(c.get('averagePrice'))} "
            f"mkt {_e(c.get('marketPrice'))}" for c in closed) or _e(call.get("error") or "")
        qty = sum(closed_quantity(call, c) for c in closed) if is_order_change(call) else 0
        pnl = sum(closed_pnl(call, c) for c in closed) if is_order_change(call) else None
        result = (f"{_e(call.get('status'))} {_e(call.get('outcome'))}, {_e(call.get('latency_ms'))} ms"
                  + (" (dry run)" if call.get("dry_run") else ""))
        w(f"<tr>{head if i == 0 else ''}<td><code>{_e(req.get('method'))} {_e(req.get('path'))}<br>"
          f"{_e(json.dumps(req.get('json')))}</code></td>"
          f"<td>{result}</td><td>{closed_txt}</td><td class=n>{qty if closed else ''}</td>"
          f"<td class=n>{_money(pnl) if closed else ''}</td></tr>")


def _other(day: Day, w: Any) -> None:
    if not day.other:
        return
    w("<h2>Other decisions and events</h2><table><tr><th>time</th><th>event</th><th>rule</th><th>target</th><th>detail</th></tr>")
    from riskd.trail import describe

    for line in day.other:
        target = " ".join(str(x) for x in (line.get("account"), line.get("instrument")) if x)
        w(f"<tr><td>{_time(line)}</td><td>{_e(line.get('event'))}</td><td>{_e(line.get('rule'))}</td><td>{_e(target)}</td>"
          f"<td>{_e(describe(line))}</td></tr>")
    w("</table>")


# ---------------------------------------------------------------------------------------------
# The command.


def main(files: list[Path], day: str | None = None, output: str | None = None) -> int:
    """`riskd report`: write the page for trading `day` (YYYY-MM-DD; default: the latest) to `output`
    (a path, - for stdout; default riskd-report-DAY.html); 0 ok, 1 no such trail or day, 2 a bad date."""
    try:
        ordered = chain_order(files)
    except TrailError as exc:
        print(f"riskd report: {exc}", file=sys.stderr)
        return 1
    lines = list(read(ordered))
    if day is None:
        found = days_in(lines)
        if not found:
            print("riskd report: the trail has no samples or firings yet", file=sys.stderr)
            return 1
        day = found[-1]
    else:
        try:
            datetime.strptime(day, "%Y-%m-%d")
        except ValueError:
            print(f"riskd report: --date {day!r}: write YYYY-MM-DD (the trading day)", file=sys.stderr)
            return 2
    collected = collect(lines, day)
    if not collected.lines:
        print(f"riskd report: nothing in the trail for trading day {day} (days with data: {', '.join(days_in(lines)) or 'none'})",
              file=sys.stderr)
        return 1
    page = build(collected, verify(ordered), [str(p) for p in ordered], datetime.now(timezone.utc))
    target = output or f"riskd-report-{day}.html"
    if target == "-":
        sys.stdout.write(page)
    else:
        Path(target).write_text(page, encoding="utf-8")
        print(f"wrote {target}")
    return 0
