"""Rule files: YAML -> validated, frozen `Rule` objects, with every error located at once.

The pydantic models below ARE the rule language: the loader validates against them and
`riskd schema` prints their JSON Schema, so the two cannot drift apart. Every check runs in one
pass: field errors, null values and cross-field errors (`_cross`, computed on the raw mapping) are
reported together, so a trader fixes a file in one round.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
import zoneinfo
from datetime import time, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError, WithJsonSchema, model_validator
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import InitErrorDetails, PydanticCustomError

from riskd import yamldoc
from riskd.conditions import REGISTRY
from riskd.errors import ConfigError, Problem
from riskd.model import Action, Rule

# ---------------------------------------------------------------------------------------------
# Scalar types: parsed from YAML scalars, with errors that say how to write them.

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
DURATION_HINT = "write a duration like 500ms, 3s, 5m or 1h"
_TIME = r"^([01]?\d|2[0-3]):[0-5]\d(:[0-5]\d)?$"
_PERCENT = r"^(?!0+(\.0+)?%)(100(\.0+)?|\d{1,2}(\.\d+)?)%$"  # more than 0 %, at most 100 %
_NAME = r"^[a-z0-9_-]+$"


def parse_duration(value: Any) -> timedelta:
    """Given '500ms' / '3s' / '5m' / '1h', return a timedelta; raise ValueError otherwise."""
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if match:
            return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    raise ValueError(f"invalid duration {value!r}; {DURATION_HINT}")


def _time_of_day(value: Any) -> time:
    if isinstance(value, str) and re.fullmatch(_TIME, value.strip()):
        return time(*(int(p) for p in value.strip().split(":")))
    raise ValueError(f"invalid time {value!r}; write \"HH:MM\" or \"HH:MM:SS\" in 24-hour time, e.g. \"15:55\"")


@lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _zone(value: Any) -> ZoneInfo:
    if isinstance(value, str) and value in _zone_names():
        return ZoneInfo(value)
    guess = difflib.get_close_matches(str(value), sorted(_zone_names()), n=1, cutoff=0.8)
    hint = f": did you mean {guess[0]!r}?" if guess else " such as America/New_York or America/Chicago"
    raise ValueError(f"unknown time zone {value!r}; use an IANA name{hint}")


DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _days(value: Any) -> frozenset[int]:
    if value == "weekdays":
        return frozenset(range(5))
    if value == "daily":
        return frozenset(range(7))
    if isinstance(value, list) and value:
        bad = [d for d in value if d not in DAY_NAMES]
        if not bad:
            return frozenset(DAY_NAMES.index(d) for d in value)
        raise ValueError(f"invalid day {bad[0]!r}; write mon, tue, wed, thu, fri, sat or sun")
    raise ValueError(f"invalid days {value!r}; write weekdays, daily, or a list such as [mon, tue, wed]")


def _accounts(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if isinstance(items, list) and items and all(isinstance(i, str) and i.strip() for i in items):
        return tuple(i.strip() for i in items)
    raise ValueError(f"invalid account filter {value!r}; write an account name, a glob such as \"Sim*\", or a list of them")


_MONTH_CODES = "FGHJKMNQUVXZ"
_COMPACT = re.compile(rf"^([A-Z0-9]{{2,}}?)([{_MONTH_CODES}])(\d{{1,2}})$")


def _instrument(pattern: str) -> str:
    text = pattern.strip().upper()
    if any(c in text for c in "*?["):
        return text
    if re.fullmatch(r"[A-Z0-9]+", text):
        compact = _COMPACT.match(text)
        if compact:
            root, month, year = compact.groups()
            year = year if len(year) == 2 else "2" + year
            raise ValueError(f"instrument {pattern!r} looks like a contract code; NinjaTrader names it "
                             f"'{root} {_MONTH_CODES.index(month) + 1:02d}-{year}' (or write the root {root!r} for every contract)")
        return text
    contract = re.fullmatch(r"([A-Z0-9]+) (\d{2})-(\d{2})", text)
    if contract and 1 <= int(contract.group(2)) <= 12:
        return text
    raise ValueError(f"invalid instrument {pattern!r}; write a root such as MES, a contract such as 'MES 12-26', or a glob such as 'M*'")


def _instruments(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if isinstance(items, list) and items and all(isinstance(i, str) and i.strip() for i in items):
        parsed, bad = [], []
        for item in items:
            try:
                parsed.append(_instrument(item))
            except ValueError as exc:
                bad.append(str(exc))
        if bad:
            raise ValueError("; ".join(bad))
        return tuple(parsed)
    raise ValueError(f"invalid instrument filter {value!r}; write a root such as MES, a contract such as 'MES 12-26', a glob, or a list of them")


def _money(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ValueError(f"invalid amount {value!r}; write a number of dollars such as -500 (no $ sign or quotes)")


def _contracts(minimum: int) -> Any:
    def parse(value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            raise ValueError(f"invalid contract count {value}; it must be at least {minimum}")
        raise ValueError(f"invalid contract count {value!r}; write a whole number of contracts such as 2")

    return parse


def _percent(value: Any) -> float | None:
    """'50%' -> 0.5; None when the value is not written as a percentage; ValueError when out of range."""
    if not (isinstance(value, str) and re.fullmatch(r"\d+(\.\d+)?%", value.strip())):
        return None
    if re.fullmatch(_PERCENT, value.strip()):
        return float(value.strip()[:-1]) / 100
    raise ValueError(f"invalid percentage {value!r}; it must be more than 0% and at most 100%")


def _close_amount(value: Any) -> Any:
    if value == "all":
        return "all"
    pct = _percent(value)
    if pct is not None:
        return "all" if pct == 1 else pct
    if isinstance(value, int) and not isinstance(value, bool):
        return _contracts(1)(value)
    raise ValueError(f"invalid close amount {value!r}; write all, a percentage such as 50%, or a whole number of contracts such as 2")


def _drawdown_limit(value: Any) -> Any:
    pct = _percent(value)
    if pct is not None:
        return ("percent", pct)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return ("dollars", float(value))
    raise ValueError(f"invalid drawdown limit {value!r}; write dollars such as 300, or a share of the peak such as \"95%\"")


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"invalid value {value!r}; write true or false{_unquoted(value)}")


def _true_only(value: Any) -> bool:
    if value is True:
        return True
    shown = str(value).lower() if isinstance(value, bool) else repr(value)
    raise ValueError(f"invalid value {shown}; write true{_unquoted(value)}; to not flatten, choose another action")


def _unquoted(value: Any) -> str:
    return " (unquoted; yes/no/on/off are text)" if isinstance(value, str) else ""


def _name(value: Any) -> str:
    if isinstance(value, str) and re.fullmatch(_NAME, value):
        return value
    suggestion = re.sub(r"[^a-z0-9_-]+", "-", str(value).strip().lower()).strip("-") or "my-rule"
    raise ValueError(f"invalid rule name {value!r}; use lower-case letters, digits, '-' and '_', e.g. {suggestion}")


def _window(value: Any) -> tuple[time, time]:
    if isinstance(value, list) and len(value) == 2:
        start, end = _time_of_day(value[0]), _time_of_day(value[1])
        if start != end:
            return (start, end)
        raise ValueError("the window starts and ends at the same time; give two different times")
    raise ValueError(f"invalid window {value!r}; write two times, e.g. [\"09:30\", \"16:00\"] (a window may wrap midnight)")


_TIME_SCHEMA = {"type": "string", "pattern": _TIME, "examples": ["15:55", "16:58:30"]}
_PERCENT_SCHEMA = {"type": "string", "pattern": _PERCENT}
Duration = Annotated[timedelta, PlainValidator(parse_duration), WithJsonSchema({"type": "string", "pattern": _DURATION.pattern, "examples": ["3s", "30m"]})]
TimeOfDay = Annotated[time, PlainValidator(_time_of_day), WithJsonSchema(_TIME_SCHEMA)]
Zone = Annotated[Any, PlainValidator(_zone), WithJsonSchema({"type": "string", "description": "IANA time zone, e.g. America/New_York",
                                                             "examples": ["America/New_York", "America/Chicago"]})]
Days = Annotated[
    frozenset[int],
    PlainValidator(_days),
    WithJsonSchema({"anyOf": [{"enum": ["weekdays", "daily"]}, {"type": "array", "items": {"enum": list(DAY_NAMES)}, "minItems": 1}]}),
]
_FILTER_SCHEMA = {"anyOf": [{"type": "string", "minLength": 1}, {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1}]}
Accounts = Annotated[tuple[str, ...], PlainValidator(_accounts), WithJsonSchema(_FILTER_SCHEMA)]
Instruments = Annotated[tuple[str, ...], PlainValidator(_instruments), WithJsonSchema(_FILTER_SCHEMA)]
Money = Annotated[float, PlainValidator(_money), WithJsonSchema({"type": "number"})]
Contracts = Annotated[int, PlainValidator(_contracts(0)), WithJsonSchema({"type": "integer", "minimum": 0})]
PositiveContracts = Annotated[int, PlainValidator(_contracts(1)), WithJsonSchema({"type": "integer", "minimum": 1})]
CloseAmount = Annotated[
    Any,
    PlainValidator(_close_amount),
    WithJsonSchema({"anyOf": [{"const": "all"}, _PERCENT_SCHEMA, {"type": "integer", "minimum": 1}]}),
]
DrawdownLimit = Annotated[Any, PlainValidator(_drawdown_limit), WithJsonSchema({"anyOf": [{"type": "number", "exclusiveMinimum": 0}, _PERCENT_SCHEMA]})]
Flag = Annotated[bool, PlainValidator(_flag), WithJsonSchema({"type": "boolean"})]
TrueOnly = Annotated[bool, PlainValidator(_true_only), WithJsonSchema({"const": True})]
Name = Annotated[str, PlainValidator(_name), WithJsonSchema({"type": "string", "pattern": _NAME})]
Window = Annotated[
    tuple[time, time],
    PlainValidator(_window),
    WithJsonSchema({"type": "array", "items": _TIME_SCHEMA, "minItems": 2, "maxItems": 2}),
]


# ---------------------------------------------------------------------------------------------
# The rule language.


class _Spec(BaseModel):
    """Strict, frozen models: unknown keys are errors (config.py uses this base too)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


