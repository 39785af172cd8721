"""The exception tree of riskd.

    RiskdError
    ├── ConfigError        riskd.yaml or a rule file is invalid (exit 78); carries every located problem
    ├── StateError         the state store is unreadable, corrupt or from a newer riskd (exit 1)
    │   └── StateLocked    another riskd holds the state_dir's lock
    ├── ApiError           a CrossTrade answer could not be understood (e.g. a malformed snapshot)
    ├── TrailError         an audit trail cannot be read (missing file, overlapping files)
    └── ScenarioError      a simulator scenario or fault rule is invalid (also a ValueError)

Messages never contain the API token.
"""

from __future__ import annotations

from dataclasses import dataclass


class RiskdError(Exception):
    """Base class of every error riskd raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One located problem in a config or rule file, printed as FILE:LINE:COL: [rule NAME:] FIELD: message."""

    file: str
    line: int
    col: int
    field: str
    message: str
    rule: str | None = None

    def __str__(self) -> str:
        rule = f"rule {self.rule}: " if self.rule else ""
        field = f"{self.field}: " if self.field else ""
        return f"{self.file}:{self.line}:{self.col}: {rule}{field}{self.message}"


class ConfigError(RiskdError):
    """The configuration or a rule file is invalid; `problems` lists every one of them, in file order."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class StateError(RiskdError):
    """The state store in state_dir cannot be used."""


class StateLocked(StateError):
    """Another riskd (a running daemon) holds the lock of this state_dir."""


class ApiError(RiskdError):
    """A CrossTrade request failed before a usable answer was read."""


class TrailError(RiskdError):
    """A trail cannot be read (missing file, overlapping files); the message says which and why."""


class ScenarioError(RiskdError, ValueError):
    """A scenario file, scenario mapping or fault rule is invalid; the message names the file and key."""
