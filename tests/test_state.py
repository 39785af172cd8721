"""The state store: schema and migrations, refusing corrupt or foreign stores, the lock, intents, health."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest

from riskd.engine import State
from riskd.errors import StateError
from riskd.model import Decision, Order, Severity
from riskd.state import MIGRATIONS, SCHEMA_VERSION, Store

NOW = datetime(2026, 3, 10, 14, 0, tzinfo=timezone.utc)


def _decision(key: str = "cap|Sim101|MES 12-26|2026-03-10T14:00:00+00:00") -> Decision:
    return Decision(kind="fire", rule="cap", key=key, account="Sim101", instrument="MES 12-26", action="close 50%",
                    severity=Severity.PARTIAL, orders=(Order("close", "Sim101", "MES 12-26", percent=0.5),), covers=("other|Sim101",))


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "state")
    yield s
    s.close()


def test_store_new_state_dir_gets_the_current_schema_in_wal_mode(store):
    assert store.schema_version == SCHEMA_VERSION == 4
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.load() == State()


def test_store_migrates_a_version_1_store_and_keeps_its_state_and_intents(tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    db = sqlite3.connect(state_dir / "riskd.sqlite3")
    db.executescript(MIGRATIONS[1] + "PRAGMA user_version = 1;")
    doc = {"session": "2026-03-10", "fired": {"cap|Sim101": "2026-03-10T13:00:00+00:00"}, "peaks": {"sim101": 812.5},
           "locks": {"daily|sim101": "2026-03-10T13:00:00+00:00"}, "first_seen": {"sim101|MES 12-26": "2026-03-10T12:00:00+00:00"}}
    db.execute("INSERT INTO engine VALUES (1, ?, ?)", (json.dumps(doc), NOW.isoformat()))
    from riskd.state import _decision_to_json

    db.execute("INSERT INTO intents VALUES (?, 'cap', 'Sim101', ?, ?, 'unknown', ?, ?)",
               ("k1", _decision_to_json(_decision("k1")), json.dumps({"MES 12-26": 4}), NOW.isoformat(), NOW.isoformat()))
    db.commit()
    db.close()

    store = Store(state_dir)
    try:
        assert store.schema_version == SCHEMA_VERSION
        state = store.load()
        assert state.fired == {"cap|sim101": "2026-03-10T13:00:00+00:00"}  # target keys now compare case-insensitively
        assert state.peaks == {"sim101": 812.5} and state.locks == doc["locks"]
        (intent,) = store.open_intents()
        assert intent.key == "k1" and intent.seen == {"MES 12-26": 4} and intent.sent is None and intent.settle_at is None
        assert intent.decision.covers == ("other|Sim101",)
        store.save_health({"stale": False}, NOW)  # the table added by migration 2
    finally:
        store.close()


def test_store_from_a_newer_riskd_is_refused_and_left_alone(tmp_path):
    state_dir = tmp_path / "state"
    Store(state_dir).close()
    db = sqlite3.connect(state_dir / "riskd.sqlite3")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(StateError, match=f"schema {SCHEMA_VERSION + 1}, newer than this riskd"):
        Store(state_dir)
    db = sqlite3.connect(state_dir / "riskd.sqlite3")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1


@pytest.mark.parametrize("damage", ["garbage", "truncated", "bad_doc", "bad_intent"])
def test_store_corrupt_file_is_a_clear_error_never_discarded(tmp_path, damage):
    state_dir = tmp_path / "state"
    store = Store(state_dir)
    store.save(State(session="2026-03-10", peaks={"sim101": 10.0}), NOW)
    store.begin(_decision(), {"MES 12-26": 4}, NOW)
    store.close()
    path = state_dir / "riskd.sqlite3"
    if damage == "garbage":
        path.write_bytes(b"this is not a database" * 100)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:1500])
    else:
        db = sqlite3.connect(path)
        if damage == "bad_doc":
            db.execute("UPDATE engine SET doc = '{not json'")
        else:
            db.execute("UPDATE intents SET decision = '{\"rule\": 1}'")
        db.commit()
        db.close()
    before = path.read_bytes()
    with pytest.raises(StateError, match="unreadable") as err:
        Store(state_dir).load()
    assert str(path) in str(err.value)
    assert path.read_bytes() == before  # kept for review, not replaced


def test_store_second_riskd_on_the_same_state_dir_is_refused(store, tmp_path):
    with pytest.raises(StateError, match="another riskd is running"):
        Store(tmp_path / "state")


def test_store_peek_reads_state_and_health_without_the_lock(store, tmp_path):
    store.save(State(session="2026-03-10", peaks={"sim101": 42.0}), NOW)
    store.save_health({"last_ok": NOW.isoformat(), "stale": True}, NOW)
    assert Store.peek(tmp_path / "state").peaks == {"sim101": 42.0}
    health = Store.peek_health(tmp_path / "state")
    assert health["stale"] is True and health["updated"] == NOW.isoformat()
    assert Store.peek_health(tmp_path / "elsewhere") is None


def test_store_intent_lifecycle_and_prune(store):
    d = _decision()
    store.begin(d, {"MES 12-26": 4}, NOW)
    (intent,) = store.open_intents()
    assert intent.status == "sending" and intent.sent is None
    store.mark_sent(d.key, NOW + timedelta(seconds=1))
    assert store.open_intents()[0].sent == NOW + timedelta(seconds=1)
    store.finish(d.key, "unknown", NOW + timedelta(seconds=2), settle_at=NOW + timedelta(seconds=7), outcome="unknown")
    (intent,) = store.open_intents()
    assert intent.status == "unknown" and intent.settle_at == NOW + timedelta(seconds=7) and intent.outcome == "unknown"
    store.finish(d.key, "done", NOW + timedelta(seconds=8), State(session="x"))
    assert store.open_intents() == [] and store.intent_status(d.key) == "done" and store.load().session == "x"
    assert store.prune(NOW) == 0
    assert store.prune(NOW + timedelta(days=1)) == 1


def test_store_intent_keeps_what_the_rule_saw_and_whether_it_was_a_dry_run(store):
    """After a crash the intent is all riskd has of the firing: its inputs, threshold and dry-run flag
    come back with it (a dry intent must never be settled against the live API)."""
    d = _decision()
    d = Decision(**{**{f: getattr(d, f) for f in d.__dataclass_fields__}, "inputs": {"position_pnl": -612.5},
                    "threshold": {"position_pnl": {"below": -500}}, "dry_run": True, "reason": "below -500"})
    store.begin(d, {"MES 12-26": 4}, NOW)
    (intent,) = store.open_intents()
    assert intent.decision == d


def test_store_prune_keeps_intents_whose_outcome_is_unknown(store):
    store.begin(_decision(), {"MES 12-26": 4}, NOW)
    assert store.prune(NOW + timedelta(days=30)) == 0 and len(store.open_intents()) == 1


def test_store_finish_writes_outcome_and_state_in_one_transaction(store, tmp_path):
    store.begin(_decision(), {"MES 12-26": 4}, NOW)
    store.finish(_decision().key, "done", NOW, State(session="s", fired={"k": NOW.isoformat()}))
    store.close()
    again = Store(tmp_path / "state")
    try:
        assert again.load().fired == {"k": NOW.isoformat()} and again.intent_status(_decision().key) == "done"
    finally:
        again.close()


def test_store_migrates_a_version_2_store_forward_and_then_keeps_the_ledger_and_marks_across_restarts(tmp_path):
    # (schema 3 adds the snapshot and commands tables, 4 the ledger and marks of the engine document)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    db = sqlite3.connect(state_dir / "riskd.sqlite3")
    db.executescript(MIGRATIONS[1] + MIGRATIONS[2] + "PRAGMA user_version = 2;")
    doc = {"version": 2, "session": "2026-12-01", "fired": {"cap|sim101": "2026-12-01T15:00:00+00:00"}, "peaks": {"sim101": 300.0},
           "tracked": {}}
    db.execute("INSERT INTO engine VALUES (1, ?, ?)", (json.dumps(doc), NOW.isoformat()))
    db.commit()
    db.close()

    store = Store(state_dir)
    try:
        assert store.schema_version == SCHEMA_VERSION == 4
        stored = json.loads(store._db.execute("SELECT doc FROM engine").fetchone()[0])
        assert stored["ledger"] == {} and stored["marks"] == {} and stored["fired"] == doc["fired"]
        state = store.load()
        assert state.fired == doc["fired"] and state.peaks == {"sim101": 300.0} and state.ledger == {} and state.marks == {}
        kept = dataclasses.replace(state, ledger={"sim101": {"2026-12-01": [-400.0, 0.0, 12.5, 49587.5]}}, marks={"sim101": [51000.0, 50200.0]})
        store.save(kept, NOW)
    finally:
        store.close()
    again = Store(state_dir)
    try:
        state = again.load()
        assert state.ledger == {"sim101": {"2026-12-01": [-400.0, 0.0, 12.5, 49587.5]}} and state.marks == {"sim101": [51000.0, 50200.0]}
    finally:
        again.close()


def test_the_status_snapshot_is_stored_as_snapshot_as_json_and_read_back_whole(store, tmp_path):
    """`riskd status` reads back the accounts and positions the last snapshot showed, figures verbatim."""
    from datetime import datetime, timezone

    from riskd.model import Account, Position, Snapshot

    snap = Snapshot(datetime(2026, 3, 10, 15, 0, 0, 250000, tzinfo=timezone.utc),
                    (Account("Sim101", -120.5, 30.25, 4.0, 50_000.0, (Position("Sim101", "MES 12-26", "Long", 2, 6000.25, 6003.0, 27.5),),
                             weekly_pnl=None, cash_value=49_000.0, balance_known=True),
                     Account("Apex-7", 0.0, 0.0, 0.0, 0.0, (), balance_known=False)),
                    unknown=frozenset({"bad"}), problems=("Bad: positions is null",))
    store.save_snapshot(snap, datetime(2026, 3, 10, tzinfo=timezone.utc))
    view = Store.peek_view(tmp_path / "state")
    assert view is not None and view["snapshot"] == snap
    row = sqlite3.connect(tmp_path / "state" / "riskd.sqlite3").execute("SELECT doc FROM snapshot").fetchone()
    assert json.loads(row[0]) == snap.as_json()
