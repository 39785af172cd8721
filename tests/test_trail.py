"""`riskd audit`: --verify against every kind of tampering, crash then restart, filters, summary,
table/JSON output, --follow across a rotation, rotated and compressed files."""

from __future__ import annotations

import gzip
import json
import queue
import signal
import subprocess
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from conftest import RISKD, read_audit, run_cli, write_policy
from riskd.audit import AuditTrail
from riskd.cli import main as cli_main
from riskd.trail import parse_when, summary, read

T0 = datetime(2026, 3, 10, 13, 30, tzinfo=timezone.utc)


class Clock:
    def __init__(self, start: datetime = T0, step: timedelta = timedelta(seconds=20)):
        self.now, self.step = start, step

    def __call__(self) -> datetime:
        self.now += self.step
        return self.now


def _close(account: str, instrument: str, body: dict[str, Any], before_qty: int, pnl: float, side: str = "Long") -> dict[str, Any]:
    return {
        "request": {"method": "POST", "path": f"accounts/{account}/positions/close", "json": {"instrument": instrument, **body}},
        "status": 200, "latency_ms": 12.5, "ok": True, "outcome": "ok", "error": None, "dry_run": False,
        "response": {"closedPositions": [{"type": "NinjaTrader.Cbi.Position", "account": account, "instrument": instrument,
                                          "instrumentType": "Future", "marketPosition": side, "quantity": before_qty,
                                          "averagePrice": 6000.0, "marketPrice": 5940.0, "unrealizedProfitLoss": pnl}],
                     "success": True},
    }


def record(path: Path) -> Path:
    """A day and a bit of trail, as riskd writes it: every kind of decision, two sessions."""
    t = AuditTrail(str(path), clock=Clock())
    t.emit("started", version="0.1.0", config="/etc/riskd/riskd.yaml", pid=4242, dry_run=False)
    t.emit("rules_loaded", source=["rules"], files={"rules/policy.yaml": "ab" * 32}, rule_count=2, reason="start")
    for account, pnl in (("Sim101", -40.0), ("Sim102", 120.0)):
        t.emit("sample", account=account, session="2026-03-10", reason="minute", pnl=pnl, realized=0.0, unrealized=pnl,
               commission=0.0, net_liquidation=50000 + pnl, positions=[])
    t.emit("fired", rule="mes-loss-cap", key="mes-loss-cap|Sim101|MES 12-26|t1", account="Sim101", instrument="MES 12-26",
           session="2026-03-10", action="close all", dry_run=False, inputs={"position_pnl": -600.0, "account_pnl": -640.0},
           threshold={"position_pnl": {"below": -500.0}}, local_time="2026-03-10T09:31:00.000-04:00")
    t.emit("action", rule="mes-loss-cap", key="mes-loss-cap|Sim101|MES 12-26|t1", account="Sim101", instrument="MES 12-26",
           **_close("Sim101", "MES 12-26", {}, 2, -600.0))
    t.emit("superseded", rule="trim", key="trim|Sim101|MES 12-26|t1", account="Sim101", instrument="MES 12-26",
           action="close 50%", dry_run=False, reason="mes-loss-cap closes more")
    t.emit("fired", rule="trim", key="trim|Sim102|MESX 12-26|t2", account="Sim102", instrument="MESX 12-26", session="2026-03-10",
           action="close 50%", dry_run=False, inputs={"account_pnl": 120.0}, threshold={}, local_time="2026-03-10T15:55:00.000-04:00")
    t.emit("action", rule="trim", key="trim|Sim102|MESX 12-26|t2", account="Sim102", instrument="MESX 12-26",
           **_close("Sim102", "MESX 12-26", {"percent": 0.5}, 3, 300.0))  # half of 3 rounds up to 2: P&L 200
    t.emit("api_error", path="accounts/snapshot", status=408, error="ninjatrader_disconnected", retry="next poll in 1.00s")
    t.emit("fired", rule="mes-loss-cap", key="mes-loss-cap|Sim101|MES 03-27|t3", account="Sim101", instrument="MES 03-27",
           session="2026-03-11", action="close all", dry_run=False, inputs={"position_pnl": -700.0}, threshold={})
    t.emit("action", rule="mes-loss-cap", key="mes-loss-cap|Sim101|MES 03-27|t3", account="Sim101", instrument="MES 03-27",
           request={"method": "POST", "path": "accounts/Sim101/positions/close", "json": {"instrument": "MES 03-27"}},
           status=500, latency_ms=30.0, ok=False, outcome="failed", response={"error": "Internal Server Error"}, error="HTTP 500")
    t.emit("stopped", reason="SIGTERM", pid=4242, ticks=100, firings=3)
    t.close()
    return path


