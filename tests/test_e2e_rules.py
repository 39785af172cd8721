"""End to end over HTTP for the rule language: the real `riskd run` against the simulator.

- an account limit flattens only that account, and its lock closes a position reopened afterwards
  within two ticks;
- SIGHUP with a broken rule file keeps the old rules firing (audited rules_rejected with every
  error); SIGHUP with a good file applies the new rules, and the unchanged ones keep their state.
"""

from __future__ import annotations

import signal
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import yaml
from conftest import run_cli, wait_until, write_policy

POLL = 0.3


def _posts(sim, account: str | None = None):
    return [r for r in sim.request_log() if r.method == "POST" and r.status == 200 and (account is None or f"/accounts/{account}/" in r.path)]


def test_run_account_limit_flattens_only_that_account_and_lock_closes_a_reentry_within_two_ticks(tmp_path, sim_factory, riskd_factory, token):
    scenario = {
        "accounts": [
            {"name": "Sim101", "positions": [{"instrument": "MES 12-26", "side": "long", "quantity": 10, "price": 6000.0}]},
            {"name": "Sim102", "positions": [{"instrument": "MES 12-26", "side": "long", "quantity": 5, "price": 6000.0}]},
        ],
        "prices": {"MES 12-26": 6000.0, "ES 12-26": 6000.0},
    }
    sim, server = sim_factory(scenario)
    rules = [{"name": "daily-loss-limit", "when": {"account_pnl": {"below": -1000}}, "then": {"flatten": True, "lock": True}}]
    proc = riskd_factory(write_policy(tmp_path, server.base_url, rules, poll_interval=f"{int(POLL * 1000)}ms"), token)
    proc.wait_for("started")
    wait_until(lambda: len(sim.request_log()) >= 2, timeout=10)

    sim.set_price("MES 12-26", 5979.0)  # Sim101: 10 lots x $5 x -21 = -$1,050; Sim102: -$525
    proc.wait_for("action", ok=True, timeout=5)
    assert [r.path for r in _posts(sim)] == ["/v1/api/accounts/Sim101/positions/flatten"]
    assert sim.positions("Sim101") == [] and sim.positions("Sim102")[0]["quantity"] == 5

    opened = time.time()
    sim.open_position("Sim101", "ES 12-26", "long", 1)  # the trader re-enters: the lock closes it
    wait_until(lambda: sim.positions("Sim101") == [], timeout=5, interval=0.02)
    reentry = _posts(sim, "Sim101")[-1]
    assert (reentry.path, reentry.body) == ("/v1/api/accounts/Sim101/positions/flatten", {"instrument": "ES 12-26"})
    ticks = [r for r in sim.request_log() if r.method == "GET" and r.path.endswith("/accounts/snapshot") and opened < r.t <= reentry.t]
    assert 1 <= len(ticks) <= 2, f"closed {len(ticks)} ticks ({reentry.t - opened:.2f}s) after the re-entry"
    lock_fired = proc.wait_for("fired", instrument="ES 12-26")[0]
    assert lock_fired["reason"] == "position opened while the account is locked"
    assert _posts(sim, "Sim102") == [] and sim.positions("Sim102")[0]["quantity"] == 5  # the other account is untouched
    assert proc.stop() == 0


