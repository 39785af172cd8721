"""A full disk never stops a close: the Store's reserve file, on a real 3 MiB tmpfs (mounted by the test, root only)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import datetime, timezone

import pytest

from harness import fill_disk

from riskd.errors import StateError
from riskd.model import Decision, Order, Severity
from riskd.state import RESERVE_NAME, Store

NOW = datetime(2026, 3, 10, 14, 0, tzinfo=timezone.utc)
RESERVE = 1024 * 1024
BIG = {f"INSTRUMENT-{i:05d}-{'x' * 40}": i for i in range(3000)}  # ~170 KiB of JSON: needs new pages on every write


def _decision(n: int) -> Decision:
    return Decision(kind="fire", rule="cap", key=f"cap|Sim101|MES|{n}", account="Sim101", instrument="MES 12-26", action="close all",
                    severity=Severity.PARTIAL, orders=(Order("close", "Sim101", "MES 12-26"),), covers=())


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
    assert done.returncode == 0, f"cannot mount a tmpfs for the disk-full test: {done.stderr}"
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


@pytest.fixture
def full_store(small_disk):
    events: list[tuple[str, dict]] = []
    store = Store(small_disk / "state", on_condition=lambda event, **fields: events.append((event, fields)), reserve_bytes=RESERVE)
    assert (small_disk / "state" / RESERVE_NAME).stat().st_size == RESERVE
    fill_disk(small_disk / "filler")
    yield store, events, small_disk
    store.close()


def test_disk_full_the_reserve_carries_the_close_record_and_disk_full_is_reported(full_store):
    store, events, disk = full_store
    store.begin(_decision(1), BIG, NOW)
    store.mark_sent(_decision(1).key, NOW)
    assert [e for e, _ in events] == ["disk_full"]
    assert events[0][1]["reserve_freed"] == RESERVE and "full" in events[0][1]["error"]
    assert not (disk / "state" / RESERVE_NAME).exists()
    store.finish(_decision(1).key, "done", NOW)
    assert store.intent_status(_decision(1).key) == "done"
    assert [e for e, _ in events] == ["disk_full"]  # reported once per episode


def test_disk_full_freeing_space_rebuilds_the_reserve_and_reports_disk_recovered(full_store):
    store, events, disk = full_store
    store.begin(_decision(1), BIG, NOW)
    (disk / "filler").unlink()
    store.begin(_decision(2), BIG, NOW)
    assert [e for e, _ in events] == ["disk_full", "disk_recovered"]
    assert (disk / "state" / RESERVE_NAME).stat().st_size == RESERVE
    assert store.intent_status(_decision(2).key) == "sending"


def test_disk_full_with_no_reserve_left_writes_return_and_report_state_write_failed(full_store):
    store, events, disk = full_store
    store.begin(_decision(1), BIG, NOW)  # spends the reserve
    fill_disk(disk / "filler2")
    store.begin(_decision(2), BIG, NOW)
    store.mark_sent(_decision(2).key, NOW)
    store.finish(_decision(1).key, "done", NOW)
    assert store.prune(NOW) in (0, 1)
    names = [e for e, _ in events]
    assert names[0] == "disk_full" and "state_write_failed" in names
    assert all(f["op"] for e, f in events if e == "state_write_failed")
    assert store.intent_status(_decision(2).key) is None  # that record lived only in memory and the audit trail


def test_file_size_limit_gives_efbig_instead_of_killing_the_daemon(tmp_path):
    # With RLIMIT_FSIZE the kernel sends SIGXFSZ, whose default action kills the process: a trader
    # would lose the daemon mid-breach. After ignore_sigxfsz() the write fails with EFBIG and riskd lives.
    code = textwrap.dedent(f"""
        import errno, resource
        from riskd.state import ignore_sigxfsz
        ignore_sigxfsz()
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            with open({str(tmp_path / "big")!r}, "wb", buffering=0) as f:
                f.write(b"x" * 4096)
                f.write(b"x")
        except OSError as e:
            print("EFBIG" if e.errno == errno.EFBIG else "other")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "EFBIG"


