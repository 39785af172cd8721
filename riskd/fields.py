"""The vocabulary of riskd's YAML: the value types a field takes (durations, times of day, zones,
days, money, contracts, percentages, account and instrument filters), each parsed with an error that
says how to write it, and the model base that reports every problem of a mapping at once: field
errors, null values and cross-field errors (`_cross`, computed on the raw mapping) together, so a
trader fixes a file in one round. riskd.rules, riskd.conditions and riskd.config build on it.
"""

from __future__ import annotations

import difflib
import math
import re
import zoneinfo
from datetime import time, timedelta
from functools import lru_cache
from typing import Annotated, Any, ClassVar, NamedTuple
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, PlainValidator, ValidationError, WithJsonSchema, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

# ---------------------------------------------------------------------------------------------
# Scalar types: parsed from YAML scalars, with errors that say how to write them.

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
DURATION_HINT = "write a duration like 500ms, 3s, 5m or 1h"
_TIME = r"^([01]?\d|2[0-3]):[0-5]\d(:[0-5]\d)?$"
_PERCENT = r"^(?!0+(\.0+)?%)(100(\.0+)?|\d{1,2}(\.\d+)?)%$"  # more than 0 %, at most 100 %
NAME = r"^[a-z0-9_-]+$"


def parse_duration(value: Any) -> timedelta:
    """Given '500ms' / '3s' / '5m' / '1h', return a timedelta; raise ValueError otherwise."""
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if match:
            return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    raise ValueError(f"invalid duration {value!r}; {DURATION_HINT}")


def _time_of_day(value: Any) -> time:
    if isinstance(value, str) and re.fullmatch(_TIME, value.strip()):
        parts = [int(p) for p in value.strip().split(":")]  # HH:MM or HH:MM:SS (the pattern above)
        return time(parts[0], parts[1], parts[2] if len(parts) > 2 else 0)
    raise ValueError(f"invalid time {value!r}; write \"HH:MM\" or \"HH:MM:SS\" in 24-hour time, e.g. \"15:55\"")


@lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


# Abbreviations a trader writes for a market's zone: each is an unknown zone or a fixed offset that is an
# hour off half the year (EST is UTC-5 all summer too), never what was meant. The IANA name to use instead.
ABBREVIATIONS = {"EST": "America/New_York", "EDT": "America/New_York", "ET": "America/New_York",
                 "CST": "America/Chicago", "CDT": "America/Chicago", "CT": "America/Chicago",
                 "MST": "America/Denver", "MDT": "America/Denver", "PST": "America/Los_Angeles",
                 "PDT": "America/Los_Angeles", "HST": "Pacific/Honolulu"}


def _zone(value: Any) -> ZoneInfo:
    name = str(value).strip().upper() if isinstance(value, str) else None
    if name in ABBREVIATIONS:
        fixed = " a fixed offset that ignores daylight saving time (an hour off half the year)" if value in _zone_names() else " not a zone"
        raise ValueError(f"time zone {value!r} is{fixed}; use the IANA name {ABBREVIATIONS[name]!r}")
    if isinstance(value, str) and value.startswith("Etc/GMT") and value not in ("Etc/GMT", "Etc/GMT0", "Etc/GMT+0", "Etc/GMT-0"):
        raise ValueError(f"time zone {value!r} is a fixed offset with its sign reversed (Etc/GMT+5 is UTC-5) and no daylight saving "
                         "time; use the market's IANA name such as America/New_York or America/Chicago")
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
    raise ValueError(f"invalid instrument filter {value!r}; "
                     "write a root such as MES, a contract such as 'MES 12-26', a glob, or a list of them")


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


def close_amount(value: Any) -> Any:
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


