"""The token never leaves riskd's memory: the CrossTrade client scrubs every reply the API (or a
proxy in front of it) echoes the token in, and every writer scrubs again as defence in depth."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus

import httpx
import pytest

from riskd.crosstrade import AUTH, UNKNOWN, CrossTradeClient, TokenBucket
from riskd.model import Order
from riskd.redact import forms

TOKEN = "tok/en+S3cr=t&<x>\"y'z%1"


def _client(handler) -> CrossTradeClient:
    return CrossTradeClient("https://api.example/v1/api", TOKEN, transport=httpx.MockTransport(handler),
                            bucket=TokenBucket(100.0, 100))


def _bearer(request: httpx.Request) -> str:
    return request.headers["Authorization"].removeprefix("Bearer ")


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def _leaks(reply) -> list[str]:
    texts = [*_strings([reply.response, reply.error, reply.request(), list(reply.earlier)]), repr(reply),
             json.dumps(reply.response, ensure_ascii=False)]
    return sorted({f for f in forms(TOKEN) for t in texts if f in t})


def test_a_401_echoing_the_token_is_scrubbed():
    client = _client(lambda r: httpx.Response(401, json={"error": f"invalid token {_bearer(r)}"}))
    reply = client.get_snapshot()
    assert reply.outcome == AUTH and "invalid token [REDACTED]" in reply.error
    assert _leaks(reply) == []


def test_a_500_echoing_the_authorization_header_is_scrubbed():
    client = _client(lambda r: httpx.Response(500, json={"error": "boom", "detail": str({"Authorization": r.headers["Authorization"]})}))
    reply = client.execute(Order("close", "Sim101", "MES 12-26"))
    assert reply.outcome == UNKNOWN and "[REDACTED]" in reply.error
    assert _leaks(reply) == []


def test_the_token_as_a_json_key_is_scrubbed():
    def handler(r):
        return httpx.Response(200, json={"accounts": [], _bearer(r): {"nested": {_bearer(r): 1}}})

    reply = _client(handler).get_snapshot()
    assert reply.ok and _leaks(reply) == []
    assert reply.response["accounts"] == []


@pytest.mark.parametrize("encode", [
    lambda t: quote(t, safe=""), quote_plus, lambda t: base64.b64encode(f"Bearer {t}".encode()).decode(),
    lambda t: base64.urlsafe_b64encode(f"user:{t}".encode()).decode(), lambda t: json.dumps(t)[1:-1],
], ids=["urlencoded", "quote_plus", "base64", "base64url", "json-escaped"])
def test_encoded_echoes_are_scrubbed(encode):
    client = _client(lambda r: httpx.Response(401, text=f"<html>denied: {encode(_bearer(r))}</html>"))
    reply = client.get_snapshot()
    assert reply.outcome == AUTH and _leaks(reply) == []


def test_a_token_spelt_in_unicode_escapes_inside_a_snapshot_is_scrubbed():
    """The raw body holds no form of the token, its decoded string does: a clean-looking text with
    escapes in it is still walked value by value."""
    def handler(r):
        escaped = "".join(f"\\u{ord(c):04x}" for c in _bearer(r))
        return httpx.Response(200, text='{"accounts": [], "note": "' + escaped + '"}', headers={"Content-Type": "application/json"})

    reply = _client(handler).get_snapshot()
    assert reply.ok and _leaks(reply) == [] and reply.response["note"] == "[REDACTED]"


def test_a_429_retried_close_keeps_no_echo_in_its_earlier_attempts():
    calls = []

    def handler(r):
        calls.append(r)
        if len(calls) == 1:
            return httpx.Response(429, json={"error": f"slow down {_bearer(r)}"}, headers={"Retry-After": "0"})
        return httpx.Response(200, json={"success": True, "echo": _bearer(r)})

    reply = _client(handler).execute(Order("close", "Sim101", "MES 12-26"))
    assert reply.ok and len(reply.earlier) == 1 and _leaks(reply) == []


def test_observers_see_the_scrubbed_reply():
    seen = []
    client = _client(lambda r: httpx.Response(401, json={"error": f"invalid token {_bearer(r)}"}))
    client.observers.append(seen.append)
    client.get_snapshot()
    assert seen and _leaks(seen[0]) == []


# ---------------------------------------------------------------------------------------------
# Files riskd creates are owner-only whatever the umask.


def _modes(directory) -> dict[str, str]:
    import stat

    return {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in directory.rglob("*") if p.is_file()}


def test_state_and_trail_files_are_created_owner_only_under_umask_022(tmp_path):
    import os

    from riskd.audit import AuditTrail
    from riskd.state import Store

    old = os.umask(0o022)
    try:
        store = Store(tmp_path / "state", reserve_bytes=4096)
        store.save_health({"last_error": "x"}, __import__("datetime").datetime.now())
        trail = AuditTrail(str(tmp_path / "audit.jsonl"), secrets=[TOKEN])
        trail.emit("started")
        modes = {**_modes(tmp_path / "state"), **_modes(tmp_path)}
        trail.close()
        store.close()
    finally:
        os.umask(old)
    assert {"riskd.sqlite3", "riskd.sqlite3-wal", "riskd.sqlite3-shm", "riskd.lock", "riskd.reserve",
            "audit.jsonl", "audit.jsonl.head"} <= set(modes)
    assert set(modes.values()) == {"0o600"}, modes


# ---------------------------------------------------------------------------------------------
# Defence in depth: every writer of text built from outside data scrubs it again.


def test_sd_notify_status_is_scrubbed(tmp_path):
    import socket

    from riskd.redact import Redactor
    from riskd.sdnotify import Systemd

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify.sock"))
    listener.settimeout(2)
    try:
        sd = Systemd({"NOTIFY_SOCKET": str(tmp_path / "notify.sock")}, redactor=Redactor([TOKEN]))
        assert sd.status(f"STALE: no usable snapshot (invalid token {TOKEN})")
        raw = listener.recv(4096).decode()
    finally:
        listener.close()
    assert raw == "STATUS=STALE: no usable snapshot (invalid token [REDACTED])"


def test_the_health_row_is_scrubbed(tmp_path):
    from datetime import datetime, timezone

    from riskd.redact import Redactor
    from riskd.state import Store

    store = Store(tmp_path / "state", reserve_bytes=4096, redactor=Redactor([TOKEN]))
    try:
        store.save_health({"last_error": f"invalid token {quote(TOKEN, safe='')}", "stale": True}, datetime.now(timezone.utc))
    finally:
        store.close()
    health = Store.peek_health(tmp_path / "state")
    assert health["last_error"] == "invalid token [REDACTED]"
    assert not [f for f in forms(TOKEN) if f.encode() in (tmp_path / "state" / "riskd.sqlite3").read_bytes()]


def test_a_redacting_stream_scrubs_every_write():
    import io

    from riskd.redact import RedactingStream, Redactor

    buf = io.StringIO()
    stream = RedactingStream(buf, Redactor([TOKEN]))
    print(f"daemon: STALE (last error: invalid token {TOKEN})", file=stream)
    stream.writelines([f"{json.dumps(TOKEN)}\n"])
    stream.flush()
    assert TOKEN not in buf.getvalue() and buf.getvalue().count("[REDACTED]") == 2
    assert stream.isatty() is False


def test_notifications_are_scrubbed():
    from riskd.notify import Message, Notifier
    from riskd.redact import Redactor

    got: list[Message] = []

    class Hook:
        class target:
            events = frozenset({"stale"})

        def put(self, message):
            got.append(message)

    notifier = Notifier([Hook()], redactor=Redactor([TOKEN]))
    notifier.on_audit({"event": "stale", "last_ok": None, "last_error": f"invalid token {TOKEN}"})
    assert got and TOKEN not in got[0].text and TOKEN not in json.dumps(got[0].audit)


def test_metrics_labels_are_scrubbed():
    from prometheus_client import generate_latest

    from riskd.metrics import Telemetry
    from riskd.redact import Redactor

    telemetry = Telemetry(redactor=Redactor([TOKEN]))
    telemetry.on_audit({"event": "fired", "rule": f"rule-{TOKEN}"})
    telemetry.on_audit({"event": "action", "ok": False, "rule": TOKEN, "outcome": TOKEN})
    telemetry.on_notification(TOKEN, "sent")
    exposition = generate_latest(telemetry.registry).decode()
    assert "rule-[REDACTED]" in exposition
    assert not [f for f in forms(TOKEN) if f in exposition]


def test_the_daemon_scrubs_its_status_and_wires_the_client_redactor(tmp_path):
    from conftest import write_policy
    from riskd import config, rules as rules_mod
    from riskd.audit import AuditTrail
    from riskd.daemon import Daemon
    from riskd.sdnotify import Systemd
    from riskd.state import Store
    from riskd.tick import build_ticker

    path = write_policy(tmp_path, "https://api.example/v1/api", [{"name": "cap", "when": {"account_pnl": {"below": -500}}, "then": {"flatten": True}}])
    settings = config.load(path)
    loaded, hashes = rules_mod.load(settings.rules, settings.zone)
    audit = AuditTrail(str(tmp_path / "audit.jsonl"))
    store = Store(tmp_path / "state", reserve_bytes=4096)
    transport = httpx.MockTransport(lambda r: httpx.Response(401, json={"error": f"invalid token {_bearer(r)}"}))
    ticker = build_ticker(settings, loaded, TOKEN, audit, dry_run=False, store=store, transport=transport)
    daemon = Daemon(settings, ticker, audit, hashes, systemd=Systemd({}))
    try:
        ticker.health.stale, ticker.health.last_error = True, f"not from the client: {TOKEN}"
        assert TOKEN not in daemon.status() and "[REDACTED]" in daemon.status()
        for part in (daemon.systemd, daemon.telemetry, daemon.notifier):
            assert part.redactor.text(TOKEN) == "[REDACTED]"
    finally:
        ticker.client.close()
        audit.close()
        store.close()
