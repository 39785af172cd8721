"""Persistent state in SQLite (WAL) under state_dir: the engine's memory and the action intents.

- `engine`: one JSON document (fired markers, holds, occurrences, peaks, locks, first-seen times),
  replaced atomically whenever it changes;
- `intents`: one row per firing acted on: written BEFORE the first request, completed after the
  answer. A row still `sending` or `unknown` is an outcome riskd does not know (timeout, crash);
  it is resolved against the next snapshot: a changed position means done, an unchanged one is
  retried. That is what makes "never twice for one firing" survive kill -9.

- `health`: the daemon's last successful poll and whether it is stale, for `riskd once`.
- `snapshot`: the last snapshot the daemon read, for `riskd status` (saved with the health row).
- `commands`: operator commands from the control socket (riskd.channel), one row per command id:
  `queued` when it arrived (written by the socket's thread through an `Inbox`, its own connection),
  `acting` while its flatten's intents are open, then `done`, `refused`, `failed` or `expired`. A
  row still `queued` or `acting` after a kill -9 is carried on at the next start (riskd.control).

The engine document also holds what outlives a session (schema 3): each account's session closing
figures and balance high-water marks (riskd.ledger), so a weekly limit or a trailing floor survives
restarts, reloads and days riskd was down.

The schema is versioned with PRAGMA user_version and migrated forward on open, each step in one
transaction. A store that is corrupt (integrity check, unreadable rows) or from a newer riskd is a
StateError (exit 1), never silently discarded. A lock file keeps a second riskd off the same state_dir.

A full disk never stops a close. The Store keeps a reserve file (`riskd.reserve`, RESERVE_BYTES of real
blocks) in state_dir, written at open when free space allows. When a write (`save`, `begin`, `mark_sent`,
`finish`, `save_health`, `prune`) fails for lack of space (SQLITE_FULL, a disk I/O error, ENOSPC, EFBIG),
the Store deletes the reserve, reports `disk_full` and retries the write once. If that retry fails too (or
no reserve is left), the Store reports `state_write_failed` and returns WITHOUT raising, so the tick goes on
and the close still goes out: protecting the account comes first. For that write the exactly-once record is
then only in memory (this process) and in the audit trail of the action, not on disk; a kill -9 before a
later write succeeds could lose it. After a later write succeeds and free space allows (2 x RESERVE_BYTES),
the reserve is rebuilt and `disk_recovered` reported. A Store opened where the reserve cannot be written
(riskd started on a full disk) reports `disk_full` (op `open`) at once and recovers the same way; one
that cannot even open its database there (SQLite needs room for the -wal and -shm) spends the reserve
on that, and without a reserve left fails with a StateError that says the disk is full. Conditions reach the daemon through
`on_condition(event, **fields)` (default: ignored). Other errors still raise as before.

Every file of a state_dir (the database, its -wal and -shm, which SQLite creates with the database's
mode, the lock and the reserve) is created owner-only (0600) whatever the umask; the directory 0700.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, TypeVar

import msgspec
import orjson

from riskd.engine import State
from riskd.errors import StateError, StateLocked
from riskd.model import Decision, Order, Snapshot
from riskd.redact import Redactor

SCHEMA_VERSION = 4
MIGRATIONS: dict[int, str] = {
    1: """
        CREATE TABLE engine (id INTEGER PRIMARY KEY CHECK (id = 1), doc TEXT NOT NULL, updated TEXT NOT NULL);
        CREATE TABLE intents (
            key TEXT PRIMARY KEY,
            rule TEXT NOT NULL,
            account TEXT NOT NULL,
            decision TEXT NOT NULL,
            seen TEXT NOT NULL,
            status TEXT NOT NULL,
            created TEXT NOT NULL,
            updated TEXT NOT NULL
        );
        CREATE INDEX intents_status ON intents (status);
    """,
    2: """
        ALTER TABLE intents ADD COLUMN sent TEXT;
        ALTER TABLE intents ADD COLUMN settle_at TEXT;
        ALTER TABLE intents ADD COLUMN outcome TEXT;
        CREATE TABLE health (id INTEGER PRIMARY KEY CHECK (id = 1), doc TEXT NOT NULL, updated TEXT NOT NULL);
    """,
    3: """
        CREATE TABLE snapshot (id INTEGER PRIMARY KEY CHECK (id = 1), doc TEXT NOT NULL, updated TEXT NOT NULL);
        CREATE TABLE commands (
            id TEXT PRIMARY KEY,
            verb TEXT NOT NULL,
            doc TEXT NOT NULL,
            status TEXT NOT NULL,
            outcome TEXT,
            created TEXT NOT NULL,
            updated TEXT NOT NULL
        );
        CREATE INDEX commands_status ON commands (status);
    """,
    # 4: the engine state keeps what outlives a session (riskd.ledger): each session's closing figures and the
    # balance high-water marks; an older state starts them empty (its markers and intents are kept as they are)
    4: """
        UPDATE engine SET doc = json_insert(doc, '$.ledger', json('{}'), '$.marks', json('{}'))
    """,
}
OPEN_COMMANDS = ("queued", "acting")
OPEN_STATUSES = ("sending", "unknown")
RESERVE_NAME = "riskd.reserve"
RESERVE_BYTES = 4 * 1024 * 1024
_SQLITE_FULL, _SQLITE_IOERR = 13, 10
_T = TypeVar("_T")
Condition = Callable[..., object]  # its return value (audit.emit's line) is ignored


def _no_condition(event: str, **fields: Any) -> None:
    return None


def is_out_of_space(exc: BaseException) -> bool:
    """True for the errors a full disk or a file-size limit gives: SQLITE_FULL, SQLITE_IOERR*, ENOSPC, EFBIG."""
    if isinstance(exc, sqlite3.OperationalError):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None:
            return code & 0xFF in (_SQLITE_FULL, _SQLITE_IOERR)
        text = str(exc)
        return "disk is full" in text or "disk I/O error" in text
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG)


@dataclass(frozen=True, slots=True)
class Intent:
    """One firing acted on. `sent`: when its last request left (None: none did); `settle_at`: from
    when on an unchanged position means "not applied" (None: at once)."""

    key: str
    decision: Decision
    seen: dict[str, int]
    status: str
    created: datetime
    sent: datetime | None = None
    settle_at: datetime | None = None
    outcome: str | None = None


def _dumps(value: Any) -> str:
    """JSON text with sorted keys (orjson: the engine state of a thousand accounts is written often)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


