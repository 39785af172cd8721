"""The control channel: a Unix socket through which `riskd flatten|lock|unlock|pause|resume` reach
the running daemon. The commands themselves are riskd.control's; this module only carries them.

Server (in the daemon): the socket file is created owner/group-only (0660) in its directory (by
default state_dir, which the systemd unit already gives riskd). One thread per connection: it reads
one JSON request, takes the peer's Unix user from the kernel (SO_PEERCRED, not from the request),
audits `control`, records the command durably (`Inbox.submit`, once per id), asks for a tick
(`wake`), and answers with the outcome once the tick has one, or `pending` after `wait_s`. The
tick is never held up by the channel: the thread only waits, and a slow or silent client holds
nothing but its own thread.

Client (`ask`): the request carries an id the client chose, so a client that loses its answer (riskd
was killed, restarted by systemd) asks again with the same id until its deadline: the command is
recorded once and acted on once.
"""

from __future__ import annotations

import json
import os
import pwd
import socket
import socketserver
import struct
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import structlog

from riskd import control, events
from riskd.audit import AuditTrail
from riskd.errors import RiskdError
from riskd.state import Inbox

log = structlog.get_logger("riskd")

MAX_REQUEST = 64 * 1024
WAIT_MAX_S = 120.0
SOCKET_MODE = 0o660
SOCKET_NAME = "control.sock"
# sun_path holds 108 bytes, the terminating NUL included
MAX_PATH = 107


class NotRunning(RiskdError):
    """No daemon answers on the control socket."""


def peer(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket, from the kernel."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return pid, uid, gid


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class _Handler(socketserver.StreamRequestHandler):
    server: "ControlServer"

    def handle(self) -> None:
        try:
            line = self.rfile.readline(MAX_REQUEST + 1)
            if not line:
                return
            reply = self.server.answer(line, self.connection)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - one bad connection never stops the channel
            log.exception("control_failed")
            reply = {"status": "failed", "message": f"riskd could not handle the request: {exc.__class__.__name__}: {exc}"}
        try:
            self.wfile.write((json.dumps(reply, default=str) + "\n").encode())
        except OSError:
            pass  # the client went away; the command (if recorded) still runs and is audited


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """The daemon's end. `wake()` asks for a tick; `progress` is notified when a command moved on."""

    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, path: Path, inbox: Inbox, audit: AuditTrail, wake: Callable[[], None], progress: threading.Condition,
                 clock: Callable[[], datetime]):
        self.path = path
        self.inbox = inbox
        self.audit = audit
        self.wake = wake
        self.progress = progress
        self.clock = clock
        if len(os.fsencode(str(path))) > MAX_PATH:
            raise OSError(f"control socket path {path} is longer than {MAX_PATH} bytes: set control_socket to a shorter path")
        if path.is_socket():
            path.unlink()  # left by a riskd that was killed: the state_dir lock says no other riskd runs here
        super().__init__(str(path), _Handler)
        os.chmod(path, SOCKET_MODE)  # created under riskd's umask (0077); owner and group may connect
        self._thread: threading.Thread | None = None
        self.closing = threading.Event()

    def start(self) -> "ControlServer":
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2}, name="riskd-control", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop taking commands; a client still waiting is told riskd is stopping."""
        self.closing.set()
        with self.progress:
            self.progress.notify_all()
        self.shutdown()
        self.server_close()
        try:
            if self.path.is_socket():
                self.path.unlink()
        except OSError:
            pass
        self.inbox.close()

    def answer(self, line: bytes, connection: socket.socket) -> dict[str, Any]:
        if len(line) > MAX_REQUEST:
            return {"status": "refused", "message": f"request over {MAX_REQUEST} bytes"}
        pid, uid, _gid = peer(connection)
        user = user_name(uid)
        now = self.clock()
        try:
            raw = json.loads(line)
            command = control.parse(raw, user=user, uid=uid, now=now)
        except (ValueError, control.ControlError) as exc:
            return {"status": "refused", "message": str(exc)}
        wait_s = raw.get("wait_s", 30.0)
        wait_s = min(float(wait_s), WAIT_MAX_S) if isinstance(wait_s, (int, float)) and not isinstance(wait_s, bool) else 30.0
        if self.inbox.submit(command.id, command.verb, command.as_json(), now):
            self.audit.emit(events.CONTROL, id=command.id, verb=command.verb, reason=command.reason, user=user, uid=uid, pid=pid,
                            claimed_user=command.claimed_user, account=command.account, instrument=command.instrument,
                            rule=command.rule, until=command.until.isoformat() if command.until else None, all=command.all)
            log.info("control", id=command.id, verb=command.verb, user=user, command=command.describe())
        self.wake()
        return self._await(command.id, wait_s)

    def _await(self, command_id: str, wait_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + wait_s
        while True:
            if self.closing.is_set():
                return {"id": command_id, "status": "pending",
                        "message": f"riskd is stopping: the command is recorded; riskd finishes it if it starts again within "
                                   f"{control.COMMAND_TTL.total_seconds():.0f}s, else it expires (riskd audit --event control_result)"}
            found = self.inbox.get(command_id)
            if found is not None and found[0] not in ("queued", "acting"):
                return {"id": command_id, **(found[1] or {}), "status": found[0]}
            left = deadline - time.monotonic()
            if left <= 0:
                state = found[0] if found else "queued"
                return {"id": command_id, "status": "pending",
                        "message": f"no outcome within {wait_s:g}s ({state}); riskd carries it out: "
                                   f"see `riskd audit --event control,control_result,action`"}
            with self.progress:
                self.progress.wait(min(left, 0.5))


def ask(path: Path, request: dict[str, Any], wait_s: float = 30.0, *, retry_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Send one command to the daemon on `path`; return its answer. Raise NotRunning when nothing
    listens there at the first try. An answer lost on the way (riskd killed, then restarted) is
    asked for again, same id, for up to `retry_s`; after that the answer is `unknown`."""
    data = (json.dumps({**request, "wait_s": wait_s}) + "\n").encode()
    deadline = time.monotonic() + wait_s + retry_s
    first = True
    while True:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(wait_s + 10.0)
                sock.connect(str(path))
                first = False
                sock.sendall(data)
                answer = b""
                while not answer.endswith(b"\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
            if answer.endswith(b"\n"):
                return dict(json.loads(answer))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            if first:
                why = "no control socket" if isinstance(exc, FileNotFoundError) else "nothing listens on the control socket"
                raise NotRunning(f"no daemon is running ({why} at {path}); nothing was done") from None
        except PermissionError:
            raise RiskdError(f"not allowed to use the control socket {path} (owner and group only): "
                             "run as the riskd user or root, e.g. with sudo") from None
        except (ConnectionError, socket.timeout, OSError):
            first = False
        if time.monotonic() >= deadline:
            return {"id": request.get("id"), "status": "unknown",
                    "message": "riskd did not answer (it stopped or restarted meanwhile); if it recorded the command it carries it "
                               "out when it runs: see `riskd audit --event control,control_result`"}
        sleep(0.2)


def socket_path(settings: Any) -> Path:
    """The control socket of a config: `control_socket`, else control.sock in state_dir."""
    return settings.control_socket or settings.state_dir / SOCKET_NAME
