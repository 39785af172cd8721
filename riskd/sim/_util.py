"""Small shared helpers for the simulator (no imports from the rest of riskd.sim)."""

from __future__ import annotations

import math
from typing import Any

from riskd import fields
from riskd.errors import ScenarioError


def parse_duration(value: Any, *, where: str = "duration") -> float:
    """A duration string in the rules' grammar (riskd.fields: ``"500ms"``, ``"5s"``, ``"2m"``, ``"1h"``)
    or a number of seconds -> seconds (finite float >= 0)."""
    expected = f"{where}: expected a duration like 500ms, 5s, 2m or a number of seconds, got {value!r}"
    if isinstance(value, bool) or value is None:
        raise ScenarioError(expected)
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = fields.parse_duration(value).total_seconds()
        except ValueError:
            raise ScenarioError(expected) from None
    else:
        raise ScenarioError(expected)
    if not math.isfinite(seconds) or seconds < 0:
        raise ScenarioError(f"{where}: must be a finite duration >= 0, got {value!r}")
    return seconds
