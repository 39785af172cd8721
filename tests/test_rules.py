"""Rule files are validated like a compiler: every valid key parses to what the engine needs, every
invalid file gives every problem at once, located, with a fix (fixtures in fixtures/bad, each
beside the exact message it must produce), and the JSON Schema agrees with the loader."""

from __future__ import annotations

import json
import re
from datetime import time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from conftest import run_cli, write_policy
from rulekit import NY, policy, rule

from riskd import rules, yamldoc
from riskd.errors import ConfigError

BAD = Path(__file__).parent / "fixtures" / "bad"
EXAMPLES = Path(rules.__file__).parent / "examples"
BAD_FILES = sorted(BAD.glob("*.bad.yaml"))
# Problems a JSON Schema cannot see: they need the loader (names across rules, calendars, zones).
SCHEMA_BLIND = {"duplicate-name", "instrument-bad-month", "instrument-contract-code", "money-not-a-number", "window-empty",
                "zone-typo", "zone-unknown", "zone-fixed-offset", "profit-floor-above-its-trigger"}  # a floor against its trigger: two values compared


def _stem(path: Path) -> str:
    return path.name.removesuffix(".bad.yaml")


def _problems(*paths: Path) -> str:
    with pytest.raises(ConfigError) as err:
        rules.load(tuple(paths), NY)
    return str(err.value) + "\n"


# ---------------------------------------------------------------------------------------------
# Invalid files: the exact message each must produce.


def test_bad_fixtures_each_have_their_expected_message_and_there_are_enough():
    expected = {p.name.removesuffix(".expected") for p in BAD.glob("*.expected")}
    assert {_stem(p) for p in BAD_FILES} == expected, "every *.bad.yaml needs a *.expected beside it, and vice versa"
    assert len(BAD_FILES) >= 25


@pytest.mark.parametrize("path", BAD_FILES, ids=_stem)
def test_load_bad_fixture_reports_exactly_the_expected_problems(path):
    expected = path.with_name(_stem(path) + ".expected").read_text().replace("{file}", str(path))
    assert _problems(path) == expected


def test_load_duplicate_names_across_files_are_reported_even_when_the_second_file_has_other_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("rules:\n" + rule("cap"))
    (tmp_path / "b.yaml").write_text("rules:\n" + rule("ok") + rule("cap", "position_pnl: {below: oops}"))
    assert _problems(tmp_path) == (
        f"{tmp_path}/b.yaml:5:11: rule cap: name: duplicate rule name (first defined at {tmp_path}/a.yaml:2); rename one\n"
        f"{tmp_path}/b.yaml:6:34: rule cap: when.position_pnl.below: invalid amount 'oops'; write a number of dollars such as -500 (no $ sign or quotes)\n"
    )


def test_load_reports_problems_of_every_file_in_file_order(tmp_path):
    (tmp_path / "a.yaml").write_text("rules:\n" + rule("a", then="close: 0%"))
    (tmp_path / "b.yml").write_text("rules: {\n")
    (tmp_path / "notes.txt").write_text("not a rule file")
    text = _problems(tmp_path)
    assert [line.split(":")[0] for line in text.splitlines()] == [f"{tmp_path}/a.yaml", f"{tmp_path}/b.yml"]


def test_load_directory_without_rule_files_is_an_error(tmp_path):
    assert _problems(tmp_path).startswith(f"{tmp_path}:1:1: rules: no *.yaml or *.yml rule files here; write one")


def test_check_prints_every_problem_located_and_exits_78(tmp_path):
    config = write_policy(tmp_path, "http://127.0.0.1:9/v1/api", (BAD / "every-error-at-once.bad.yaml").read_text())
    result = run_cli("check", "-c", str(config))
    assert result.returncode == 78
    expected = (BAD / "every-error-at-once.expected").read_text().replace("{file}", str(tmp_path / "rules" / "policy.yaml"))
    assert result.stderr.startswith(expected)
    assert result.stderr.endswith("riskd: 8 problem(s); nothing was started\n")


