"""Reading audit trails: `riskd audit` (filter, table, JSON Lines, per-rule summary, follow, verify).

A trail is one file or a set of files in chain order (the live file and the files logrotate made
of it: `audit.jsonl.1`, `audit.jsonl-20261127.gz`, ...). Files are put in chain order by their
first `seq`, whatever order they are named in; gzip, bzip2 and xz files are read as they are.

The "day" of the summary and of `riskd report` is the trading session (trade date) riskd recorded
on the line (`session`, on `fired` and `sample` lines; an `action` takes the session of the firing
it belongs to), else the session its time falls in (zone and session start from the `started`
line). A UTC date would cut the evening session in two.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import itertools
import json
import lzma
import math
import os
import re
import shutil
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time as dtime, timedelta, timezone
from fnmatch import fnmatchcase
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Literal, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from riskd import events, samples
from riskd.chain import GENESIS, HEAD_SUFFIX, chain_hash, parse_head, render
from riskd.conditions import REGISTRY
from riskd.errors import TrailError
from riskd.events import of as event_of
from riskd.schedule import format_span

ROTATED = re.compile(r"^(\.\d+|-\d{8}(\d{2})?)(\.(gz|bz2|xz))?$")
DEFAULT_HIDDEN = frozenset({events.SAMPLE.name, events.SAMPLES.name})  # shown only when asked for (--event sample / --all)
ORDER_PATHS = ("/positions/close", "/positions/flatten")



# ---------------------------------------------------------------------------------------------
# Files.


def open_binary(path: Path) -> IO[bytes]:
    """Open a trail file for reading bytes, decompressing gzip/bzip2/xz by their magic number."""
    fh = path.open("rb")
    magic = fh.read(6)
    fh.seek(0)
    if magic.startswith(b"\x1f\x8b"):
        fh.close()
        return cast(IO[bytes], gzip.open(path, "rb"))  # a GzipFile: typeshed types it as BufferedIOBase only
    if magic.startswith(b"BZh"):
        fh.close()
        return bz2.open(path, "rb")
    if magic.startswith(b"\xfd7zXZ\x00"):
        fh.close()
        return lzma.open(path, "rb")
    return fh


def rotated_siblings(live: Path) -> list[Path]:
    """Given the live trail path, return the files logrotate made of it (any order)."""
    if not live.parent.is_dir():
        return []
    return [p for p in live.parent.iterdir()
            if p.name.startswith(live.name) and p != live and ROTATED.match(p.name[len(live.name):]) and p.is_file()]


def _first_seq(path: Path) -> int | None:
    with open_binary(path) as fh:
        for raw in fh:
            line = _parse(raw.rstrip(b"\n"))
            if line is not None:
                return line["seq"]
    return None


def chain_order(paths: Iterable[Path]) -> list[Path]:
    """Given trail files, return them in chain order (by first seq); raise TrailError for a missing
    file or two files that start at the same seq."""
    keyed = []
    for path in paths:
        if not path.is_file():
            raise TrailError(f"{path}: no such file")
        first = _first_seq(path)
        keyed.append((first if first is not None else math.inf, str(path), path))
    keyed.sort()
    for (a, _, pa), (b, _, pb) in zip(keyed, keyed[1:]):
        if a == b and a != math.inf:
            raise TrailError(f"{pa} and {pb} both start at seq {a}: give one chain at a time")
    return [p for _, _, p in keyed]


def default_files(live: Path) -> list[Path]:
    """The live trail and its rotated files, in chain order."""
    files = rotated_siblings(live) + ([live] if live.exists() else [])
    if not files:
        raise TrailError(f"{live}: no such file")
    return chain_order(files)


def _parse(body: bytes) -> dict[str, Any] | None:
    try:
        line = json.loads(body)
    except ValueError:
        return None
    if not isinstance(line, dict) or not isinstance(line.get("seq"), int) or not isinstance(line.get("hash"), str):
        return None
    return line


def read(paths: list[Path]) -> Iterator[dict[str, Any]]:
    """Every audit line of the files, in order (incomplete or foreign lines skipped)."""
    for path in paths:
        with open_binary(path) as fh:
            for raw in fh:
                line = _parse(raw.rstrip(b"\n"))
                if line is not None:
                    yield line


# ---------------------------------------------------------------------------------------------
# Verification.


@dataclass
class Verdict:
    ok: bool
    message: str
    notes: list[str] = field(default_factory=list)
    lines: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    last_hash: str | None = None
    files: list[str] = field(default_factory=list)


class _Bad(Exception):
    pass


def verify(paths: list[Path]) -> Verdict:
    """Like `verify_once`; a live trail whose last line is caught half-written by the reader is
    read once more before it is called incomplete."""
    verdict = verify_once(paths)
    if not verdict.ok and "incomplete last line" in verdict.message:
        time.sleep(0.2)
        verdict = verify_once(paths)
    return verdict


def verify_once(paths: list[Path]) -> Verdict:
    """Given trail files (any order), check the chain: every line is riskd's rendering of itself,
    links to the line before it by `prev`/`hash`, and has the next `seq`; files link by their
    `rotated` first line; a torn line is accepted only with the `trail_repaired` line that records
    it; the live file's head (`<file>.head`) shows no line was cut from the end.
    Return a Verdict; its message names the first bad line as FILE:LINE."""
    try:
        files = chain_order(paths)
    except TrailError as exc:
        return Verdict(False, str(exc))
    verdict = Verdict(True, "", files=[str(p) for p in files])
    head = _head_for(files[-1])
    state: dict[str, Any] = {"prev": None, "expected": None, "hash_at_head": None}
    try:
        for index, path in enumerate(files):
            _verify_file(path, index, state, verdict, head)
    except _Bad as bad:
        verdict.ok, verdict.message = False, str(bad)
        return verdict
    if verdict.lines == 0:
        return Verdict(False, f"{files[0]}: no audit lines", files=verdict.files)
    if head is not None:
        last = files[-1]
        if head["seq"] > (verdict.last_seq or 0):
            return Verdict(False, f"{last}: ends at seq {verdict.last_seq}, but riskd wrote up to seq {head['seq']} "
                                  f"({last.name}{HEAD_SUFFIX}): seq {(verdict.last_seq or 0) + 1}..{head['seq']} were cut off the end",
                           files=verdict.files)
        if state["hash_at_head"] != head["hash"]:
            return Verdict(False, f"{last}: the line with seq {head['seq']} is not the line riskd wrote "
                                  f"(its hash differs from {last.name}{HEAD_SUFFIX})", files=verdict.files)
    verdict.message = (f"ok: {verdict.lines} lines, seq {verdict.first_seq}..{verdict.last_seq} in {len(files)} file(s), "
                       f"chain intact; last hash {verdict.last_hash}")
    return verdict


def _head_for(path: Path) -> dict[str, Any] | None:
    """The head record of a live trail, when it describes this very file (read before the file)."""
    head_path = path.with_name(path.name + HEAD_SUFFIX)
    try:
        data = parse_head(head_path.read_bytes())
        return data if data is not None and data.get("ino") == path.stat().st_ino else None
    except OSError:
        return None


def _verify_file(path: Path, index: int, state: dict[str, Any], verdict: Verdict, head: dict[str, Any] | None) -> None:
    junk: bytearray | None = None
    junk_at = (0, 0)  # (line number, byte offset) of the first junk line
    offset = 0
    first_in_file = True
    with open_binary(path) as fh:
        for number, raw in enumerate(fh, start=1):
            where = f"{path}:{number}"
            body = raw[:-1] if raw.endswith(b"\n") else raw
            line = _parse(body)
            if line is None:
                if junk is None:
                    junk, junk_at = bytearray(), (number, offset)
                junk += raw
                offset += len(raw)
                continue
            if junk is not None:
                _check_repair(line, bytes(junk), junk_at, path, verdict)
                junk = None
            _check_line(line, body, where, index, first_in_file, state, verdict)
            if head is not None and line["seq"] == head["seq"]:
                state["hash_at_head"] = line["hash"]
            first_in_file = False
            offset += len(raw)
    if junk is not None:
        number, _ = junk_at
        if not junk.strip(b"\x00 \n"):
            what = "NUL bytes or blank lines after the last line (a power loss?)"
        elif b"\n" not in junk:
            what = "an incomplete last line (a crash mid-write?)"
        else:
            what = "text that is not an audit line"
        raise _Bad(f"{path}:{number}: {what}; riskd records it as trail_repaired at its next start, and then the trail verifies")


def _check_repair(line: dict[str, Any], junk: bytes, junk_at: tuple[int, int], path: Path, verdict: Verdict) -> None:
    number, offset = junk_at
    torn = line.get("torn") if line.get("event") == events.TRAIL_REPAIRED.name else None
    if not isinstance(torn, dict):
        raise _Bad(f"{path}:{number}: not an audit line (inserted or damaged), and no trail_repaired line records it")
    recorded = {hashlib.sha256(junk).hexdigest()}
    if junk.endswith(b"\n"):
        recorded.add(hashlib.sha256(junk[:-1]).hexdigest())  # riskd ended the torn line with a newline
    if torn.get("offset") != offset or torn.get("sha256") not in recorded:
        raise _Bad(f"{path}:{number}: not an audit line, and not the torn line that trail_repaired (seq {line['seq']}) recorded")
    verdict.notes.append(f"{path}:{number}: an incomplete line ({torn.get('bytes')} bytes, a crash mid-write) "
                         f"was recorded by trail_repaired, seq {line['seq']}")


def _check_line(line: dict[str, Any], body: bytes, where: str, index: int, first_in_file: bool,
                state: dict[str, Any], verdict: Verdict) -> None:
    seq = line["seq"]
    if state["expected"] is None:
        if seq == 1:
            state["prev"] = GENESIS
        elif isinstance(line.get("previous_hash"), str) and line.get("previous_seq") == seq - 1:
            state["prev"] = line["previous_hash"]
            verdict.notes.append(f"{where}: the chain starts at seq {seq}, continuing a file not given here "
                                 f"({line.get('previous_file') or 'name unknown'}; its last hash {line['previous_hash'][:16]}...)")
        else:
            raise _Bad(f"{where}: the trail starts at seq {seq} with no link to what came before "
                       f"(lines deleted from the start?)")
        state["expected"] = seq
        verdict.first_seq = seq
    expected = state["expected"]
    if seq != expected:
        if seq > expected:
            gap = f"seq {expected} is" if seq - 1 == expected else f"seq {expected}..{seq - 1} are"
            raise _Bad(f"{where}: seq {seq} where {expected} was expected: {gap} missing (deleted), or lines were reordered")
        raise _Bad(f"{where}: seq {seq} where {expected} was expected: a line was inserted, duplicated or reordered")
    if "previous_hash" in line and line["previous_hash"] != state["prev"]:
        raise _Bad(f"{where}: seq {seq} says the previous file ended with hash {str(line['previous_hash'])[:16]}..., "
                   f"but it ended with {state['prev'][:16]}... (files missing, or lines cut from the previous file)")
    if line.get("prev") != state["prev"][:16]:
        raise _Bad(f"{where}: seq {seq} does not link to the line before it (a line was deleted, inserted or reordered)")
    if chain_hash(state["prev"], line) != line["hash"]:
        raise _Bad(f"{where}: seq {seq}: the content does not match its hash (the line was edited)")
    if render(line).encode("utf-8") != body:
        raise _Bad(f"{where}: seq {seq}: the bytes are not what riskd wrote (spacing or escaping edited)")
    if index > 0 and first_in_file and line.get("event") != events.ROTATED.name:
        verdict.notes.append(f"{where}: the file starts without a `rotated` line (the chain goes on from the previous file)")
    state["prev"] = line["hash"]
    state["expected"] = seq + 1
    verdict.lines += 1
    verdict.last_seq, verdict.last_hash = seq, line["hash"]


# ---------------------------------------------------------------------------------------------
# Time arguments.

_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_when(text: str, now: datetime, *, end: bool = False) -> tuple[datetime, bool]:
    """Given --since/--until text, return (instant, inclusive). Accepts ISO 8601 times (UTC unless
    an offset is given), dates (a whole UTC day: --until includes it), `today`, `yesterday`, `now`
    and `90m`/`2h`/`3d` (that long ago). Raise ValueError otherwise."""
    t = text.strip().lower()
    if t == "now":
        return now, True
    if t in ("today", "yesterday"):
        day = now.astimezone(timezone.utc).date() - timedelta(days=1 if t == "yesterday" else 0)
        return _day_bound(day, end)
    m = _AGO.match(t)
    if m:
        return now - timedelta(seconds=float(m.group(1)) * _UNIT[m.group(2)]), True
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", t):
        return _day_bound(date.fromisoformat(t), end)
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)), True


def _day_bound(day: date, end: bool) -> tuple[datetime, bool]:
    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    return (start + timedelta(days=1), False) if end else (start, True)


def line_time(line: dict[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(line["ts"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# Filtering.


@dataclass(frozen=True)
class Filter:
    """What `riskd audit` was asked to show."""

    rule: str | None = None
    account: str | None = None
    instrument: str | None = None
    events: frozenset[str] | None = None
    since: tuple[datetime, bool] | None = None
    until: tuple[datetime, bool] | None = None
    day: str | None = None
    show_all: bool = False

    def __call__(self, line: dict[str, Any], day: str | None = None) -> bool:
        event = line.get("event")
        if self.events is not None:
            if event not in self.events:
                return False
        elif event in DEFAULT_HIDDEN and not self.show_all:
            return False
        if self.rule and not fnmatchcase(str(line.get("rule") or ""), self.rule):
            return False
        if self.account and not fnmatchcase(str(line.get("account") or "").lower(), self.account.lower()):
            return False
        if self.instrument and not instrument_matches(self.instrument, line.get("instrument")):
            return False
        if self.since or self.until:
            moment = line_time(line)
            if moment is None:
                return False
            if self.since and moment < self.since[0]:
                return False
            if self.until and (moment > self.until[0] if self.until[1] else moment >= self.until[0]):
                return False
        if self.day and day != self.day:
            return False
        return True


def instrument_matches(pattern: str, instrument: Any) -> bool:
    """Like rules: `MES` matches the root (MES 12-26, not MESX 12-26); `MES 12-26` one contract; globs work."""
    if not instrument:
        return False
    name = str(instrument).upper()
    pattern = pattern.upper()
    if " " not in pattern and not any(c in pattern for c in "*?["):
        return name.split(" ", 1)[0] == pattern
    return fnmatchcase(name, pattern)


def session_date(moment: datetime, zone: Any, start: dtime) -> str:
    """The trade date of the session holding `moment` (as riskd's engine defines it: a session
    starting at `start` local time belongs to the next calendar day)."""
    local = moment.astimezone(zone)
    day = local.date() + timedelta(days=1 if local.time() >= start else 0)
    return day.isoformat()


DEFAULT_ZONE, DEFAULT_SESSION_START = "America/New_York", dtime(18, 0)


class Days:
    """Assigns each line its trading day: its own `session`; for an action, the session of its
    firing (by `key`); else the session its time falls in, with the zone and session start of the
    latest `started` line (riskd's defaults before one is seen). Feed lines in order."""

    def __init__(self) -> None:
        self._by_key: dict[str, str] = {}
        self._zone: Any = ZoneInfo(DEFAULT_ZONE)
        self._start = DEFAULT_SESSION_START

    def __call__(self, line: dict[str, Any]) -> str:
        key = line.get("key")
        if line.get("event") == events.STARTED.name:
            self._learn(line)
        if line.get("session"):
            if key and line.get("event") == events.FIRED.name:
                self._by_key[str(key)] = str(line["session"])
            return str(line["session"])
        if key and str(key) in self._by_key:
            return self._by_key[str(key)]
        moment = line_time(line)
        return session_date(moment, self._zone, self._start) if moment else ""

    def _learn(self, started: dict[str, Any]) -> None:
        try:
            if started.get("timezone"):
                self._zone = ZoneInfo(str(started["timezone"]))
            if started.get("session_start"):
                self._start = dtime.fromisoformat(str(started["session_start"]))
        except (ValueError, KeyError, ZoneInfoNotFoundError):
            pass


# ---------------------------------------------------------------------------------------------
# Summary.


def closed_quantity(line: dict[str, Any], pos: dict[str, Any]) -> int:
    """closedPositions shows each position BEFORE the close; the request says how much of it went
    (`quantity` wins over `percent`; a percent rounds up in contracts, as the API does)."""
    size = int(pos.get("quantity") or 0)
    body = (line.get("request") or {}).get("json") or {}
    if body.get("quantity") is not None:
        return min(int(body["quantity"]), size)
    if body.get("percent") is not None:
        return min(size, max(1, math.ceil(round(size * float(body["percent"]), 9))))
    return size


def closed_pnl(line: dict[str, Any], pos: dict[str, Any]) -> float:
    """The P&L of the part of a closedPositions entry that the call closed (its unrealized P&L pro rata)."""
    return float(pos.get("unrealizedProfitLoss") or 0.0) * closed_quantity(line, pos) / max(1, int(pos.get("quantity") or 1))


def closed_text(line: dict[str, Any], pos: dict[str, Any]) -> str:
    """One closedPositions entry of an action line as a trader reads it: `4 of Long 4 MES 12-26 at -520.00`."""
    return (f"{closed_quantity(line, pos)} of {pos.get('marketPosition')} {pos.get('quantity')} {pos.get('instrument')} "
            f"at {_money(closed_pnl(line, pos))}")


def closed_positions(line: dict[str, Any]) -> list[dict[str, Any]]:
    """The action line's closedPositions as the API returned them (empty when none)."""
    response = line.get("response")
    closed = response.get("closedPositions") if isinstance(response, dict) else None
    return [p for p in closed if isinstance(p, dict)] if isinstance(closed, list) else []


def is_order_change(line: dict[str, Any]) -> bool:
    path = str((line.get("request") or {}).get("path") or "")
    return path.endswith(ORDER_PATHS)


def summary(lines: Iterable[dict[str, Any]], keep: Filter | None = None) -> list[dict[str, Any]]:
    """Per trading day and rule: firings (dry-run ones also counted apart), closes (API calls that
    closed something), contracts closed and P&L at close (both from closedPositions), failed calls,
    superseded and missed decisions."""
    days = Days()
    table: dict[tuple[str, str], dict[str, Any]] = defaultdict(lambda: {
        "firings": 0, "dry_run": 0, "closes": 0, "contracts_closed": 0, "pnl_at_close": 0.0,
        "failed": 0, "superseded": 0, "missed": 0})
    for line in lines:
        day = days(line)
        rule = line.get("rule")
        if not rule or (keep is not None and not keep(line, day)):
            continue
        row = table[(day, str(rule))]
        event = line.get("event")
        if event == events.FIRED.name:
            row["firings"] += 1
            row["dry_run"] += 1 if line.get("dry_run") else 0
        elif event in (events.SUPERSEDED.name, events.MISSED.name):
            row[event] += 1
        elif event == events.ACTION.name:
            if not line.get("ok"):
                row["failed"] += 1
                continue
            closed = closed_positions(line)
            if closed and is_order_change(line) and not line.get("dry_run"):
                row["closes"] += 1
                for pos in closed:
                    qty = closed_quantity(line, pos)
                    size = int(pos.get("quantity") or 0)
                    row["contracts_closed"] += qty
                    row["pnl_at_close"] += float(pos.get("unrealizedProfitLoss") or 0.0) * (qty / size if size else 0.0)
    return [{"day": day, "rule": rule, **values, "pnl_at_close": round(values["pnl_at_close"], 2)}
            for (day, rule), values in sorted(table.items())]


# ---------------------------------------------------------------------------------------------
# The table.


def _money(value: Any) -> str:
    try:
        return f"{round(float(value), 2) + 0.0:,.2f}"  # + 0.0: a flat short's -0.0 reads 0.00
    except (TypeError, ValueError):
        return str(value)


def _short_inputs(inputs: Any) -> str:
    if not isinstance(inputs, dict):
        return ""
    parts = []
    for key, value in inputs.items():
        if key == "position" and isinstance(value, dict):
            parts.append(f"position {value.get('side')} {value.get('quantity')} @{value.get('average_price')}")
        elif isinstance(value, float):
            parts.append(f"{key}={value:.2f}")
        else:
            parts.append(f"{key}={value}")
    return ", ".join(parts)


def closed_summary(line: dict[str, Any]) -> str:
    """What an action line's call closed, from its closedPositions: "closed 4 of Long 4 MES 12-26 at -520.00"."""
    return "closed " + ", ".join(closed_text(line, c) for c in closed_positions(line))


def outcome(line: dict[str, Any]) -> str:
    """The result of an action line in a few words, for the console: what it closed, that it was a
    dry run (nothing sent), or how it failed."""
    req = line.get("request") or {}
    call = f"{req.get('method')} {req.get('path')}"
    if line.get("dry_run"):
        return f"dry run, nothing sent: would {call} {json.dumps(req.get('json'))}"
    if not line.get("ok"):
        return f"{call} failed: {line.get('outcome')} {line.get('status') or ''} {line.get('error') or ''}".rstrip()
    if closed_positions(line):
        return closed_summary(line)
    return f"{call}: ok ({line.get('status')})"


def threshold_text(threshold: Any) -> str:
    """A fired line's threshold for people: "position P&L below -$500", "$300 below the peak after +$500"
    (the trail keeps the JSON: {"account_drawdown": {"limit": ["dollars", 300.0], "after": 500.0}}); each
    condition words its own (riskd.conditions), `at` and `for` are the rule's."""
    if not isinstance(threshold, dict):
        return json.dumps(threshold)
    parts: list[str] = []
    for name, spec in threshold.items():
        condition = REGISTRY.get(name)
        text = condition.words(spec) if condition is not None and condition.words is not None else None
        if text is not None:
            parts.append(text)
        elif name == "at":
            parts.append(f"at {spec}")
        elif name == "for_s":
            parts.append(f"held for {format_span(timedelta(seconds=float(spec)))}")
        else:
            parts.append(f"{name} {json.dumps(spec)}")
    return ", ".join(parts)


def describe(line: dict[str, Any]) -> str:
    """One readable sentence for a line, per event."""
    event = line.get("event")
    if event == events.ACTION.name:
        req = line.get("request") or {}
        text = f"{req.get('method')} {req.get('path')} {json.dumps(req.get('json'))} -> {line.get('status')} {line.get('outcome')}"
        text += f" {line.get('latency_ms')}ms" if line.get("latency_ms") is not None else ""
        if closed_positions(line):
            text += "; " + closed_summary(line)
        elif line.get("error"):
            text += f"; {line.get('error')}"
        return text + (" [dry run]" if line.get("dry_run") else "")
    if event == events.FIRED.name:
        text = f"{line.get('action')}: {_short_inputs(line.get('inputs'))}; threshold {threshold_text(line.get('threshold'))}"
        text += f"; local {line.get('local_time')}" if line.get("local_time") else ""
        return text + (" [dry run]" if line.get("dry_run") else "")
    if event == events.SAMPLE.name:
        positions = line.get("positions") or []
        return (f"P&L {_money(line.get('pnl'))} (realized {_money(line.get('realized'))}, unrealized "
                f"{_money(line.get('unrealized'))}), {len(positions)} position(s)")
    if event == events.API_ERROR.name:
        return f"{line.get('path')} {line.get('status')} {line.get('error')} ({line.get('retry')})"
    if event == events.RULES_LOADED.name:
        return f"{line.get('rule_count')} rules in {len(line.get('files') or {})} files ({line.get('reason')})"
    if event == events.RULES_REJECTED.name:
        return "; ".join(str(e) for e in line.get("errors") or [])
    if event == events.STARTED.name:
        return f"riskd {line.get('version')} pid {line.get('pid')}" + (" dry run" if line.get("dry_run") else "")
    if event == events.STOPPED.name:
        return f"{line.get('reason')} after {line.get('ticks')} ticks, {line.get('firings')} firings"
    if event == events.ROTATED.name:
        return f"continues {line.get('previous_file') or 'the previous file'} (seq {line.get('previous_seq')})"
    if event == events.TRAIL_REPAIRED.name:
        torn = line.get("torn") or {}
        return (f"{torn.get('bytes', 0)} torn bytes at offset {torn.get('offset')}"
                + (f"; missing {line['missing']}" if line.get("missing") else ""))
    if event == events.CONTROL.name:
        what = "--all" if line.get("all") else (line.get("account") or line.get("rule") or "")
        what += f" {line['instrument']}" if line.get("instrument") else ""
        what += f" until {line['until']}" if line.get("until") else ""
        return f"{line.get('verb')} {what} asked by {line.get('user')}: {line.get('reason')}"
    if event == events.CONTROL_RESULT.name:
        return f"{line.get('verb')} {line.get('status')}: {line.get('message')} (asked by {line.get('user')})"
    if event == events.TRAIL_UNWRITABLE.name:
        return f"{line.get('error')}"
    if event == events.TRAIL_WRITABLE.name:
        return f"since {line.get('since')}: {line.get('held')} lines held, {line.get('samples_dropped')} samples dropped"
    return str(line.get("reason") or "")


def table_row(line: dict[str, Any], width: int | None) -> str:
    ts = str(line.get("ts", "")).replace("T", " ").rstrip("Z")
    target = " ".join(str(x) for x in (line.get("account"), line.get("instrument")) if x)
    text = f"{ts:23} {line.get('seq', ''):>6} {str(line.get('event')):15} {str(line.get('rule') or ''):22} {target:20} {describe(line)}"
    return text if width is None or len(text) <= width else text[: width - 1] + "…"


TABLE_HEADER = f"{'time (UTC)':23} {'seq':>6} {'event':15} {'rule':22} {'target':20} detail"


# ---------------------------------------------------------------------------------------------
# The command.


@dataclass(frozen=True, slots=True)
class Query:
    """What `riskd audit` was asked: which lines (`keep`), what to do with them, and how to print them."""

    keep: Filter = field(default_factory=Filter)
    task: Literal["list", "summary", "verify"] = "list"
    json: bool = False
    follow: bool = False


def parse_filter(rule: str | None = None, account: str | None = None, instrument: str | None = None, events: str | None = None,
                 since: str | None = None, until: str | None = None, day: str | None = None, show_all: bool = False,
                 now: datetime | None = None) -> Filter:
    """Given `riskd audit`'s filter options as the user typed them (events comma-separated, times in the
    forms parse_when reads), return the Filter; raise FilterError naming the option that is wrong."""
    now = now or datetime.now(timezone.utc)
    named = frozenset(e.strip() for e in events.split(",") if e.strip()) if events else None
    for name in named or ():
        try:
            event_of(name)
        except KeyError as exc:
            raise FilterError(f"--event: {exc.args[0]}") from None
    return Filter(rule=rule, account=account, instrument=instrument, events=named or None,
                  since=_when("--since", since, now), until=_when("--until", until, now, end=True),
                  day=day, show_all=show_all)


class FilterError(ValueError):
    """A `riskd audit` filter option cannot be read (its message names the option)."""


def _when(option: str, text: str | None, now: datetime, end: bool = False) -> tuple[datetime, bool] | None:
    try:
        return parse_when(text, now, end=end) if text else None
    except ValueError as exc:
        raise FilterError(f"{option}: bad time: {exc}") from None


def main(files: list[Path], query: Query, out: IO[str] | None = None) -> int:
    """`riskd audit`: 0 ok, 1 a bad trail (or a missing file)."""
    out = out or sys.stdout
    if query.task == "verify":
        verdict = verify(files)
        for note in verdict.notes:
            print(f"note: {note}", file=out if verdict.ok else sys.stderr)
        print(verdict.message, file=out if verdict.ok else sys.stderr)
        return 0 if verdict.ok else 1
    keep = query.keep
    try:
        ordered = chain_order(files)
    except TrailError as exc:
        print(f"riskd audit: {exc}", file=sys.stderr)
        return 1
    if query.task == "summary":
        rows = summary(read(ordered), replace(keep, events=None, show_all=True))
        if query.json:
            for row in rows:
                print(json.dumps(row), file=out)
        else:
            print(f"{'day':10} {'rule':28} {'firings':>7} {'dry':>4} {'closes':>6} {'contracts':>9} {'P&L at close':>13} "
                  f"{'failed':>6} {'supersd':>7} {'missed':>6}", file=out)
            for r in rows:
                print(f"{r['day']:10} {r['rule']:28} {r['firings']:7} {r['dry_run']:4} {r['closes']:6} {r['contracts_closed']:9} "
                      f"{r['pnl_at_close']:13,.2f} {r['failed']:6} {r['superseded']:7} {r['missed']:6}", file=out)
        return 0
    tty = out.isatty()
    width = shutil.get_terminal_size().columns if tty else None
    if not query.json:
        print(TABLE_HEADER, file=out)
    days = Days()
    hidden = 0

    def show(line: dict[str, Any]) -> None:
        nonlocal hidden
        day = days(line)
        if not keep(line, day):
            hidden += line.get("event") in DEFAULT_HIDDEN and keep.events is None and not keep.show_all
            return
        print(render(line) if query.json else table_row(line, width), file=out, flush=query.follow)  # --json: the line as written

    try:
        # the table shows a `samples` line as one `sample` row per account (--event sample, --account
        # pick them); --json prints the lines as written
        lines = itertools.chain(read(ordered), follow(ordered[-1]) if query.follow else ())
        for line in lines if query.json else samples.expand(lines):
            show(line)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        return 0
    if hidden and tty and not query.json:
        print(f"({hidden} per-minute sample lines hidden: --event sample or --all to show them)", file=sys.stderr)
    return 0


def follow(path: Path, poll: float = 0.2) -> Iterator[dict[str, Any]]:
    """Yield lines appended to the live trail from its current end on, across rotations (like tail -F)."""
    fh = path.open("rb")
    fh.seek(0, os.SEEK_END)
    ino = os.fstat(fh.fileno()).st_ino
    partial = b""
    while True:
        chunk = fh.readline()
        if chunk:
            partial += chunk
            if partial.endswith(b"\n"):
                line = _parse(partial.rstrip(b"\n"))
                partial = b""
                if line is not None:
                    yield line
            continue
        try:
            if os.stat(path).st_ino != ino:  # rotated: finish nothing more here, go on in the new file
                fh.close()
                fh = path.open("rb")
                ino, partial = os.fstat(fh.fileno()).st_ino, b""
                continue
        except FileNotFoundError:
            pass
        time.sleep(poll)
