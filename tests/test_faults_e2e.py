"""The real `riskd run` under crashes and restarts: kill -9 mid-action and mid-session, misfires
while down, SIGTERM during an action, corrupt state. Each test starts riskd as a subprocess against
the simulator over HTTP on 127.0.0.1."""

from __future__ import annotations

import signal
import sqlite3
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from riskd.sim import Fault
from riskd.state import SCHEMA_VERSION, Store

from conftest import run_cli, wait_until, write_policy

NY = ZoneInfo("America/New_York")


def _applied(sim, suffix: str) -> list:
    return [r for r in sim.request_log() if r.method == "POST" and r.path.endswith(suffix) and r.status == 200]


def _this_run(proc, event: str | None = None, **match) -> list[dict]:
    """Audit events since the last `started` (the trail is shared by every run on one config)."""
    events = proc.events()
    starts = [i for i, e in enumerate(events) if e["event"] == "started"]
    events = events[starts[-1]:] if starts else events
    return [e for e in events if (event is None or e["event"] == event) and all(e.get(k) == v for k, v in match.items())]


def _wait_this_run(proc, event: str, timeout: float = 10.0, **match) -> list[dict]:
    def found():
        if proc.proc.poll() is not None:
            raise AssertionError(f"riskd exited with {proc.proc.returncode}: {proc.stderr_path.read_text()[-2000:]}")
        return _this_run(proc, event, **match)

    return wait_until(found, timeout)


def _intents(state_dir: Path) -> list[tuple[str, str, str | None]]:
    db = sqlite3.connect(f"file:{state_dir / 'riskd.sqlite3'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT key, status, sent FROM intents ORDER BY created").fetchall()
    finally:
        db.close()


def test_kill_9_after_a_close_left_and_before_its_answer_then_restart_closes_exactly_once(tmp_path, sim_factory, riskd_factory, token):
    scenario = {"accounts": [{"name": "Sim101", "positions": [{"instrument": "MES 12-26", "side": "long", "quantity": 4, "price": 6000.0}]}],
                "prices": {"MES 12-26": 5990.0}}
    sim, server = sim_factory(scenario)
    sim.inject(Fault("latency", match="POST */positions/close", ms=3000, count=1))  # applied 3 s after it arrives
    rules = [{"name": "trim", "instruments": "MES", "when": {"position_pnl": {"below": -100}}, "then": {"close": "50%"}}]
    config = write_policy(tmp_path, server.base_url, rules, poll_interval="200ms")  # client timeout 2s

    first = riskd_factory(config, token)
    wait_until(lambda: [r for r in sim.request_log() if r.method == "POST"], timeout=15, interval=0.005)
    first.proc.kill()  # SIGKILL while the close is in flight
    first.proc.wait(5)
    assert sim.in_progress() == 1 and sim.positions()[0]["quantity"] == 4
    (intent,) = _intents(tmp_path / "state")
    assert intent[1] == "sending" and intent[2] is not None  # written before the request, marked sent

    second = riskd_factory(config, token)
    resolved = _wait_this_run(second, "action_resolved", timeout=15)
    assert resolved[0]["verdict"].startswith("done") and resolved[0]["seen_now"] == {"MES 12-26": 2}
    polls = len(sim.request_log()) + 5
    wait_until(lambda: len(sim.request_log()) >= polls, timeout=10)
    assert len(_applied(sim, "/positions/close")) == 1
    assert len([r for r in sim.request_log() if r.method == "POST"]) == 1  # never sent a second time
    assert sim.positions()[0]["quantity"] == 2
    assert _this_run(second, "fired") == [] and _this_run(second, "action") == []
    assert second.stop() == 0


