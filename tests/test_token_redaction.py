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
