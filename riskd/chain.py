"""The audit line format and its hash chain: what a line is, how it is hashed, how the end of a
trail file and its head record are read. Shared by the writer (riskd.audit) and the reader
(riskd.trail); no I/O beyond reading the file descriptors it is given.

Line format: one JSON object per line, UTF-8, keys `ts` (UTC, ISO 8601, milliseconds), `seq`,
`event`, the event's fields, `prev` (first 16 hex digits of the previous line's hash) and `hash`:

    hash = sha256(previous line's hash + canonical JSON of this line without `hash`)

where the canonical JSON has sorted keys and no spaces (`canonical`). The first line of a chain
links to GENESIS (64 zeros). `riskd audit --verify` (riskd/trail.py) recomputes the chain.

The head record (`<trail>.head`, HEAD_SIZE bytes, overwritten in place) holds the seq, hash, size
and inode of the trail after its last complete line: `head_record` writes it, `parse_head` reads it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from datetime import datetime, timezone
from typing import Any

GENESIS = "0" * 64
HEAD_SUFFIX = ".head"
HEAD_SIZE = 256  # the head file is one fixed-size record, overwritten in place


def canonical(line: dict[str, Any]) -> str:
    """The form the hash covers: sorted keys, no whitespace, UTF-8 text."""
    return json.dumps(line, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(previous: str, line: dict[str, Any]) -> str:
    """Given the previous line's full hash and a line, return the line's hash (its `hash` key ignored)."""
    body = {k: v for k, v in line.items() if k != "hash"}
    return hashlib.sha256((previous + canonical(body)).encode("utf-8")).hexdigest()


def render(line: dict[str, Any]) -> str:
    """The written form: ts, seq, event first, prev and hash last, compact. Verification checks that
    a line is exactly this rendering of its own content, so whitespace edits are detected too."""
    head = {k: line[k] for k in ("ts", "seq", "event") if k in line}
    rest = {k: v for k, v in line.items() if k not in head and k not in ("prev", "hash")}
    tail = {k: line[k] for k in ("prev", "hash") if k in line}
    return json.dumps({**head, **rest, **tail}, ensure_ascii=False, separators=(",", ":"))


def plain(value: Any) -> Any:
    """Given any value, return it as JSON-safe data that survives a dump/load round trip unchanged
    (string keys, lists, finite floats, valid UTF-8), so the hash of what is written is the hash of
    what a reader parses."""
    if isinstance(value, dict):
        return {plain_key(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((plain(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return _valid_text(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return _valid_text(str(value))


def plain_key(key: Any) -> str:
    return _valid_text(key if isinstance(key, str) else str(key))


def _valid_text(text: str) -> str:
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:  # lone surrogates from a bad \u escape: keep them visible, escaped
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def utc_stamp(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def head_record(seq: int, hash_: str, size: int | None, ino: int | None, trail: str | None) -> bytes:
    """The head file's one record, padded to HEAD_SIZE."""
    record = json.dumps({"seq": seq, "hash": hash_, "size": size, "ino": ino, "trail": trail}, separators=(",", ":"))
    return (record.ljust(HEAD_SIZE - 1) + "\n").encode("ascii")


def parse_head(raw: bytes) -> dict[str, Any] | None:
    """Given a head file's bytes, return its record, or None when they are not one."""
    try:
        data = json.loads(raw.rstrip(b" \n\x00") or b"null")
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("seq"), int) and isinstance(data.get("hash"), str):
        return data
    return None


# ---------------------------------------------------------------------------------------------
# Reading the end of a trail.


class Tail:
    """The end of a trail file: its last valid audit line and whatever follows it (junk)."""

    def __init__(self, seq: int | None, hash_: str | None, end: int, size: int, junk_sha256: str, junk_head: bytes, junk_last: bytes):
        self.seq = seq                  # last valid line's seq (None: no valid line)
        self.hash = hash_
        self.end = end                  # byte offset just after that line's newline (0 when none)
        self.junk_bytes = size - end    # bytes after it: a torn line, NULs after a power loss, ...
        self.junk_sha256 = junk_sha256
        self.junk_head = junk_head      # their first bytes (for the record)
        self.junk_terminated = junk_last == b"\n"
        self.unterminated = False       # the last valid line lacks its newline (nothing lost)

    def torn(self) -> dict[str, Any]:
        return {"offset": self.end, "bytes": self.junk_bytes, "sha256": self.junk_sha256,
                "text": self.junk_head.decode("utf-8", "replace")}


def valid_line(raw: bytes) -> tuple[int, str] | None:
    """Given the bytes of one line, return (seq, hash) when it is an audit line, else None."""
    try:
        line = json.loads(raw)
        seq, digest = line["seq"], line["hash"]
        if isinstance(seq, int) and not isinstance(seq, bool) and isinstance(digest, str) and len(digest) == 64:
            return seq, digest
    except (ValueError, KeyError, TypeError):
        pass
    return None


def read_tail(fd: int, size: int, chunk: int = 1 << 16) -> Tail:
    """Given a readable fd and the file size, return its Tail (reads backwards, in growing chunks).
    A valid last line that only lacks its newline counts as the last line (`unterminated`)."""
    buf = b""
    pos = size
    while True:
        start = max(0, pos - chunk)
        buf = os.pread(fd, pos - start, start) + buf
        pos, chunk = start, chunk * 2
        stop = len(buf)  # segments [nl + 1, stop), last first
        while True:
            nl = buf.rfind(b"\n", 0, stop)
            if nl < 0 and pos > 0:
                break  # the segment may start before the buffer: read more
            found = valid_line(buf[nl + 1:stop]) if stop > nl + 1 else None
            if found:
                if stop == len(buf):  # valid, but its newline never made it
                    return _tail(fd, found, size, size, unterminated=True)
                return _tail(fd, found, pos + stop + 1, size)
            if nl < 0:
                return _tail(fd, None, 0, size)
            stop = nl


def _tail(fd: int, found: tuple[int, str] | None, end: int, size: int, unterminated: bool = False) -> Tail:
    digest = hashlib.sha256()
    offset = end
    while offset < size:
        block = os.pread(fd, min(1 << 20, size - offset), offset)
        if not block:
            break
        digest.update(block)
        offset += len(block)
    head = os.pread(fd, min(200, size - end), end) if size > end else b""
    last = os.pread(fd, 1, size - 1) if size > end else b""
    tail = Tail(found[0] if found else None, found[1] if found else None, end, size, digest.hexdigest(), head, last)
    tail.unterminated = unterminated
    return tail