def test_kill_9_mid_session_then_restart_fires_nothing_twice_and_keeps_peaks_and_locks(tmp_path, sim_factory, riskd_factory, token):
    scenario = {
        "accounts": [
            {"name": "Sim101", "positions": [{"instrument": "MES 12-26", "side": "long", "quantity": 2, "price": 6000.0}]},
            {"name": "Sim102", "positions": [{"instrument": "NQ 12-26", "side": "long", "quantity": 1, "price": 21000.0}]},
            {"name": "Sim103", "positions": [{"instrument": "ES 12-26", "side": "long", "quantity": 4, "price": 6000.0}]},
        ],
        "prices": {"MES 12-26": 6000.0, "NQ 12-26": 21020.0, "ES 12-26": 5990.0},  # NQ +$400, ES -$2000
    }
    sim, server = sim_factory(scenario)
    rules = [
        {"name": "daily-loss", "accounts": "sim101", "when": {"account_pnl": {"below": -200}}, "then": {"flatten": True, "lock": True}},
        {"name": "trail", "accounts": "sim102", "when": {"account_drawdown": {"limit": 300, "after": 200}}, "then": {"flatten": True}},
        {"name": "es-half", "instruments": "ES", "when": {"position_pnl": {"below": -100}}, "then": {"close": "50%"}},
    ]
    config = write_policy(tmp_path, server.base_url, rules, poll_interval="200ms")
    first = riskd_factory(config, token)
    first.wait_for("action", rule="es-half", ok=True, timeout=15)
    sim.set_price("MES 12-26", 5970.0)  # Sim101: 2 * $5 * -30 = -$300
    first.wait_for("action", rule="daily-loss", ok=True, timeout=10)
    wait_until(lambda: Store.peek(tmp_path / "state").locks and Store.peek(tmp_path / "state").peaks.get("sim102", 0) >= 400, timeout=5)
    first.proc.kill()
    first.proc.wait(5)

    # while riskd is down: Sim102 gives back $400 of its $400 peak, and Sim101 opens a new position
    sim.set_price("NQ 12-26", 21000.0)
    sim.open_position("Sim101", "MES 03-27", "long", 1, price=5970.0)
    second = riskd_factory(config, token)
    _wait_this_run(second, "action", rule="trail", ok=True, timeout=15)  # the persisted $400 peak, not today's $0
    lock = _wait_this_run(second, "action", rule="daily-loss", ok=True, timeout=10)  # the lock closes the new position
    assert lock[0]["request"] == {"method": "POST", "path": "accounts/Sim101/positions/flatten", "json": {"instrument": "MES 03-27"}}
    polls = len(sim.request_log()) + 10
    wait_until(lambda: len(sim.request_log()) >= polls, timeout=10)
    assert {(p["account"], p["instrument"]): p["quantity"] for p in sim.positions()} == {("Sim103", "ES 12-26"): 2}  # es-half closed once
    assert len(_applied(sim, "/positions/close")) == 1
    fired_twice = [e["rule"] for e in _this_run(second, "fired") if e["rule"] == "es-half" or e["key"] == "daily-loss|Sim101"]
    assert fired_twice == []
    assert second.stop() == 0


def test_riskd_down_across_an_at_time_fires_at_start_within_misfire_grace_else_audits_missed(tmp_path, sim_factory, riskd_factory, token):
    scenario = {"accounts": [{"name": "Sim101", "positions": [
        {"instrument": "MES 12-26", "side": "long", "quantity": 4, "price": 6000.0},
        {"instrument": "ES 12-26", "side": "long", "quantity": 4, "price": 6000.0}]}],
        "prices": {"MES 12-26": 6000.0, "ES 12-26": 6000.0}}
    sim, server = sim_factory(scenario)
    base = datetime.now(NY).replace(microsecond=0) + timedelta(seconds=3)
    late, recent = base, base + timedelta(seconds=3)  # down from before `late` until after `recent`
    rules = [
        {"name": "trim-late", "instruments": "ES", "when": {"at": late.strftime("%H:%M:%S"), "days": "daily"}, "then": {"close": "50%"}},
        {"name": "trim-recent", "instruments": "MES", "when": {"at": recent.strftime("%H:%M:%S"), "days": "daily"}, "then": {"close": "50%"}},
    ]
    config = write_policy(tmp_path, server.base_url, rules, misfire_grace="3s")
    first = riskd_factory(config, token)
    first.wait_for("started", timeout=10)
    wait_until(lambda: len(sim.request_log()) >= 2, timeout=10)  # the rules are known (loaded and ticked) before their times
    assert datetime.now(NY) < late - timedelta(milliseconds=300), "riskd took too long to start for this test"
    assert first.stop() == 0
    wait_until(lambda: datetime.now(NY) >= recent + timedelta(seconds=1), timeout=15)

    second = riskd_factory(config, token)  # `late` is ~4 s old (> 3 s grace), `recent` ~1 s
    started = time.time()
    action = _wait_this_run(second, "action", rule="trim-recent", timeout=10)[0]
    missed = _wait_this_run(second, "missed", rule="trim-late", timeout=5)[0]
    closes = _applied(sim, "/positions/close")
    assert [c.body for c in closes] == [{"instrument": "MES 12-26", "percent": 0.5}]
    assert closes[0].t - started < 3.0  # at start-up, not at some later tick
    assert action["ok"] is True
    fired = _this_run(second, "fired", rule="trim-recent")[0]
    assert fired["inputs"]["scheduled"].startswith(recent.strftime("%Y-%m-%dT%H:%M:%S"))
    assert "misfire_grace 3s" in missed["reason"]
    assert {p["instrument"]: p["quantity"] for p in sim.positions()} == {"MES 12-26": 2, "ES 12-26": 4}
    assert second.stop() == 0


