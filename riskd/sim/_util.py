"""Small shared helpers for the simulator (no imports from the rest of riskd.sim)."""

from __future__ import annotations

import math
import re
from typing import Any

from riskd.errors import ScenarioError

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h)\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}



def parse_duration(value: Any, *, where: str = "duration") -> float:
    """``"500ms"``, ``"5s"``, ``"2m"``, ``"1h"`` or a number (seconds) -> seconds (finite float >= 0)."""
    expected = f"{where}: expected a duration like 500ms, 5s, 2m or a number of seconds, got {value!r}"
    if isinstance(value, bool) or value is None:
        raise ScenarioError(expected)
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            seconds = float(m.group(1)) * _UNITS[m.group(2)]
        else:
            try:
                seconds = float(value)
            except ValueError:
                raise ScenarioError(expected) from None
    else:
        raise ScenarioError(expected)
    if not math.isfinite(seconds) or seconds < 0:
        raise ScenarioError(f"{where}: must be a finite duration >= 0, got {value!r}")
    return seconds
