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
``trickle``
    apply the request normally, send the status line and headers at once, then the body
    ``bytes`` (default 1) at a time, one piece every ``ms`` (default 1500): no single read
    waits long, so a per-read timeout never fires, but the whole body takes
    ``len(body) / bytes * ms``. Cut short (connection closed) by ``SimServer.stop()``.
``late_apply``
    do NOT answer: hold the connection ``ms`` (default 30000; cut short by
    ``SimServer.stop()``) and close it without any response, like ``timeout``; but apply the
    request ``apply_ms`` (default 12000) after it arrived, on the sim clock, whether or not
    the connection (or the server) is still there: the caller gave up on something that
    happens later anyway. The application is computed as of the due sim time (prices at that
    moment); it runs on a server timer, or at the latest at the next call into the Simulator.
``applied_refused``
    apply the request normally, then answer HTTP ``status`` (default 408) with ``body``
    (default per status, as for ``status``), e.g. ``status: 200, body: {"success": false}``:
    the caller is told it failed although it worked. ``retry_after`` as for ``status``.
``echo_token``
    do NOT apply the request; answer with a body that carries the caller's bearer token (the
    one in the request's Authorization header), in the shape ``form``: ``"error"`` (default;
    status 401) ``{"error": "invalid token <TOKEN>"}``, ``"detail"`` (status 500)
    ``{"error": "Internal Server Error", "detail": "{'Authorization': 'Bearer <TOKEN>'}"}``
    or ``"key"`` (status 200) ``{"success": true, "<TOKEN>": {"status": "active"}}`` (the
    token as a key, not a value). ``status`` overrides the form's status.
