"""End to end: the real `riskd run` subprocess against the simulator over HTTP on 127.0.0.1."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from riskd import events

from conftest import read_audit, run_cli, wait_until, write_policy

NY = ZoneInfo("America/New_York")


def _closes(sim, path_part: str = "/positions/close"):
    return [r for r in sim.request_log() if r.method == "POST" and r.path.endswith(path_part) and r.status == 200]


def test_run_timed_half_close_fires_within_one_second_exactly_once(tmp_path, sim_factory, riskd_factory, token):
    scenario = {
        "accounts": [
            {"name": "Sim101", "positions": [
                {"instrument": "MES 12-26", "side": "long", "quantity": 3, "price": 6000.0},
                {"instrument": "ES 12-26", "side": "long", "quantity": 1, "price": 6000.0},
            ]},
            {"name": "Sim102", "positions": [{"instrument": "NQ 12-26", "side": "short", "quantity": 5, "price": 21000.0}]},
        ],
        "prices": {"MES 12-26": 5990.0, "ES 12-26": 6010.0, "NQ 12-26": 21010.0},
    }
    sim, server = sim_factory(scenario)
    at = (datetime.now(NY) + timedelta(seconds=5)).replace(microsecond=0)
    rules = [{"name": "trim", "when": {"at": at.strftime("%H:%M:%S"), "days": "daily"}, "then": {"close": "50%"}}]
    before = {(p["account"], p["instrument"]): p for p in sim.positions()}
    proc = riskd_factory(write_policy(tmp_path, server.base_url, rules, poll_interval="1s"), token)

    actions = proc.wait_for("action", timeout=15, count=3)
    closes = _closes(sim)
    assert len(closes) == 3
    for record in closes:
        assert record.body["percent"] == 0.5  # a fraction, not 50
        assert 0 <= record.t - at.timestamp() < 1.0, f"close sent {record.t - at.timestamp():.3f}s after the scheduled second"
    remaining = {(p["account"], p["instrument"]): p["quantity"] for p in sim.positions()}
    assert remaining == {("Sim101", "MES 12-26"): 1, ("Sim102", "NQ 12-26"): 2}  # 50% of 3 -> 2, of 1 -> 1, of 5 -> 3: rounded up
    for action in actions:
        closed = action["response"]["closedPositions"]
        assert closed == [before[(action["account"], action["instrument"])]]  # verbatim: the position as it was before
        assert action["ok"] is True and action["status"] == 200

    wait_until(lambda: len(proc.events("rules_loaded")) and time.time() > at.timestamp() + 2.5, timeout=10)
    assert len(_closes(sim)) == 3  # exactly once: later ticks do not act again
    assert len(proc.events("fired")) == 3
    assert proc.stop() == 0
    assert proc.events("stopped")[-1]["reason"] == "SIGTERM"


def test_run_mes_loss_cap_closes_only_mes_within_one_poll_exactly_once(tmp_path, sim_factory, riskd_factory, token):
    scenario = {
        "accounts": [{"name": "Sim101", "positions": [
            {"instrument": "MES 12-26", "side": "long", "quantity": 2, "price": 6000.0},
            {"instrument": "MESX 12-26", "side": "long", "quantity": 1, "price": 100.0},
            {"instrument": "ES 12-26", "side": "long", "quantity": 1, "price": 6000.0},
        ]}],
        "prices": {"MES 12-26": 5980.0, "MESX 12-26": 1.0, "ES 12-26": 5900.0},  # MES -200, ES -5000
        "point_values": {"MESX": 5},
    }
    sim, server = sim_factory(scenario)
    rules = [{"name": "mes-loss-cap", "instruments": "MES", "when": {"position_pnl": {"below": -500}}, "then": {"close": "all"}}]
    proc = riskd_factory(write_policy(tmp_path, server.base_url, rules, poll_interval="500ms"), token)
    proc.wait_for("started")
    wait_until(lambda: len(sim.request_log()) >= 3, timeout=10)  # a few quiet ticks first
    assert _closes(sim) == []

    breach = time.time()
    sim.set_price("MES 12-26", 5940.0)  # 2 lots * $5 * -60 = -$600
    proc.wait_for("action", timeout=5)
    close = _closes(sim)[0]
    assert close.body == {"instrument": "MES 12-26"}
    assert close.t - breach <= 0.5 + 0.25, f"reacted {close.t - breach:.3f}s after the breach (poll 0.5s)"

    polls_after = len(sim.request_log()) + 4
    wait_until(lambda: len(sim.request_log()) >= polls_after, timeout=10)
    assert len(_closes(sim)) == 1 and len(proc.events("fired")) == 1
    assert {p["instrument"] for p in sim.positions()} == {"ES 12-26", "MESX 12-26"}  # ES's bigger loss and MESX untouched
    fired = proc.events("fired")[0]
    assert fired["inputs"]["position_pnl"] == -600.0 and fired["threshold"]["position_pnl"] == {"below": -500.0}
    assert proc.stop() == 0


def test_check_and_run_reject_a_misspelt_key_with_its_location_and_call_no_api(tmp_path, sim_factory, riskd_factory, token):
    sim, server = sim_factory({"accounts": [{"name": "Sim101"}]})
    policy = "rules:\n  - name: mes-loss-cap\n    instruments: MES\n    when:\n      position_pnl: {belw: -500}\n    then:\n      close: all\n"
    config = write_policy(tmp_path, server.base_url, policy)

    checked = run_cli("check", "-c", str(config))
    assert checked.returncode == 78
    assert f"{tmp_path}/rules/policy.yaml:5:22: rule mes-loss-cap: when.position_pnl.belw: unknown key 'belw'; did you mean 'below'?" in checked.stderr

    proc = riskd_factory(config, token)
    assert proc.proc.wait(20) == 78
    assert "did you mean 'below'?" in proc.output()
    assert sim.request_log() == []  # not a single API call
    assert not (tmp_path / "audit.jsonl").exists() or not proc.events("started")


def test_token_never_appears_in_output_audit_or_state(tmp_path, sim_factory, riskd_factory, token):
    scenario = {"accounts": [{"name": "Sim101", "positions": [{"instrument": "MES 12-26", "side": "long", "quantity": 2, "price": 6000.0}]}],
                "prices": {"MES 12-26": 5900.0}}
    sim, server = sim_factory(scenario)
    for fault in ({"kind": "status", "status": 500, "count": 1}, {"kind": "malformed", "count": 1},
                  {"kind": "status", "status": 408, "match": "POST *", "count": 1}):
        sim.inject(fault)
    rules = [{"name": "cap", "when": {"position_pnl": {"below": -100}}, "then": {"close": "all"}}]
    proc = riskd_factory(write_policy(tmp_path, server.base_url, rules, poll_interval="200ms"), token)
    proc.wait_for("action", ok=True, timeout=15)
    assert proc.events("api_error")  # the error paths ran
    proc.stop()
    # a run with a refused token: the 401 path
    bad = riskd_factory(write_policy(tmp_path / "bad", server.base_url, rules, poll_interval="200ms"), token + "x")
    bad.wait_for("api_error", status=401, timeout=10)
    bad.stop()
    for path in [*tmp_path.rglob("*")]:
        if path.is_file():
            assert token not in path.read_bytes().decode("utf-8", "replace"), f"token leaked into {path}"


def test_demo_explains_itself_closes_something_within_30_seconds_and_keeps_no_state_for_a_rerun(tmp_path):
    import subprocess

    from conftest import RISKD

    from datetime import datetime, timezone

    from riskd.engine import State
    from riskd.state import Store

    # what a previous demo run could leave behind: Sim102 locked (its lock would flatten NQ at the first tick)
    left = Store(tmp_path / "state")
    left.save(State(account_locks={"sim102": "2099-01-01T00:00:00+00:00"}), datetime.now(timezone.utc))
    left.close()
    with (tmp_path / "console.log").open("w") as out:
        proc = subprocess.Popen([str(RISKD), "run", "--sim"], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        actions = wait_until(lambda: [e for e in read_audit(tmp_path / "audit.jsonl") if e.get("event") == "action" and e.get("ok")], timeout=30)
        assert actions[0]["response"]["closedPositions"] and actions[0]["account"] == "Sim101"  # not the stale lock's flatten
        wait_until(lambda: "closed 4 of Long 4 MES 12-26 at -520.00" in (tmp_path / "console.log").read_text(), timeout=5)
        status = run_cli("status", cwd=tmp_path)  # beside the running demo, from its state in ./state
        assert status.returncode == 0 and "Sim101" in status.stdout and "mes-loss-cap" in status.stdout, status.stdout + status.stderr
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
    console = (tmp_path / "console.log").read_text()
    for said in ("embedded CrossTrade simulator at http://127.0.0.1:", "Sim101   long 4 MES 12-26", "Sim102   long 3 NQ 12-26",
                 "rules (the shipped examples): trim-half-before-close, mes-loss-cap, daily-loss-limit",
                 "~8 s   mes-loss-cap closes Sim101's 4 MES 12-26", "~15 s  daily-loss-limit flattens Sim102",
                 f"audit trail: {tmp_path / 'audit.jsonl'}", "Ctrl-C stops riskd", "emptied at each start",
                 '"config": "none (the demo)", "api": "127.0.0.1:'):
        assert said in console, said
    # what the README says the demo prints before it starts is what it prints (paths and the port aside)
    import re

    def intro(text: str) -> str:
        said = "riskd against" + text.split("riskd against", 1)[1].split("Ctrl-C stops riskd.", 1)[0]
        return re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", said.replace(str(tmp_path), "/home/you/riskd"))

    assert intro(console) == intro((Path(__file__).resolve().parents[1] / "README.md").read_text())
    # the simulator starts over at every run, and so does the demo's state: a rerun here tells the same story
    assert not [e for e in read_audit(tmp_path / "audit.jsonl") if e.get("event") == "fired" and e.get("account") == "Sim102"
                and e["ts"] < actions[0]["ts"]]
    assert run_cli("audit", "--verify", cwd=tmp_path).returncode == 0
    # every line is an event of the catalogue, with every field the catalogue says it carries
    lines = read_audit(tmp_path / "audit.jsonl")
    assert [(line["event"], events.of(line["event"]).missing(line)) for line in lines if events.of(line["event"]).missing(line)] == []


def test_check_accepts_the_shipped_examples():
    result = run_cli("check", "-c", str(Path(__file__).parent / "fixtures" / "examples.yaml"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: ") and "rules in 10 files" in result.stdout