# ---------------------------------------------------------------------------------------------
# Valid files: what each key becomes.


def test_parse_every_key_becomes_the_typed_rule_the_engine_reads():
    (r,) = policy("""\
  - name: full_rule-1
    accounts: [Sim*, APEX-123]
    instruments: [mes, "MNQ 12-26", "M2K*"]
    when:
      between: ["18:00", "02:00"]
      position_pnl: {above: 250.5}
      position_size: {above: 0}
      position_age: {above: 90s}
      account_pnl: {below: -1000, basis: realized, net_of_commission: true}
      account_drawdown: {limit: "95%", after: 100}
      days: [sun, mon]
      timezone: America/Chicago
      for: 1500ms
    then:
      close: 3
      cancel_orders: true
    enabled: false
    dry_run: true
""")
    assert (r.name, r.accounts, r.instruments) == ("full_rule-1", ("sim*", "apex-123"), ("MES", "MNQ 12-26", "M2K*"))
    conditions = dict(r.conditions)
    assert conditions["between"] == (time(18), time(2))
    assert conditions["position_pnl"].above == 250.5 and conditions["position_size"].above == 0
    assert conditions["position_age"].above == timedelta(seconds=90)
    assert (conditions["account_pnl"].below, conditions["account_pnl"].basis, conditions["account_pnl"].net_of_commission) == (-1000, "realized", True)
    assert (conditions["account_drawdown"].limit, conditions["account_drawdown"].after) == (("percent", 0.95), 100.0)
    assert (r.days, r.zone, r.hold) == (frozenset({6, 0}), ZoneInfo("America/Chicago"), timedelta(milliseconds=1500))
    assert (r.action.kind, r.action.amount, r.action.cancel_orders, r.action.lock) == ("close", 3, True, False)
    assert (r.enabled, r.dry_run, r.per_position) == (False, True, True)


@pytest.mark.parametrize(("when", "then", "check"), [
    ("at: 15:55", "close: 50%", lambda r: r.at == time(15, 55) and r.action.amount == 0.5),  # unquoted HH:MM is a time, not 955
    ('at: "16:58:30", days: daily', "flatten: true", lambda r: r.at == time(16, 58, 30) and r.days == frozenset(range(7))),
    ('at: "9:30"', "close: 12.5%", lambda r: r.at == time(9, 30) and r.action.amount == 0.125 and r.days == frozenset(range(5))),
    ("account_drawdown: {limit: 300}", "flatten: true, lock: true", lambda r: dict(r.conditions)["account_drawdown"].limit == ("dollars", 300.0)
     and dict(r.conditions)["account_drawdown"].after == 0 and r.action.lock),
    ("position_pnl: {below: -500}", "close: 100%, lock: true", lambda r: r.action.amount == "all" and r.action.severity == 2 and r.per_position),
    ("account_pnl: {above: 2000}", "flatten: true", lambda r: not r.per_position and r.zone == NY),
    ("position_size: {above: 10}", "reduce_to: 10", lambda r: r.action.kind == "reduce_to" and r.action.amount == 10),
    ('outside: ["09:30", "16:00"], for: 5s', "close: all", lambda r: r.hold == timedelta(seconds=5)),
])
def test_parse_valid_forms_become_the_expected_rule(when, then, check):
    (r,) = policy(rule("r", when, then))
    assert check(r)


def test_parse_name_off_is_a_name_not_a_yaml_boolean():
    assert policy(rule("off"))[0].name == "off"


def test_parse_digest_ignores_comments_and_layout_but_not_values():
    a = policy(rule("cap", "position_pnl: {below: -500}"))[0]
    b = policy("  # comment\n  - name: cap\n    when:\n      position_pnl:\n        below: -500\n    then: {close: all}\n")[0]
    c = policy(rule("cap", "position_pnl: {below: -501}"))[0]
    assert a.digest == b.digest != c.digest


