"""The audit trail writer: chain across restarts, processes and rotation; crash repair; a full disk;
redaction; fsync policy. The full-disk end-to-end test runs the real `riskd run` against the
simulator with its trail on a tiny tmpfs (or, where mounting is not allowed, under RLIMIT_FSIZE)."""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import RISKD, read_audit, wait_until, write_policy

from riskd import audit as audit_mod
from riskd.audit import AuditTrail
from riskd.chain import GENESIS, chain_hash
from riskd.console import configure_console
from riskd.errors import ConfigError
from riskd.trail import verify

T0 = datetime(2026, 3, 10, 13, 30, tzinfo=timezone.utc)


class Clock:
    def __init__(self, start: datetime = T0):
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=7)
        return self.now


class Console:
    """A structlog-style logger that records what the operator would see."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def _log(self, level: str) -> Any:
        return lambda event, **kw: self.records.append((level, event, kw))

    def __getattr__(self, level: str) -> Any:
        return self._log(level)

    def events(self, level: str | None = None) -> list[str]:
        return [e for lv, e, _ in self.records if level is None or lv == level]


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in path.read_bytes().splitlines() if raw.startswith(b"{") and raw.endswith(b"}")]


def trail(path: Path, **kw: Any) -> AuditTrail:
    kw.setdefault("clock", Clock())
    return AuditTrail(str(path), **kw)


# ---------------------------------------------------------------------------------------------
# Chain.


def test_audit_chain_links_every_line_to_the_one_before(tmp_path):
    path = tmp_path / "audit.jsonl"
    t = trail(path)
    for i in range(5):
        t.emit("fired", rule="cap", n=i, inputs={"position_pnl": -600.5})
    t.close()
    written = lines(path)
    previous = GENESIS
    for seq, line in enumerate(written, start=1):
        assert line["seq"] == seq and line["prev"] == previous[:16]
        assert line["hash"] == chain_hash(previous, line)
        previous = line["hash"]
    assert written[0]["ts"].endswith("Z") and len(written[0]["ts"]) == len("2026-03-10T13:30:00.007Z")
    assert verify([path]).ok


def test_audit_chain_continues_across_restarts(tmp_path):
    path = tmp_path / "audit.jsonl"
    for run in range(3):
        t = trail(path)
        t.emit("started", run=run)
        t.emit("stopped", run=run)
        t.close()
    assert [line["seq"] for line in lines(path)] == list(range(1, 7))
    verdict = verify([path])
    assert verdict.ok, verdict.message


def test_audit_two_writers_on_one_trail_keep_one_chain(tmp_path):
    """`riskd once` may write to the daemon's trail while it runs: one chain, no forks."""
    path = tmp_path / "audit.jsonl"
    daemon, once = trail(path), trail(path)
    for i in range(20):
        (daemon if i % 3 else once).emit("sample", i=i)
    daemon.close()
    once.close()
    assert [line["i"] for line in lines(path)] == list(range(20))
    assert verify([path]).ok


def test_audit_values_that_json_cannot_round_trip_are_written_so_the_hash_verifies(tmp_path):
    path = tmp_path / "audit.jsonl"
    t = trail(path)
    t.emit("fired", inputs={1: float("nan"), "when": datetime(2026, 1, 2, tzinfo=timezone.utc)}, covers=("a", "b"),
           tags={"y", "x"}, name="Sim\udc80101", money=412.99999999999727)
    t.close()
    line = lines(path)[0]
    assert line["inputs"] == {"1": "nan", "when": "2026-01-02T00:00:00+00:00"} and line["covers"] == ["a", "b"]
    assert line["money"] == 412.99999999999727  # raw doubles stay raw
    assert verify([path]).ok


# ---------------------------------------------------------------------------------------------
# Crash repair.


