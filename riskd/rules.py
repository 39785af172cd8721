"""Rule files: YAML -> validated, frozen `Rule` objects, with every error located at once.

The pydantic models below (with each condition's spec model from riskd.conditions) ARE the rule
language: the loader validates against them and `riskd schema` prints their JSON Schema, so the two
cannot drift apart. The value types and the model base that reports every problem at once are in
riskd.fields.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from datetime import time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import ConfigDict, Field, create_model
from pydantic.json_schema import GenerateJsonSchema

from riskd import yamldoc
from riskd.conditions import REGISTRY
from riskd.errors import ConfigError, Problem
from riskd.fields import (
    NAME,
    Accounts,
    AlertText,
    CloseAmount,
    Cross,
    Days,
    Duration,
    Flag,
    Instruments,
    LockTerms,
    LockValue,
    Name,
    PositiveContracts,
    RuleModel,
    TimeOfDay,
    TrueOnly,
    Zone,
    close_amount,
    lenient,
    lock_terms,
)
from riskd.model import Action, Rule

# ---------------------------------------------------------------------------------------------
# The rule language.


CONDITION_KEYS = ("at", *REGISTRY)  # `at` is an event, not a condition: it sets when a rule is evaluated
CLOCK_KEYS = ("at", "between", "outside")
ACTION_KEYS = ("close", "reduce_to", "flatten", "alert")
GROUP_KEYS = tuple(c.name for c in REGISTRY.values() if c.scope == "group")
POSITION_KEYS = tuple(c.name for c in REGISTRY.values() if c.scope == "position")


class _When(RuleModel):  # `When` below adds the fields: one per entry of riskd.conditions.REGISTRY
    """Conditions: every one given must hold."""

    expected: ClassVar[str] = "a mapping of conditions such as {position_pnl: {below: -500}}"
    model_config = ConfigDict(json_schema_extra={
        "anyOf": [{"required": [k]} for k in CONDITION_KEYS],
        "dependentSchemas": {
            "days": {"anyOf": [{"required": [k]} for k in CLOCK_KEYS]},
            "timezone": {"anyOf": [{"required": [k]} for k in CLOCK_KEYS]},
            "for": {"not": {"required": ["at"]}},
        },
    })

    if TYPE_CHECKING:  # the fields `When` adds that riskd reads by name
        at: time | None
        days: frozenset[int] | None
        timezone: Any
        hold: timedelta | None

    @classmethod
    def _cross(cls, raw: dict[str, Any], misspelt: bool) -> Cross:
        problems: Cross = []
        if not any(k in raw for k in CONDITION_KEYS):
            if not misspelt:
                problems.append(((), f"no condition given; add one of: {', '.join(CONDITION_KEYS)}"))
        elif not any(k in raw for k in CLOCK_KEYS):
            for key in ("days", "timezone"):
                if key in raw:
                    problems.append(((key,), f"'{key}' applies only with 'at', 'between' or 'outside'; add one or remove '{key}'"))
        if "for" in raw and "at" in raw:
            problems.append((("for",), "'for' cannot be used with 'at' (an instant has no duration); remove 'for'"))
        grouped = [k for k in GROUP_KEYS if k in raw]
        if len(grouped) > 1:
            problems.append(((grouped[1],), f"give one of {' or '.join(repr(k) for k in GROUP_KEYS)} per rule (write two rules)"))
        per_position = [k for k in POSITION_KEYS if k in raw]
        if grouped and per_position:
            problems.append(((grouped[0],), f"'{grouped[0]}' counts across positions and '{per_position[0]}' looks at one; "
                                            "write them as two rules"))
        return problems


if TYPE_CHECKING:
    When = _When
else:
    When = create_model(
        "When",
        __base__=_When,
        __doc__=_When.__doc__,
        at=(TimeOfDay | None, Field(None, description="an event: this wall-clock time in the rule's zone, once per day")),
        **{c.name: (c.spec | None, Field(None, description=c.description)) for c in REGISTRY.values()},
        days=(Days | None, Field(None, description="days the clock conditions apply on (default weekdays)")),
        timezone=(Zone | None, Field(None, description="zone of the clock conditions (default: riskd.yaml timezone)")),
        hold=(Duration | None, Field(None, alias="for", description="the other conditions must hold this long before firing")),
    )


class Then(RuleModel):
    """The action: exactly one of close, reduce_to, flatten, alert; plus cancel_orders and lock."""

    expected: ClassVar[str] = "a mapping with one action such as {close: all}"
    model_config = ConfigDict(json_schema_extra={
        "oneOf": [{"required": [k]} for k in ACTION_KEYS],
        "not": {"required": ["flatten", "cancel_orders"], "properties": {"cancel_orders": {"const": True}}},
        "allOf": [{"not": {"required": ["alert", "cancel_orders"], "properties": {"cancel_orders": {"const": True}}}}],
        "if": {"required": ["lock"], "properties": {"lock": {"anyOf": [  # a lock that is not reduce-only keeps the scope flat
            {"const": True}, {"type": "string"},
            {"type": "object", "not": {"required": ["reduce_only"], "properties": {"reduce_only": {"const": True}}}}]}}},
        "then": {"anyOf": [{"required": ["flatten"]},
                           {"required": ["close"], "properties": {"close": {"anyOf": [{"const": "all"},
                                                                                      {"type": "string", "pattern": r"^100(\.0+)?%$"}]}}}]},
    })

    close: CloseAmount | None = Field(None, description="per matched position: all, N% (rounded up by the API) or N contracts")
    reduce_to: PositiveContracts | None = Field(None, description="per matched position larger than N: close the excess")
    flatten: TrueOnly | None = Field(None, description="flatten the account (positions and working orders), or each matched instrument")
    alert: AlertText | None = Field(None, description="send no request: audit and notify this text (every notify target)")
    cancel_orders: Flag = Field(False, description="after a close, also cancel the instrument's working orders")
    lock: LockValue = Field(False, description=(
        "true (until the session ends), a duration (30m), session_end, week_end, or {until, reduce_only, undo}: close any "
        "position that opens (or, reduce_only, grows) in scope; undo: never also refuses `riskd unlock`"))

    @classmethod
    def _cross(cls, raw: dict[str, Any], misspelt: bool) -> Cross:
        problems: Cross = []
        chosen = [k for k in ACTION_KEYS if k in raw]
        if len(chosen) > 1 or (not chosen and not misspelt):
            found = f" (found {', '.join(chosen)})" if chosen else ""
            problems.append(((), f"give exactly one of 'close', 'reduce_to', 'flatten' or 'alert'{found}"))
        if raw.get("cancel_orders") is True and "flatten" in raw:
            problems.append((("cancel_orders",), "'flatten' already cancels working orders; remove 'cancel_orders'"))
        if raw.get("cancel_orders") is True and "alert" in raw:
            problems.append((("cancel_orders",), "'alert' sends no request; remove 'cancel_orders'"))
        terms = lenient(lock_terms, raw.get("lock", False))
        if terms is not None and not terms.reduce_only and len(chosen) == 1:
            closes_all = chosen == ["flatten"] or (chosen == ["close"] and lenient(close_amount, raw["close"]) in ("all", None))
            if not closes_all:
                problems.append((("lock",), "'lock' needs 'flatten: true' or 'close: all' (a lock keeps the scope flat); "
                                            "or write lock: {until: ..., reduce_only: true} to only stop positions growing"))
        return problems


class RuleSpec(RuleModel):
    expected: ClassVar[str] = "a rule: a mapping with name:, when: and then:"

    name: Name = Field(description="unique across all rule files; [a-z0-9_-]+")
    accounts: Accounts = Field(("*",), description="account names or globs, case-insensitive")
    instruments: Instruments = Field(("*",), description="roots (MES), contracts ('MES 12-26') or globs")
    when: When = Field(description="conditions: every one given must hold")
    then: Then = Field(description="the action: exactly one of close, reduce_to, flatten")
    enabled: Flag = Field(True, description="false switches the rule off")
    dry_run: Flag = Field(False, description="decide and audit, but send nothing")

    @classmethod
    def _cross(cls, raw: dict[str, Any], misspelt: bool) -> Cross:
        when, then = raw.get("when"), raw.get("then")
        if not (isinstance(when, dict) and isinstance(then, dict)):
            return []
        grouped = next((k for k in GROUP_KEYS if isinstance(when.get(k), dict)), None)
        if grouped is None:
            return []
        problems: Cross = []
        if "close" in then and lenient(close_amount, then["close"]) not in ("all", None):
            problems.append((("then", "close"), f"with '{grouped}' write reduce_to: N (the excess, newest positions first), "
                                                "close: all or flatten: true; a share or a count per position has no single meaning"))
        cap, keep = when[grouped].get("above"), then.get("reduce_to")
        if isinstance(cap, int) and isinstance(keep, int) and not isinstance(keep, bool) and keep > cap:
            problems.append((("then", "reduce_to"), f"reduce_to {keep} keeps more than the {grouped} cap of {cap}: "
                                                    f"nothing would be closed; write reduce_to: {cap} or less"))
        return problems


class RuleFile(RuleModel):
    expected: ClassVar[str] = "a mapping with the key rules: holding a list of rules"

    rules: list[RuleSpec] = Field(description="the rules of this file, in order; each item starts with '- name:'")


class _SchemaGenerator(GenerateJsonSchema):
    """A key may be left out but never written empty, so optional keys are not nullable."""

    def nullable_schema(self, schema: Any) -> Any:
        return self.generate_inner(schema["schema"])

    def default_schema(self, schema: Any) -> Any:
        out = super().default_schema(schema)
        if "default" in out and out["default"] is None:
            del out["default"]
        return out


def schema() -> dict[str, Any]:
    """Return the JSON Schema of a rule file (draft 2020-12), for editors."""
    doc = RuleFile.model_json_schema(by_alias=True, schema_generator=_SchemaGenerator)
    doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    doc["title"] = "riskd rule file"
    return doc


# ---------------------------------------------------------------------------------------------
# Loading.


def rule_files(sources: Path | tuple[Path, ...]) -> list[Path]:
    """Given rule directories and/or files, return the rule files in load order (each directory sorted)."""
    files: list[Path] = []
    for source in (sources,) if isinstance(sources, Path) else sources:
        if source.is_dir():
            try:
                files.extend(sorted(p for p in source.iterdir() if p.suffix in (".yaml", ".yml") and not p.is_dir()))
            except OSError as exc:
                raise ConfigError([Problem(str(source), 1, 1, "rules", f"cannot list rules directory: {exc.strerror or exc}")]) from None
        else:
            files.append(source)
    return files


def load(sources: Path | tuple[Path, ...], default_zone: Any, *, allow_empty: bool = True) -> tuple[list[Rule], dict[str, str]]:
    """Given rule directories and/or files, return (rules in file order, {file: sha256}).

    Raise ConfigError holding every problem in every file (file order, then line order) when
    anything is wrong; rule names are checked for duplicates across files even in a file that has
    other errors. Unless `allow_empty` (riskd.yaml's allow_empty_policy), a policy with no enabled
    rule is an error too: a daemon running it would protect nothing.
    """
    files = rule_files(sources)
    if not files:
        raise ConfigError([Problem(str(source), 1, 1, "rules", "no *.yaml or *.yml rule files here; write one "
                                   "(rules/README.md has every key; riskd init DIR writes a starter policy)")
                           for source in ((sources,) if isinstance(sources, Path) else sources)])
    docs: list[yamldoc.Document] = []
    unreadable: list[Problem] = []
    for path in files:
        try:
            docs.append(yamldoc.read(path))
        except ConfigError as exc:
            unreadable.extend(exc.problems)
    rules = _compile(docs, default_zone, unreadable)
    if not allow_empty and not any(r.enabled for r in rules):
        what = "no rules" if not rules else f"every rule is disabled ({len(rules)})"
        raise ConfigError([docs[0].problem_at(docs[0].locate(("rules",)), "rules",
                                              f"{what} in {len(docs)} file(s): riskd would watch and protect nothing; add or enable a "
                                              "rule, or set allow_empty_policy: true in riskd.yaml to run like this on purpose")])
    return rules, {str(doc.path): hashlib.sha256(doc.text.encode()).hexdigest() for doc in docs}


def parse(text: str, default_zone: Any, source: str = "<rules>") -> list[Rule]:
    """Given the text of one rule file, return its rules; raise ConfigError as `load` does."""
    return _compile([yamldoc.Document(Path(source), text)], default_zone, [])


def _compile(docs: list[yamldoc.Document], default_zone: Any, problems: list[Problem]) -> list[Rule]:
    rules: list[Rule] = []
    names: dict[str, str] = {}
    for doc in docs:
        if doc.node is None and not doc.problems:
            doc.problems.append(doc.problem_at(None, "", "empty rule file; write rules: followed by a list of rules (see rules/README.md)"))
        specs = yamldoc.validate(doc, RuleFile, field_of=functools.partial(_field_of, doc))
        raw_rules = doc.data.get("rules") if isinstance(doc.data, dict) else None
        for i, raw in enumerate(raw_rules if isinstance(raw_rules, list) else []):
            name = raw.get("name") if isinstance(raw, dict) else None
            if not (isinstance(name, str) and re.fullmatch(NAME, name)):
                continue
            node = doc.locate(("rules", i, "name"))
            if name in names:
                doc.problems.append(doc.problem_at(node, "name", f"duplicate rule name (first defined at {names[name]}); rename one", name))
            else:
                names[name] = f"{doc.path}:{node.start_mark.line + 1 if node is not None else 1}"
        doc.problems.sort(key=lambda p: (p.line, p.col))
        problems.extend(doc.problems)
        if specs is None or doc.problems:
            continue
        for i, spec in enumerate(specs.rules):
            raw = json.dumps(doc.data["rules"][i], sort_keys=True, default=str)
            digest = hashlib.sha256(raw.encode()).hexdigest()[:16]
            rules.append(_build(spec, len(rules), names[spec.name], default_zone, digest))
    if problems:
        raise ConfigError(problems)
    return rules


def changes(old: list[Rule], new: list[Rule]) -> dict[str, list[str]]:
    """Given the running rules and the reloaded ones, return the names that keep their state
    (`unchanged`: same text), start over (`changed`), are `added` and `removed`."""
    before, after = {r.name: r.digest for r in old}, {r.name: r.digest for r in new}
    return {
        "unchanged": [n for n in after if before.get(n) == after[n]],
        "changed": [n for n in after if n in before and before[n] != after[n]],
        "added": [n for n in after if n not in before],
        "removed": [n for n in before if n not in after],
    }


def _field_of(doc: yamldoc.Document, loc: tuple[Any, ...]) -> tuple[str | None, str, tuple[Any, ...]]:
    """Map a pydantic location to (rule name, field label within the rule, yaml path)."""
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        data = doc.data.get("rules") if isinstance(doc.data, dict) else None
        item = data[loc[1]] if isinstance(data, list) and loc[1] < len(data) else None
        name = item.get("name") if isinstance(item, dict) and isinstance(item.get("name"), str) else f"#{loc[1] + 1}"
        return name, ".".join(str(p) for p in loc[2:]) or "", loc
    return None, ".".join(map(str, loc)), loc


def _build(spec: RuleSpec, index: int, source: str, default_zone: Any, digest: str) -> Rule:
    when, then = spec.when, spec.then
    terms = then.lock or LockTerms()
    locking: dict[str, Any] = {"lock": bool(then.lock), "lock_until": terms.until, "reduce_only": terms.reduce_only,
                               "lock_undo": terms.undo}
    if then.close is not None:
        action = Action("close", then.close, then.cancel_orders, **locking)
    elif then.reduce_to is not None:
        action = Action("reduce_to", then.reduce_to, then.cancel_orders, **locking)
    elif then.alert is not None:
        action = Action("alert", then.alert, False, **locking)
    else:
        action = Action("flatten", None, False, **locking)
    conditions = tuple(
        (key, getattr(when, key)) for key in CONDITION_KEYS if key != "at" and getattr(when, key) is not None
    )
    return Rule(
        name=spec.name,
        index=index,
        source=source,
        accounts=tuple(p.lower() for p in spec.accounts),
        instruments=spec.instruments,
        conditions=conditions,
        action=action,
        zone=when.timezone or default_zone,
        days=when.days if when.days is not None else frozenset(range(5)),
        at=when.at,
        hold=when.hold,
        enabled=spec.enabled,
        dry_run=spec.dry_run,
        digest=digest,
        position_scoped=any(REGISTRY[name].scope == "position" for name, _ in conditions),
        grouped=any(REGISTRY[name].scope == "group" for name, _ in conditions),
    )
