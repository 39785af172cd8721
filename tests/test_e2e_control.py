"""End to end: `riskd status` and the operator commands against the real `riskd run` subprocess,
which trades against the simulator over HTTP on 127.0.0.1; and a kill -9 in the middle of a command."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess

from riskd.sim import Fault

from riskd.cli import main

from conftest import RISKD, RiskdProcess, run_cli, wait_until, write_policy

RULES = [
    {"name": "daily-loss-limit", "when": {"account_pnl": {"below": -100000}}, "then": {"flatten": True, "lock": True}},
    {"name": "size-cap", "instruments": "MES", "when": {"position_size": {"above": 10}}, "then": {"reduce_to": 10}},
]
SCENARIO = {
    "accounts": [
        {"name": "Sim101", "positions": [{"instrument": "MES 12-26", "side": "long", "quantity": 4, "price": 6000.0}]},
        {"name": "Sim102", "positions": [{"instrument": "NQ 12-26", "side": "short", "quantity": 2, "price": 21000.0}]},
    ],
    "prices": {"MES 12-26": 5990.0, "NQ 12-26": 21000.0},
}


class _Ran:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _cli(capsys, config, *args):
    """The `riskd` command in this process (the daemon is the real process; the socket and the state store are real)."""
    capsys.readouterr()
    code = main([*args, "-c", str(config)])
    out, err = capsys.readouterr()
    return _Ran(code, out, err)


def test_e2e_status_and_lock_pause_flatten_unlock_work_and_appear_in_the_trail_and_audit(tmp_path, sim_factory, riskd_factory, token,
                                                                                          capsys):
    sim, server = sim_factory(SCENARIO)
    config = write_policy(tmp_path, server.base_url, RULES, poll_interval="500ms")
    proc = riskd_factory(config, token)
    proc.wait_for("started")
    wait_until(lambda: (tmp_path / "state" / "control.sock").exists() and len(sim.request_log()) >= 2, timeout=10)

    shown = wait_until(lambda: (r := _cli(capsys, config, "status")).returncode == 0 and "account Sim102" in r.stdout and r, timeout=10)
    text = shown.stdout
    assert "account Sim101: session P&L -200.00" in text and "position Long 4 MES 12-26" in text
    assert "rule daily-loss-limit: armed" in text and "$99800.00 to go (99.8% of the limit left)" in text
    assert "rule size-cap MES 12-26: armed" in text and "daemon: pid" in text
    view = json.loads(_cli(capsys, config, "status", "--json").stdout)
    assert [a["account"] for a in view["accounts"]] == ["Sim101", "Sim102"]
    assert view["daemon"]["running"] is True and view["health"]["stale"] is False

    locked = run_cli("lock", "Sim101", "--for", "30m", "--reason", "bad morning", "-c", str(config))  # the console script, once
    assert locked.returncode == 0 and locked.stdout.startswith("done: account Sim101 locked until"), locked
    paused = _cli(capsys, config, "pause", "size-cap", "--for", "1h", "--reason", "scaling in")
    assert paused.returncode == 0 and "paused until" in paused.stdout
    flattened = _cli(capsys, config, "flatten", "Sim102", "--reason", "enough")
    assert (flattened.returncode, flattened.stdout.strip()) == (0, "done: flattened Sim102")
    unlocked = _cli(capsys, config, "unlock", "Sim101", "--reason", "set by mistake")
    assert unlocked.returncode == 0 and "unlocked" in unlocked.stdout
    assert not sim.positions()  # the lock flattened Sim101, the command Sim102
    assert _cli(capsys, config, "flatten", "--all", "--reason", "x").returncode == 2  # --yes is required

    results = proc.wait_for("control_result", count=4)
    assert [(r["verb"], r["status"]) for r in results] == [("lock", "done"), ("pause", "done"), ("flatten", "done"), ("unlock", "done")]
    assert {c["user"] for c in proc.events("control")} == {pwd.getpwuid(os.getuid()).pw_name}
    audit = _cli(capsys, config, "audit", "--event", "control,control_result")
    assert audit.returncode == 0
    for needle in ("lock Sim101 until", "asked by", "bad morning", "pause size-cap", "flatten Sim102", "unlock Sim101",
                   "flatten done: flattened Sim102"):
        assert needle in audit.stdout, needle
    flattens = [r for r in sim.request_log() if r.method == "POST" and r.path.endswith("/positions/flatten")]
    assert sorted(r.path.split("/")[-3] for r in flattens) == ["Sim101", "Sim102"]
    assert not any(r.path.endswith("/v1/api/positions/flatten") for r in sim.request_log())
    assert proc.stop() == 0

    refused = _cli(capsys, config, "lock", "Sim101", "--reason", "x")
    assert refused.returncode == 1 and "no daemon is running" in refused.stderr and "nothing was done" in refused.stderr


def test_e2e_kill_9_mid_flatten_loses_nothing_and_doubles_nothing(tmp_path, sim_factory, riskd_factory, token):
    sim, server = sim_factory(SCENARIO)
    config = write_policy(tmp_path, server.base_url, RULES, poll_interval="500ms")
    proc = riskd_factory(config, token)
    proc.wait_for("started")
    wait_until(lambda: (tmp_path / "state" / "control.sock").exists() and len(sim.request_log()) >= 2, timeout=10)
    sim.inject(Fault("latency", match="POST */positions/flatten", ms=1500, count=1))  # applied 1.5 s after it arrives

    env = {k: v for k, v in os.environ.items() if k not in ("CROSSTRADE_TOKEN", "RISKD_CONFIG")}
    client = subprocess.Popen([str(RISKD), "flatten", "Sim101", "--reason", "get out", "-c", str(config)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(sim.in_progress, timeout=10, interval=0.005)  # the simulator holds the flatten
    proc.proc.send_signal(signal.SIGKILL)  # mid-command: the flatten is on the wire, its answer never comes
    proc.proc.wait(5)

    again = RiskdProcess(config, token)  # systemd's Restart=on-failure
    try:
        out, err = client.communicate(timeout=40)  # the client asks again, same id, and gets the outcome
        assert client.returncode == 0, (out, err)
        assert out.strip() == "done: flattened Sim101"
        polled = len(sim.request_log())
        wait_until(lambda: len(sim.request_log()) >= polled + 2, timeout=10)  # two more polls: nothing sent again
        flattens = [r for r in sim.request_log() if r.method == "POST" and r.path.endswith("/positions/flatten")]
        assert len(flattens) == 1
        assert {(p["account"]) for p in sim.positions()} == {"Sim102"}
        assert len(again.events("control")) == 1  # recorded once, by the first process
        results = again.events("control_result")
        assert [(r["verb"], r["status"]) for r in results] == [("flatten", "done")]
        resolved = again.events("action_resolved")  # the intent in flight, settled against the snapshot
        assert [r["verdict"].split(":")[0] for r in resolved] == ["done"] and resolved[0]["rule"].startswith("operator:")
    finally:
        again.stop()
