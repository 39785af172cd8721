"""`riskd init DIR`: a new trader's own riskd.yaml and policy, against the simulator, that pass
`riskd check` as written; the commands it prints work as printed; nothing is ever overwritten."""

from __future__ import annotations

import json
import shlex

from conftest import run_cli


def _next_commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line.split("#")[0])[1:] for line in stdout.splitlines() if line.startswith("  riskd ")]


def test_init_writes_a_checked_policy_against_the_simulator_and_prints_the_next_three_commands(tmp_path):
    result = run_cli("init", "desk", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "base_url: sim" in (tmp_path / "desk" / "riskd.yaml").read_text()
    assert sorted(p.name for p in (tmp_path / "desk" / "rules").iterdir()) == ["my-policy.yaml", "rules.schema.json"]
    commands = _next_commands(result.stdout)
    assert [c[0] for c in commands] == ["check", "once", "run"]
    check = run_cli(*commands[0], cwd=tmp_path)
    assert (check.returncode, check.stdout) == (0, "ok: 1 rules in 1 files\n")
    once = run_cli(*commands[1], cwd=tmp_path)  # no token needed: base_url: sim
    assert once.returncode == 0, once.stderr
    assert "my-mes-loss-cap" in once.stdout and "Sim101 MES 12-26" in once.stdout and "$500.00 to go" in once.stdout


def test_init_ships_the_schema_the_policy_names_for_editors(tmp_path):
    assert run_cli("init", str(tmp_path / "desk")).returncode == 0
    rules = tmp_path / "desk" / "rules"
    assert (rules / "my-policy.yaml").read_text().startswith("# yaml-language-server: $schema=./rules.schema.json\n")
    assert json.loads((rules / "rules.schema.json").read_text()) == json.loads(run_cli("schema").stdout)


def test_init_never_overwrites_an_existing_policy(tmp_path):
    assert run_cli("init", str(tmp_path)).returncode == 0
    policy = tmp_path / "rules" / "my-policy.yaml"
    policy.write_text("rules: []  # mine\n")
    again = run_cli("init", str(tmp_path))
    assert again.returncode == 1
    assert "already exists; nothing was written" in again.stderr
    assert policy.read_text() == "rules: []  # mine\n"
