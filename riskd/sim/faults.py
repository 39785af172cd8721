"""Fault rules for the CrossTrade simulator.

A :class:`Fault` says *what* goes wrong (``kind``), for *which* requests (``match``) and
*when* (``count`` and/or the ``start``/``duration`` window in sim-clock seconds, i.e. seconds
since the Simulator was created). Faults only apply to requests that passed the bearer-token
check and the rate limiter (a 401 or a real 429 is never replaced by a fault). When several
rules match a request, the first one added wins; a rule with ``count`` is used up only by
requests it actually faulted.

Kinds:

``latency``
    wait ``ms`` (default 1000) then handle the request normally.
``status``
    do NOT apply the request; answer HTTP ``status`` (default 500) with ``body`` (default per
    status: 408 ``{"success": false, "error": "ninjatrader_disconnected", "detail":
    "NinjaTrader is not connected"}``, 429 ``{"error": "Rate limit exceeded"}``, 500
    ``{"error": "Internal Server Error"}``, others ``{"success": false, "error": "http_<status>",
    "detail": "Injected fault"}``). ``retry_after`` (seconds) adds a ``Retry-After`` header.
``timeout``
    do NOT apply the request; hold the connection ``ms`` (default 30000; cut short by
    ``SimServer.stop()``), then close it without any response.
``malformed``
    apply the request normally, then answer 200 with the response body cut in half
    (invalid JSON).
``reset``
    do NOT apply the request; reset the connection (TCP RST) without any response.
``lost_response``
    apply the request normally (a close really closes), then close the connection without
    sending the response: the caller cannot know whether it worked.
``refuse``
    not a per-request fault: :class:`riskd.sim.SimServer` stops listening for ``duration``
    seconds from ``start`` (sim time; both required), so clients get "connection refused"
    (open connections are dropped). ``match`` and ``count`` do not apply.

``match`` is ``"*"`` (any request), ``"/path-glob"`` or ``"METHOD /path-glob"`` (METHOD may be
``*``); the glob is matched with :func:`fnmatch.fnmatchcase`, case-insensitively, against the
request path after ``/v1/api`` without the query string, e.g. ``"POST */positions/close"``,
``"GET /accounts/snapshot"``.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from ._util import ScenarioError, parse_duration

__all__ = ["Fault", "FAULT_KINDS", "default_fault_body"]

FAULT_KINDS = ("latency", "status", "timeout", "malformed", "reset", "lost_response", "refuse")
_DEFAULT_MS = {"latency": 1000.0, "timeout": 30000.0}
_METHODS = {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "*"}


def default_fault_body(status: int) -> dict[str, Any]:
    if status == 408:
        return {"success": False, "error": "ninjatrader_disconnected", "detail": "NinjaTrader is not connected"}
    if status == 429:
        return {"error": "Rate limit exceeded"}
    if status == 500:
        return {"error": "Internal Server Error"}
    return {"success": False, "error": f"http_{status}", "detail": "Injected fault"}


@dataclass(frozen=True)
class Fault:
    """One fault rule; see the module docstring. Validated on construction (ValueError)."""

    kind: str
    match: str = "*"
    count: int | None = None
    start: float | None = None
    duration: float | None = None
    status: int | None = None
    body: Any = None
    ms: float | None = None
    retry_after: float | None = None
    _method: str = field(init=False, repr=False, compare=False, default="*")
    _glob: str = field(init=False, repr=False, compare=False, default="*")

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ScenarioError(f"kind: expected one of {', '.join(FAULT_KINDS)}, got {self.kind!r}")
        if self.kind == "refuse" and (self.start is None or self.duration is None or self.count is not None):
            raise ScenarioError("kind refuse: needs start and duration (and no count)")
        method, glob = _parse_match(self.match)
        object.__setattr__(self, "_method", method)
        object.__setattr__(self, "_glob", glob)
        if self.count is not None:
            if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
                raise ScenarioError(f"count: expected an integer >= 1, got {self.count!r}")
        for name in ("start", "duration"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, parse_duration(value, where=name))
        if self.status is not None:
            if self.kind != "status":
                raise ScenarioError(f"status: only meaningful for kind 'status', not {self.kind!r}")
            if isinstance(self.status, bool) or not isinstance(self.status, int) or not 100 <= self.status <= 599:
                raise ScenarioError(f"status: expected an HTTP status code, got {self.status!r}")
        elif self.kind == "status":
            object.__setattr__(self, "status", 500)
        if self.body is not None and self.kind != "status":
            raise ScenarioError(f"body: only meaningful for kind 'status', not {self.kind!r}")
        if self.body is not None and not isinstance(self.body, (dict, list, str)):
            raise ScenarioError(f"body: expected a mapping, list or string, got {type(self.body).__name__}")
        if self.ms is not None:
            if self.kind not in _DEFAULT_MS:
                raise ScenarioError(f"ms: only meaningful for kinds latency and timeout, not {self.kind!r}")
            ms = self.ms
            if isinstance(ms, str):  # "2s" style, converted to milliseconds
                ms = parse_duration(ms, where="ms") * 1000.0
            if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not math.isfinite(ms) or ms < 0:
                raise ScenarioError(f"ms: expected milliseconds >= 0, got {self.ms!r}")
            object.__setattr__(self, "ms", float(ms))
        elif self.kind in _DEFAULT_MS:
            object.__setattr__(self, "ms", _DEFAULT_MS[self.kind])
        if self.retry_after is not None:
            if self.kind != "status":
                raise ScenarioError(f"retry_after: only meaningful for kind 'status', not {self.kind!r}")
            object.__setattr__(self, "retry_after", parse_duration(self.retry_after, where="retry_after"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Fault":
        """Build from a scenario mapping (same keys as the fields); unknown keys are errors."""
        if not isinstance(data, Mapping):
            raise ScenarioError(f"expected a mapping, got {type(data).__name__}")
        allowed = {"kind", "match", "count", "start", "duration", "status", "body", "ms", "retry_after"}
        for key in data:
            if key not in allowed:
                raise ScenarioError(f"unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")
        if "kind" not in data:
            raise ScenarioError("missing required key 'kind'")
        return cls(**dict(data))

    def matches(self, method: str, path: str) -> bool:
        """Does this rule's ``match`` cover ``method`` + ``path`` (path after /v1/api, no query)?"""
        if self._method != "*" and self._method != method.upper():
            return False
        return fnmatch.fnmatchcase(path.lower(), self._glob)

    def in_window(self, now: float) -> bool:
        """Is sim time ``now`` inside ``[start, start + duration)``? (No window: always.)"""
        start = self.start or 0.0
        if now < start:
            return False
        return self.duration is None or now < start + self.duration


def _parse_match(match: Any) -> tuple[str, str]:
    if not isinstance(match, str) or not match.strip():
        raise ScenarioError(f"match: expected '*', '/path-glob' or 'METHOD /path-glob', got {match!r}")
    parts = match.split()
    if len(parts) == 1:
        method, glob = "*", parts[0]
    elif len(parts) == 2:
        method, glob = parts[0].upper(), parts[1]
        if method not in _METHODS:
            raise ScenarioError(f"match: unknown HTTP method {parts[0]!r} in {match!r}")
    else:
        raise ScenarioError(f"match: expected '*', '/path-glob' or 'METHOD /path-glob', got {match!r}")
    glob = glob.lower()
    if glob.startswith("/v1/api/"):
        glob = glob[len("/v1/api"):]
    if not glob.startswith(("/", "*")):
        glob = "/" + glob
    return method, glob