_ENCODER = msgspec.json.Encoder()


def snapshot_doc(snapshot: Snapshot) -> str:
    """Snapshot.as_json() as JSON text, with msgspec writing the accounts and positions (dataclasses)
    field by field, at C speed (twice orjson's for dataclasses): a desk's status snapshot is 5,000
    positions every few seconds."""
    return _ENCODER.encode({"taken_at": snapshot.taken_at.isoformat(), "unknown": sorted(snapshot.unknown),
                            "problems": list(snapshot.problems), "accounts": snapshot.accounts}).decode()


def _decision_to_json(d: Decision) -> str:
    return json.dumps({
        "rule": d.rule, "key": d.key, "account": d.account, "instrument": d.instrument, "action": d.action,
        "severity": int(d.severity), "lock": d.lock, "covers": list(d.covers),
        "orders": [{"kind": o.kind, "account": o.account, "instrument": o.instrument, "quantity": o.quantity,
                    "percent": o.percent} for o in d.orders],
        "inputs": d.inputs, "threshold": d.threshold, "dry_run": d.dry_run, "reason": d.reason, "local_time": d.local_time,
        "lock_terms": d.lock_terms,
    }, default=str)


def _decision_from_json(text: str) -> Decision:
    from riskd.model import Severity

    raw = json.loads(text)
    return Decision(
        kind="fire", rule=raw["rule"], key=raw["key"], account=raw["account"], instrument=raw["instrument"],
        action=raw["action"], severity=Severity(raw["severity"]), lock=raw["lock"], covers=tuple(raw["covers"]),
        orders=tuple(Order(**o) for o in raw["orders"]),
        # what the rule saw when it fired (intents written before these were kept have none)
        inputs=raw.get("inputs") or {}, threshold=raw.get("threshold") or {}, dry_run=bool(raw.get("dry_run", False)),
        reason=raw.get("reason"), local_time=raw.get("local_time"), lock_terms=raw.get("lock_terms"),
    )


