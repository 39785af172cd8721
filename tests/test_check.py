"""`riskd check` on the mistakes a tired trader makes: each riskd.yaml in fixtures/check is checked
in a directory laid out by `_desk` and must print exactly the text beside it (`.expected`, stderr,
then the exit code); each rule file in fixtures/warn must give exactly the warnings beside it."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli
from rulekit import NY

from riskd import lint, rules
from riskd.cli import main as cli_main

FIXTURES = Path(__file__).parent / "fixtures"
CHECK = sorted((FIXTURES / "check").glob("*.riskd.yaml"))
WARN = sorted((FIXTURES / "warn").glob("*.warn.yaml"))


def _desk(directory: Path, riskd_yaml: Path) -> Path:
    """A config directory: rules/ (one good rule), empty/ (no files), nothing/ (rules: []), off/ (one disabled rule)."""
    for name in ("rules", "empty", "nothing", "off"):
        (directory / name).mkdir()
    rule = "  - name: cap\n    when: {position_pnl: {below: -500}}\n    then: {close: all}\n"
    (directory / "rules" / "policy.yaml").write_text("rules:\n" + rule)
    (directory / "nothing" / "policy.yaml").write_text("rules: []\n")
    (directory / "off" / "policy.yaml").write_text("rules:\n" + rule + "    enabled: false\n")
    (directory / "riskd.yaml").write_text(riskd_yaml.read_text())
    return directory / "riskd.yaml"


@pytest.mark.parametrize("fixture", CHECK, ids=lambda p: p.name.removesuffix(".riskd.yaml"))
def test_check_prints_exactly_the_expected_text_and_exit_code(tmp_path, fixture, capsys, monkeypatch):
    monkeypatch.delenv("CROSSTRADE_TOKEN", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    config = _desk(tmp_path, fixture)
    code = cli_main(["check", "-c", str(config)])
    expected = fixture.with_name(fixture.name.removesuffix(".riskd.yaml") + ".expected").read_text().replace("{dir}", str(tmp_path))
    assert f"{capsys.readouterr().err}exit {code}\n" == expected


@pytest.mark.parametrize("fixture", WARN, ids=lambda p: p.name.removesuffix(".warn.yaml"))
def test_lint_warns_exactly_as_expected(fixture):
    loaded, _ = rules.load(fixture, NY)
    expected = fixture.with_name(fixture.name.removesuffix(".warn.yaml") + ".expected").read_text().replace("{file}", str(fixture))
    assert "".join(f"{w}\n" for w in lint.warnings(loaded)) == expected


def test_check_warnings_keep_exit_0_and_are_refused_with_strict(tmp_path, capsys):
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "trim.yaml").write_text((FIXTURES / "warn" / "close-bare-percent.warn.yaml").read_text())
    (tmp_path / "riskd.yaml").write_text("crosstrade: {base_url: sim}\nrules: rules/\n")
    assert cli_main(["check", "-c", str(tmp_path / "riskd.yaml")]) == 0
    plain = capsys.readouterr()
    assert plain.out == "ok: 2 rules in 1 files, 1 warning(s)\n"
    assert plain.err.startswith(f"{tmp_path}/rules/trim.yaml:5:14: rule trim: then.close: warning: close: 50 closes 50 contracts")
    assert cli_main(["check", "--strict", "-c", str(tmp_path / "riskd.yaml")]) == 78
    strict = capsys.readouterr()
    assert strict.out == "" and strict.err.endswith("riskd: 1 warning(s), refused by --strict\n")


def test_run_refuses_a_policy_that_protects_nothing_before_any_api_call(tmp_path, sim_factory, token):
    sim, server = sim_factory({"accounts": [{"name": "Sim101"}]})
    config = _desk(tmp_path, FIXTURES / "check" / "rules-none.riskd.yaml")
    config.write_text(config.read_text().replace("base_url: sim", f"base_url: {server.base_url}"))
    result = run_cli("run", "-c", str(config), env={"CROSSTRADE_TOKEN": token})
    assert result.returncode == 78 and "riskd would watch and protect nothing" in result.stderr
    assert sim.request_log() == []