def test_sigterm_during_a_close_lets_it_finish_records_it_then_stops(tmp_path, sim_factory, riskd_factory, token):
    scenario = {"accounts": [{"name": "Sim101", "positions": [{"instrument": "MES 12-26", "side": "long", "quantity": 4, "price": 6000.0}]}],
                "prices": {"MES 12-26": 5990.0}}
    sim, server = sim_factory(scenario)
    sim.inject(Fault("latency", match="POST */positions/close", ms=1200, count=1))
    rules = [{"name": "trim", "instruments": "MES", "when": {"position_pnl": {"below": -100}}, "then": {"close": "50%"}}]
    proc = riskd_factory(write_policy(tmp_path, server.base_url, rules, poll_interval="200ms"), token)
    wait_until(lambda: [r for r in sim.request_log() if r.method == "POST"], timeout=15, interval=0.005)
    proc.signal(signal.SIGTERM)
    assert proc.proc.wait(10) == 0
    events = [e["event"] for e in proc.events() if e["event"] in ("fired", "action", "stopped")]
    assert events == ["fired", "action", "stopped"]
    assert proc.events("action")[0]["ok"] is True
    assert proc.events("stopped")[0]["reason"] == "SIGTERM" and proc.events("stopped")[0]["in_doubt"] == []
    assert _intents(tmp_path / "state")[0][1] == "done"
    assert sim.positions()[0]["quantity"] == 2


def test_run_with_a_corrupt_or_newer_state_store_exits_1_and_keeps_it(tmp_path, sim_factory, token):
    sim, server = sim_factory({"accounts": [{"name": "Sim101"}]})
    config = write_policy(tmp_path, server.base_url, [{"name": "cap", "when": {"account_pnl": {"below": -1}}, "then": {"flatten": True}}])
    state = tmp_path / "state" / "riskd.sqlite3"
    state.parent.mkdir()
    state.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    result = run_cli("run", "-c", str(config), env={"CROSSTRADE_TOKEN": token})
    assert result.returncode == 1
    assert f"riskd: state: state store {state} is unreadable" in result.stderr and "move it aside" in result.stderr
    assert state.read_bytes() == b"SQLite format 3\x00" + b"\xff" * 4000

    state.unlink()
    Store(state.parent).close()
    db = sqlite3.connect(state)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    db.commit()
    db.close()
    result = run_cli("run", "-c", str(config), env={"CROSSTRADE_TOKEN": token})
    assert result.returncode == 1 and "newer than this riskd" in result.stderr
    assert sim.request_log() == []


def test_six_408s_in_a_row_riskd_keeps_running_audits_them_and_acts_once_the_bridge_is_back(tmp_path, sim_factory, riskd_factory, token):
    scenario = {"accounts": [{"name": "Sim101", "positions": [{"instrument": "MES 12-26", "side": "long", "quantity": 2, "price": 6000.0}]}],
                "prices": {"MES 12-26": 5900.0}}  # -$1,000: the cap holds from the first poll
    sim, server = sim_factory(scenario)
    sim.inject(Fault(kind="status", status=408, match="GET /accounts/snapshot", count=6))  # NinjaTrader disconnected
    rules = [{"name": "mes-loss-cap", "instruments": "MES", "when": {"position_pnl": {"below": -500}}, "then": {"close": "all"}}]
    proc = riskd_factory(write_policy(tmp_path, server.base_url, rules, poll_interval="200ms"), token)

    action = proc.wait_for("action", timeout=20)[0]
    errors = proc.events("api_error", status=408)
    assert len(errors) == 6 and all(e["path"].endswith("accounts/snapshot") for e in errors)
    assert action["ok"] is True and action["response"]["closedPositions"][0]["quantity"] == 2
    assert proc.proc.poll() is None  # still running
    snapshots = [r for r in sim.request_log() if r.path.endswith("/accounts/snapshot")]
    assert snapshots[6].status == 200 and snapshots[6].t - snapshots[0].t >= 6 * 0.2 * 0.5  # backed off, no tight loop
    assert len([r for r in sim.request_log() if r.method == "POST"]) == 1
    assert proc.stop() == 0
