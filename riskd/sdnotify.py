"""systemd's service notification protocol (sd_notify(3)) for `Type=notify` units.

One AF_UNIX datagram per message, `KEY=VALUE` lines, sent to `$NOTIFY_SOCKET` (a path, or a name
starting with `@` for an abstract socket). Outside systemd (no `$NOTIFY_SOCKET`) every call is a
no-op, so the daemon calls it unconditionally.

Written here rather than taken from a library: the protocol is one `sendto()`; the `sdnotify`
package is unmaintained since 2017 and swallows errors silently; `systemd-python`/`cysystemd` need
libsystemd headers and a C build on every VPS. A send that fails is logged once, never raised:
losing a status line must not stop riskd from protecting accounts.

What riskd sends (see daemon.py): READY=1 once the first tick ran and the scheduler is up;
STATUS=… with the watchdog pings and on stale/recovered; WATCHDOG=1 after each healthy tick (and
each completed action, so a long tick still proves progress); RELOADING=1 … READY=1 around a
SIGHUP reload; STOPPING=1 when a stop was requested.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Mapping

import structlog

from riskd.redact import Redactor

log = structlog.get_logger("riskd")


class Systemd:
    """Given the environment, notify systemd; every method is a no-op when not run by systemd."""

    def __init__(self, env: Mapping[str, str] | None = None, redactor: Redactor | None = None):
        self.redactor = redactor or Redactor()  # STATUS carries API error text: scrubbed before it leaves
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = ("\0" + address[1:] if address.startswith("@") else address) or None
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1_000_000
        self._sock: socket.socket | None = None
        self._failed = False
        self.sent: int = 0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: object) -> bool:
        """Send one message (`notify(READY=1, STATUS="…")`); return whether it was sent."""
        if self.address is None:
            return False
        message = self.redactor.text("\n".join(f"{key}={str(value).replace(chr(10), ' ')}"
                                               for key, value in fields.items())).encode("utf-8")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message, self.address)
        except OSError as exc:
            if not self._failed:  # once: a lost status line is not worth a log line per tick
                log.warning("sd_notify_failed", error=f"{exc.__class__.__name__}: {exc.strerror}")
                self._failed = True
            return False
        self.sent += 1
        return True

    def ready(self, status: str) -> bool:
        return self.notify(READY=1, STATUS=status)

    def status(self, status: str) -> bool:
        return self.notify(STATUS=status)

    def watchdog(self, status: str | None = None) -> bool:
        """Ping the watchdog (call only from a healthy tick); optionally refresh the status line."""
        return self.notify(WATCHDOG=1, **({"STATUS": status} if status else {}))

    def reloading(self) -> bool:
        return self.notify(RELOADING=1, MONOTONIC_USEC=time.monotonic_ns() // 1000, STATUS="reloading rules")

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify(STOPPING=1, STATUS=status)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
