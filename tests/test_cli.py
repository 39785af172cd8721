"""The `riskd` command line: exit codes and what each verb prints."""

from __future__ import annotations

import json

from conftest import run_cli, write_policy


def test_cli_usage_error_exits_2():
    assert run_cli("frobnicate").returncode == 2
    assert run_cli("run", "--no-such-flag").returncode == 2


def test_cli_no_config_found_exits_78(tmp_path):
    result = run_cli("check", cwd=tmp_path)
    assert result.returncode == 78
    assert "no config file" in result.stderr


def test_schema_prints_a_json_schema_of_rule_files():
    result = run_cli("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema["title"] == "riskd rule file" and "rules" in schema["properties"]


def test_run_without_a_token_exits_78_and_calls_nothing(tmp_path, sim_factory):
    sim, server = sim_factory({"accounts": [{"name": "Sim101"}]})
    config = write_policy(tmp_path, server.base_url, [{"name": "cap", "when": {"account_pnl": {"below": -1}}, "then": {"flatten": True}}])
    result = run_cli("run", "-c", str(config))
    assert result.returncode == 78
    assert "no API token: set $CROSSTRADE_TOKEN" in result.stderr
    assert sim.request_log() == []


def test_once_dry_run_prints_the_decision_and_sends_nothing(tmp_path, sim_factory, token):
    scenario = {"accounts": [{"name": "Sim101", "positions": [{"instrument": "MES 12-26", "side": "long", "quantity": 2, "price": 6000.0}]}],
                "prices": {"MES 12-26": 5900.0}}
    sim, server = sim_factory(scenario)
    rules = [
        {"name": "mes-loss-cap", "instruments": "MES", "when": {"position_pnl": {"below": -500}}, "then": {"close": "all"}},
        {"name": "trim", "when": {"at": "15:55", "days": "daily"}, "then": {"close": "50%"}},
    ]
    config = write_policy(tmp_path, server.base_url, rules)
    result = run_cli("once", "-c", str(config), "--dry-run", env={"CROSSTRADE_TOKEN": token})
    assert result.returncode == 0, result.stderr
    assert "fire" in result.stdout and "mes-loss-cap" in result.stdout and "Sim101 MES 12-26" in result.stdout
    assert "position_pnl=-1000.00" in result.stdout
    assert "next scheduled firings:" in result.stdout and "trim" in result.stdout.split("next scheduled firings:")[1]
    assert [r.method for r in sim.request_log()] == ["GET"]  # one snapshot, no order-changing request
    assert sim.positions()[0]["quantity"] == 2


def test_once_acts_when_not_dry(tmp_path, sim_factory, token):
    scenario = {"accounts": [{"name": "Sim101", "positions": [{"instrument": "MES 12-26", "side": "long", "quantity": 2, "price": 6000.0}]}],
                "prices": {"MES 12-26": 5900.0}}
    sim, server = sim_factory(scenario)
    rules = [{"name": "mes-loss-cap", "instruments": "MES", "when": {"position_pnl": {"below": -500}}, "then": {"close": "all"}}]
    config = write_policy(tmp_path, server.base_url, rules)
    result = run_cli("once", "-c", str(config), env={"CROSSTRADE_TOKEN": token})
    assert result.returncode == 0, result.stderr
    assert sim.positions() == []
    again = run_cli("once", "-c", str(config), env={"CROSSTRADE_TOKEN": token})
    assert again.returncode == 0
    assert len([r for r in sim.request_log() if r.method == "POST"]) == 1  # the fired marker persisted in state_dir


def test_every_cli_option_has_help_text():
    """`riskd VERB --help` explains every option: a trader reading --help never meets a bare flag."""
    import argparse

    from riskd.cli import _parser

    parser = _parser()
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert subparsers
    missing = []
    for verb, sub in subparsers[0].choices.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            if not action.help:
                missing.append(f"{verb} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, f"options without help: {missing}"


def test_check_a_rules_directory_in_a_symlink_loop_is_a_located_config_error(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    (tmp_path / "riskd.yaml").write_text("rules: a/\n")
    result = run_cli("check", "-c", str(tmp_path / "riskd.yaml"))
    assert result.returncode == 78, result.stderr  # a traceback (exit 1) would not stop systemd's restart loop
    assert "riskd.yaml:1:1" in result.stderr and "Symlink loop" in result.stderr and "Traceback" not in result.stderr


def test_live_once_beside_a_running_daemon_sends_nothing_and_points_at_dry_run(tmp_path, sim_factory, token, riskd_factory):
    scenario = {"accounts": [{"name": "Sim101", "positions": [{"instrument": "MES 12-26", "side": "long", "quantity": 2, "price": 6000.0}]}],
                "prices": {"MES 12-26": 6000.0}}
    sim, server = sim_factory(scenario)
    config = write_policy(tmp_path, server.base_url, [{"name": "cap", "when": {"position_pnl": {"below": -500}}, "then": {"close": 50}}])
    daemon = riskd_factory(config, token)
    daemon.wait_for("samples")
    started = next(json.loads(x) for x in daemon.stdout_path.read_text().splitlines() if '"event": "started"' in x)
    assert (started["config"], started["api"]) == (str(config), server.base_url.split("/")[2])  # which policy, against which API
    assert '"event": "rule_warning"' in daemon.stdout_path.read_text()  # close: 50 is 50 contracts: said at start too
    result = run_cli("once", "-c", str(config), env={"CROSSTRADE_TOKEN": token})
    assert result.returncode == 1
    assert "a riskd daemon is running with state_dir" in result.stderr and "riskd once --dry-run (or riskd status)" in result.stderr
    assert [r for r in sim.request_log() if r.method == "POST"] == []