def test_run_sighup_broken_file_keeps_old_rules_firing_and_good_file_applies_new_ones(tmp_path, sim_factory, riskd_factory, token):
    scenario = {
        "accounts": [{"name": "Sim101", "positions": [
            {"instrument": "MES 12-26", "side": "long", "quantity": 4, "price": 6000.0},
            {"instrument": "ES 12-26", "side": "long", "quantity": 1, "price": 6000.0},
        ]}],
        "prices": {"MES 12-26": 6000.0, "ES 12-26": 6000.0},
    }
    sim, server = sim_factory(scenario)
    mes_trim = {"name": "mes-trim", "instruments": "MES", "when": {"position_pnl": {"below": -500}}, "then": {"close": "50%"}}
    config = write_policy(tmp_path, server.base_url, [mes_trim], poll_interval=f"{int(POLL * 1000)}ms")
    policy = tmp_path / "rules" / "policy.yaml"
    proc = riskd_factory(config, token)
    proc.wait_for("started")

    policy.write_text(yaml.safe_dump({"rules": [mes_trim]}) + "- name: es-cap\n  when: {position_pnl: {belw: -500}}\n  then: {close: al}\n")
    proc.signal(signal.SIGHUP)
    rejected = proc.wait_for("rules_rejected", timeout=5)[0]
    assert rejected["kept_rules"] == 1
    assert rejected["errors"] == [
        f"{policy}:10:25: rule es-cap: when.position_pnl.belw: unknown key 'belw'; did you mean 'below'?",
        f"{policy}:11:17: rule es-cap: then.close: invalid close amount 'al'; write all, a percentage such as 50%, or a whole number of contracts such as 2",
    ]
    sim.set_price("MES 12-26", 5970.0)  # 4 lots x $5 x -30 = -$600: the old rule still fires
    proc.wait_for("action", ok=True, instrument="MES 12-26", timeout=5)
    assert [(r.path, r.body) for r in _posts(sim)] == [("/v1/api/accounts/Sim101/positions/close", {"instrument": "MES 12-26", "percent": 0.5})]

    es_cap = {"name": "es-cap", "instruments": "ES", "when": {"position_pnl": {"below": -500}}, "then": {"close": "all"}}
    sim.set_price("MES 12-26", 5900.0)  # the remaining 2 MES lots lose $200 more: mes-trim already fired for them
    policy.write_text(yaml.safe_dump({"rules": [mes_trim, es_cap]}))
    proc.signal(signal.SIGHUP)
    loaded = proc.wait_for("rules_loaded", reason="reload", timeout=5)[0]
    assert (loaded["unchanged"], loaded["changed"], loaded["added"], loaded["removed"]) == (["mes-trim"], [], ["es-cap"], [])
    sim.set_price("ES 12-26", 5985.0)  # 1 lot x $50 x -15 = -$750
    proc.wait_for("action", ok=True, instrument="ES 12-26", timeout=5)
    polls = len(sim.request_log()) + 3
    wait_until(lambda: len(sim.request_log()) >= polls, timeout=5)
    assert [r.body for r in _posts(sim)] == [{"instrument": "MES 12-26", "percent": 0.5}, {"instrument": "ES 12-26"}]  # mes-trim kept its marker
    assert proc.stop() == 0


def test_once_explains_value_threshold_distance_and_next_firing_per_rule_and_target(tmp_path, sim_factory, token):
    scenario = {"accounts": [{"name": "Sim101", "positions": [{"instrument": "MES 12-26", "side": "long", "quantity": 2, "price": 6000.0}]}],
                "prices": {"MES 12-26": 5970.0}}
    sim, server = sim_factory(scenario)
    at = (datetime.now(ZoneInfo("America/New_York")) + timedelta(hours=6)).strftime("%H:%M")  # never due during the test
    rules = [
        {"name": "mes-loss-cap", "instruments": "MES", "when": {"position_pnl": {"below": -500}}, "then": {"close": "all"}},
        {"name": "trim", "when": {"at": at, "days": "daily"}, "then": {"close": "50%"}},
    ]
    result = run_cli("once", "-c", str(write_policy(tmp_path, server.base_url, rules)), "--dry-run", env={"CROSSTRADE_TOKEN": token})
    assert result.returncode == 0, result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert "decisions (dry run: nothing sent):" in lines and "none" in lines
    cap = lines.index(next(line for line in lines if line.startswith("mes-loss-cap")))
    assert lines[cap].split() == ["mes-loss-cap", "Sim101", "MES", "12-26", "not", "met"]
    assert lines[cap + 1] == "position_pnl=-300.00  (below -500.00)  $200.00 to go"
    trim = lines.index(next(line for line in lines if line.startswith("trim ")))
    assert lines[trim].split()[-1] == "timed" and lines[trim + 1].startswith("at=") and f"({at}:00)  next 20" in lines[trim + 1]
    upcoming = lines[lines.index("next scheduled firings:") + 1]
    assert upcoming.split()[1] == "trim" and upcoming.endswith(")") and "(in " in upcoming
    assert [r.method for r in sim.request_log()] == ["GET"]