# ---------------------------------------------------------------------------------------------
# The JSON Schema: generated from the same models, shipped beside the examples, and in agreement
# with the loader.


def test_schema_shipped_file_equals_riskd_schema_output():
    result = run_cli("schema")
    assert result.returncode == 0
    assert json.loads(result.stdout) == rules.schema() == json.loads((EXAMPLES / "rules.schema.json").read_text()), \
        "regenerate: riskd schema > riskd/examples/rules.schema.json"


def test_schema_is_valid_draft_2020_12_and_every_example_references_it():
    jsonschema.Draft202012Validator.check_schema(rules.schema())
    for path in EXAMPLES.glob("*.yaml"):
        assert path.read_text().startswith("# yaml-language-server: $schema=./rules.schema.json\n"), path.name


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_schema_accepts_every_shipped_example(path):
    jsonschema.validate(yamldoc.Document(path, path.read_text()).data, rules.schema())


def _yaml_data_ok(path: Path) -> bool:
    doc = yamldoc.Document(path, path.read_text())
    return not doc.problems and doc.data is not None  # YAML-level problems (syntax, duplicate keys, empty) are the loader's alone


@pytest.mark.parametrize("path", [p for p in BAD_FILES if _yaml_data_ok(p)], ids=_stem)
def test_schema_rejects_the_bad_fixtures_the_loader_rejects(path):
    doc = yamldoc.Document(path, path.read_text())
    errors = list(jsonschema.Draft202012Validator(rules.schema()).iter_errors(doc.data))
    assert bool(errors) is (_stem(path) not in SCHEMA_BLIND)


def test_rules_readme_documents_every_key_of_the_schema():
    readme = (EXAMPLES / "README.md").read_text()
    keys: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            keys.update(node.get("properties", {}))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(rules.schema())
    missing = sorted(k for k in keys if not re.search(rf"`{k}`", readme))
    assert missing == []


def test_changes_names_rules_that_keep_their_state_and_those_that_start_over():
    old = policy(rule("same") + rule("edited") + rule("gone"))
    new = policy("  # reordered, commented\n" + rule("edited", "position_pnl: {below: -400}") + rule("same") + rule("fresh"))
    assert rules.changes(old, new) == {"unchanged": ["same"], "changed": ["edited"], "added": ["fresh"], "removed": ["gone"]}


# Whatever a trader writes, the loader answers with rules or located problems, never a crash.
_KEYS = ["name", "accounts", "instruments", "when", "then", "enabled", "dry_run", "at", "between", "outside", "position_pnl",
         "position_size", "position_age", "account_pnl", "account_drawdown", "days", "timezone", "for", "below", "above",
         "basis", "net_of_commission", "limit", "after", "close", "reduce_to", "flatten", "cancel_orders", "lock", "hold", "x"]
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 12), st.floats(allow_nan=True), st.sampled_from(
    ["all", "50%", "0%", "15:55", "25:00", "weekdays", "mon", "America/New_York", "Mars/Base", "MES", "ESZ26", "3s", "total", "cap", ""]))
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(_KEYS), inner, max_size=4)),
                       max_leaves=12)
_RULE = st.fixed_dictionaries({"name": st.sampled_from(["a", "b", "Bad Name", 3])},
                              optional={k: _VALUES for k in ("when", "then", "accounts", "instruments", "enabled")})


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.fixed_dictionaries({"rules": st.lists(_RULE, max_size=3)}), _VALUES))
def test_parse_any_document_gives_rules_or_located_problems(data):
    text = yaml.safe_dump(data, sort_keys=False)
    try:
        loaded = rules.parse(text, NY)
    except ConfigError as err:
        assert err.problems and all(p.line >= 1 and p.col >= 1 and p.message for p in err.problems)
    else:
        assert all(r.name for r in loaded)


