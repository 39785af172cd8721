"""riskd.yaml: every key, durations, relative paths, lookup order, the token's sources."""

from __future__ import annotations

from datetime import time, timedelta
from pathlib import Path

import pytest

from riskd import config
from riskd.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "riskd.yaml"
    path.write_text(text)
    return path


def test_load_every_key_resolves_durations_paths_and_zone(tmp_path):
    path = _write(tmp_path, """
crosstrade:
  base_url: https://app.crosstrade.io/v1/api/
  token_env: MY_TOKEN
  timeout: 2500ms
  rate_limit: {per_second: 2, burst: 10}
poll_interval: 250ms
timezone: America/Chicago
session_start: "17:00"
rules: policy/
audit_log: logs/audit.jsonl
state_dir: var/state
misfire_grace: 2m
dry_run: true
""")
    s = config.load(path)
    assert s.base_url == "https://app.crosstrade.io/v1/api"
    assert (s.token_env, s.timeout, s.rate_per_second, s.rate_burst) == ("MY_TOKEN", timedelta(seconds=2.5), 2.0, 10)
    assert s.poll_interval == timedelta(milliseconds=250) and s.misfire_grace == timedelta(minutes=2)
    assert str(s.zone) == "America/Chicago" and s.session_start == time(17, 0)
    assert s.rules == (tmp_path / "policy",)
    assert s.audit_log == str(tmp_path / "logs" / "audit.jsonl") and s.state_dir == tmp_path / "var" / "state"
    assert s.dry_run is True


def test_load_empty_file_gives_spec_defaults(tmp_path):
    s = config.load(_write(tmp_path, ""))
    assert s.base_url == "https://app.crosstrade.io/v1/api" and s.token_env == "CROSSTRADE_TOKEN"
    assert (s.poll_interval, s.timeout, s.rate_per_second, s.rate_burst) == (timedelta(seconds=1), timedelta(seconds=5), 3.0, 20)
    assert str(s.zone) == "America/New_York" and s.session_start == time(18, 0)
    assert s.misfire_grace == timedelta(seconds=60) and s.rules == (tmp_path / "rules",) and s.dry_run is False


def test_load_audit_log_dash_means_stdout(tmp_path):
    assert config.load(_write(tmp_path, "audit_log: '-'\n")).audit_log == "-"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pol_interval: 1s\n", "1:1: pol_interval: unknown key 'pol_interval'; did you mean 'poll_interval'?"),
        ("poll_interval: 1 second\n", "1:16: poll_interval: invalid duration '1 second'; write a duration like 500ms, 3s, 5m or 1h"),
        ("poll_interval: 10ms\n", "1:16: poll_interval: poll_interval must be at least 100ms"),
        ("timezone: Mars/Olympus\n", "1:11: timezone: unknown time zone 'Mars/Olympus'; use an IANA name"),
        ("crosstrade:\n  base_url: app.crosstrade.io\n", "2:13: crosstrade.base_url: invalid base_url 'app.crosstrade.io'"),
        ("crosstrade:\n  token: abc\n", "2:3: crosstrade.token: unknown key 'token'; did you mean 'token_env'?"),
        ("session_start: 25:00\n", "1:16: session_start: invalid time '25:00'"),
        ("poll_interval: 1s\npoll_interval: 2s\n", "2:1: poll_interval: duplicate key (first set on line 1); keep one"),
        ("rules: [unclosed\n", "2:1: YAML syntax error"),
    ],
)
def test_load_bad_config_names_line_column_field_and_fix(tmp_path, text, expected):
    with pytest.raises(ConfigError) as err:
        config.load(_write(tmp_path, text))
    assert f"{tmp_path / 'riskd.yaml'}:{expected}" in str(err.value)


def test_load_reports_every_problem_at_once(tmp_path):
    with pytest.raises(ConfigError) as err:
        config.load(_write(tmp_path, "poll_interval: fast\nmisfire_grace: soon\nstate: x\n"))
    assert [p.line for p in err.value.problems] == [1, 2, 3]


def test_load_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        config.load(tmp_path / "nope.yaml")


def test_find_prefers_flag_then_env_then_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RISKD_CONFIG", raising=False)
    local = _write(tmp_path, "")
    assert config.find("other.yaml") == Path("other.yaml")
    monkeypatch.setenv("RISKD_CONFIG", "/etc/elsewhere.yaml")
    assert config.find(None) == Path("/etc/elsewhere.yaml")
    monkeypatch.delenv("RISKD_CONFIG")
    assert config.find(None).resolve() == local


def test_read_token_prefers_systemd_credential_over_env(tmp_path, monkeypatch, token):
    settings = config.load(_write(tmp_path, "crosstrade: {token_env: RISKD_TEST_TOKEN}\n"))
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("RISKD_TEST_TOKEN", raising=False)
    assert config.read_token(settings) is None
    monkeypatch.setenv("RISKD_TEST_TOKEN", token + "-env")
    assert config.read_token(settings) == token + "-env"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "crosstrade-token").write_text(token + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert config.read_token(settings) == token


def test_yaml_cannot_hold_the_token(tmp_path, token):
    with pytest.raises(ConfigError) as err:
        config.load(_write(tmp_path, f"crosstrade:\n  api_key: {token}\n"))
    assert "unknown key 'api_key'" in str(err.value)
    assert token not in str(err.value)  # a token pasted into YAML is not echoed into logs


@pytest.mark.parametrize("bad", ["tökén-123456", "two words", "line\nbreak"])
def test_read_token_that_cannot_go_in_a_header_is_a_config_error_naming_its_source_not_its_value(tmp_path, monkeypatch, bad):
    settings = config.load(_write(tmp_path, "crosstrade: {token_env: RISKD_TEST_TOKEN}\n"))
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv("RISKD_TEST_TOKEN", bad)
    with pytest.raises(ConfigError) as err:
        config.read_token(settings)
    assert "$RISKD_TEST_TOKEN" in str(err.value) and bad not in str(err.value)


def test_the_configuration_reference_names_every_key_riskd_accepts():
    from pathlib import Path

    from riskd.config import ConfigSpec, CrossTradeSpec, RateLimitSpec

    doc = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    keys = [k for k in ConfigSpec.model_fields if k != "crosstrade"]
    keys += [f"crosstrade.{k}" for k in CrossTradeSpec.model_fields if k != "rate_limit"]
    keys += [f"crosstrade.rate_limit.{k}" for k in RateLimitSpec.model_fields]
    missing = [k for k in keys if f"| `{k}` |" not in doc]
    assert missing == [], f"docs/configuration.md lacks {missing}"