class Store:
    """The state store of one state_dir. Thread-safe: one lock serializes every read and write (the tick
    and the threads that send its closes concurrently share the one SQLite connection)."""

    def __init__(self, state_dir: Path, on_condition: Condition = _no_condition, *, reserve_bytes: int = RESERVE_BYTES,
                 redactor: Redactor | None = None):
        self.dir = state_dir
        self.redactor = redactor or Redactor()  # the health row carries API error text
        self._on_condition = on_condition
        self.reserve_bytes = reserve_bytes
        self.reserve_path = state_dir / RESERVE_NAME
        self._disk_full = False  # disk_full reported, disk_recovered not yet
        self._lock = threading.RLock()
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._lockfile = os.fdopen(_create_private(state_dir / "riskd.lock", os.O_RDWR | os.O_APPEND), "a+")
        except OSError as exc:
            raise StateError(f"cannot use state_dir {state_dir}: {exc.strerror}") from None
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lockfile.close()
            raise StateLocked(f"another riskd is running with state_dir {state_dir} (lock held on riskd.lock)") from None
        self.path = state_dir / "riskd.sqlite3"
        try:
            os.close(_create_private(self.path, os.O_RDONLY))  # SQLite gives -wal and -shm the database's mode
        except OSError as exc:
            self.close()
            raise StateError(f"cannot create state store {self.path}: {exc.strerror}") from None
        freed = 0
        while True:
            try:
                self._open_db()
                break
            except StateError:
                self.close()
                raise
            except (sqlite3.DatabaseError, ValueError, TypeError, KeyError) as exc:
                self._close_db()
                if is_out_of_space(exc) and not freed:
                    freed = self._release_reserve()  # opening needs room for the -wal and -shm: the reserve is for this
                    if freed:
                        self._disk_full = True
                        self._report("disk_full", op="open", error=f"{exc.__class__.__name__}: {exc}", reserve_freed=freed)
                        continue
                self.close()
                if is_out_of_space(exc):
                    raise StateError(f"cannot open state store {self.path}: the disk is full ({exc}) and no reserve is left; "
                                     f"free space on {state_dir}") from None
                raise StateError(f"state store {self.path} is unreadable ({exc.__class__.__name__}: {exc}); "
                                 "move it aside to start fresh, keeping it for review") from None
        self._saved_doc: str | None = None
        self._ledger_obj: object = None  # the ledger last serialised (kept alive, so `is` is safe) and its JSON
        self._ledger_json = "{}"
        if not freed and not self._ensure_reserve():  # started on a (nearly) full disk: say so, recover like after any disk_full
            self._disk_full = True
            free = _free_bytes(state_dir)
            self._report("disk_full", op="open", error=f"no room for the {reserve_bytes} byte reserve ({free} bytes free); "
                         "a close is still sent, but its exactly-once record may not reach the disk", reserve_freed=0)

    def _open_db(self) -> None:
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)  # calls serialized by self._lock
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._migrate()
        problems = self._db.execute("PRAGMA quick_check").fetchall()
        if problems != [("ok",)]:
            raise sqlite3.DatabaseError("; ".join(str(p[0]) for p in problems[:3]))
        self.open_intents()

    def _close_db(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            try:
                db.close()
            except sqlite3.Error:
                pass
            self._db = None  # type: ignore[assignment]

    # disk space --------------------------------------------------------------------------------

    def _reserve_ok(self) -> bool:
        try:
            return self.reserve_path.stat().st_size >= self.reserve_bytes
        except OSError:
            return False

    def _ensure_reserve(self) -> bool:
        """Write the reserve file with real blocks when it is missing and free space allows; True when it is in place."""
        if self._reserve_ok():
            return True
        try:
            if shutil.disk_usage(self.dir).free < 2 * self.reserve_bytes:
                return False
            chunk = b"\0" * 65536
            with os.fdopen(_create_private(self.reserve_path, os.O_WRONLY | os.O_TRUNC), "wb") as f:
                left = self.reserve_bytes
                while left > 0:
                    left -= f.write(chunk[:min(left, len(chunk))])
                f.flush()
                os.fsync(f.fileno())
            return True
        except OSError:
            self._release_reserve()
            return False

    def _release_reserve(self) -> int:
        try:
            size = self.reserve_path.stat().st_size
            self.reserve_path.unlink()
            return size
        except OSError:
            return 0

    def _report(self, event: str, **fields: Any) -> None:
        try:
            self._on_condition(event, **fields)
        except Exception:  # noqa: BLE001 - a failing report (its own disk may be full) must not stop the close
            pass

    def _rollback(self) -> None:
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def _write(self, op: str, write: Callable[[], _T], failed: _T) -> _T:
        """Run one write (under the store's lock); on a full disk free the reserve and retry once; never
        raise for lack of space."""
        with self._lock:
            return self._write_locked(op, write, failed)

    def _write_locked(self, op: str, write: Callable[[], _T], failed: _T) -> _T:
        try:
            result = write()
        except (sqlite3.OperationalError, OSError) as exc:
            if not is_out_of_space(exc):
                raise
            self._rollback()
            freed = self._release_reserve()
            if not self._disk_full:
                self._disk_full = True
                self._report("disk_full", op=op, error=f"{exc.__class__.__name__}: {exc}", reserve_freed=freed)
            if not freed:
                self._report("state_write_failed", op=op, error=f"{exc.__class__.__name__}: {exc}", retried=False)
                return failed
            try:
                result = write()
            except (sqlite3.OperationalError, OSError) as again:
                if not is_out_of_space(again):
                    raise
                self._rollback()
                self._report("state_write_failed", op=op, error=f"{again.__class__.__name__}: {again}", retried=True)
                return failed
            return result
        if self._disk_full and self._ensure_reserve():
            self._disk_full = False
            self._report("disk_recovered", op=op, reserve=self.reserve_bytes, free=shutil.disk_usage(self.dir).free)
        return result

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StateError(f"state store {self.path} has schema {version}, newer than this riskd ({SCHEMA_VERSION}); upgrade riskd")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[target].split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {target}")
            except sqlite3.DatabaseError:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @property
    def schema_version(self) -> int:
        with self._lock:
            return self._db.execute("PRAGMA user_version").fetchone()[0]

    def close(self) -> None:
        with getattr(self, "_lock", threading.RLock()):
            self._close()

    def _close(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()
            self._db = None  # type: ignore[assignment]
        lock = getattr(self, "_lockfile", None)
        if lock is not None and not lock.closed:
            lock.close()

    @staticmethod
    def peek(state_dir: Path) -> State:
        """Read the engine state of a state_dir without taking its lock or changing it (for `riskd once --dry-run`)."""
        path = state_dir / "riskd.sqlite3"
        if not path.exists():
            return State()
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                row = db.execute("SELECT doc FROM engine WHERE id = 1").fetchone()
            finally:
                db.close()
            return State.from_json(json.loads(row[0])) if row else State()
        except (sqlite3.DatabaseError, ValueError, TypeError) as exc:
            raise StateError(f"state store {path} is unreadable ({exc.__class__.__name__})") from None

    # engine state ------------------------------------------------------------------------------

    def forget_everything(self) -> None:
        """Start over: no engine state, intents, health, last snapshot or commands (the demo, whose
        simulator starts over each run too). Under the state_dir's lock, so never under a running daemon."""
        with self._lock:
            for table in ("engine", "intents", "health", "snapshot", "commands"):
                self._db.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed names
            self._saved_doc = None

    def _doc(self, state: State) -> str:
        """The engine state as the JSON document stored. The ledger (every account's sessions, the bulk
        of it) is serialised again only when the engine made a new one: it changes with fills, not ticks."""
        body = state.to_json()
        ledger = body.pop("ledger")
        if ledger is not self._ledger_obj:
            self._ledger_obj, self._ledger_json = ledger, _dumps(ledger)
        return _dumps(body)[:-1] + ',"ledger":' + self._ledger_json + "}"

    def load(self) -> State:
        with self._lock:
            return self._load()

    def _load(self) -> State:
        try:
            row = self._db.execute("SELECT doc FROM engine WHERE id = 1").fetchone()
            state = State.from_json(json.loads(row[0])) if row else State()
        except (sqlite3.DatabaseError, ValueError, TypeError, KeyError) as exc:
            raise StateError(f"state store {self.path} holds an unreadable engine state ({exc.__class__.__name__}); "
                             "move it aside to start fresh") from None
        self._saved_doc = row[0] if row else None
        return state

    def save(self, state: State, now: datetime) -> None:
        doc = self._doc(state)
        if doc == self._saved_doc:
            return

        def write() -> None:
            self._db.execute(
                "INSERT INTO engine (id, doc, updated) VALUES (1, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET doc = excluded.doc, updated = excluded.updated",
                (doc, now.isoformat()),
            )
            self._saved_doc = doc

        self._write("save", write, None)

    # intents -----------------------------------------------------------------------------------

    def begin(self, decision: Decision, seen: dict[str, int], now: datetime) -> None:
        """Record that riskd is about to act on `decision` (before any request leaves)."""
        self._write("begin", lambda: self._db.execute(
            "INSERT OR REPLACE INTO intents (key, rule, account, decision, seen, status, created, updated, sent, settle_at, outcome) "
            "VALUES (?, ?, ?, ?, ?, 'sending', ?, ?, NULL, NULL, NULL)",
            (decision.key, decision.rule, decision.account, _decision_to_json(decision), json.dumps(seen), now.isoformat(),
             now.isoformat()),
        ), None)

    def mark_sent(self, key: str, now: datetime) -> None:
        """Record that a request of intent `key` is about to leave (durably, before it does)."""
        self._write("mark_sent", lambda: self._db.execute(
            "UPDATE intents SET sent = ?, updated = ? WHERE key = ?", (now.isoformat(), now.isoformat(), key)), None)

    def finish(self, key: str, status: str, now: datetime, state: State | None = None, *,
               settle_at: datetime | None = None, outcome: str | None = None) -> None:
        """Record an intent's outcome (done | failed | unknown), with the state that counts it, atomically."""
        doc = self._doc(state) if state is not None else None

        def write() -> None:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "UPDATE intents SET status = ?, updated = ?, settle_at = ?, outcome = COALESCE(?, outcome) WHERE key = ?",
                    (status, now.isoformat(), settle_at.isoformat() if settle_at else None, outcome, key),
                )
                if doc is not None:
                    self._db.execute(
                        "INSERT INTO engine (id, doc, updated) VALUES (1, ?, ?) "
                        "ON CONFLICT(id) DO UPDATE SET doc = excluded.doc, updated = excluded.updated",
                        (doc, now.isoformat()),
                    )
            if doc is not None:
                self._saved_doc = doc

        self._write("finish", write, None)

    def open_intents(self) -> list[Intent]:
        """Intents whose outcome riskd does not know (`sending` after a crash, `unknown` after a timeout)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, decision, seen, status, created, sent, settle_at, outcome FROM intents WHERE status IN (?, ?) "
                "ORDER BY created", OPEN_STATUSES,
            ).fetchall()
        return [
            Intent(key, _decision_from_json(decision), json.loads(seen), status, datetime.fromisoformat(created),
                   _when(sent), _when(settle_at), outcome)
            for key, decision, seen, status, created, sent, settle_at, outcome in rows
        ]

    def intent_status(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT status FROM intents WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def prune(self, before: datetime) -> int:
        """Forget finished intents older than `before` (they are in the audit trail); return how many."""
        return self._write("prune", lambda: self._db.execute(
            "DELETE FROM intents WHERE status NOT IN (?, ?) AND updated < ?", (*OPEN_STATUSES, before.isoformat())).rowcount, 0)

    # health ------------------------------------------------------------------------------------

    def save_health(self, health: dict[str, Any], now: datetime) -> None:
        doc = self.redactor.text(json.dumps(self.redactor.value(health), sort_keys=True, default=str))
        self._write("save_health", lambda: self._db.execute(
            "INSERT INTO health (id, doc, updated) VALUES (1, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET doc = excluded.doc, updated = excluded.updated",
            (doc, now.isoformat()),
        ), None)

    def save_snapshot(self, snapshot: Snapshot, now: datetime) -> None:
        doc = snapshot_doc(snapshot)
        if not self.redactor.text_is_clean(doc):  # riskd's keys; the names and instruments are the API's
            doc = self.redactor.text(doc)
        self._write("save_snapshot", lambda: self._db.execute(
            "INSERT INTO snapshot (id, doc, updated) VALUES (1, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET doc = excluded.doc, updated = excluded.updated",
            (doc, now.isoformat()),
        ), None)

    @staticmethod
    def peek_view(state_dir: Path) -> dict[str, Any] | None:
        """What the running (or last) daemon of a state_dir persisted, read-only and without its lock
        (readable while it writes: WAL): {"state", "health", "snapshot", "snapshot_at", "commands"}
        (the last 20 commands, newest first); None when the state_dir holds no store."""
        path = state_dir / "riskd.sqlite3"
        if not path.exists():
            return None
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
            try:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                engine = db.execute("SELECT doc FROM engine WHERE id = 1").fetchone()
                health = db.execute("SELECT doc, updated FROM health WHERE id = 1").fetchone() if version >= 2 else None
                snap = db.execute("SELECT doc, updated FROM snapshot WHERE id = 1").fetchone() if version >= 3 else None
                commands = db.execute("SELECT id, verb, doc, status, outcome, updated FROM commands ORDER BY created DESC LIMIT 20"
                                      ).fetchall() if version >= 3 else []
            finally:
                db.close()
            return {
                "state": State.from_json(json.loads(engine[0])) if engine else State(),
                "health": {**json.loads(health[0]), "updated": health[1]} if health else None,
                "snapshot": Snapshot.from_json(json.loads(snap[0])) if snap else None,
                "snapshot_at": snap[1] if snap else None,
                "commands": [{"id": i, "verb": v, "command": json.loads(d), "status": st, "outcome": json.loads(o) if o else None,
                              "updated": u} for i, v, d, st, o, u in commands],
            }
        except (sqlite3.DatabaseError, ValueError, TypeError, KeyError) as exc:
            raise StateError(f"state store {path} is unreadable ({exc.__class__.__name__}: {exc})") from None

    # operator commands (tick side) -------------------------------------------------------------

    def open_commands(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(id, status, command) of every command not finished (`queued`, `acting`), oldest first."""
        rows = self._db.execute("SELECT id, status, doc FROM commands WHERE status IN (?, ?) ORDER BY created, id",
                                OPEN_COMMANDS).fetchall()
        return [(i, st, json.loads(d)) for i, st, d in rows]

    def has_open_commands(self) -> bool:
        return self._db.execute("SELECT 1 FROM commands WHERE status IN (?, ?) LIMIT 1", OPEN_COMMANDS).fetchone() is not None

    def update_command(self, command_id: str, status: str, now: datetime, *, doc: dict[str, Any] | None = None,
                       outcome: dict[str, Any] | None = None, state: State | None = None) -> None:
        """Record a command's progress (and the engine state it produced, in the same transaction)."""
        engine_doc = json.dumps(state.to_json(), sort_keys=True) if state is not None else None

        def write() -> None:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "UPDATE commands SET status = ?, updated = ?, doc = COALESCE(?, doc), outcome = COALESCE(?, outcome) WHERE id = ?",
                    (status, now.isoformat(), json.dumps(doc) if doc is not None else None,
                     self.redactor.text(json.dumps(outcome, default=str)) if outcome is not None else None, command_id))
                if engine_doc is not None:
                    self._db.execute(
                        "INSERT INTO engine (id, doc, updated) VALUES (1, ?, ?) "
                        "ON CONFLICT(id) DO UPDATE SET doc = excluded.doc, updated = excluded.updated",
                        (engine_doc, now.isoformat()),
                    )
            if engine_doc is not None:
                self._saved_doc = engine_doc

        self._write("update_command", write, None)

    def inbox(self) -> "Inbox":
        """The commands table for the control socket's threads (a connection of its own)."""
        return Inbox(self.path, self.redactor)

    @staticmethod
    def peek_health(state_dir: Path) -> dict[str, Any] | None:
        """The running (or last) daemon's health in a state_dir, read-only; None when there is none."""
        path = state_dir / "riskd.sqlite3"
        if not path.exists():
            return None
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                if db.execute("PRAGMA user_version").fetchone()[0] < 2:
                    return None
                row = db.execute("SELECT doc, updated FROM health WHERE id = 1").fetchone()
            finally:
                db.close()
        except sqlite3.DatabaseError as exc:
            raise StateError(f"state store {path} is unreadable ({exc.__class__.__name__})") from None
        return {**json.loads(row[0]), "updated": row[1]} if row else None