``mutate``
    GET /accounts/snapshot only (other requests never match it; a ``match`` that cannot
    cover that route is an error): apply normally, then change the JSON before sending it,
    by ``mutation`` (required):
    ``positions_null`` (``"positions": null``), ``positions_missing`` (no ``positions`` key),
    ``side_flat`` (``marketPosition`` ``"Flat"``, quantity kept), ``quantity_missing``,
    ``side_missing`` (no ``marketPosition``), ``side_lowercase`` (``"long"``),
    ``side_flip`` (Long <-> Short), ``account_case`` (the account's ``name``,
    ``displayName`` and its positions' ``account`` upper-cased), ``instrument_case``
    (instrument lower-cased), ``quantity_absurd`` (``quantity`` = ``value``, default
    ``10**30``), ``account_missing`` (the account's entry dropped from ``accounts``: it
    vanishes), ``deep_nesting`` (the whole body replaced by a list nested 100000 deep).
    Every account and position is changed unless ``account`` (name, case-insensitive)
    and/or ``instrument`` (contract, root or month-code form, as the API matches them)
    narrows it; ``instrument`` only for the per-position mutations, neither for
    ``deep_nesting``.

Kind ``status`` and ``applied_refused`` take ``retry_after``: seconds (number or duration),
sent as a whole or decimal number, or an HTTP date (``"Fri, 31 Dec 2099 23:59:59 GMT"``),
sent verbatim. ``ms`` and ``apply_ms`` are milliseconds (number) or a duration string
(``"2s"``).

``match`` is ``"*"`` (any request), ``"/path-glob"`` or ``"METHOD /path-glob"`` (METHOD may be
``*``); the glob is matched with :func:`fnmatch.fnmatchcase`, case-insensitively, against the
request path after ``/v1/api`` without the query string, e.g. ``"POST */positions/close"``,
``"GET /accounts/snapshot"``.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field, fields
from email.utils import parsedate_to_datetime
from typing import Any, Mapping

from ._util import ScenarioError, parse_duration

__all__ = ["Fault", "FAULT_KINDS", "MUTATIONS", "ECHO_FORMS", "default_fault_body"]

FAULT_KINDS = ("latency", "status", "timeout", "malformed", "reset", "lost_response", "refuse",
               "trickle", "late_apply", "applied_refused", "echo_token", "mutate")
_DEFAULT_MS = {"latency": 1000.0, "timeout": 30000.0, "trickle": 1500.0, "late_apply": 30000.0}
_DEFAULT_STATUS = {"status": 500, "applied_refused": 408}
ECHO_FORMS = {"error": 401, "detail": 500, "key": 200}  # form -> default status
POSITION_MUTATIONS = ("side_flat", "quantity_missing", "side_missing", "side_lowercase", "side_flip",
                      "instrument_case", "quantity_absurd")
MUTATIONS = ("positions_null", "positions_missing", "account_case", "account_missing", "deep_nesting",
             *POSITION_MUTATIONS)
SNAPSHOT_ROUTE = ("GET", "/accounts/snapshot")
# which kinds each optional field is meaningful for
_FIELD_KINDS = {
    "status": ("status", "applied_refused", "echo_token"),
    "body": ("status", "applied_refused"),
    "retry_after": ("status", "applied_refused"),
    "ms": tuple(_DEFAULT_MS),
    "bytes": ("trickle",),
    "apply_ms": ("late_apply",),
    "form": ("echo_token",),
    "mutation": ("mutate",),
    "value": ("mutate",),
    "account": ("mutate",),
    "instrument": ("mutate",),
}
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
    retry_after: float | str | None = None
    bytes: int | None = None
    apply_ms: float | None = None
    form: str | None = None
    mutation: str | None = None
    value: Any = None
    account: str | None = None
    instrument: str | None = None
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
        for name, kinds in _FIELD_KINDS.items():
            if getattr(self, name) is not None and self.kind not in kinds:
                what = f"kind {kinds[0]!r}" if len(kinds) == 1 else f"kinds {', '.join(kinds)}"
                raise ScenarioError(f"{name}: only meaningful for {what}, not {self.kind!r}")
        if self.kind == "echo_token":
            form = "error" if self.form is None else self.form
            if form not in ECHO_FORMS:
                raise ScenarioError(f"form: expected one of {', '.join(ECHO_FORMS)}, got {self.form!r}")
            object.__setattr__(self, "form", form)
        if self.status is not None:
            if isinstance(self.status, bool) or not isinstance(self.status, int) or not 100 <= self.status <= 599:
                raise ScenarioError(f"status: expected an HTTP status code, got {self.status!r}")
        elif self.kind in _DEFAULT_STATUS:
            object.__setattr__(self, "status", _DEFAULT_STATUS[self.kind])
        elif self.kind == "echo_token":
            assert self.form is not None  # set just above for echo_token
            object.__setattr__(self, "status", ECHO_FORMS[self.form])
        if self.body is not None and not isinstance(self.body, (dict, list, str)):
            raise ScenarioError(f"body: expected a mapping, list or string, got {type(self.body).__name__}")
        if self.ms is not None:
            object.__setattr__(self, "ms", _millis(self.ms, "ms"))
        elif self.kind in _DEFAULT_MS:
            object.__setattr__(self, "ms", _DEFAULT_MS[self.kind])
        if self.apply_ms is not None:
            object.__setattr__(self, "apply_ms", _millis(self.apply_ms, "apply_ms"))
        elif self.kind == "late_apply":
            object.__setattr__(self, "apply_ms", 12000.0)
        if self.bytes is not None:
            if isinstance(self.bytes, bool) or not isinstance(self.bytes, int) or self.bytes < 1:
                raise ScenarioError(f"bytes: expected an integer >= 1, got {self.bytes!r}")
        elif self.kind == "trickle":
            object.__setattr__(self, "bytes", 1)
        if self.retry_after is not None:
            object.__setattr__(self, "retry_after", _retry_after(self.retry_after))
        if self.kind == "mutate":
            self._check_mutate()

    def _check_mutate(self) -> None:
        if self.mutation not in MUTATIONS:
            raise ScenarioError(f"mutation: expected one of {', '.join(MUTATIONS)}, got {self.mutation!r}")
        if not self.matches(*SNAPSHOT_ROUTE):
            raise ScenarioError(f"kind mutate: only applies to GET /accounts/snapshot, which match "
                                f"{self.match!r} does not cover")
        if self.value is not None:
            if self.mutation != "quantity_absurd":
                raise ScenarioError(f"value: only meaningful for mutation quantity_absurd, not {self.mutation!r}")
            v = self.value
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
                raise ScenarioError(f"value: expected a finite number, got {v!r}")
        elif self.mutation == "quantity_absurd":
            object.__setattr__(self, "value", 10**30)
        for name in ("account", "instrument"):
            v = getattr(self, name)
            if v is None:
                continue
            if not isinstance(v, str) or not v.strip():
                raise ScenarioError(f"{name}: expected a non-empty string, got {v!r}")
            if self.mutation == "deep_nesting" or (name == "instrument" and self.mutation not in POSITION_MUTATIONS):
                raise ScenarioError(f"{name}: cannot narrow mutation {self.mutation!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Fault":
        """Build from a scenario mapping (same keys as the fields); unknown keys are errors."""
        if not isinstance(data, Mapping):
            raise ScenarioError(f"expected a mapping, got {type(data).__name__}")
        allowed = {f.name for f in fields(cls) if f.init}
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


def _millis(value: Any, where: str) -> float:
    ms = value
    if isinstance(ms, str):  # "2s" style, converted to milliseconds
        ms = parse_duration(ms, where=where) * 1000.0
    if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not math.isfinite(ms) or ms < 0:
        raise ScenarioError(f"{where}: expected milliseconds >= 0, got {value!r}")
    return float(ms)


def _retry_after(value: Any) -> float | str:
    """Seconds (number or duration string) -> float; an HTTP date -> the string, sent verbatim."""
    if isinstance(value, str):
        try:
            return parse_duration(value, where="retry_after")
        except ScenarioError:
            pass
        try:
            ok = "\r" not in value and "\n" not in value and parsedate_to_datetime(value) is not None
        except (TypeError, ValueError, IndexError):
            ok = False
        if not ok:
            raise ScenarioError(f"retry_after: expected seconds, a duration or an HTTP date like "
                                f"'Fri, 31 Dec 2099 23:59:59 GMT', got {value!r}")
        return value
    return parse_duration(value, where="retry_after")


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