Cross = list[tuple[tuple[Any, ...], str]]


def _error(kind: str, loc: tuple[Any, ...], message: str, value: Any) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError(kind, "{message}", {"message": message}), loc=loc, input=value)


def _again(err: Any) -> InitErrorDetails:
    """An error of a nested model, to raise again together with this model's own."""
    if err["type"] in ("null_value", "cross_field"):  # ours: not in pydantic's registry of error types
        return _error(err["type"], err["loc"], err["msg"], err["input"])
    return InitErrorDetails(type=err["type"], loc=err["loc"], input=err["input"], ctx=err.get("ctx", {}))  # type: ignore[typeddict-item]


class _RuleModel(_Spec):
    """A part of the rule language. `expected` says what a value of this type looks like (for error
    messages); `_cross` returns the cross-field problems of a raw mapping as (location, message)."""

    expected: ClassVar[str] = "a mapping"

    @classmethod
    def _cross(cls, raw: dict[str, Any], misspelt: bool) -> Cross:
        """Cross-field problems of a raw mapping; `misspelt` when it has an unknown key (which may be
        the missing choice, so "give one of" problems are left to the unknown-key message)."""
        return []

    @model_validator(mode="wrap")
    @classmethod
    def _every_problem(cls, data: Any, handler: Any) -> Any:
        extra: list[InitErrorDetails] = []
        nulls: set[str] = set()
        if isinstance(data, dict):
            fields = {(f.alias or n): f for n, f in cls.model_fields.items()}
            for key, value in data.items():
                if value is None and key in fields:
                    nulls.add(key)
                    hint = "this key needs a value" if fields[key].is_required() else "give a value, or remove the key"
                    extra.append(_error("null_value", (key,), f"empty value; {hint}", value))
            misspelt = any(key not in fields for key in data)
            extra += [_error("cross_field", loc, message, data) for loc, message in cls._cross(data, misspelt)]
        try:
            result = handler(data)
        except ValidationError as exc:
            if not extra:
                raise
            errors = [_again(e) for e in exc.errors() if not (len(e["loc"]) == 1 and e["loc"][0] in nulls)]
            raise ValidationError.from_exception_data(exc.title, errors + extra) from None
        if extra:
            raise ValidationError.from_exception_data(cls.__name__, extra)
        return result