def _weight(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1:
        return float(value)
    raise ValueError(f"invalid micro weight {value!r}; write what one micro counts as against its full-size contract, "
                     "more than 0 and at most 1, such as 0.1")


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


LOCK_ENDS = ("session_end", "week_end")
_LOCK_HINT = ("write true (until the session ends), a duration such as 30m, session_end, week_end, "
              "or {until: 30m, reduce_only: true, undo: never}")


def _lock_until(value: Any) -> Any:
    if value in LOCK_ENDS:
        return value
    try:
        span = parse_duration(value)
    except ValueError:
        raise ValueError(f"invalid lock end {value!r}; {_LOCK_HINT}") from None
    if span <= timedelta(0):
        raise ValueError(f"invalid lock duration {value!r}; it must be longer than 0")
    return span


class LockTerms(NamedTuple):
    """A rule's `lock:` read: when it ends ("session_end", "week_end" or a timedelta), whether positions
    may only shrink, and whether `riskd unlock` may lift it ("never": a prop-firm lock-out)."""

    until: Any = "session_end"
    reduce_only: bool = False
    undo: str = "allowed"


_LOCK_KEYS = ("until", "reduce_only", "undo")


def lock_terms(value: Any) -> LockTerms | None:
    """Given a `lock:` value, return its LockTerms, or None for no lock."""
    if value is False:
        return None
    if value is True:
        return LockTerms()
    if isinstance(value, str):
        return LockTerms(_lock_until(value.strip()))
    if isinstance(value, dict):
        unknown = [k for k in value if k not in _LOCK_KEYS]
        if unknown:
            guess = difflib.get_close_matches(str(unknown[0]), _LOCK_KEYS, n=1)
            raise ValueError(f"unknown key {unknown[0]!r} in lock" + (f"; did you mean {guess[0]!r}?" if guess else
                                                                        "; the keys are until, reduce_only and undo"))
        reduce_only = value.get("reduce_only", False)
        if not isinstance(reduce_only, bool):
            raise ValueError(f"invalid lock reduce_only {reduce_only!r}; write true or false{_unquoted(reduce_only)}")
        undo = value.get("undo", "allowed")
        if undo not in ("allowed", "never"):
            raise ValueError(f"invalid lock undo {undo!r}; write allowed or never (never: riskd unlock refuses to lift it)")
        return LockTerms(_lock_until(value.get("until", "session_end")), reduce_only, undo)
    raise ValueError(f"invalid lock {value!r}; {_LOCK_HINT}")


def _alert_text(value: Any) -> str:
    if isinstance(value, str) and value.strip() and len(value) <= 500:
        return value.strip()
    if isinstance(value, str) and value.strip():
        raise ValueError(f"alert text of {len(value)} characters; keep it to 500 at most")
    raise ValueError(f"invalid alert {value!r}; write the text to send, e.g. alert: \"down $700: $300 from the daily limit\"")


def _name(value: Any) -> str:
    if isinstance(value, str) and re.fullmatch(NAME, value):
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
Duration = Annotated[timedelta, PlainValidator(parse_duration), WithJsonSchema({"type": "string", "pattern": _DURATION.pattern,
                                                                                "examples": ["3s", "30m"]})]
TimeOfDay = Annotated[time, PlainValidator(_time_of_day), WithJsonSchema(_TIME_SCHEMA)]
Zone = Annotated[Any, PlainValidator(_zone), WithJsonSchema({"type": "string", "description": "IANA time zone, e.g. America/New_York",
                                                             "examples": ["America/New_York", "America/Chicago"]})]
Days = Annotated[
    frozenset[int],
    PlainValidator(_days),
    WithJsonSchema({"anyOf": [{"enum": ["weekdays", "daily"]}, {"type": "array", "items": {"enum": list(DAY_NAMES)}, "minItems": 1}]}),
]
_FILTER_SCHEMA = {"anyOf": [{"type": "string", "minLength": 1}, {"type": "array", "items": {"type": "string", "minLength": 1},
                                                                 "minItems": 1}]}
Accounts = Annotated[tuple[str, ...], PlainValidator(_accounts), WithJsonSchema(_FILTER_SCHEMA)]
Instruments = Annotated[tuple[str, ...], PlainValidator(_instruments), WithJsonSchema(_FILTER_SCHEMA)]
Money = Annotated[float, PlainValidator(_money), WithJsonSchema({"type": "number"})]
Contracts = Annotated[int, PlainValidator(_contracts(0)), WithJsonSchema({"type": "integer", "minimum": 0})]
PositiveContracts = Annotated[int, PlainValidator(_contracts(1)), WithJsonSchema({"type": "integer", "minimum": 1})]
CloseAmount = Annotated[
    Any,
    PlainValidator(close_amount),
    WithJsonSchema({"anyOf": [{"const": "all"}, _PERCENT_SCHEMA, {"type": "integer", "minimum": 1}]}),
]
DrawdownLimit = Annotated[Any, PlainValidator(_drawdown_limit), WithJsonSchema({"anyOf": [{"type": "number", "exclusiveMinimum": 0},
                                                                                          _PERCENT_SCHEMA]})]
Weight = Annotated[float, PlainValidator(_weight), WithJsonSchema({"type": "number", "exclusiveMinimum": 0, "maximum": 1})]
Flag = Annotated[bool, PlainValidator(_flag), WithJsonSchema({"type": "boolean"})]
TrueOnly = Annotated[bool, PlainValidator(_true_only), WithJsonSchema({"const": True})]
_LOCK_END_SCHEMA = {"anyOf": [{"enum": list(LOCK_ENDS)}, {"type": "string", "pattern": _DURATION.pattern}]}
LockValue = Annotated[Any, PlainValidator(lock_terms), WithJsonSchema({"anyOf": [
    {"type": "boolean"}, _LOCK_END_SCHEMA,
    {"type": "object", "additionalProperties": False,
     "properties": {"until": _LOCK_END_SCHEMA, "reduce_only": {"type": "boolean"}, "undo": {"enum": ["allowed", "never"]}}},
]})]
AlertText = Annotated[str, PlainValidator(_alert_text), WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 500})]
Name = Annotated[str, PlainValidator(_name), WithJsonSchema({"type": "string", "pattern": NAME})]
Window = Annotated[
    tuple[time, time],
    PlainValidator(_window),
    WithJsonSchema({"type": "array", "items": _TIME_SCHEMA, "minItems": 2, "maxItems": 2}),
]


# ---------------------------------------------------------------------------------------------
# The base of every model: strict, frozen, every problem reported at once.


class Spec(BaseModel):
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


class RuleModel(Spec):
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


def lenient(parse: Any, value: Any) -> Any:
    """Parse a raw value for a cross-field check; None when it is invalid (its own error says so)."""
    try:
        return parse(value)
    except (ValueError, TypeError):
        return None
