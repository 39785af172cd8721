"""The audit trail (append-only JSON lines, hash-chained) and the console log setup.

Line format: one JSON object per line, UTF-8, keys `ts` (UTC, ISO 8601, milliseconds), `seq`,
`event`, the event's fields, `prev` (first 16 hex digits of the previous line's hash) and `hash`:

    hash = sha256(previous line's hash + canonical JSON of this line without `hash`)

where the canonical JSON has sorted keys and no spaces (`canonical`). The first line of a chain
links to GENESIS (64 zeros). `riskd audit --verify` (riskd/trail.py) recomputes the chain.

What the writer guarantees:

- Chain across restarts and processes: the link (last seq and hash) is kept in a small head file
  beside the trail (`audit.jsonl.head`: seq, hash, size and inode of the trail after the last
  complete line). Every line is chained and written under an exclusive flock on that head file,
  so a `riskd once` writing to the daemon's trail continues the same chain. When the head does not
  describe the trail file (a crash between the two writes, another writer without the head), the
  link is read from the trail's last complete line.
- Rotation: the trail is reopened when its path no longer names the open file (logrotate renamed
  or deleted it) or on `request_reopen()` (SIGUSR1). A new, empty file starts with a `rotated`
  line carrying the previous file's name, its last seq and its full last hash (`previous_hash`),
  so a file verifies on its own (anchored) and a set of files verifies as one chain.
- Crash repair: bytes after the last complete audit line (a line torn by a crash, NUL blocks after
  a power loss) are never rewritten. The next writer terminates them with a newline and writes
  `trail_repaired` with their offset, length and SHA-256; lines the head file recorded but the
  trail lost are named in the same line (`missing`).
- Durability: one write(2) per line (no user-space buffer); fsync after the lines of the events
  in the fsync policy (`actions`: decisions, API calls and lifecycle; `all`; `none`).
- Failure isolation: a full disk, a read-only file or a lock held too long never raises into
  riskd. Lines wait in memory (in order, not yet chained) and are written when writing works
  again, between a `trail_unwritable` line (when it failed, why) and a `trail_writable` line (how
  many lines were held, how many per-minute samples were dropped to bound memory). The console
  (journald) gets the failure at once and a reminder every minute; lines still unwritten at exit
  go to the console in full.
- Redaction (riskd.redact.Redactor, the one redaction module): the API token in every encoded form,
  any configured secret, `Authorization`-like keys and `Bearer ...` strings are replaced by
  `[REDACTED]` before a line is chained (after values are made plain, so an object's text is
  scrubbed too); the console log is scrubbed the same way, rendered line included (`configure_console`).
- Files: the trail and its head are created 0600 whatever the umask.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import sys
import threading
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, TextIO

import structlog
from structlog.typing import EventDict

from riskd import events
from riskd.redact import Redactor  # the one redaction module

GENESIS = "0" * 64
HEAD_SUFFIX = ".head"
HEAD_SIZE = 256  # the head file is one fixed-size record, overwritten in place

# fsync policies: which events are fsync'ed after their line is written (None = every event).
FSYNC_POLICIES: dict[str, frozenset[str] | None] = {
    "actions": events.DURABLE,  # decisions, API calls, lifecycle, rules and trail events
    "all": None,
    "none": frozenset(),
}
# Lines that may be dropped (oldest first) when the in-memory backlog is over its limit.
DROPPABLE = events.DROPPABLE
LOCK_WAIT_S = 0.5
REMIND_EVERY_S = 60.0
RETRY_EVERY_S = 1.0



# ---------------------------------------------------------------------------------------------
# The line format.




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


# ---------------------------------------------------------------------------------------------
# The writer.


class _QuietConsole:
    def __getattr__(self, _name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


class AuditTrail:
    """Append audit events to `target` (a path, or "-" for stdout); thread-safe; never raises on
    write failures (see the module docstring).

    `console` is a structlog-style logger (error/warning/info) for what the operator must see.
    `fsync` is a key of FSYNC_POLICIES. `clock` stamps `ts`.
    """

    def __init__(self, target: str, secrets: Iterable[str | None] | Redactor = (), console: Any = None, fsync: str = "actions",
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc), backlog_limit: int = 200_000):
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, got {fsync!r}")
        self.target = target
        self.path: Path | None = None if target == "-" else Path(target)
        self.head_path: Path | None = None if self.path is None else self.path.with_name(self.path.name + HEAD_SUFFIX)
        self.redactor = secrets if isinstance(secrets, Redactor) else Redactor(secrets)
        self._console = console or _QuietConsole()
        self._durable = FSYNC_POLICIES[fsync]
        self._clock = clock
        self._backlog_limit = backlog_limit
        self._lock = threading.RLock()
        self._queue: deque[dict[str, Any]] = deque()   # emitted, not yet chained
        self._pending = b""                            # the chained line being written (what is left of it)
        self._pending_line: dict[str, Any] | None = None
        self._pending_len = 0
        self._link_before_pending: tuple[int, str] = (0, GENESIS)
        self._seq, self._hash = 0, GENESIS             # the last chained line
        self._written: tuple[int, str] = (0, GENESIS)  # the last line completely written
        self._fd: int | None = None
        self._ino: int | None = None
        self._ident: tuple[int, int] = (-1, -1)        # (inode, device) of the open file
        self._size: int | None = None                  # trail size after our last complete line
        self._previous_file: str | None = None         # name of the file we wrote before a reopen
        self._head_fd: int | None = None
        self._flocked = False
        self._reopen = False
        self._failing: dict[str, Any] | None = None
        self._reminded = 0.0
        self._retry: threading.Timer | None = None
        self._closed = False
        # called with every line emitted (notifications, metrics), after it is queued; must not
        # block. A failing observer is reported on the console and never breaks the trail or the tick.
        self.observers: list[Callable[[dict[str, Any]], None]] = []
        self._logger = structlog.wrap_logger(
            _Sink(self),
            processors=[self._stamp, _plain, self._scrub, _deliver],  # plain first: the text of any object is scrubbed too
            wrapper_class=structlog.BoundLogger,  # no level filtering: every audit line is written
            cache_logger_on_first_use=False,
        )
        with self._lock:
            self._drain(check=True)  # open now: repair a torn end, report an unwritable trail early
        self._console.info("audit_opened", trail=self.target, **self.head())  # the journal anchors the chain too

    # processors -------------------------------------------------------------------------------

    def _stamp(self, _logger: Any, _name: str, event: EventDict) -> EventDict:
        return {"ts": utc_stamp(self._clock()), **event}

    def _scrub(self, _logger: Any, _name: str, event: EventDict) -> EventDict:
        return self.redactor.value(event)

    # public -----------------------------------------------------------------------------------

    def emit(self, event: events.Event | str, **fields: Any) -> dict[str, Any]:
        """Queue one audit line of an event of riskd.events and write what can be written; return the
        line (its `seq` and `hash` are set once it is chained, at once unless the trail is unwritable)."""
        event = str(event)
        with self._lock:
            if self._closed:  # after the last line (`stopped`): never written, never chained; the console has it
                self._console.error("audit_line_after_close", trail=self.target,
                                    line=self.redactor.value(plain({"event": event, **fields})))
                return {}
            try:
                line: dict[str, Any] = self._logger.msg(event, **fields)
            except Exception as exc:  # never let the audit trail break a tick (and the close in it)
                self._console.error("audit_emit_failed", audit_event=event, error=_describe(exc))
                return {}
        for observe in self.observers:
            try:
                observe(line)
            except Exception as exc:  # noqa: BLE001 - an observer never breaks the trail or the tick
                self._console.error("audit_observer_failed", audit_event=event, error=_describe(exc))
        return line

    def request_reopen(self) -> None:
        """Reopen the trail path before the next line (async-signal-safe: only sets a flag)."""
        self._reopen = True

    def head(self) -> dict[str, Any]:
        """The last line completely written: {"seq", "hash"}."""
        seq, digest = self._written
        return {"seq": seq, "hash": digest}

    @property
    def failing(self) -> bool:
        return self._failing is not None

    def flush(self) -> bool:
        """Try to write every held line now; return True when nothing is left in memory."""
        with self._lock:
            self._drain(check=True)
            return not self._queue and not self._pending

    def close_with(self, event: events.Event | str, **fields: Any) -> dict[str, Any]:
        """Emit one last line and close, atomically: a line another thread emits afterwards (a tick
        abandoned at stop) goes to the console, never after it into the trail or its chain."""
        with self._lock:
            line = self.emit(event, **fields)
            self.close()
            return line

    def close(self) -> None:
        """Write what can be written; put what cannot on the console; release the files (once)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._retry is not None:
                self._retry.cancel()
            self._drain(check=True)
            left = ([self._pending_line] if self._pending and self._pending_line else []) + list(self._queue)
            if left:
                self._console.error("audit_lines_unwritten", count=len(left), trail=self.target,
                                    note="these lines could not be written to the trail; they follow here in full")
                for line in left:
                    self._console.error("audit_line_unwritten", line=line)
            self._console.info("audit_closed", trail=self.target, **self.head())
            self._unlock()
            for fd in (self._fd, self._head_fd):
                if fd is not None:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            self._fd = self._head_fd = None

    # structlog sink ---------------------------------------------------------------------------

    def _enqueue(self, line: dict[str, Any]) -> dict[str, Any]:
        self._queue.append(line)
        self._drain()
        return line

    # writing ----------------------------------------------------------------------------------

    def _drain(self, check: bool = False) -> None:
        if self.path is None:
            self._drain_stdout()
            return
        try:
            if check:
                self._prepare()
            while self._pending or self._queue:
                if not self._pending:
                    self._prepare()
                    if not self._queue:
                        break
                    self._chain_next()
                assert self._fd is not None
                n = os.write(self._fd, self._pending)
                self._pending = self._pending[n:]
                if not self._pending:
                    self._complete()
            self._unlock()
        except Exception as exc:  # OSError above all (disk full, EFBIG, EROFS, lock held): hold and retry
            self._failed(exc)
            return
        if self._failing is not None:
            self._recovered()

    def _drain_stdout(self) -> None:
        while self._queue:
            self._chain_next()
            try:
                sys.stdout.write(self._pending.decode("utf-8"))
                sys.stdout.flush()
            except (OSError, ValueError) as exc:  # a closed pipe: the console says so, riskd goes on
                self._console.error("audit_write_failed", trail="-", error=_describe(exc), line=self._pending_line)
            self._pending = b""
            self._written = (self._seq, self._hash)

    def _chain_next(self) -> None:
        line = self._queue.popleft()
        self._link_before_pending = (self._seq, self._hash)
        self._seq += 1
        line["seq"] = self._seq
        line["prev"] = self._hash[:16]
        line["hash"] = chain_hash(self._hash, line)
        self._hash = line["hash"]
        self._pending_line = line
        self._pending = (render(line) + "\n").encode("utf-8")
        self._pending_len = len(self._pending)

    def _complete(self) -> None:
        """The pending line (or bare newline) is fully written: fsync if due, update the head."""
        line = self._pending_line
        self._pending_line = None
        assert self._fd is not None
        durable = line is not None and (self._durable is None or line.get("event") in self._durable)
        self._size = os.fstat(self._fd).st_size
        if line is not None:
            self._written = (self._seq, self._hash)
            if self._failing is not None:
                self._failing["held_written"] += 1
        if durable:
            os.fsync(self._fd)
        self._write_head(durable)

    def _prepare(self) -> None:
        """Before chaining a line: the right file open, the lock held, the link current."""
        self._open()
        self._lock_file()
        self._sync_link()

    def _open(self) -> None:
        assert self.path is not None
        if self._fd is not None and not self._reopen:
            try:
                st = os.stat(self.path)
                if (st.st_ino, st.st_dev) == self._ident:
                    return
            except FileNotFoundError:
                pass
        if self._pending:
            return  # finish the started line in the file it started in
        self._reopen = False
        if self._fd is not None:
            self._previous_file = _fd_name(self._fd) or str(self.path)
            self._unlock()
            os.close(self._fd)
            self._fd = None
        fresh = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        st = os.fstat(fd)
        self._fd, self._ino, self._ident = fd, st.st_ino, (st.st_ino, st.st_dev)
        if fresh and self._durable != frozenset():
            _fsync_dir(self.path.parent)  # the new file's name survives a power loss too
        if self._head_fd is None:
            assert self.head_path is not None
            try:
                self._head_fd = os.open(self.head_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:  # no head file: the trail still works (its last line is the link)
                self._console.warning("audit_head_unavailable", path=str(self.head_path), error=_describe(exc))

    def _lock_file(self) -> None:
        if self._flocked or self._head_fd is None:
            return
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(self._head_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._flocked = True
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise OSError(errno.EWOULDBLOCK, "another process holds the audit trail's lock") from None
                time.sleep(0.005)

    def _unlock(self) -> None:
        if self._flocked and not self._pending and self._head_fd is not None:
            try:
                fcntl.flock(self._head_fd, fcntl.LOCK_UN)
            except OSError:
                pass
            self._flocked = False

    def _read_head(self) -> dict[str, Any] | None:
        if self._head_fd is None:
            return None
        try:
            data = json.loads(os.pread(self._head_fd, HEAD_SIZE, 0).rstrip(b" \n\x00") or b"null")
            if isinstance(data, dict) and isinstance(data.get("seq"), int) and isinstance(data.get("hash"), str):
                return data
        except (OSError, ValueError):
            pass
        return None

    def _write_head(self, durable: bool) -> None:
        if self._head_fd is None:
            return
        record = json.dumps({"seq": self._written[0], "hash": self._written[1], "size": self._size, "ino": self._ino,
                             "trail": self.path.name if self.path else None}, separators=(",", ":"))
        try:
            os.pwrite(self._head_fd, (record.ljust(HEAD_SIZE - 1) + "\n").encode("ascii"), 0)
            if durable:
                os.fsync(self._head_fd)
        except OSError:
            pass  # the trail line is written; a stale head only makes the next writer read the tail

    def _sync_link(self) -> None:
        """Under the lock: make (seq, hash) the link of the file's last line, queueing a `rotated`
        or `trail_repaired` line first when the file's end is not where riskd left it."""
        assert self._fd is not None
        st = os.fstat(self._fd)
        head = self._read_head()
        if head and head.get("ino") == st.st_ino and head.get("size") == st.st_size:
            self._seq, self._hash = head["seq"], head["hash"]
            self._written = (self._seq, self._hash)
            self._size = st.st_size
            return
        if self._size == st.st_size and self._ino == st.st_ino:
            return  # the head is stale or missing, but nobody wrote since our last look
        tail = read_tail(self._fd, st.st_size)
        notes: dict[str, Any] = {}
        if tail.seq is not None:
            self._seq, self._hash = tail.seq, tail.hash or GENESIS
            if head and head.get("ino") == st.st_ino:
                if head["seq"] > tail.seq:
                    notes["missing"] = {"from_seq": tail.seq + 1, "to_seq": head["seq"], "head_hash": head["hash"],
                                        "note": "written before, no longer in the trail "
                                                "(power loss before they reached the disk, or cut off)"}
                elif head["seq"] == tail.seq and head["hash"] != tail.hash:
                    notes["mismatch"] = {"seq": tail.seq, "head_hash": head["hash"], "trail_hash": tail.hash,
                                         "note": "the trail's last line is not the line riskd wrote (edited while riskd was not writing)"}
        elif head is not None or self._written[0] > 0:
            seq, digest = (head["seq"], head["hash"]) if head is not None else self._written
            if self._written[0] > seq:
                seq, digest = self._written
            self._seq, self._hash = seq, digest
            notes["anchor"] = True
        else:
            self._seq, self._hash = 0, GENESIS
        self._written = (self._seq, self._hash)
        self._size = st.st_size
        front: list[dict[str, Any]] = []
        anchor = {"previous_seq": self._seq, "previous_hash": self._hash} if notes.pop("anchor", False) else {}
        if tail.unterminated:
            self._pending, self._pending_line, self._pending_len = b"\n", None, 1  # end the line; nothing was lost
        if tail.junk_bytes:
            if not tail.junk_terminated:
                self._pending, self._pending_line, self._pending_len = b"\n", None, 1  # end the torn line
            front.append(self._note("trail_repaired", torn=tail.torn(), **notes, **anchor,
                                    reason="the trail ended with an incomplete line (crash or power loss mid-write); "
                                           "left as is, terminated by a newline"))
            self._console.warning("trail_repaired", trail=str(self.path), offset=tail.end, bytes=tail.junk_bytes)
        elif notes:
            front.append(self._note("trail_repaired", **notes, **anchor, reason="the trail's end differs from what riskd last wrote"))
            self._console.error("trail_repaired", trail=str(self.path), **notes)
        elif anchor:
            previous = self._previous_file
            self._previous_file = None
            front.append(self._note("rotated", previous_file=previous, **anchor,
                                    reason="a new trail file (rotated, moved or deleted); the chain continues from the previous file"))
            self._console.info("audit_rotated", trail=str(self.path), previous_file=previous, previous_seq=anchor["previous_seq"])
        if front and self._queue:  # stamped now, but they come before lines emitted a moment ago
            first = self._queue[0].get("ts", "")
            for note in front:
                note["ts"] = min(note["ts"], first) if first else note["ts"]
        self._queue.extendleft(reversed(front))
        if self._pending == b"\n":
            n = os.write(self._fd, self._pending)
            self._pending = self._pending[n:]
            if not self._pending:
                self._size = os.fstat(self._fd).st_size

    def _note(self, event: str, **fields: Any) -> dict[str, Any]:
        return _plain(None, "", self._scrub(None, "", self._stamp(None, "", {"event": event, **fields})))

    # failures ---------------------------------------------------------------------------------

    def _failed(self, exc: Exception) -> None:
        requeued = False
        if self._pending and self._pending_line is not None and len(self._pending) == self._pending_len:
            # nothing of this line reached the file: unchain it, so another writer may go on
            self._queue.appendleft(self._pending_line)
            self._seq, self._hash = self._link_before_pending
            self._pending, self._pending_line = b"", None
            requeued = True
        self._unlock()  # kept only while a started line waits to be finished
        error = _describe(exc)
        if self._failing is None:
            note = self._note("trail_unwritable", error=error, trail=str(self.path),
                              reason="lines are held in memory and written when the trail is writable again")
            at = 1 if requeued else 0
            while at < len(self._queue) and self._queue[at].get("event") in (events.TRAIL_REPAIRED.name, events.ROTATED.name):
                at += 1  # these must stay right after the torn end / at the top of a new file
            self._queue.insert(at, note)
            self._failing = {"since": note["ts"], "error": error, "held_written": 0, "samples_dropped": 0}
            self._reminded = time.monotonic()
            self._console.error("audit_write_failed", trail=str(self.path), error=error,
                                note="riskd keeps protecting accounts; audit lines are held in memory until the trail is writable")
        elif time.monotonic() - self._reminded >= REMIND_EVERY_S:
            self._reminded = time.monotonic()
            self._console.error("audit_write_failing", trail=str(self.path), error=error, since=self._failing["since"],
                                held=len(self._queue), samples_dropped=self._failing["samples_dropped"])
        self._failing["error"] = error
        self._bound_backlog()
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        """While failing, retry every second even when nothing new is emitted."""
        if self._retry is not None and self._retry.is_alive():
            return
        self._retry = threading.Timer(RETRY_EVERY_S, self._retry_now)
        self._retry.daemon = True
        self._retry.start()

    def _retry_now(self) -> None:
        with self._lock:
            self._retry = None
            if self._failing is not None and not self._closed:
                self._drain()

    def _bound_backlog(self) -> None:
        assert self._failing is not None
        excess = len(self._queue) - self._backlog_limit
        if excess <= 0:
            return
        kept: deque[dict[str, Any]] = deque()
        for line in self._queue:
            if excess > 0 and line.get("event") in DROPPABLE:
                excess -= 1
                self._failing["samples_dropped"] += 1
            else:
                kept.append(line)
        self._queue = kept

    def _recovered(self) -> None:
        failing, self._failing = self._failing, None
        assert failing is not None
        self._queue.append(self._note("trail_writable", since=failing["since"], last_error=failing["error"],
                                      held=failing["held_written"], samples_dropped=failing["samples_dropped"],
                                      reason="the trail is writable again; the lines held in memory were written before this one"))
        self._console.info("audit_write_recovered", trail=str(self.path), since=failing["since"],
                           held=failing["held_written"], samples_dropped=failing["samples_dropped"])
        self._drain()


def _plain(_logger: Any, _name: str, event: EventDict) -> dict[str, Any]:
    return plain(event)


def _deliver(_logger: Any, _name: str, event: EventDict) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (event,), {}


class _Sink:
    """structlog's wrapped logger for the trail: receives each processed line (a dict)."""

    def __init__(self, trail: AuditTrail):
        self._trail = trail

    def msg(self, line: dict[str, Any]) -> dict[str, Any]:
        return self._trail._enqueue(line)


def _describe(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {exc}"


def _fd_name(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _fsync_dir(directory: Path) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------
# Console (journald) logging.


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