def _lenient(parse: Any, value: Any) -> Any:
    """Parse a raw value for a cross-field check; None when it is invalid (its own error says so)."""
    try:
        return parse(value)
    except (ValueError, TypeError):
        return None


class Level(_RuleModel):
    """A dollar threshold: exactly one of below / above."""

    expected: ClassVar[str] = "a threshold such as {below: -500}"
    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["below"]}, {"required": ["above"]}]})

    below: Money | None = Field(None, description="holds when the value is less than this (dollars)")
    above: Money | None = Field(None, description="holds when the value is more than this (dollars)")

    @classmethod
    def _cross(cls, raw: dict[str, Any], misspelt: bool) -> Cross:
        if ("below" in raw) == ("above" in raw) and not (misspelt and "below" not in raw):
            return [((), "give exactly one of 'below' or 'above' (write two rules for a band)")]
        return []

    def holds(self, value: float) -> bool:
        return value < self.below if self.below is not None else value > self.above  # type: ignore[operator]

    def describe(self) -> dict[str, float]:
        return {"below": self.below} if self.below is not None else {"above": self.above}  # type: ignore[dict-item]


class SizeLevel(_RuleModel):
    expected: ClassVar[str] = "a threshold such as {above: 10}"
    above: Contracts = Field(description="holds when the absolute position size is larger than this (contracts)")


