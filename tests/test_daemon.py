"""The daemon (riskd/daemon.py): reload, signals, scheduling on the monotonic clock, stop, watchdog."""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import pytest

from riskd.daemon import Daemon

from conftest import RISKD, read_audit, wait_until, write_policy
from harness import Rig, one_position
from trickle import TrickleServer

CAP = [{"name": "cap", "instruments": "MES", "when": {"position_pnl": {"below": -100}}, "then": {"close": "all"}}]


def test_daemon_reload_that_raises_anything_is_rules_rejected_and_keeps_the_old_rules(tmp_path, token):
    rig = Rig(tmp_path, token, one_position(), CAP)
    try:
        daemon = Daemon(rig.settings, rig.ticker, rig.audit, {})
        before = rig.ticker.rules
        # a number with 5,000 digits: int() raises ValueError (not a ConfigError) inside the loader
        rig.rules_path.write_text("rules:\n- name: cap\n  when: {position_pnl: {below: -1" + "0" * 5000 + "}}\n  then: {close: all}\n")
        assert daemon.reload() is False
        (rejected,) = rig.events("rules_rejected")
        assert rejected["kept_rules"] == 1 and rejected["errors"] and rejected["errors"][0]
        assert rig.ticker.rules is before
        rig.sim.set_price("MES 12-26", 5990.0)
        rig.tick_at(1)  # the old rules still protect the account
        assert rig.quantities() == {}
    finally:
        rig.close()


def test_daemon_reload_to_a_policy_that_protects_nothing_is_rejected_and_the_old_rules_keep_acting(tmp_path, token):
    rig = Rig(tmp_path, token, one_position(), CAP)
    try:
        daemon = Daemon(rig.settings, rig.ticker, rig.audit, {})
        rig.rules_path.write_text("rules:\n- name: cap\n  enabled: false\n  when: {position_pnl: {below: -100}}\n  then: {close: all}\n")
        assert daemon.reload() is False
        (rejected,) = rig.events("rules_rejected")
        assert "every rule is disabled (1) in 1 file(s): riskd would watch and protect nothing" in rejected["errors"][0]
        rig.sim.set_price("MES 12-26", 5990.0)
        rig.tick_at(1)
        assert rig.quantities() == {}
    finally:
        rig.close()


def _catches(pid: int, *signals: int) -> bool:
    """Whether the process has handlers installed for every one of `signals` (Linux: SigCgt in /proc/PID/status)."""
    try:
        status = open(f"/proc/{pid}/status").read()
    except OSError:
        return False
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return all(caught >> (sig - 1) & 1 for sig in signals)


def test_run_survives_sighup_and_sigusr1_sent_while_it_starts_and_reloads_once_up(tmp_path, sim_factory, token):
    sim, server = sim_factory(one_position())
    config = write_policy(tmp_path, server.base_url, CAP, poll_interval="200ms")
    env = {"CROSSTRADE_TOKEN": token, "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([str(RISKD), "run", "-c", str(config)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # logrotate / systemctl reload during start-up: once riskd holds the two signals (its first statement) and
        # before the daemon installs its own handlers (SIGTERM's among them), however slowly a loaded machine starts it
        wait_until(lambda: (_catches(proc.pid, signal.SIGUSR1, signal.SIGHUP) and not _catches(proc.pid, signal.SIGTERM))
                   or proc.poll() is not None, timeout=20, interval=0.005)
        for sig in (signal.SIGUSR1, signal.SIGHUP):
            proc.send_signal(sig)
        audit = tmp_path / "audit.jsonl"

        def reloaded() -> bool:
            assert proc.poll() is None, f"riskd died ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}"
            return audit.exists() and '"reason":"reload"' in audit.read_text().replace(" ", "")

        wait_until(reloaded, timeout=20)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        proc.stderr.close()


@pytest.mark.parametrize("good", [1, 0], ids=["stuck-poll-tick", "stuck-start-tick"])
def test_sigterm_during_a_trickled_snapshot_stops_within_2s_with_stopped_last_and_a_valid_chain(tmp_path, token, good):
    """The API sends the snapshot's headers, then one byte every 0.3 s (each read well within the 5 s
    timeout): riskd must not wait for the tick stuck in that read to honour SIGTERM."""
    with TrickleServer(interval=0.3, good=good) as server:
        config = write_policy(tmp_path, server.base_url, CAP, poll_interval="500ms", crosstrade={"timeout": "5s"})
        env = {"CROSSTRADE_TOKEN": token, "PATH": "/usr/bin:/bin"}
        proc = subprocess.Popen([str(RISKD), "run", "-c", str(config)], cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            assert server.trickling.wait(15), "riskd never polled"  # a tick is now stuck in the body for the 5 s deadline
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(10)
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)
            err = proc.stderr.read().decode()
            proc.stderr.close()
    print(f"SIGTERM to exit: {took:.3f} s")
    assert code == 0, err[-2000:]
    assert took < 2.0, f"riskd took {took:.2f} s to stop"
    lines = read_audit(tmp_path / "audit.jsonl")
    assert lines[-1]["event"] == "stopped", [line["event"] for line in lines[-5:]]
    assert lines[-1]["abandoned_tick"] is True and lines[-1]["in_doubt"] == []
    verify = subprocess.run([str(RISKD), "audit", "--verify", str(tmp_path / "audit.jsonl")], capture_output=True, text=True, timeout=30)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_stop_abandoning_a_tick_in_a_close_names_the_close_in_doubt_and_its_intent_stays_open(tmp_path, token, monkeypatch):
    import riskd.daemon as daemon_mod

    monkeypatch.setattr(daemon_mod, "STOP_GRACE_S", 0.1)
    rig = Rig(tmp_path, token, one_position(market=5990.0), CAP)
    try:
        daemon = Daemon(rig.settings, rig.ticker, rig.audit, {})
        stuck = threading.Event()
        release = threading.Event()
        real_execute = rig.ticker.client.execute

        def hang(order, on_send=None):  # the close leaves (its intent marked sent), then its answer never comes
            if on_send is not None:
                on_send()
            stuck.set()
            release.wait(10)
            return real_execute(order)

        rig.ticker.client.execute = hang  # type: ignore[method-assign]
        tick = threading.Thread(target=daemon._safe_tick, args=("poll",))
        tick.start()
        assert stuck.wait(5)
        daemon.request_stop("SIGTERM")
        assert daemon._stop() == 0 and daemon.abandoned
        (stopped,) = rig.events("stopped")
        key = stopped["in_doubt"][0]
        assert stopped["abandoned_tick"] is True and len(stopped["in_doubt"]) == 1
        assert rig.events()[-1]["event"] == "stopped"
        assert rig.store.intent_status(key) == "sending"  # settled by Executor.resolve at the next start
        release.set()
        tick.join(10)
        assert rig.events()[-1]["event"] == "stopped"  # the abandoned tick's `action` line never follows it
    finally:
        release.set()
        rig.close()