def test_audit_torn_last_line_is_kept_terminated_and_recorded_then_verifies(tmp_path):
    path = tmp_path / "audit.jsonl"
    t = trail(path)
    t.emit("fired", rule="cap")
    t.emit("action", rule="cap", ok=True)
    t.close()
    data = path.read_bytes()
    torn = data[: len(data) - 40]  # the crash cut the last line
    path.write_bytes(torn)
    assert not verify([path]).ok

    console = Console()
    t = trail(path, console=console)
    t.emit("started")
    t.close()
    after = path.read_bytes()
    assert after.startswith(torn + b"\n")  # never rewritten, only terminated
    repaired = lines(path)[-2]
    assert repaired["event"] == "trail_repaired" and repaired["seq"] == 2
    assert repaired["torn"]["offset"] == data.index(b"\n") + 1
    assert repaired["missing"]["from_seq"] == 2  # the head file knew seq 2 had been written
    assert "trail_repaired" in console.events("warning")
    verdict = verify([path])
    assert verdict.ok, verdict.message
    assert any("incomplete line" in note for note in verdict.notes)


def test_audit_last_line_missing_only_its_newline_is_completed_without_repair(tmp_path):
    path = tmp_path / "audit.jsonl"
    t = trail(path)
    t.emit("a")
    t.emit("b")
    t.close()
    path.write_bytes(path.read_bytes()[:-1])
    t = trail(path)
    t.emit("c")
    t.close()
    assert [line["event"] for line in lines(path)] == ["a", "b", "c"]
    assert verify([path]).ok


def test_audit_lines_cut_off_the_end_are_detected_then_recorded_at_restart(tmp_path):
    path = tmp_path / "audit.jsonl"
    t = trail(path)
    for event in ("started", "fired", "action"):
        t.emit(event)
    t.close()
    kept = path.read_bytes().splitlines(keepends=True)[:1]
    path.write_bytes(b"".join(kept))  # the last two lines cut at a line boundary
    verdict = verify([path])
    assert not verdict.ok and "seq 2..3 were cut off the end" in verdict.message

    t = trail(path)
    t.emit("started")
    t.close()
    repaired = lines(path)[1]
    assert repaired["event"] == "trail_repaired" and repaired["missing"]["from_seq"] == 2 and repaired["missing"]["to_seq"] == 3
    assert verify([path]).ok


# ---------------------------------------------------------------------------------------------
# Rotation.


def test_audit_rotation_starts_the_new_file_with_a_rotated_line_and_the_set_verifies(tmp_path):
    path = tmp_path / "audit.jsonl"
    console = Console()
    t = trail(path, console=console)
    t.emit("started")
    t.emit("fired")
    path.rename(tmp_path / "audit.jsonl.1")  # logrotate: rename, then postrotate sends SIGUSR1
    t.request_reopen()
    t.emit("action")
    path.rename(tmp_path / "audit.jsonl.2")  # no signal this time: the renamed path is noticed anyway
    t.emit("stopped")
    t.close()
    first = lines(tmp_path / "audit.jsonl.1")
    second = lines(tmp_path / "audit.jsonl.2")
    third = lines(path)
    assert [line["event"] for line in first] == ["started", "fired"]
    assert second[0]["event"] == "rotated" and second[0]["previous_file"] == str(tmp_path / "audit.jsonl.1")
    assert second[0]["previous_seq"] == 2 and second[0]["previous_hash"] == first[-1]["hash"]
    assert third[0]["event"] == "rotated" and third[0]["previous_hash"] == second[-1]["hash"]
    files = [path, tmp_path / "audit.jsonl.1", tmp_path / "audit.jsonl.2"]  # any order: chain order by seq
    verdict = verify(files)
    assert verdict.ok and verdict.lines == 6, verdict.message
    alone = verify([path])  # the live file on its own verifies, anchored on the previous file
    assert alone.ok and any("continuing a file not given" in n for n in alone.notes)
    assert not verify([tmp_path / "audit.jsonl.1", path]).ok  # the middle file is missing


