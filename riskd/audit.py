"""The audit trail (append-only JSON lines, hash-chained) and the console log setup.

Each line is one JSON object with `ts` (UTC, ISO 8601, milliseconds), `event`, `seq` and `hash`,
where hash = sha256(previous hash + the canonical JSON of the line without `hash`). The chain
continues across restarts: the writer reads the last line of the file at start. A torn last line
(a crash mid-write) is left in place and the next line records `trail_repaired`.

Lines are written through structlog (processors: timestamp, redaction, chain, render) and flushed
one by one; `fired` and `action` lines are also fsync'ed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, TextIO

import structlog

GENESIS = "0" * 64
DURABLE_EVENTS = frozenset({"fired", "action", "stopped"})
REDACTED = "[REDACTED]"


def canonical(line: dict[str, Any]) -> str:
    return json.dumps(line, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def chain_hash(previous: str, line: dict[str, Any]) -> str:
    body = {k: v for k, v in line.items() if k != "hash"}
    return hashlib.sha256((previous + canonical(body)).encode("utf-8")).hexdigest()


def _redact(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            if secret and secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {k: (REDACTED if k.lower() == "authorization" else _redact(v, secrets)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact(v, secrets) for v in value]
    return value


def last_link(path: Path) -> tuple[int, str, bool]:
    """Given a trail file, return (last seq, last hash, whether the last line was torn)."""
    if not path.exists() or path.stat().st_size == 0:
        return 0, GENESIS, False
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 1 << 16))
        tail = fh.read().split(b"\n")
    torn = tail[-1] != b""
    for raw in reversed(tail):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
            return int(line["seq"]), str(line["hash"]), torn
        except (ValueError, KeyError, TypeError):
            torn = True
            continue
    return 0, GENESIS, torn


class AuditTrail:
    """Append audit events to `target` ("-" = stdout); thread-safe.

    `emit(event, **fields)` writes one line; when the file cannot be written (disk full, read-only),
    the failure goes to `on_error` and the line is kept in memory to be written later, so riskd
    keeps protecting accounts.
    """

    def __init__(self, target: str, secrets: Iterable[str] = (), on_error: Callable[[str, Exception], None] | None = None,
                 fsync: bool = True, clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        self.target = target
        self._secrets = tuple(s for s in secrets if s)
        self._on_error = on_error or (lambda event, exc: None)
        self._fsync = fsync
        self._clock = clock
        self._lock = threading.Lock()
        self._backlog: list[str] = []
        self._stream: TextIO | None = None
        torn = False
        if target == "-":
            self._seq, self._hash = 0, GENESIS
        else:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            self._seq, self._hash, torn = last_link(Path(target))
        self._last: dict[str, Any] = {}
        # called with every line as written (notifications, metrics); must not block. A failing
        # observer goes to on_error and never stops the trail or the tick that emitted the line.
        self.observers: list[Callable[[dict[str, Any]], None]] = []
        self._logger = structlog.wrap_logger(
            _LineSink(self),
            processors=[self._stamp, self._scrub, self._chain, _render],
            wrapper_class=structlog.BoundLogger,  # no level filtering: every audit line is written
            cache_logger_on_first_use=False,
        )
        if torn:
            self.emit("trail_repaired", reason="the previous last line was incomplete (crash mid-write); left as is")

    # processors -------------------------------------------------------------------------------

    def _stamp(self, _logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        return {"ts": self._clock().isoformat(timespec="milliseconds").replace("+00:00", "Z"), **event}

    def _scrub(self, _logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        return _redact(event, self._secrets)

    def _chain(self, _logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        self._seq += 1
        event["seq"] = self._seq
        event["prev"] = self._hash[:16]
        event["hash"] = chain_hash(self._hash, event)
        self._hash = event["hash"]
        self._last = event
        return event

    # writing ----------------------------------------------------------------------------------

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one audit line; return it as written."""
        with self._lock:
            self._logger.msg(event, **fields)
            line = self._last
        for observe in self.observers:
            try:
                observe(line)
            except Exception as exc:  # noqa: BLE001 - an observer must never break the trail
                self._on_error("audit_observer_failed", exc)
        return line

    def _open(self) -> TextIO:
        if self._stream is None:
            self._stream = sys.stdout if self.target == "-" else open(self.target, "a", encoding="utf-8")  # noqa: SIM115
        return self._stream

    def _write(self, text: str, durable: bool) -> None:
        self._backlog.append(text)
        try:
            stream = self._open()
            stream.write("".join(t + "\n" for t in self._backlog))
            stream.flush()
            if durable and self._fsync and self.target != "-":
                os.fsync(stream.fileno())
            self._backlog.clear()
        except OSError as exc:
            self._on_error("audit_write_failed", exc)
            self._stream = None  # reopen on the next line; the backlog is written then

    def close(self) -> None:
        with self._lock:
            if self._stream is not None and self._stream is not sys.stdout:
                self._stream.close()
            self._stream = None


def _render(_logger: Any, _name: str, line: dict[str, Any]) -> str:
    """Readable key order (ts, seq, event first; hash last); the hash covers the canonical form."""
    head = {k: line[k] for k in ("ts", "seq", "event") if k in line}
    rest = {k: v for k, v in line.items() if k not in head and k not in ("prev", "hash")}
    return json.dumps({**head, **rest, "prev": line["prev"], "hash": line["hash"]}, ensure_ascii=False, separators=(",", ":"), default=str)


class _LineSink:
    """structlog's wrapped logger for the trail: receives each rendered line."""

    def __init__(self, trail: AuditTrail):
        self._trail = trail

    def msg(self, text: str) -> None:
        self._trail._write(text, durable=self._trail._last.get("event") in DURABLE_EVENTS)


def configure_console(json_output: bool | None = None, level: str = "info", stream: TextIO | None = None) -> None:
    """structlog for the console: JSON lines to stdout (journald) when not a TTY, readable on a TTY.

    `stream` defaults to stdout; the daemon passes stderr when the audit trail itself goes to stdout."""
    stream = stream or sys.stdout
    if json_output is None:
        json_output = not stream.isatty()
    renderer: Any = structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