class AgeLevel(_RuleModel):
    expected: ClassVar[str] = "a threshold such as {above: 30m}"
    above: Duration = Field(description="holds when the position has been open longer than this")


class AccountPnl(Level):
    expected: ClassVar[str] = "a threshold such as {below: -1000}"
    basis: Literal["total", "realized", "unrealized"] = Field("total", description="realized + unrealized (total), or one of them")
    net_of_commission: Flag = Field(False, description="subtract the session's commissions")


class Drawdown(_RuleModel):
    expected: ClassVar[str] = "a drawdown such as {limit: 300, after: 500}"
    limit: DrawdownLimit = Field(description="dollars below the session P&L peak, or 'N%' of the peak")
    after: Money = Field(0.0, description="the drawdown arms once the session P&L peak has reached this (dollars)")


CONDITION_KEYS = ("at", *REGISTRY)  # `at` is an event, not a condition: it sets when a rule is evaluated
CLOCK_KEYS = ("at", "between", "outside")
ACTION_KEYS = ("close", "reduce_to", "flatten")


class When(_RuleModel):
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

    at: TimeOfDay | None = Field(None, description="an event: this wall-clock time in the rule's zone, once per day")
    between: Window | None = Field(None, description="local time is inside the window [start, end); may wrap midnight")
    outside: Window | None = Field(None, description="local time is outside the window [start, end)")
    position_pnl: Level | None = Field(None, description="the position's unrealized P&L (dollars)")
    position_size: SizeLevel | None = Field(None, description="the position's absolute size (contracts)")
    position_age: AgeLevel | None = Field(None, description="how long the position has been open")
    account_pnl: AccountPnl | None = Field(None, description="the account's session P&L (dollars)")
    account_drawdown: Drawdown | None = Field(None, description="giveback from the session P&L peak")
    days: Days | None = Field(None, description="days the clock conditions apply on (default weekdays)")
    timezone: Zone | None = Field(None, description="zone of the clock conditions (default: riskd.yaml timezone)")
    hold: Duration | None = Field(None, alias="for", description="the other conditions must hold this long before firing")

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
        return problems


