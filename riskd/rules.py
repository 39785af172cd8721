"""Rule files: YAML -> validated, frozen `Rule` objects, with every error located at once.

The pydantic models below ARE the rule language: the loader validates against them and
`riskd schema` prints their JSON Schema, so the two cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema, model_validator

from riskd import yamldoc
from riskd.errors import ConfigError, Problem
from riskd.model import Action, Rule

# ---------------------------------------------------------------------------------------------
# Scalar types: parsed from YAML scalars, with errors that say how to write them.

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
DURATION_HINT = "write a duration like 500ms, 3s, 5m or 1h"


def parse_duration(value: Any) -> timedelta:
    """Given '500ms' / '3s' / '5m' / '1h', return a timedelta; raise ValueError otherwise."""
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if match:
            return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    raise ValueError(f"invalid duration {value!r}; {DURATION_HINT}")


def _time_of_day(value: Any) -> time:
    if isinstance(value, str) and re.fullmatch(r"\d{1,2}:\d{2}(:\d{2})?", value.strip()):
        parts = [int(p) for p in value.strip().split(":")]
        if parts[0] < 24 and parts[1] < 60 and (len(parts) == 2 or parts[2] < 60):
            return time(*parts)
    raise ValueError(f"invalid time {value!r}; write \"HH:MM\" or \"HH:MM:SS\" in 24-hour time, e.g. \"15:55\"")


def _zone(value: Any) -> ZoneInfo:
    if isinstance(value, str):
        try:
            return ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    raise ValueError(f"unknown time zone {value!r}; use an IANA name such as America/New_York or America/Chicago")


_DAY_NAMES = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def _days(value: Any) -> frozenset[int]:
    if value == "weekdays":
        return frozenset(range(5))
    if value in ("daily", "all"):
        return frozenset(range(7))
    if isinstance(value, list) and value and all(isinstance(d, str) and d.lower()[:3] in _DAY_NAMES and len(d) >= 3 for d in value):
        return frozenset(_DAY_NAMES.index(d.lower()[:3]) for d in value)
    raise ValueError(f"invalid days {value!r}; write weekdays, daily, or a list such as [mon, tue, wed]")


def _patterns(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if isinstance(items, list) and items and all(isinstance(i, str) and i.strip() for i in items):
        return tuple(i.strip() for i in items)
    raise ValueError(f"invalid filter {value!r}; write a name, a glob such as \"Sim*\", or a list of them")


def _money(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"invalid amount {value!r}; write a number of dollars such as -500 (no $ sign or quotes)")


def _contracts(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ValueError(f"invalid contract count {value!r}; write a whole number of contracts such as 2")


def _close_amount(value: Any) -> Any:
    if value == "all":
        return "all"
    if isinstance(value, str) and re.fullmatch(r"\d+(\.\d+)?%", value.strip()):
        pct = float(value.strip()[:-1])
        if 0 < pct <= 100:
            return "all" if pct == 100 else pct / 100
        raise ValueError(f"invalid percentage {value!r}; it must be more than 0% and at most 100%")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError(f"invalid close amount {value!r}; write all, a percentage such as 50%, or a whole number of contracts such as 2")


def _drawdown_limit(value: Any) -> Any:
    if isinstance(value, str) and re.fullmatch(r"\d+(\.\d+)?%", value.strip()):
        pct = float(value.strip()[:-1])
        if 0 < pct <= 100:
            return ("percent", pct / 100)
        raise ValueError(f"invalid percentage {value!r}; it must be more than 0% and at most 100%")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return ("dollars", float(value))
    raise ValueError(f"invalid drawdown limit {value!r}; write dollars such as 300, or a share of the peak such as \"95%\"")


def _true_only(value: Any) -> bool:
    if value is True:
        return True
    raise ValueError(f"invalid value {value!r}; write true (to not flatten, choose another action)")


Duration = Annotated[timedelta, PlainValidator(parse_duration), WithJsonSchema({"type": "string", "pattern": _DURATION.pattern})]
TimeOfDay = Annotated[time, PlainValidator(_time_of_day), WithJsonSchema({"type": "string", "pattern": r"^\d{1,2}:\d{2}(:\d{2})?$"})]
Zone = Annotated[Any, PlainValidator(_zone), WithJsonSchema({"type": "string", "description": "IANA time zone, e.g. America/New_York"})]
Days = Annotated[
    frozenset[int],
    PlainValidator(_days),
    WithJsonSchema({"anyOf": [{"enum": ["weekdays", "daily"]}, {"type": "array", "items": {"enum": _DAY_NAMES}, "minItems": 1}]}),
]
Patterns = Annotated[
    tuple[str, ...],
    PlainValidator(_patterns),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]}),
]
Money = Annotated[float, PlainValidator(_money), WithJsonSchema({"type": "number"})]
Contracts = Annotated[int, PlainValidator(_contracts), WithJsonSchema({"type": "integer", "minimum": 0})]
CloseAmount = Annotated[
    Any,
    PlainValidator(_close_amount),
    WithJsonSchema({"anyOf": [{"const": "all"}, {"type": "string", "pattern": r"^\d+(\.\d+)?%$"}, {"type": "integer", "minimum": 1}]}),
]
DrawdownLimit = Annotated[
    Any, PlainValidator(_drawdown_limit), WithJsonSchema({"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "string", "pattern": r"^\d+(\.\d+)?%$"}]})
]
TrueOnly = Annotated[bool, PlainValidator(_true_only), WithJsonSchema({"const": True})]
Window = Annotated[
    tuple[time, time],
    PlainValidator(lambda v: _window(v)),
    WithJsonSchema({"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2}),
]


def _window(value: Any) -> tuple[time, time]:
    if isinstance(value, list) and len(value) == 2:
        start, end = _time_of_day(value[0]), _time_of_day(value[1])
        if start != end:
            return (start, end)
        raise ValueError("the window starts and ends at the same time; give two different times")
    raise ValueError(f"invalid window {value!r}; write two times, e.g. [\"09:30\", \"16:00\"] (a window may wrap midnight)")


# ---------------------------------------------------------------------------------------------
# The rule language.


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Level(_Spec):
    """A threshold: exactly one of below / above (dollars)."""

    below: Money | None = None
    above: Money | None = None

    @model_validator(mode="after")
    def _one_side(self) -> "Level":
        if (self.below is None) == (self.above is None):
            raise ValueError("give exactly one of 'below' or 'above' (write two rules for a band)")
        return self

    def holds(self, value: float) -> bool:
        return value < self.below if self.below is not None else value > self.above  # type: ignore[operator]

    def describe(self) -> dict[str, float]:
        return {"below": self.below} if self.below is not None else {"above": self.above}  # type: ignore[dict-item]


class SizeLevel(_Spec):
    above: Contracts = Field(description="fires when the absolute position size is larger than this")


class AgeLevel(_Spec):
    above: Duration = Field(description="fires when the position has been open longer than this")


class AccountPnl(Level):
    basis: Literal["total", "realized", "unrealized"] = "total"
    net_of_commission: bool = False


class Drawdown(_Spec):
    limit: DrawdownLimit = Field(description="dollars below the session peak, or 'N%' of the peak")
    after: Money = Field(0.0, description="the drawdown arms once the session P&L peak reaches this")


class When(_Spec):
    at: TimeOfDay | None = None
    between: Window | None = None
    outside: Window | None = None
    position_pnl: Level | None = None
    position_size: SizeLevel | None = None
    position_age: AgeLevel | None = None
    account_pnl: AccountPnl | None = None
    account_drawdown: Drawdown | None = None
    days: Days | None = None
    timezone: Zone | None = None
    hold: Duration | None = Field(None, alias="for")

    @model_validator(mode="after")
    def _coherent(self) -> "When":
        conditions = [k for k in CONDITION_KEYS if getattr(self, k) is not None]
        if not conditions:
            raise ValueError(f"no condition given; add one of: {', '.join(CONDITION_KEYS)}")
        clock = self.at or self.between or self.outside
        if (self.days is not None or self.timezone is not None) and clock is None:
            raise ValueError("'days' and 'timezone' apply only with 'at', 'between' or 'outside'; add one or remove them")
        if self.hold is not None and self.at is not None:
            raise ValueError("'for' cannot be used with 'at' (an instant has no duration); remove 'for'")
        return self


CONDITION_KEYS = ("at", "between", "outside", "position_pnl", "position_size", "position_age", "account_pnl", "account_drawdown")


class Then(_Spec):
    close: CloseAmount | None = None
    reduce_to: Contracts | None = None
    flatten: TrueOnly | None = None
    cancel_orders: bool = False
    lock: bool = False

    @model_validator(mode="after")
    def _one_action(self) -> "Then":
        chosen = [k for k in ("close", "reduce_to", "flatten") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError(
                "give exactly one of 'close', 'reduce_to' or 'flatten'" + (f" (found {', '.join(chosen)})" if chosen else "")
            )
        if self.cancel_orders and self.flatten:
            raise ValueError("'flatten' already cancels working orders; remove 'cancel_orders'")
        if self.lock and not (self.flatten or self.close == "all"):
            raise ValueError("'lock' needs 'flatten: true' or 'close: all' (a lock keeps the scope flat)")
        return self


class RuleSpec(_Spec):
    name: str = Field(pattern=r"^[a-z0-9_-]+$", description="unique across all rule files; [a-z0-9_-]+")
    accounts: Patterns = ("*",)
    instruments: Patterns = ("*",)
    when: When
    then: Then
    enabled: bool = True
    dry_run: bool = False


class RuleFile(_Spec):
    rules: list[RuleSpec] = Field(description="the rules of this file, in order")


def schema() -> dict[str, Any]:
    """Return the JSON Schema of a rule file (draft 2020-12), for editors."""
    doc = RuleFile.model_json_schema(by_alias=True)
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
            files.extend(sorted(p for p in source.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()))
        else:
            files.append(source)
    return files


def load(sources: Path | tuple[Path, ...], default_zone: Any) -> tuple[list[Rule], dict[str, str]]:
    """Given rule directories and/or files, return (rules in file order, {file: sha256}).

    Raise ConfigError holding every problem in every file when anything is wrong.
    """
    files = rule_files(sources)
    if not files:
        raise ConfigError([Problem(str(sources), 1, 1, "rules", "no *.yaml or *.yml rule files found")])
    problems: list[Problem] = []
    rules: list[Rule] = []
    hashes: dict[str, str] = {}
    names: dict[str, str] = {}
    for path in files:
        try:
            doc = yamldoc.read(path)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        hashes[str(path)] = hashlib.sha256(doc.text.encode()).hexdigest()
        specs = yamldoc.validate(doc, RuleFile, field_of=lambda loc, doc=doc: _field_of(doc, loc))
        problems.extend(doc.problems)
        if specs is None:
            continue
        for i, spec in enumerate(specs.rules):
            node = doc.locate(("rules", i, "name"))
            line = node.start_mark.line + 1 if node is not None else 1
            if spec.name in names:
                problems.append(doc.problem_at(node, "name", f"duplicate rule name (first defined at {names[spec.name]}); rename one", spec.name))
                continue
            names[spec.name] = f"{path}:{line}"
            raw = json.dumps(doc.data["rules"][i], sort_keys=True, default=str)
            rules.append(_build(spec, len(rules), f"{path}:{line}", default_zone, hashlib.sha256(raw.encode()).hexdigest()[:16]))
    if problems:
        raise ConfigError(problems)
    return rules, hashes


def _field_of(doc: yamldoc.Document, loc: tuple[Any, ...]) -> tuple[str | None, str, tuple[Any, ...]]:
    """Map a pydantic location to (rule name, field label within the rule, yaml path)."""
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        data = doc.data.get("rules") if isinstance(doc.data, dict) else None
        item = data[loc[1]] if isinstance(data, list) and loc[1] < len(data) else None
        name = item.get("name") if isinstance(item, dict) and isinstance(item.get("name"), str) else f"#{loc[1] + 1}"
        label = ".".join(str(p) for p in loc[2:]) or "rule"
        if loc[2:3] == ("when",) and "hold" in loc:
            loc = tuple("for" if p == "hold" else p for p in loc)
            label = label.replace("hold", "for")
        return name, label, loc
    return None, ".".join(map(str, loc)) or "file", loc


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
        instruments=tuple(p.upper() for p in spec.instruments),
        conditions=conditions,
        action=action,
        zone=when.timezone or default_zone,
        days=when.days if when.days is not None else frozenset(range(5)),
        at=when.at,
        hold=when.hold,
        enabled=spec.enabled,
        dry_run=spec.dry_run,
        digest=digest,
    )
