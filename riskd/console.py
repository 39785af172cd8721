"""Console (journald) logging: structlog for riskd's own messages, every line scrubbed by the
one redaction module (riskd.redact), stdlib records (httpx, APScheduler) included."""

from __future__ import annotations

import logging
import sys
from typing import Any, Iterable, TextIO

import structlog

from riskd.redact import Redactor


def configure_console(json_output: bool | None = None, level: str = "info", secrets: Iterable[str | None] | Redactor = (),
                      stream: TextIO | None = None) -> None:
    """structlog for the console: JSON lines to `stream` (default stdout, journald's) when it is not
    a TTY, readable on a TTY. Every event (tracebacks included) and every stdlib-logging record is
    scrubbed of `secrets`. The daemon passes stderr when the audit trail itself goes to stdout."""
    stream = stream or sys.stdout
    if json_output is None:
        json_output = not stream.isatty()
    hidden = secrets if isinstance(secrets, Redactor) else Redactor(secrets)
    renderer: Any = structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            lambda _l, _n, event: hidden.value(event),
            lambda _l, _n, event: hidden.text(renderer(_l, _n, event)),  # the rendered line too: reprs of any object
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    lone: list[logging.Handler | None] = [logging.lastResort]  # None if a program cleared it
    for handler in root.handlers or lone:
        if handler is not None:
            for old in [f for f in handler.filters if isinstance(f, _RedactingFilter)]:
                handler.removeFilter(old)
            handler.addFilter(_RedactingFilter(hidden))


class _RedactingFilter(logging.Filter):
    """Scrubs stdlib log records (httpx, APScheduler) before any handler prints them."""

    def __init__(self, redactor: Redactor):
        super().__init__()
        self._redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._redactor.text(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = self._redactor.text(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
