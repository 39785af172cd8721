"""The audit trail's writer: append-only JSON lines, hash-chained (the format: riskd.chain).

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
  scrubbed too); the console log is scrubbed the same way (riskd.console).
- Files: the trail and its head are created 0600 whatever the umask.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import threading
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import structlog
from structlog.typing import EventDict

from riskd import events
from riskd.chain import GENESIS, HEAD_SIZE, HEAD_SUFFIX, chain_hash, head_record, parse_head, plain, read_tail, render, utc_stamp
from riskd.redact import Redactor  # the one redaction module

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
                self._write_whole()
                self._complete()
            self._unlock()
        except Exception as exc:  # OSError above all (disk full, EFBIG, EROFS, lock held): hold and retry
            self._failed(exc)
            return
        if self._failing is not None:
            self._recovered()

    def _write_whole(self) -> None:
        """Write the pending line, or none of it: when the disk fills (or a file-size limit is met) in
        the middle of a line, the part written is taken back, and the line is written whole later. A
        part left behind would read as a torn line, and the line would be lost."""
        assert self._fd is not None
        start = os.lseek(self._fd, 0, os.SEEK_END)  # where an O_APPEND write lands (the lock is held)
        n = os.write(self._fd, self._pending)
        if n < len(self._pending):
            os.ftruncate(self._fd, start)
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (a short write: {n} of {len(self._pending)} bytes, taken back)")
        self._pending = b""

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
            return parse_head(os.pread(self._head_fd, HEAD_SIZE, 0))
        except OSError:
            return None

    def _write_head(self, durable: bool) -> None:
        if self._head_fd is None:
            return
        record = head_record(self._written[0], self._written[1], self._size, self._ino, self.path.name if self.path else None)
        try:
            os.pwrite(self._head_fd, record, 0)
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