def test_a_rule_file_that_is_not_utf8_or_too_big_is_a_located_config_error(tmp_path):
    from riskd import rules as rules_mod
    from riskd.errors import ConfigError as CE
    cases = {"latin1.yaml": "rules: []  # caf\xe9\n".encode("latin-1"), "utf16.yaml": "rules: []\n".encode("utf-16"),
             "big.yaml": b"#" * (2 * 1024 * 1024)}
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(CE) as err:
            rules_mod.load(path, None)
        assert str(err.value).startswith(f"{path}:"), str(err.value)


HOSTILE = {
    "nul.yaml": b"rules:\n  - name: a\x00b\n",
    "utf16-nobom.yaml": "rules: []\n".encode("utf-16-le"),
    "deep-flow.yaml": b"rules: " + b"[" * 5000 + b"]" * 5000 + b"\n",
    "deep-block.yaml": "".join(" " * i + "a:\n" for i in range(1200)).encode(),
    "laughs.yaml": b"a: &a [x,x,x,x,x,x,x,x,x,x]\n" + b"".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" .encode() + b",".join([f"*{chr(97 + i)}".encode()] * 10) + b"]\n" for i in range(8)),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_rule_file_is_a_located_config_error(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(HOSTILE[name])
    with pytest.raises(ConfigError) as exc:
        rules.load(path, NY)
    assert str(exc.value).startswith(f"{path}:")


def test_deep_flow_nesting_is_refused_at_the_bracket_over_the_limit_before_the_yaml_parser_runs(tmp_path):
    # PyYAML's scanner is quadratic in flow nesting: 5,000 brackets (10 KB) took 5.5 s of CPU to refuse,
    # during which a reload held the interpreter; the bracket count refuses it at once, located
    path = tmp_path / "deep.yaml"
    path.write_bytes(HOSTILE["deep-flow.yaml"])
    with pytest.raises(ConfigError) as exc:
        rules.load(path, NY)
    assert str(exc.value).startswith(f"{path}:1:72: nested over 64 levels deep (brackets)")


def test_deep_block_nesting_is_refused_at_the_line_over_the_limit_before_the_yaml_parser_runs(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_bytes(HOSTILE["deep-block.yaml"])  # 1,200 levels: 0.8 s of CPU in PyYAML to refuse
    with pytest.raises(ConfigError) as exc:
        rules.load(path, NY)
    assert str(exc.value).startswith(f"{path}:65:65: nested over 64 levels deep (indentation)")


def test_brackets_in_quoted_names_and_comments_do_not_count_as_nesting(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("# " + "[" * 100 + "\nrules:\n  - name: '" + "[" * 100 + "'\n    instruments: \"" + "{" * 100 + "\"\n"
                    "    when: {position_pnl: {below: -500}}\n    then: {close: all}\n")
    with pytest.raises(ConfigError) as exc:  # the names are not valid names, but the file is read and parsed
        rules.load(path, NY)
    assert "invalid rule name" in str(exc.value) and "nested" not in str(exc.value)


def test_a_rules_directory_that_loops_or_a_rule_file_that_is_a_directory_is_a_config_error(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.yaml").mkdir()
    for source in (tmp_path / "loop", tmp_path / "d"):
        with pytest.raises(ConfigError):
            rules.load(source, NY)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_load_as_rules_or_a_config_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "r.yaml"
    path.write_bytes(data)
    try:
        rules.load(path, NY)
    except ConfigError:
        pass


def test_check_on_a_nul_byte_rule_file_exits_78_with_the_located_message(tmp_path):
    cfg = write_policy(tmp_path, "http://127.0.0.1:9", "rules: []\n")
    for p in tmp_path.rglob("*.yaml"):
        if p.name != cfg.name:
            p.write_bytes(b"rules:\n  - name: a\x00b\n")
    r = run_cli("check", "-c", str(cfg))
    assert r.returncode == 78, r.stderr
    assert "NUL byte" in r.stdout + r.stderr