class Then(_RuleModel):
    """The action: exactly one of close, reduce_to, flatten; plus cancel_orders and lock."""

    expected: ClassVar[str] = "a mapping with one action such as {close: all}"
    model_config = ConfigDict(json_schema_extra={
        "oneOf": [{"required": [k]} for k in ACTION_KEYS],
        "not": {"required": ["flatten", "cancel_orders"], "properties": {"cancel_orders": {"const": True}}},
        "if": {"required": ["lock"], "properties": {"lock": {"const": True}}},
        "then": {"anyOf": [{"required": ["flatten"]},
                           {"required": ["close"], "properties": {"close": {"anyOf": [{"const": "all"}, {"type": "string", "pattern": r"^100(\.0+)?%$"}]}}}]},
    })

    close: CloseAmount | None = Field(None, description="per matched position: all, N% (rounded up by the API) or N contracts")
    reduce_to: PositiveContracts | None = Field(None, description="per matched position larger than N: close the excess")
    flatten: TrueOnly | None = Field(None, description="flatten the account (positions and working orders), or each matched instrument")
    cancel_orders: Flag = Field(False, description="after a close, also cancel the instrument's working orders")
    lock: Flag = Field(False, description="for the rest of the session, close any position that opens in scope")

    @classmethod
    def _cross(cls, raw: dict[str, Any], misspelt: bool) -> Cross:
        problems: Cross = []
        chosen = [k for k in ACTION_KEYS if k in raw]
        if len(chosen) > 1 or (not chosen and not misspelt):
            found = f" (found {', '.join(chosen)})" if chosen else ""
            problems.append(((), f"give exactly one of 'close', 'reduce_to' or 'flatten'{found}"))
        if raw.get("cancel_orders") is True and "flatten" in raw:
            problems.append((("cancel_orders",), "'flatten' already cancels working orders; remove 'cancel_orders'"))
        if raw.get("lock") is True and len(chosen) == 1:
            closes_all = chosen == ["flatten"] or (chosen == ["close"] and _lenient(_close_amount, raw["close"]) in ("all", None))
            if not closes_all:
                problems.append((("lock",), "'lock' needs 'flatten: true' or 'close: all' (a lock keeps the scope flat)"))
        return problems


class RuleSpec(_RuleModel):
    expected: ClassVar[str] = "a rule: a mapping with name:, when: and then:"

    name: Name = Field(description="unique across all rule files; [a-z0-9_-]+")
    accounts: Accounts = Field(("*",), description="account names or globs, case-insensitive")
    instruments: Instruments = Field(("*",), description="roots (MES), contracts ('MES 12-26') or globs")
    when: When = Field(description="conditions: every one given must hold")
    then: Then = Field(description="the action: exactly one of close, reduce_to, flatten")
    enabled: Flag = Field(True, description="false switches the rule off")
    dry_run: Flag = Field(False, description="decide and audit, but send nothing")


class RuleFile(_RuleModel):
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


def load(sources: Path | tuple[Path, ...], default_zone: Any) -> tuple[list[Rule], dict[str, str]]:
    """Given rule directories and/or files, return (rules in file order, {file: sha256}).

    Raise ConfigError holding every problem in every file (file order, then line order) when
    anything is wrong; rule names are checked for duplicates across files even in a file that has
    other errors.
    """
    files = rule_files(sources)
    if not files:
        raise ConfigError([Problem(str(sources), 1, 1, "rules", "no *.yaml or *.yml rule files found")])
    docs: list[yamldoc.Document] = []
    unreadable: list[Problem] = []
    for path in files:
        try:
            docs.append(yamldoc.read(path))
        except ConfigError as exc:
            unreadable.extend(exc.problems)
    rules = _compile(docs, default_zone, unreadable)
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
        specs = yamldoc.validate(doc, RuleFile, field_of=lambda loc, doc=doc: _field_of(doc, loc))
        raw_rules = doc.data.get("rules") if isinstance(doc.data, dict) else None
        for i, raw in enumerate(raw_rules if isinstance(raw_rules, list) else []):
            name = raw.get("name") if isinstance(raw, dict) else None
            if not (isinstance(name, str) and re.fullmatch(_NAME, name)):
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
    if then.close is not None:
        action = Action("close", then.close, then.cancel_orders, then.lock)
    elif then.reduce_to is not None:
        action = Action("reduce_to", then.reduce_to, then.cancel_orders, then.lock)
    else:
        action = Action("flatten", None, False, then.lock)
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
    )
