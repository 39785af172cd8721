"""Reading audit trails: `riskd audit` (filter, table, JSON, per-rule summary, follow, verify)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from riskd.audit import GENESIS, chain_hash


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for number, raw in enumerate(fh, start=1):
            yield number, raw


def verify(path: Path) -> tuple[bool, str]:
    """Given a trail, return (intact, message). A torn final line (crash) is reported but tolerated
    when the next start recorded `trail_repaired` right after it."""
    previous, expected_seq, count = GENESIS, 1, 0
    torn_at: int | None = None
    for number, raw in read_lines(path):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
            if not isinstance(line, dict) or "hash" not in line or "seq" not in line:
                raise ValueError("no seq/hash")
        except ValueError:
            if torn_at is None:
                torn_at = number
                continue
            return False, f"line {number}: not a JSON audit line"
        if torn_at is not None and line.get("event") != "trail_repaired":
            return False, f"line {torn_at}: not a JSON audit line"
        torn_at = None
        if line["seq"] != expected_seq:
            return False, f"line {number}: seq {line['seq']} where {expected_seq} was expected (a line was deleted, inserted or reordered)"
        if chain_hash(previous, line) != line["hash"]:
            return False, f"line {number}: hash mismatch (seq {line['seq']}: the line was edited, or the one before it changed)"
        previous, expected_seq, count = line["hash"], expected_seq + 1, count + 1
    if torn_at is not None:
        return False, f"line {torn_at}: truncated last line (restart riskd to record trail_repaired)"
    return True, f"ok: {count} lines, chain intact"


def _parse_time(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _events(path: Path, args: argparse.Namespace, follow: bool = False) -> Iterator[dict[str, Any]]:
    since = _parse_time(args.since) if args.since else None
    until = _parse_time(args.until) if args.until else None
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        while True:
            raw = fh.readline()
            if not raw:
                if not follow:
                    return
                time.sleep(0.5)
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if args.rule and line.get("rule") != args.rule:
                continue
            if args.account and str(line.get("account", "")).lower() != args.account.lower():
                continue
            if args.instrument and not str(line.get("instrument") or "").upper().startswith(args.instrument.upper()):
                continue
            if args.event and line.get("event") not in args.event.split(","):
                continue
            ts = _parse_time(line["ts"]) if "ts" in line else None
            if ts and ((since and ts < since) or (until and ts > until)):
                continue
            yield line


def _row(line: dict[str, Any]) -> str:
    target = " ".join(str(x) for x in (line.get("account"), line.get("instrument")) if x)
    detail = ""
    event = line.get("event")
    if event == "action":
        req = line.get("request") or {}
        closed = (line.get("response") or {}).get("closedPositions") if isinstance(line.get("response"), dict) else None
        closed_txt = ", ".join(f"{c.get('marketPosition')} {c.get('quantity')} {c.get('instrument')}" for c in closed or [])
        detail = f"{req.get('method')} {req.get('path')} {json.dumps(req.get('json'))} -> {line.get('status')} {line.get('outcome')}"
        detail += f" closed [{closed_txt}]" if closed is not None else (f" {line.get('error')}" if line.get("error") else "")
    elif event == "fired":
        detail = f"{line.get('action')} inputs={json.dumps(line.get('inputs'), default=str)}"
    elif event in ("api_error",):
        detail = f"{line.get('path')} {line.get('status')} {line.get('error')} ({line.get('retry')})"
    elif line.get("reason"):
        detail = str(line.get("reason"))
    return f"{line.get('ts', ''):24} {line.get('seq', ''):>6} {event:16} {line.get('rule') or '':24} {target:22} {detail}"


def summary(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per rule and UTC day: firings, API calls, contracts closed, P&L at close (from closedPositions)."""
    table: dict[tuple[str, str], dict[str, Any]] = defaultdict(lambda: {"firings": 0, "actions": 0, "failed": 0, "contracts_closed": 0, "pnl_at_close": 0.0})
    for line in lines:
        rule = line.get("rule")
        if not rule:
            continue
        row = table[(rule, line.get("ts", "")[:10])]
        if line.get("event") == "fired":
            row["firings"] += 1
        elif line.get("event") == "action":
            row["actions"] += 1
            if not line.get("ok"):
                row["failed"] += 1
            response = line.get("response")
            if isinstance(response, dict):
                for pos in response.get("closedPositions") or []:
                    row["contracts_closed"] += _closed_quantity(line, pos)
                    row["pnl_at_close"] += float(pos.get("unrealizedProfitLoss") or 0.0) * _closed_share(line, pos)
    return [{"rule": rule, "day": day, **values, "pnl_at_close": round(values["pnl_at_close"], 2)} for (rule, day), values in sorted(table.items())]


def _closed_quantity(line: dict[str, Any], pos: dict[str, Any]) -> int:
    """closedPositions shows the position BEFORE the close; the request says how much of it went."""
    size = int(pos.get("quantity") or 0)
    body = (line.get("request") or {}).get("json") or {}
    if body.get("quantity") is not None:
        return min(int(body["quantity"]), size)
    if body.get("percent") is not None:
        import math

        return min(size, math.ceil(size * float(body["percent"]) - 1e-9))
    return size


def _closed_share(line: dict[str, Any], pos: dict[str, Any]) -> float:
    size = int(pos.get("quantity") or 0)
    return _closed_quantity(line, pos) / size if size else 0.0


def main(path: Path, args: argparse.Namespace) -> int:
    if not path.exists():
        print(f"riskd audit: {path}: no such file", file=sys.stderr)
        return 1
    if args.verify:
        ok, message = verify(path)
        print(message, file=sys.stdout if ok else sys.stderr)
        return 0 if ok else 1
    if args.summary:
        rows = summary(list(_events(path, args)))
        if args.json:
            for row in rows:
                print(json.dumps(row))
        else:
            print(f"{'rule':28} {'day':10} {'firings':>7} {'actions':>7} {'failed':>6} {'contracts':>9} {'pnl_at_close':>12}")
            for r in rows:
                print(f"{r['rule']:28} {r['day']:10} {r['firings']:7} {r['actions']:7} {r['failed']:6} {r['contracts_closed']:9} {r['pnl_at_close']:12.2f}")
        return 0
    try:
        for line in _events(path, args, follow=args.follow):
            print(json.dumps(line) if args.json else _row(line), flush=args.follow)
    except KeyboardInterrupt:
        pass
    return 0
