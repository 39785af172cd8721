"""Valid policies that probably do not say what their author meant: warnings, located like errors.

`riskd check` prints them (`FILE:LINE:COL: rule NAME: FIELD: warning: ...`) and keeps its exit code
unless `--strict`; `riskd run` logs them at start. Each check looks at loaded rules (riskd.model.Rule)
and points at the YAML node that says it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from riskd import config, yamldoc
from riskd.errors import ConfigError, Problem
from riskd.model import Rule

# `close: N` with N in this range reads like a percentage (close: 50 sends quantity: 50).
PERCENT_LIKE = range(10, 101)


def warnings(rules: list[Rule], settings: config.Settings | None = None) -> list[Problem]:
    """Given loaded rules (and the settings they run under), return the warnings, in file and line order."""
    out: list[Problem] = []
    docs: dict[str, yamldoc.Document | None] = {}
    for rule in rules:
        file = rule.source.rsplit(":", 1)[0]
        if file not in docs:
            try:
                docs[file] = yamldoc.read(Path(file))
            except ConfigError:
                docs[file] = None
        doc = docs[file]
        out.extend(_rule_warnings(rule, doc))
    if settings is not None:
        out.extend(_settings_warnings(settings))
    return sorted(out, key=lambda p: (p.file, p.line, p.col))


def log_warnings(rules: list[Rule]) -> None:
    """The warnings of `rules` on the console (riskd run at start and after a reload)."""
    import structlog

    for warning in warnings(rules):
        structlog.get_logger("riskd").warning("rule_warning", where=f"{warning.file}:{warning.line}:{warning.col}", rule=warning.rule,
                                              field=warning.field, message=warning.message.removeprefix("warning: "))


def _rule_warnings(rule: Rule, doc: yamldoc.Document | None) -> list[Problem]:
    index = _index(doc, rule.name)

    def warn(path: tuple[str, ...], message: str) -> Problem:
        node = doc.locate(("rules", index, *path)) if doc is not None and index is not None else None
        if doc is None or node is None:
            file, _, line = rule.source.rpartition(":")
            return Problem(file, int(line) if line.isdigit() else 1, 1, ".".join(path), f"warning: {message}", rule.name)
        return doc.problem_at(node, ".".join(path), f"warning: {message}", rule.name)

    found: list[Problem] = []
    action = rule.action
    if action.kind == "close" and isinstance(action.amount, int) and action.amount in PERCENT_LIKE:
        n = action.amount
        found.append(warn(("then", "close"), f"close: {n} closes {n} contracts (quantity: {n}), not a share of the position; "
                                             f"for that write close: {n}%"))
    for name, spec in rule.conditions:
        below = getattr(spec, "below", None)
        if name in ("position_pnl", "account_pnl") and below is not None and below > 0:
            what = "position" if name == "position_pnl" else "account"
            found.append(warn(("when", name, "below"),
                              f"below: {below:g} holds while the {what}'s P&L is under +${below:,.0f}, so it fires on every {what} "
                              f"that is not that far ahead; a loss is negative: below: -{below:g}"))
    return found


def _settings_warnings(settings: config.Settings) -> list[Problem]:
    if settings.simulated or config.read_token(settings):
        return []
    return [Problem(str(settings.path or "riskd.yaml"), 1, 1, "crosstrade.token_env",
                    f"warning: no API token: ${settings.token_env} is not set and there is no systemd credential 'crosstrade-token'; "
                    f"riskd run and riskd once will refuse to start (export {settings.token_env}=...)")]


def _index(doc: yamldoc.Document | None, name: str) -> int | None:
    data: Any = doc.data.get("rules") if doc is not None and isinstance(doc.data, dict) else None
    for i, raw in enumerate(data if isinstance(data, list) else []):
        if isinstance(raw, dict) and raw.get("name") == name:
            return i
    return None
