"""`riskd init DIR`: a new trader's own riskd.yaml and policy, against the simulator, that pass
`riskd check` as written; nothing is ever overwritten. (That the printed commands work as printed,
`riskd once` included, is tests/test_readme.py's tour.)"""

from __future__ import annotations

import json
import shlex

from riskd import rules
from riskd.cli import main as cli_main


def _next_commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line.split("#")[0])[1:] for line in stdout.splitlines() if line.startswith("  riskd ")]


def test_init_writes_a_checked_policy_against_the_simulator_and_prints_the_next_three_commands(tmp_path, capsys):
    assert cli_main(["init", str(tmp_path / "desk")]) == 0
    commands = _next_commands(capsys.readouterr().out)
    assert [c[0] for c in commands] == ["check", "once", "run"] and all(c[1:3] == ["-c", str(tmp_path / "desk" / "riskd.yaml")]
                                                                        for c in commands)
    assert "base_url: sim" in (tmp_path / "desk" / "riskd.yaml").read_text()
    assert sorted(p.name for p in (tmp_path / "desk" / "rules").iterdir()) == ["my-policy.yaml", "rules.schema.json"]
    assert cli_main(commands[0]) == 0
    assert capsys.readouterr().out == "ok: 1 rules in 1 files\n"


def test_init_ships_the_schema_the_policy_names_for_editors(tmp_path, capsys):
    assert cli_main(["init", str(tmp_path)]) == 0
    policy = (tmp_path / "rules" / "my-policy.yaml").read_text()
    assert policy.startswith("# yaml-language-server: $schema=./rules.schema.json\n")
    assert json.loads((tmp_path / "rules" / "rules.schema.json").read_text()) == rules.schema()


def test_init_never_overwrites_an_existing_policy(tmp_path, capsys):
    assert cli_main(["init", str(tmp_path)]) == 0
    policy = tmp_path / "rules" / "my-policy.yaml"
    policy.write_text("rules: []  # mine\n")
    assert cli_main(["init", str(tmp_path)]) == 1
    assert "already exists; nothing was written" in capsys.readouterr().err
    assert policy.read_text() == "rules: []  # mine\n"
