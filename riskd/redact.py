"""One redaction point: every text riskd writes can pass through a Redactor holding its secrets.

A secret is hidden raw, URL-encoded (quote and quote_plus), JSON-escaped, HTML-escaped, escaped as in a
Python repr (a server's `str({'Authorization': 'Bearer ...'})` escapes a quote) and base64'd
(standard and url-safe, at all three alignments, so "Bearer TOKEN" or "user:TOKEN" base64'd is caught).
Short secrets (even 1 character) are still hidden: the trade-off is that an ordinary word equal to a
short secret is blacked out too; leaking a credential is worse than an over-redacted log line.
"""
from __future__ import annotations

import base64
import html
import json
from typing import Any, Iterable
from urllib.parse import quote, quote_plus

REDACTED = "[REDACTED]"


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
        found: set[str] = set()
        for s in secrets:
            if s:
                found |= forms(s)
        self._forms = tuple(sorted(found, key=len, reverse=True))

    def __bool__(self) -> bool:
        return bool(self._forms)

    def text(self, text: str) -> str:
        for f in self._forms:
            if f in text:
                text = text.replace(f, REDACTED)
        return text

    def bytes_(self, data: bytes) -> bytes:
        return self.text(data.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")

    def value(self, value: Any) -> Any:
        """Data with secrets hidden in strings, dict keys and values, nested."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {(self.text(k) if isinstance(k, str) else k): self.value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(v) for v in value]
        return value