@pytest.fixture
def recorded(tmp_path: Path) -> Path:
    return record(tmp_path / "audit.jsonl")


def audit(capsys: Any, *args: str) -> tuple[int, str, str]:
    code = cli_main(["audit", *args])
    out, err = capsys.readouterr()
    return code, out, err


def rewrite(path: Path, edit: Any) -> None:
    raw = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(edit(raw)))


# ---------------------------------------------------------------------------------------------
# --verify.


def test_verify_untouched_trail_exits_0_and_names_the_chain_head(recorded):
    done = run_cli("audit", str(recorded), "--verify")
    assert done.returncode == 0, done.stderr
    head = json.loads(recorded.read_text().splitlines()[-1])["hash"]
    assert done.stdout.startswith("ok: 13 lines, seq 1..13") and head in done.stdout


def _swap(raw: list[bytes]) -> list[bytes]:
    raw[5], raw[6] = raw[6], raw[5]
    return raw


TAMPERING = {
    # name: (edit of the lines, the line number the message must name, what it must say)
    "edited value": (lambda raw: raw[:5] + [raw[5].replace(b"-600.0", b"-60.0")] + raw[6:], 6, "edited"),
    "added whitespace": (lambda raw: raw[:5] + [raw[5].replace(b'"ts":', b' "ts":')] + raw[6:], 6, "not what riskd wrote"),
    "deleted line": (lambda raw: raw[:5] + raw[6:], 6, "missing"),
    "deleted first line": (lambda raw: raw[1:], 1, "starts at seq 2"),
    "swapped pair": (_swap, 6, "reordered"),
    "duplicated line": (lambda raw: raw[:6] + [raw[5]] + raw[6:], 7, "inserted"),
    "inserted text": (lambda raw: raw[:3] + [b"# reviewed, all fine\n"] + raw[3:], 4, "not an audit line"),
    "truncated mid-line": (lambda raw: raw[:-1] + [raw[-1][:50]], 13, "incomplete last line"),
}


@pytest.mark.parametrize("kind", list(TAMPERING))
def test_verify_fails_on_tampering_naming_the_first_bad_line(recorded, capsys, kind):
    edit, line, says = TAMPERING[kind]
    rewrite(recorded, edit)
    code, out, err = audit(capsys, str(recorded), "--verify")
    assert code == 1
    assert f"{recorded}:{line}:" in err and says in err, err


def test_verify_fails_when_lines_are_cut_off_the_end_at_a_line_boundary(recorded, capsys):
    rewrite(recorded, lambda raw: raw[:-2])
    code, _, err = audit(capsys, str(recorded), "--verify")
    assert code == 1 and "seq 12..13 were cut off the end" in err


