"""`riskd init DIR`: a place of the trader's own to start from.

Writes DIR/riskd.yaml (pointed at the embedded simulator, `base_url: sim`), DIR/rules/ with one
commented policy and the rule files' JSON Schema beside it, and returns the next three commands.
Nothing that exists is overwritten.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from riskd.errors import RiskdError

CONFIG = """\
# riskd.yaml: every key, with its default, is in docs/configuration.md. Paths are relative to this file.
crosstrade:
  # "sim" runs the embedded CrossTrade simulator (two demo accounts, no token needed).
  # For your accounts: base_url: https://app.crosstrade.io/v1/api, and export CROSSTRADE_TOKEN=...
  base_url: sim
poll_interval: 1s
timezone: America/New_York   # the zone of `at`/`between` times and of session_start (an IANA name)
rules: rules/
audit_log: audit.jsonl
state_dir: state/
"""

POLICY = """\
# yaml-language-server: $schema=./rules.schema.json
# Your policy. Every key, its unit and an example: rules/README.md in riskd (or `riskd schema`).
# `riskd check` validates this file; `riskd once --dry-run` shows how far each rule is from firing.
rules:
  # Close all of an MES position once its open loss passes $500. The simulator's Sim101 holds
  # 4 MES 12-26 that slide past -$500 about 8 seconds after `riskd run` starts.
  - name: my-mes-loss-cap
    instruments: MES              # every MES contract (MES 12-26, MES 03-27), never MESX
    when:
      position_pnl: {below: -500} # dollars; a loss is negative
    then:
      close: all                  # or 50% (half, rounded up), or a number of contracts: close: 2
"""


def init(directory: Path) -> tuple[list[Path], list[str]]:
    """Write the starter config and policy under `directory`; return (files written, next commands).
    Raise RiskdError, writing nothing, when any of the files already exists."""
    from riskd import rules

    config, policy, schema = directory / "riskd.yaml", directory / "rules" / "my-policy.yaml", directory / "rules" / "rules.schema.json"
    existing = [p for p in (config, policy, schema) if p.exists()]
    if existing:
        raise RiskdError(f"{existing[0]} already exists; nothing was written (choose a new DIR, or edit the files there)")
    try:
        policy.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(CONFIG)
        policy.write_text(POLICY)
        schema.write_text(json.dumps(rules.schema(), indent=2) + "\n")
    except OSError as exc:
        raise RiskdError(f"cannot write {directory}: {exc.strerror or exc}") from None
    c = shlex.quote(str(config))
    return [config, policy, schema], [f"riskd check -c {c}", f"riskd once -c {c} --dry-run", f"riskd run -c {c}"]