def test_audit_trail_moved_away_while_riskd_was_down_continues_the_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    t = trail(path)
    t.emit("stopped")
    t.close()
    path.rename(tmp_path / "audit.jsonl-20260310")
    t = trail(path)
    t.emit("started")
    t.close()
    assert lines(path)[0]["event"] == "rotated" and lines(path)[0]["seq"] == 2
    assert verify([path, tmp_path / "audit.jsonl-20260310"]).ok


# ---------------------------------------------------------------------------------------------
# Redaction and fsync.


def test_audit_token_authorization_and_configured_secrets_never_reach_the_trail(tmp_path, token):
    path = tmp_path / "audit.jsonl"
    t = trail(path, secrets=[token, "webhook-secret-123"])
    t.emit("api_error", error=f"401 for token {token}", request={"headers": {"Authorization": f"Bearer {token}"}},
           note="posted to https://hooks.example/webhook-secret-123", raw="Authorization: Bearer abcdefghijklmnop")
    t.close()
    text = path.read_text()
    assert token not in text and "webhook-secret-123" not in text and "abcdefghijklmnop" not in text
    line = lines(path)[0]
    assert line["request"]["headers"]["Authorization"] == "[REDACTED]"
    assert line["error"] == "401 for token [REDACTED]"
    assert verify([path]).ok


def test_audit_scrubs_the_text_of_values_that_are_not_strings(tmp_path, token):
    path = tmp_path / "audit.jsonl"
    t = trail(path, secrets=[token])
    t.emit("api_error", error=RuntimeError(f"refused {token}"), url=Path(f"/x/{token}"), tags={f"k-{token}"})
    t.close()
    text = path.read_text()
    assert token not in text and "[REDACTED]" in text
    assert verify([path]).ok


def test_console_log_scrubs_the_repr_of_objects(tmp_path, token, capsys):
    import structlog

    configure_console(json_output=True, secrets=[token])
    try:
        structlog.get_logger("riskd").error("api_error", error=RuntimeError(f"refused {token}"))
    finally:
        structlog.reset_defaults()
    out = capsys.readouterr().out
    assert "api_error" in out and token not in out


def test_console_log_is_scrubbed_of_the_token(tmp_path, token, capsys):
    import structlog

    configure_console(json_output=True, secrets=[token])
    try:
        structlog.get_logger("riskd").error("api_error", error=f"refused {token}", headers={"Authorization": f"Bearer {token}"})
        try:
            raise RuntimeError(f"boom {token}")
        except RuntimeError:
            structlog.get_logger("riskd").exception("tick_failed")
    finally:
        structlog.reset_defaults()  # the console of the other tests is not this test's captured stdout
    out = capsys.readouterr().out  # the console goes to stdout (journald)
    assert "api_error" in out and "tick_failed" in out and token not in out