def test_verify_checks_a_rotated_set_in_chain_order_including_compressed_files(tmp_path, capsys):
    live = tmp_path / "audit.jsonl"
    t = AuditTrail(str(live), clock=Clock())
    t.emit("started")
    t.emit("fired", rule="a")
    live.rename(tmp_path / "audit.jsonl.2")
    t.emit("action", rule="a")
    live.rename(tmp_path / "audit.jsonl.1")
    t.emit("stopped")
    t.close()
    with (tmp_path / "audit.jsonl.2").open("rb") as src, gzip.open(tmp_path / "audit.jsonl.2.gz", "wb") as dst:
        dst.write(src.read())
    (tmp_path / "audit.jsonl.2").unlink()
    (tmp_path / "riskd.yaml").write_text("audit_log: audit.jsonl\n")
    code, out, err = audit(capsys, "-c", str(tmp_path / "riskd.yaml"), "--verify")  # default: live + rotated files
    assert code == 0 and "in 3 file(s)" in out, err
    code, out, _ = audit(capsys, "-c", str(tmp_path / "riskd.yaml"), "--json")
    assert [json.loads(x)["event"] for x in out.splitlines()] == ["started", "fired", "rotated", "action", "rotated", "stopped"]
    rewrite(tmp_path / "audit.jsonl.1", lambda raw: raw[:-1])  # the middle file lost its last line
    code, _, err = audit(capsys, "-c", str(tmp_path / "riskd.yaml"), "--verify")
    assert code == 1 and "audit.jsonl:1:" in err


