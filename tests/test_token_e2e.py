"""End to end: an API (or a proxy in front of it) that echoes the bearer token it received, in every
shape it can: 401 {"error": "invalid token <TOKEN>"}, a 500 whose detail holds
{'Authorization': 'Bearer <TOKEN>'}, a JSON body with the token as a key, URL-encoded, HTML-escaped
and base64'd. The real `riskd run` (with a fake NOTIFY_SOCKET) and the real `riskd once`, under
umask 022, must write the token nowhere: no file under the run's directory (state db, -wal, -shm,
audit trail and its head), no byte of stdout or stderr, no sd_notify datagram. And every file riskd
creates is owner-only."""

from __future__ import annotations

import base64
import html
import json
import os
import secrets
import signal
import socket
import stat
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

from conftest import RISKD, read_audit, wait_until, write_policy
from riskd.redact import forms


class EchoApi:
    """A CrossTrade look-alike that echoes the bearer token back; `mode` is "500", "ok" or "401"."""

    def __init__(self) -> None:
        self.mode = "500"
        self.posts = 0
        self.requests = 0
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _answer(self, status: int, body) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                api.requests += 1
                token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                if api.mode == "401":
                    return self._answer(401, {"error": f"invalid token {token}"})
                if api.mode == "500":
                    return self._answer(500, api.echo_500(self.headers.get("Authorization", "")))
                position = {"instrument": "MES 12-26", "quantity": 2, "marketPosition": "Long", "averagePrice": 6000.0,
                            "marketPrice": 5900.0, "unrealizedProfitLoss": -1000.0}
                item = {"realizedProfitLoss": 0.0, "unrealizedProfitLoss": -1000.0, "commission": 0.0, "netLiquidation": 50000.0}
                return self._answer(200, {"accounts": [{"account": {"name": "Sim101", "item": item}, "positions": [position]}],
                                          token: {"echo": token, quote(token, safe=""): html.escape(token)},
                                          "seen": base64.b64encode(f"Bearer {token}".encode()).decode()})

            def do_POST(self):
                api.requests += 1
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                api.posts += 1
                shape = api.posts % 3
                if shape == 1:
                    return self._answer(500, api.echo_500(self.headers.get("Authorization", "")))
                if shape == 2:
                    return self._answer(401, {"error": f"invalid token {token}"})
                return self._answer(200, {"success": True, token: "ok", "detail": quote(token)})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/api"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @staticmethod
    def echo_500(authorization: str) -> dict:
        return {"error": "upstream failure", "detail": str({"Authorization": authorization}),
                "url": f"https://proxy.example/?auth={quote(authorization, safe='')}",
                "trace": base64.urlsafe_b64encode(authorization.encode()).decode()}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _env(token: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CROSSTRADE_TOKEN", "CREDENTIALS_DIRECTORY", "RISKD_CONFIG", "NOTIFY_SOCKET")}
    return {**env, "CROSSTRADE_TOKEN": token, **extra}


def _datagrams(sock: socket.socket, into: list[bytes]) -> list[bytes]:
    while True:
        try:
            into.append(sock.recv(65536))
        except (BlockingIOError, socket.timeout):
            return into


def test_an_echoed_token_is_written_nowhere_and_files_are_owner_only(tmp_path):
    token = secrets.token_urlsafe(18) + "/+=&<>\"'%"
    hidden = forms(token)
    api = EchoApi()
    notify_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(0.05)
    datagrams: list[bytes] = []
    streams: list[bytes] = []
    rules = [{"name": "cap", "when": {"position_pnl": {"below": -100}}, "then": {"close": "all"}}]
    config = write_policy(tmp_path, api.base_url, rules, poll_interval="200ms", stale_after="1s")
    out, err = (tmp_path / "run.stdout").open("wb"), (tmp_path / "run.stderr").open("wb")
    proc = subprocess.Popen([str(RISKD), "run", "-c", str(config)], cwd=tmp_path, stdout=out, stderr=err, umask=0o022,
                            env=_env(token, NOTIFY_SOCKET=str(notify_path), WATCHDOG_USEC="30000000"))
    audit = tmp_path / "audit.jsonl"

    def events(name: str, **match) -> list[dict]:
        assert proc.poll() is None, (tmp_path / "run.stderr").read_text()[-2000:]
        return [e for e in read_audit(audit) if e.get("event") == name and all(e.get(k) == v for k, v in match.items())]

    try:
        # 500s echoing the Authorization header until riskd is stale: STATUS carries the last error
        wait_until(lambda: events("stale"), timeout=15)
        wait_until(lambda: any(b"STALE" in d for d in _datagrams(listener, datagrams)), timeout=10)
        # snapshots with the token as a JSON key; the close is answered with a 500 echoing the header
        api.mode = "ok"
        wait_until(lambda: events("recovered") and events("action"), timeout=20)
        # the token refused, echoed in the 401
        api.mode = "401"
        wait_until(lambda: events("api_error", status=401) and len(events("stale")) >= 2, timeout=15)
        wait_until(lambda: sum(b"STALE" in d for d in _datagrams(listener, datagrams)) >= 2, timeout=10)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        out.close()
        err.close()
    _datagrams(listener, datagrams)
    listener.close()

    # `riskd once`: the daemon's stale health (its last error), then a 401 of its own; then a snapshot and a close
    failed = subprocess.run([str(RISKD), "once", "-c", str(config)], cwd=tmp_path, capture_output=True, umask=0o022,
                            env=_env(token), timeout=60)
    assert failed.returncode == 1 and b"STALE" in failed.stdout and b"invalid token" in failed.stderr, failed
    api.mode = "ok"
    done = subprocess.run([str(RISKD), "once", "-c", str(config)], cwd=tmp_path, capture_output=True, umask=0o022,
                          env=_env(token), timeout=60)
    assert done.returncode == 0 and b"cap" in done.stdout, done
    streams += [failed.stdout, failed.stderr, done.stdout, done.stderr]
    api.close()

    assert datagrams and any(b"READY=1" in d for d in datagrams)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "riskd.sqlite3" for p in files) and audit in files
    leaks = [(str(p.relative_to(tmp_path)), f) for p in files for f in hidden if f.encode() in p.read_bytes()]
    leaks += [(f"stream {i}", f) for i, s in enumerate(streams) for f in hidden if f.encode() in s]
    leaks += [(f"datagram {i}", f) for i, d in enumerate(datagrams) for f in hidden if f.encode() in d]
    assert leaks == []
    assert b"[REDACTED]" in audit.read_bytes()  # the echoes did arrive, hidden

    state = tmp_path / "state"
    owned = [p for p in state.rglob("*") if p.is_file()] + [audit, tmp_path / "audit.jsonl.head"]
    assert {p.name for p in owned} >= {"riskd.sqlite3", "riskd.lock", "audit.jsonl", "audit.jsonl.head"}
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in owned}
    assert all(m == "0o600" for m in modes.values()), modes