def test_disk_full_a_store_opened_on_a_full_disk_says_so_and_reports_recovery(small_disk):
    # riskd spent its reserve on a full disk and was killed (-9); systemd starts it while the disk is still full
    code = textwrap.dedent(f"""
        import os
        from datetime import datetime, timezone
        from riskd.state import Store
        store = Store(__import__("pathlib").Path({str(small_disk / "state")!r}), reserve_bytes={RESERVE})
        store.save_health({{"pid": os.getpid()}}, datetime.now(timezone.utc))
        os.unlink({str(small_disk / "state" / RESERVE_NAME)!r})
        os._exit(9)
    """)
    assert subprocess.run([sys.executable, "-c", code], timeout=30).returncode == 9
    fill_disk(small_disk / "filler")
    events: list[tuple[str, dict]] = []
    store = Store(small_disk / "state", on_condition=lambda event, **fields: events.append((event, fields)), reserve_bytes=RESERVE)
    try:
        assert [(e, f["op"]) for e, f in events] == [("disk_full", "open")]
        (small_disk / "filler").unlink()
        store.begin(_decision(1), {"MES 12-26": 4}, NOW)
        assert [e for e, _ in events] == ["disk_full", "disk_recovered"]
        assert (small_disk / "state" / RESERVE_NAME).stat().st_size == RESERVE
    finally:
        store.close()


def test_disk_full_a_store_reopened_after_a_clean_stop_on_a_disk_filled_meanwhile_opens_on_its_reserve(small_disk):
    first = Store(small_disk / "state", reserve_bytes=RESERVE)
    first.begin(_decision(0), {"MES 12-26": 4}, NOW)
    first.close()  # a clean stop removes the -wal and -shm that opening needs again
    fill_disk(small_disk / "filler")  # something else fills the disk while riskd is stopped
    events: list[tuple[str, dict]] = []
    store = Store(small_disk / "state", on_condition=lambda event, **fields: events.append((event, fields)), reserve_bytes=RESERVE)
    try:
        assert [(e, f["op"], f["reserve_freed"]) for e, f in events] == [("disk_full", "open", RESERVE)]
        assert store.intent_status(_decision(0).key) == "sending"  # the record survived and riskd runs
    finally:
        store.close()


def test_disk_full_with_no_reserve_left_a_store_that_cannot_open_says_the_disk_is_full(small_disk):
    first = Store(small_disk / "state", reserve_bytes=RESERVE)
    first.close()
    (small_disk / "state" / RESERVE_NAME).unlink()  # spent by the previous run
    fill_disk(small_disk / "filler")
    with pytest.raises(StateError) as exc:
        Store(small_disk / "state", reserve_bytes=RESERVE)
    assert "the disk is full" in str(exc.value) and "unreadable" not in str(exc.value)


def test_a_trail_line_cut_by_a_full_disk_is_taken_back_and_written_whole_later(tmp_path):
    # The disk fills in the middle of an audit line (here a file-size limit ends the write there): the
    # part written must not stay, or the next writer reads it as a torn line and the line is lost.
    trail = tmp_path / "audit.jsonl"
    code = textwrap.dedent(f"""
        import os, resource
        from riskd.audit import AuditTrail
        from riskd.state import ignore_sigxfsz
        ignore_sigxfsz()
        audit = AuditTrail({str(trail)!r})
        audit.emit("started", version="t", config=None, pid=1, dry_run=False, base_url="x", poll_interval_s=1.0, timezone="UTC")
        size = os.path.getsize({str(trail)!r})
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 40, hard))  # the next line ends 40 bytes in
        audit.emit("rules_rejected", source=["r"], errors=["x" * 200], kept_rules=1)
        print(os.path.getsize({str(trail)!r}) - size, audit.failing)
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # space again
        audit.flush()
        audit.close()
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", "True"]  # nothing of the cut line stayed; the trail said it is failing
    from conftest import read_audit
    from riskd.trail import verify

    names = [line["event"] for line in read_audit(trail)]
    assert "rules_rejected" in names and "trail_repaired" not in names, names
    assert verify([trail]).ok