def _free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


class Inbox:
    """Operator commands as the control socket receives them: `submit` records one durably (once per
    id) before riskd acts on it, `get` reads its progress. Thread-safe; its own SQLite connection
    beside the tick's (SQLite serializes the writes)."""

    def __init__(self, path: Path, redactor: Redactor | None = None):
        self.redactor = redactor or Redactor()  # an operator's --reason is free text: scrubbed like everything riskd writes
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
        self._db.execute("PRAGMA synchronous=FULL")

    def submit(self, command_id: str, verb: str, doc: dict[str, Any], now: datetime) -> bool:
        """Record a command; return False when that id is already recorded (a client asking again)."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO commands (id, verb, doc, status, outcome, created, updated) VALUES (?, ?, ?, 'queued', NULL, ?, ?)",
                (command_id, verb, self.redactor.text(json.dumps(doc)), now.isoformat(), now.isoformat()))
            return cursor.rowcount == 1

    def get(self, command_id: str) -> tuple[str, dict[str, Any] | None] | None:
        """(status, outcome) of a command, None when no such id is recorded."""
        with self._lock:
            row = self._db.execute("SELECT status, outcome FROM commands WHERE id = ?", (command_id,)).fetchone()
        return (row[0], json.loads(row[1]) if row[1] else None) if row else None

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _create_private(path: Path, flags: int) -> int:
    """Open `path`, creating it 0600 whatever the umask; return the fd."""
    return os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, 0o600)


def ignore_sigxfsz() -> None:
    """Ignore SIGXFSZ so a write past RLIMIT_FSIZE fails with EFBIG instead of killing riskd.

    The daemon calls this once at start (main thread only), before any Store or audit trail is opened.
    """
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def _when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None
