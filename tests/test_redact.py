import base64
import html
import json
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given, settings, strategies as st

from riskd.redact import KEY_FRAGMENTS, REDACTED, SECRET_KEYS, Redactor

TOKEN = "tok/en+S3cr=t&<x>\"y'z"


def _encodings(secret: str) -> list[str]:
    raw = secret.encode()
    out = [secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret), html.escape(secret)]
    for prefix in (b"", b"x:", b"Bearer ", b"a", b"ab"):
        out.append(base64.b64encode(prefix + raw).decode())
        out.append(base64.urlsafe_b64encode(prefix + raw).decode())
    return out


@pytest.mark.parametrize("encoded", _encodings(TOKEN))
def test_every_encoding_of_the_token_is_hidden(encoded):
    out = Redactor([TOKEN]).text(f"error: {encoded} end")
    for form in _encodings(TOKEN):
        assert form not in out
    assert REDACTED in out and out.startswith("error: ")


def test_short_secret_is_still_hidden():
    assert Redactor(["k9z"]).text("key=k9z;") == f"key={REDACTED};"


def test_nested_keys_and_values_are_hidden():
    r = Redactor([TOKEN])
    out = json.dumps(r.value({TOKEN: [{"detail": f"{{'Authorization': 'Bearer {TOKEN}'}}"}], "n": 1}))
    assert TOKEN not in out and json.dumps(TOKEN)[1:-1] not in out and '"n": 1' in out


def test_redactor_hides_token_used_as_a_json_key():
    out = json.dumps(Redactor([TOKEN]).value({TOKEN: "ok", "a": {TOKEN: 1}}))
    assert TOKEN not in out and json.dumps(TOKEN)[1:-1] not in out


def test_redactor_hides_values_under_secret_keys_and_any_bearer_credential():
    r = Redactor()  # no secret known: the key names and the Bearer shape still hide credentials
    out = r.value({"headers": {"Authorization": "Bearer abcdefghijklmnop", "X-Api-Key": "k"}, "token": None,
                   "raw": "Authorization: Bearer abcdefghijklmnop", "items": ("basic   qwertyuiop12",)})
    assert out == {"headers": {"Authorization": REDACTED, "X-Api-Key": REDACTED}, "token": None,
                   "raw": f"Authorization: Bearer {REDACTED}", "items": [f"basic   {REDACTED}"]}
    assert "authorization" in SECRET_KEYS and r.text("Bearer short") == "Bearer short"


def test_redactor_plus_adds_secrets():
    r = Redactor(["first-secret"]).plus(["second-secret"])
    assert r.text("first-secret second-secret") == f"{REDACTED} {REDACTED}"


def test_a_python_repr_of_the_token_is_hidden():
    # a server answering 500 with str({'Authorization': 'Bearer TOKEN'}) escapes the token's quote
    for text in (repr(TOKEN), str({"Authorization": f"Bearer {TOKEN}"}), repr(TOKEN + "é"), ascii(TOKEN)):
        out = Redactor([TOKEN]).text(text)
        assert "S3cr" not in out and REDACTED in out


@pytest.mark.parametrize("key", sorted(SECRET_KEYS))
def test_a_body_with_a_secret_key_in_any_letter_case_is_walked_not_passed_as_clean(key):
    """The cheap scan that lets a clean snapshot through unwalked finds every secret key, in any case."""
    r = Redactor(["the-token-123456"])
    for variant in (key, key.upper(), key.title()):
        raw = json.dumps({"accounts": [], variant: "hunter2-credential"})
        assert not r.json_is_clean(raw)
        assert "hunter2" not in json.dumps(r.value(json.loads(raw)))
    assert any(f in f'"{key}"' for f in KEY_FRAGMENTS)


_TOKEN = "tok-9f8e7d6c5b4a"
_texts = st.one_of(st.text(max_size=12), st.sampled_from([_TOKEN, f"x{_TOKEN}y", f"Bearer {_TOKEN}", "Basic dXNlcjpwYXNzd29yZA==",
                                                           "token", "Authorization", "a\\b", 'say "hi"', "MES 12-26"]))
_plain_json = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), _texts),
                           lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_texts, inner, max_size=4)),
                           max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(_plain_json)
def test_a_value_passed_as_clean_is_exactly_what_walking_it_gives(value):
    """The cheap scan never lets through a value that walking it would have changed."""
    r = Redactor([_TOKEN])
    assert json.dumps(r.value(value), sort_keys=True) == json.dumps(r._walk(value), sort_keys=True)
    assert _TOKEN not in json.dumps(r.value(value), ensure_ascii=False)


@settings(max_examples=300, deadline=None)
@given(_plain_json)
def test_a_body_the_client_keeps_unwalked_holds_no_form_of_the_token(value):
    """The client's ingress scan (may_hold_secret) lets a body through unwalked only when no form of the token is in it."""
    r = Redactor([_TOKEN])
    for raw in (json.dumps(value), json.dumps(value, ensure_ascii=False)):
        if not r.may_hold_secret(raw):  # kept as decoded: no key or string of it holds the token
            assert _TOKEN not in json.dumps(json.loads(raw), ensure_ascii=False)


@settings(max_examples=300, deadline=None)
@given(st.lists(_texts, max_size=6).map(" ".join))
def test_a_text_passed_as_clean_is_exactly_what_redacting_it_gives(text):
    r = Redactor([_TOKEN])
    if r.text_is_clean(text):
        assert r.text(text) == text


def test_a_credential_the_client_does_not_know_is_hidden_where_riskd_writes_it(tmp_path):
    """The client scrubs its own token from every reply; a proxy's cookie in a body (a secret riskd was never
    told about) stays in the Reply and is hidden by the audit trail that writes it."""
    import httpx

    from riskd.audit import AuditTrail
    from riskd.crosstrade import CrossTradeClient, TokenBucket

    body = {"success": False, "error": "upstream", "echo": {"Cookie": "sessionid=hunter2-proxy", "seen": f"Bearer {_TOKEN}"}}
    transport = httpx.MockTransport(lambda request: httpx.Response(502, json=body))
    client = CrossTradeClient("http://sim.invalid/v1/api", _TOKEN, bucket=TokenBucket(1e9, 10**9), transport=transport)
    reply = client.get_snapshot()
    client.close()
    assert _TOKEN not in json.dumps(reply.response)
    trail = AuditTrail(str(tmp_path / "audit.jsonl"), secrets=[_TOKEN])
    trail.emit("api_error", path=reply.path, status=reply.status, response=reply.response)
    trail.close()
    written = (tmp_path / "audit.jsonl").read_text()
    assert "hunter2" not in written and _TOKEN not in written and REDACTED in written