def test_audit_fsyncs_decisions_and_actions_but_not_samples(tmp_path, monkeypatch):
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(audit_mod.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    t = trail(tmp_path / "audit.jsonl")
    synced.clear()
    t.emit("sample")
    assert synced == []
    t.emit("fired")
    t.emit("action")
    assert len(synced) >= 2
    t.close()
    synced.clear()
    t = trail(tmp_path / "none.jsonl", fsync="none")
    t.emit("action")
    t.close()
    assert synced == []


def test_config_rejects_an_unknown_audit_fsync_policy(tmp_path):
    from riskd import config

    path = tmp_path / "riskd.yaml"
    path.write_text("audit_fsync: sometimes\n")
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert "audit_fsync" in str(caught.value)
    path.write_text("audit_fsync: all\n")
    assert config.load(path).audit_fsync == "all"


# ---------------------------------------------------------------------------------------------
# A full disk.


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs (as tests/test_disk_full.py and the chaos suite mount theirs: a test that cannot is a failure, not a skip)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    assert done.returncode == 0, f"cannot mount a tmpfs for the full-disk tests: {done.stderr.decode().strip()}"
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(directory: Path) -> Path:
    """Fill the file system of `directory`; return the filler file (delete it to free the space)."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_audit_full_disk_holds_lines_in_order_and_records_the_outage_when_writable(tiny_disk):
    path = tiny_disk / "audit.jsonl"
    console = Console()
    t = trail(path, console=console)
    t.emit("started")
    filler = fill(tiny_disk)
    t.emit("fired", rule="cap", pad="x" * 5000)  # more than the free rest of the file's last page
    t.emit("action", rule="cap", pad="y" * 3000)
    assert t.failing and "audit_write_failed" in console.events("error")
    filler.unlink()
    wait_until(lambda: not t.failing, timeout=5)  # retried on its own, without a new line
    t.emit("stopped")
    t.close()
    events = [line["event"] for line in lines(path)]
    assert [e for e in events if not e.startswith("trail_")] == ["started", "fired", "action", "stopped"]
    # `fired` is written whole before the outage, or (when the disk cut it) taken back and written whole after it
    assert events.index("fired") < events.index("action") and events.index("trail_unwritable") < events.index("action") < events.index("trail_writable")
    writable = lines(path)[events.index("trail_writable")]
    assert "No space left" in writable["last_error"] and writable["held"] >= 2
    assert "audit_write_recovered" in console.events("info")
    verdict = verify([path])
    assert verdict.ok, verdict.message


def test_audit_lines_still_unwritable_at_exit_go_to_the_console(tiny_disk):
    path = tiny_disk / "audit.jsonl"
    console = Console()
    t = trail(path, console=console)
    fill(tiny_disk)
    t.emit("fired", rule="cap", pad="x" * 8000)
    t.close()
    unwritten = [kw["line"]["event"] for lv, e, kw in console.records if e == "audit_line_unwritten"]
    assert "fired" in unwritten


def _riskd_env(token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CROSSTRADE_TOKEN", "CREDENTIALS_DIRECTORY", "RISKD_CONFIG")}
    env["CROSSTRADE_TOKEN"] = token
    return env


def _limit_file_size(limit: int) -> Any:
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def _full_trail(path: Path, size: int) -> None:
    """A valid trail of at least `size` bytes ending exactly on a page boundary, so the next line
    needs a new block (on a full tmpfs it gets ENOSPC; past RLIMIT_FSIZE, EFBIG)."""
    page = os.sysconf("SC_PAGE_SIZE")
    fixed = lambda: T0  # noqa: E731 - one timestamp, so the probe line has the real line's length
    probe = path.with_name("probe.jsonl")
    t = AuditTrail(str(probe), fsync="none", clock=fixed)
    t.emit("sample", pad="")
    t.close()
    base = probe.stat().st_size
    probe.unlink()
    probe.with_name("probe.jsonl.head").unlink()
    t = AuditTrail(str(path), fsync="none", clock=fixed)
    pad = max(0, size - base)
    t.emit("sample", pad="p" * (pad + (page - (base + pad) % page) % page))
    t.close()
    assert path.stat().st_size % page == 0 and path.stat().st_size >= size


def test_run_full_disk_while_a_rule_fires_still_closes_and_reports_the_failure(tmp_path, sim_factory, token):
    """The trail's disk is full while a rule fires: the close happens, the console says why the
    trail could not be written, and once there is space again the held lines land in the trail
    (between trail_unwritable and trail_writable) and it verifies. Where a tmpfs cannot be
    mounted, the trail is held at RLIMIT_FSIZE instead: that never frees, so the held lines must
    reach the console in full at exit."""
    scenario = {"accounts": [{"name": "Sim101", "positions": [{"instrument": "MES 12-26", "side": "long", "quantity": 2, "price": 6000.0}]}],
                "prices": {"MES 12-26": 6000.0}, "rate_limit": None}
    sim, server = sim_factory(scenario)
    rules = [{"name": "mes-loss-cap", "instruments": "MES", "when": {"position_pnl": {"below": -500}}, "then": {"close": "all"}}]
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = os.environ.get("RISKD_TEST_NO_TMPFS") != "1" and \
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True).returncode == 0
    limit = 4 << 20
    trail_path = disk / "audit.jsonl"
    _full_trail(trail_path, 1 if mounted else limit)
    filler = fill(disk) if mounted else None
    config = write_policy(tmp_path, server.base_url, rules, poll_interval="200ms", audit_log=str(trail_path))
    log = tmp_path / "stderr.log"
    stderr = log.open("w")
    proc = subprocess.Popen([str(RISKD), "run", "-c", str(config)], cwd=tmp_path, env=_riskd_env(token), stdout=stderr, stderr=stderr,
                            preexec_fn=None if mounted else _limit_file_size(limit))
    written: list[dict[str, Any]] = []
    verdict = None
    try:
        wait_until(lambda: "audit_write_failed" in log.read_text() or proc.poll() is not None, timeout=10)
        assert proc.poll() is None, log.read_text()
        sim.set_price("MES 12-26", 5940.0)  # -600: the rule fires now, with the trail unwritable
        wait_until(lambda: [r for r in sim.request_log() if r.method == "POST" and r.path.endswith("/positions/close")], timeout=10)
        assert sim.positions() == []  # the close happened
        assert ("No space left on device" if mounted else "File too large") in log.read_text()
        if filler is not None:
            filler.unlink()
            wait_until(lambda: any(e.get("event") == "trail_writable" for e in read_audit(trail_path)), timeout=10)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        if mounted:
            written = read_audit(trail_path)
            verdict = verify([trail_path])
    finally:
        if proc.poll() is None:
            proc.kill()
        stderr.close()
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    console = log.read_text()
    assert token not in console
    if mounted:
        events = [e["event"] for e in written]
        assert events.index("trail_unwritable") < events.index("fired") < events.index("action") < events.index("trail_writable")
        assert events[-1] == "stopped"
        action = next(e for e in written if e["event"] == "action")
        assert action["ok"] is True and action["response"]["closedPositions"][0]["quantity"] == 2
        assert verdict is not None and verdict.ok, verdict.message
    else:
        assert '"audit_line_unwritten"' in console and '"action"' in console and '"fired"' in console


def test_run_sigusr1_after_logrotate_renamed_the_trail_continues_the_chain_in_a_new_file(tmp_path, sim_factory, riskd_factory, token):
    sim, server = sim_factory({"accounts": [{"name": "Sim101"}], "rate_limit": None})
    proc = riskd_factory(write_policy(tmp_path, server.base_url, [], poll_interval="200ms", allow_empty_policy=True), token)
    proc.wait_for("rules_loaded")
    proc.audit_path.rename(tmp_path / "audit.jsonl.1")  # logrotate's rename, then its postrotate:
    proc.signal(signal.SIGUSR1)
    rotated = proc.wait_for("rotated", timeout=5)[0]
    assert rotated["previous_file"] == str(tmp_path / "audit.jsonl.1")
    assert proc.stop() == 0
    assert read_audit(tmp_path / "audit.jsonl.1")[-1]["hash"] == rotated["previous_hash"]
    assert read_audit(proc.audit_path)[-1]["event"] == "stopped"
    verdict = verify([proc.audit_path, tmp_path / "audit.jsonl.1"])
    assert verdict.ok, verdict.message


def test_close_with_makes_its_line_the_last_and_later_lines_go_to_the_console(tmp_path):
    seen: list[tuple[str, dict]] = []

    class Console:
        def __getattr__(self, level):
            return lambda event, **kw: seen.append((event, kw))

    path = tmp_path / "audit.jsonl"
    t = AuditTrail(str(path), console=Console())
    t.emit("started")
    t.close_with("stopped", reason="SIGTERM")
    assert t.emit("api_error", error="ReadTimeout", token_like="x") == {}  # a stuck tick's line, after the stop
    t.close()  # a second close is a no-op
    events = [json.loads(line)["event"] for line in path.read_text().splitlines()]
    assert events == ["started", "stopped"]
    late = [kw for event, kw in seen if event == "audit_line_after_close"]
    assert late and late[0]["line"]["event"] == "api_error"