def test_run_crash_mid_line_then_restart_gives_a_trail_that_verifies(tmp_path, sim_factory, riskd_factory, token):
    scenario = {"accounts": [{"name": "Sim101", "positions": [{"instrument": "MES 12-26", "side": "long", "quantity": 2, "price": 6000.0}]}],
                "prices": {"MES 12-26": 5940.0}, "rate_limit": None}
    sim, server = sim_factory(scenario)
    rules = [{"name": "mes-loss-cap", "instruments": "MES", "when": {"position_pnl": {"below": -500}}, "then": {"close": "all"}}]
    config = write_policy(tmp_path, server.base_url, rules, poll_interval="200ms")
    first = riskd_factory(config, token)
    first.wait_for("action", timeout=10)
    first.proc.send_signal(signal.SIGKILL)  # a crash: no `stopped`
    first.proc.wait(5)
    data = first.audit_path.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    torn = data[: last_start + (len(data) - last_start) // 2]  # the crash tore the last line in half
    first.audit_path.write_bytes(torn)
    assert run_cli("audit", str(first.audit_path), "--verify").returncode == 1

    second = riskd_factory(config, token)
    second.wait_for("started", timeout=10, count=2)
    assert second.stop() == 0
    assert first.audit_path.read_bytes().startswith(torn + b"\n")  # earlier bytes never rewritten
    repaired = second.events("trail_repaired")
    assert len(repaired) == 1 and repaired[0]["torn"]["offset"] == last_start
    done = run_cli("audit", str(first.audit_path), "--verify")
    assert done.returncode == 0, done.stderr
    assert "incomplete line" in done.stdout


# ---------------------------------------------------------------------------------------------
# Reading.


def _events(out: str) -> list[tuple[str, Any]]:
    return [(x["event"], x.get("rule")) for x in map(json.loads, out.splitlines())]


def test_audit_filters_by_rule_account_instrument_event_and_time(recorded, capsys):
    _, out, _ = audit(capsys, str(recorded), "--json", "--rule", "trim")
    assert _events(out) == [("superseded", "trim"), ("fired", "trim"), ("action", "trim")]
    _, out, _ = audit(capsys, str(recorded), "--json", "--account", "sim102")
    assert [e for e, _ in _events(out)] == ["fired", "action"]  # samples hidden unless asked for
    _, out, _ = audit(capsys, str(recorded), "--json", "--account", "sim102", "--all")
    assert [e for e, _ in _events(out)] == ["sample", "fired", "action"]
    _, out, _ = audit(capsys, str(recorded), "--json", "--instrument", "MES")  # the root: never MESX
    assert {json.loads(x)["instrument"] for x in out.splitlines()} == {"MES 12-26", "MES 03-27"}
    _, out, _ = audit(capsys, str(recorded), "--json", "--instrument", "MES 03-27", "--event", "fired,action")
    assert _events(out) == [("fired", "mes-loss-cap"), ("action", "mes-loss-cap")]
    _, out, _ = audit(capsys, str(recorded), "--json", "--event", "sample")
    assert len(out.splitlines()) == 2
    _, out, _ = audit(capsys, str(recorded), "--json", "--since", "2026-03-10T13:32:00Z", "--until", "2026-03-10T13:33:00Z")
    assert [x["seq"] for x in map(json.loads, out.splitlines())] == [6, 7, 8, 9]
    _, out, _ = audit(capsys, str(recorded), "--json", "--date", "2026-03-11")
    assert _events(out) == [("fired", "mes-loss-cap"), ("action", "mes-loss-cap")]
    code, _, err = audit(capsys, str(recorded), "--since", "last tuesday")
    assert code == 2 and "bad time" in err


def test_audit_an_unknown_event_lists_the_events_instead_of_an_empty_table(recorded, capsys):
    code, out, err = audit(capsys, str(recorded), "--event", "fired,bogus")
    assert (code, out) == (2, "")
    assert err.startswith("riskd audit: --event: no event 'bogus'; the events are: started, stopped, ")


def test_audit_json_lines_are_the_trail_lines_verbatim(recorded, capsys):
    _, out, _ = audit(capsys, str(recorded), "--json", "--all")
    assert [json.loads(x) for x in out.splitlines()] == read_audit(recorded)


def test_audit_json_prints_the_lines_byte_for_byte_so_its_output_verifies(recorded, tmp_path, capsys):
    _, out, _ = audit(capsys, str(recorded), "--json", "--all")
    assert out.encode() == recorded.read_bytes()
    copy = tmp_path / "copy" / "audit.jsonl"
    copy.parent.mkdir()
    copy.write_text(out)
    code, out, _ = audit(capsys, str(copy), "--verify")
    assert code == 0 and out.startswith("ok: 13 lines")


def test_audit_table_shows_one_readable_row_per_line(recorded, capsys):
    _, out, _ = audit(capsys, str(recorded), "--rule", "mes-loss-cap")
    rows = out.splitlines()
    assert rows[0].startswith("time (UTC)") and len(rows) == 5
    assert "close all: position_pnl=-600.00" in rows[1] and "local 2026-03-10T09:31:00.000-04:00" in rows[1]
    assert "POST accounts/Sim101/positions/close" in rows[2] and "closed 2 of Long 2 MES 12-26 at -600.00" in rows[2]
    assert "HTTP 500" in rows[4]


def test_audit_summary_per_trading_day_and_rule_from_closed_positions(recorded, capsys):
    code, out, _ = audit(capsys, str(recorded), "--summary", "--json")
    rows = {(r["day"], r["rule"]): r for r in map(json.loads, out.splitlines())}
    assert rows[("2026-03-10", "mes-loss-cap")] | {} == {"day": "2026-03-10", "rule": "mes-loss-cap", "firings": 1, "dry_run": 0, "closes": 1,
                                                      "contracts_closed": 2, "pnl_at_close": -600.0, "failed": 0, "superseded": 0, "missed": 0}
    trim = rows[("2026-03-10", "trim")]
    assert (trim["firings"], trim["closes"], trim["contracts_closed"], trim["pnl_at_close"], trim["superseded"]) == (1, 1, 2, 200.0, 1)
    later = rows[("2026-03-11", "mes-loss-cap")]
    assert (later["firings"], later["closes"], later["failed"]) == (1, 0, 1)
    code, out, _ = audit(capsys, str(recorded), "--summary")
    assert code == 0 and out.splitlines()[0].split()[:3] == ["day", "rule", "firings"]


def test_audit_follow_prints_new_lines_across_a_rotation(tmp_path):
    live = tmp_path / "audit.jsonl"
    t = AuditTrail(str(live))
    t.emit("started")
    proc = subprocess.Popen([str(RISKD), "audit", str(live), "--follow", "--json", "--event", "fired"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    try:
        t.emit("fired", rule="one")
        assert json.loads(lines.get(timeout=10))["rule"] == "one"
        live.rename(tmp_path / "audit.jsonl.1")
        t.request_reopen()
        t.emit("sample")
        t.emit("fired", rule="two")
        assert json.loads(lines.get(timeout=10))["rule"] == "two"
    finally:
        proc.terminate()  # SIGINT may be ignored when the suite runs in the background
        proc.wait(5)
        t.close()


def test_parse_when_accepts_iso_dates_words_and_durations():
    now = datetime(2026, 3, 10, 12, 0, tzinfo=timezone.utc)
    assert parse_when("2h", now) == (now - timedelta(hours=2), True)
    assert parse_when("today", now) == (datetime(2026, 3, 10, tzinfo=timezone.utc), True)
    assert parse_when("2026-03-09", now, end=True) == (datetime(2026, 3, 10, tzinfo=timezone.utc), False)  # the whole day
    assert parse_when("2026-03-10T09:30:00-04:00", now)[0] == datetime(2026, 3, 10, 13, 30, tzinfo=timezone.utc)
    with pytest.raises(ValueError):
        parse_when("soon", now)


def test_summary_counts_nothing_closed_for_a_dry_run():
    lines = [{"event": "fired", "rule": "r", "key": "k", "session": "2026-03-10", "dry_run": True},
             {"event": "action", "rule": "r", "key": "k", "ok": True, "dry_run": True,
              "request": {"method": "POST", "path": "accounts/A/positions/close", "json": {"instrument": "MES 12-26"}},
              "response": {"success": True, "dry_run": True}}]
    (row,) = summary(lines)
    assert (row["day"], row["firings"], row["dry_run"], row["closes"], row["contracts_closed"]) == ("2026-03-10", 1, 1, 0, 0)


def test_read_skips_a_torn_line(tmp_path):
    path = record(tmp_path / "audit.jsonl")
    rewrite(path, lambda raw: raw[:3] + [b'{"ts":"2026'] + [b"\n"] + raw[3:])
    assert len(list(read([path]))) == 13


def test_trading_day_is_the_session_trade_date_not_the_utc_date():
    from riskd.trail import Days

    days = Days()
    evening = {"event": "api_error", "ts": "2026-03-09T22:30:00.000Z"}  # 18:30 New York: Tuesday's session
    assert days(evening) == "2026-03-10"
    assert days({"event": "api_error", "ts": "2026-03-09T21:59:00.000Z"}) == "2026-03-09"
    days({"event": "started", "ts": "2026-03-09T00:00:00.000Z", "timezone": "Europe/Berlin", "session_start": "23:45"})
    assert days(evening) == "2026-03-09"  # 23:30 in Berlin, before its 23:45 session start
    assert days({"event": "fired", "key": "k", "session": "2026-03-12", "ts": "2026-03-09T22:30:00.000Z"}) == "2026-03-12"
    assert days({"event": "action", "key": "k", "ts": "2026-03-09T22:30:01.000Z"}) == "2026-03-12"  # its firing's day


def test_every_condition_words_its_threshold_for_people_as_a_fired_line_carries_it():
    from zoneinfo import ZoneInfo

    from riskd import engine, rules as rules_mod
    from riskd.conditions import REGISTRY
    from riskd.trail import threshold_text

    ny = ZoneInfo("America/New_York")
    examples = {"between": "[09:30, '16:00']", "outside": "[09:30, '16:00']", "position_pnl": "{below: -500}",
                "position_size": "{above: 5}", "position_age": "{above: 10m}", "account_pnl": "{below: -1000, period: week}",
                "account_drawdown": "{limit: 300, after: 500}", "instrument_size": "{above: 5}", "account_size": "{above: 10}",
                "near_event": "{before: 2m, after: 1m, tags: [fomc]}", "trades": "{above: 10}", "loss_streak": "{above: 2}"}
    assert set(examples) == set(REGISTRY), "a new condition: add its example here (and its words in riskd.conditions)"
    for name, value in examples.items():
        action = "reduce_to: 5" if name in ("instrument_size", "account_size") else "flatten: true"
        (rule,) = rules_mod.parse(f"rules:\n  - name: r\n    when: {{{name}: {value}}}\n    then: {{{action}}}\n", ny)
        text = threshold_text(engine.threshold_of(rule))
        assert "{" not in text and "[" not in text and "_" not in text, (name, text)  # words, not the JSON
