"""One redaction point: every text riskd writes can pass through a Redactor holding its secrets.

A secret is hidden raw, URL-encoded (quote and quote_plus), JSON-escaped, HTML-escaped, escaped as in a
Python repr (a server's `str({'Authorization': 'Bearer ...'})` escapes a quote) and base64'd
(standard and url-safe, at all three alignments, so "Bearer TOKEN" or "user:TOKEN" base64'd is caught).
Short secrets (even 1 character) are still hidden: the trade-off is that an ordinary word equal to a
short secret is blacked out too; leaking a credential is worse than an over-redacted log line.

Whatever the secrets, a Redactor also hides every value under an Authorization-like key
(`SECRET_KEYS`, any letter case) and the credential of every `Bearer ...` / `Basic ...` string, so a
credential riskd was never told about (a proxy's, another client's) does not leak either.

This is the only redaction module: the CrossTrade client (every Reply), the audit trail, the console,
sd_notify STATUS, the state store's health row, `riskd once` output, notifications and metrics
labels all scrub through a Redactor.
"""
from __future__ import annotations

import base64
import html
import json
import re
from typing import Any, Iterable, TextIO
from urllib.parse import quote, quote_plus

REDACTED = "[REDACTED]"

# Keys whose value is a credential whatever it holds (compared in lower case).
SECRET_KEYS = frozenset({
    "authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api_key", "apikey",
    "token", "access_token", "refresh_token", "password", "secret", "client_secret",
})
# Fragments of those keys as they appear quoted in JSON text ('"token"' holds "token"): one scan of a
# body per fragment, not per key (every key of SECRET_KEYS holds one; tests/test_redact.py checks)
KEY_FRAGMENTS = ("authoriz", "cookie", 'key"', "token", "password", "secret")
_CREDENTIAL_WORDS = ("bearer", "basic")  # what _CREDENTIAL needs, in lower case
_CREDENTIAL = re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]{8,}")


def _b64_cores(secret: bytes) -> set[str]:
    # for each alignment (0, 1, 2 prefix bytes), the base64 characters that depend on the secret alone
    cores: set[str] = set()
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + secret).decode("ascii").rstrip("=")
        start = (shift * 8 + 5) // 6  # first char not touched by the prefix bytes
        end = ((shift + len(secret)) * 8) // 6  # last char whose 6 bits are all secret bits
        core = encoded[start:end]
        if len(core) >= 4 or (core and len(secret) < 4):
            cores.add(core)
            cores.add(core.replace("+", "-").replace("/", "_"))
    return cores


def forms(secret: str) -> set[str]:
    """Every encoded form of one secret riskd hides."""
    out = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret), json.dumps(secret)[1:-1],
           json.dumps(secret, ensure_ascii=False)[1:-1], html.escape(secret), html.escape(secret, quote=False),
           repr(secret + '"')[1:-2], ascii(secret + '"')[1:-2], secret.encode("unicode_escape").decode("ascii")}
    out |= _b64_cores(secret.encode("utf-8"))
    return {f for f in out if f}


class Redactor:
    """Holds the secrets; `text`, `value` and `bytes_` return their input with every form hidden."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self.secrets: tuple[str, ...] = tuple(dict.fromkeys(s for s in secrets if s))
        found: set[str] = set()
        for s in self.secrets:
            found |= forms(s)
        self._forms = tuple(sorted(found, key=len, reverse=True))  # longest first: a secret containing another is hidden whole

    def __bool__(self) -> bool:
        return bool(self._forms)

    def plus(self, secrets: Iterable[str | None]) -> "Redactor":
        """A Redactor hiding these secrets as well."""
        return Redactor([*self.secrets, *secrets])

    def text(self, text: str) -> str:
        for f in self._forms:
            if f in text:
                text = text.replace(f, REDACTED)
        if len(text) > 12 and _CREDENTIAL.search(text):
            text = _CREDENTIAL.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
        return text

    def may_hold_secret(self, raw: str) -> bool:
        """Given JSON text, False when no string or key decoded from it holds one of the secrets in any
        form (one scan per form: 4 for a token, ~0.5 ms for a desk's 1.4 MB snapshot); True, walk it,
        when one is there or the text has an escape (a backslash: what it decodes to is not in the text)."""
        return "\\" in raw or any(f in raw for f in self._forms)

    def text_is_clean(self, text: str) -> bool:
        """True when `text` would come back from `text` unchanged (no secret's form, no Bearer/Basic word)."""
        return self._clean(text, _CREDENTIAL_WORDS)

    def json_is_clean(self, raw: str) -> bool:
        """Given JSON text, True when no string or key decoded from it could be changed by `value`
        (a cheap scan of the text, so a clean line is not walked value by value). Sound only
        without escapes: with a backslash in the text, False (walk it)."""
        return "\\" not in raw and self._clean(raw, _CREDENTIAL_WORDS + KEY_FRAGMENTS)

    def _clean(self, text: str, fragments: tuple[str, ...]) -> bool:
        if any(f in text for f in self._forms):
            return False
        low = text.lower()
        return not any(f in low for f in fragments)

    def bytes_(self, data: bytes) -> bytes:
        return self.text(data.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")

    def value(self, value: Any) -> Any:
        """Data with secrets hidden in strings, dict keys and values, nested; the value under a key of
        SECRET_KEYS is REDACTED whatever it is (None stays None: an absent credential is no secret).
        A dict or list that is plain JSON and whose text the cheap scan finds clean (json_is_clean)
        comes back as it is: nothing in it would change (an audit line of a thousand accounts is
        scanned once, not walked string by string)."""
        if isinstance(value, (dict, list)):
            try:
                if self.json_is_clean(json.dumps(value, ensure_ascii=False)):
                    return value
            except (TypeError, ValueError, RecursionError):  # not plain JSON (a set, an object): walk it
                pass
        return self._walk(value)

    def _walk(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {(self.text(k) if isinstance(k, str) else k):
                    (REDACTED if isinstance(k, str) and v is not None and k.lower() in SECRET_KEYS else self._walk(v))
                    for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._walk(v) for v in value]
        if isinstance(value, (set, frozenset)):
            return type(value)(self._walk(v) for v in value)
        return value


class RedactingStream:
    """A text stream (stdout, stderr) whose every write passes through a Redactor first; the rest
    (isatty, fileno, encoding ...) is the wrapped stream's. A secret split across two writes is not
    joined: riskd writes whole lines (print, structlog, tracebacks)."""

    def __init__(self, stream: TextIO, redactor: Redactor) -> None:
        self._stream = stream
        self.redactor = redactor

    def write(self, text: str) -> int:
        self._stream.write(self.redactor.text(text))
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
