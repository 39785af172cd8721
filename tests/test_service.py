"""Running as a systemd service: the unit file (verify, security score) and the sd_notify protocol
spoken by the real `riskd run` to a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest

from conftest import RISKD, wait_until, write_policy
from riskd.sdnotify import Systemd

UNIT = Path(__file__).parent.parent / "systemd" / "riskd.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def _directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_declares_the_service_contract():
    d = _directives(UNIT.read_text())
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["WatchdogSec"] == ["30s"]
    assert d["ExecStartPre"] == ["/opt/riskd/bin/riskd check -c /etc/riskd/riskd.yaml"]
    assert d["ExecStart"] == ["/opt/riskd/bin/riskd run -c /etc/riskd/riskd.yaml"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["Restart"] == ["on-failure"] and d["RestartPreventExitStatus"] == ["78"]
    assert d["LoadCredential"] == ["crosstrade-token:/etc/riskd/crosstrade-token"]
    assert d["StateDirectory"] == d["LogsDirectory"] == d["ConfigurationDirectory"] == ["riskd"]
    assert "systemd-creds encrypt" in UNIT.read_text()


@needs_analyze
def test_unit_verify_is_clean(tmp_path):
    # The unit as shipped, with its install prefix pointed at this checkout's riskd (verify checks
    # that ExecStart= binaries exist; /opt/riskd/bin/riskd exists only on an installed VPS).
    unit = tmp_path / "riskd.service"
    unit.write_text(UNIT.read_text().replace("/opt/riskd/bin/riskd", str(RISKD)))
    result = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr


@needs_analyze
def test_unit_security_exposure_is_2_or_lower():
    result = subprocess.run([ANALYZE, "security", "--offline=true", str(UNIT)], capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for riskd\.service: (\d+\.\d+)", result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


# ---------------------------------------------------------------------------------------------
# sd_notify.


class NotifySocket:
    """A stand-in for systemd's notification socket: a bound AF_UNIX datagram socket."""

    def __init__(self, address: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.1)
        self.messages: list[dict[str, str]] = []

    def drain(self) -> list[dict[str, str]]:
        while True:
            try:
                raw = self.sock.recv(4096).decode()
            except (socket.timeout, BlockingIOError):
                return self.messages
            self.messages.append(dict(line.split("=", 1) for line in raw.splitlines() if "=" in line))

    def wait_for(self, key: str, value: str | None = None, timeout: float = 10.0, after: int = 0) -> dict[str, str]:
        def found():
            return next((m for m in self.drain()[after:] if key in m and (value is None or m[key] == value)), None)

        return wait_until(found, timeout)

    def close(self) -> None:
        self.sock.close()


def test_systemd_notifier_speaks_to_abstract_and_path_sockets(tmp_path):
    for address in (f"@riskd-test-{time.monotonic_ns()}", str(tmp_path / "notify.sock")):
        listener = NotifySocket(address)
        try:
            sd = Systemd({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000"})
            assert sd.enabled and sd.watchdog_interval == 2.0
            assert sd.ready("watching 1 account\nsecond line")
            assert sd.watchdog()
            assert listener.wait_for("READY") == {"READY": "1", "STATUS": "watching 1 account second line"}
            assert listener.wait_for("WATCHDOG") == {"WATCHDOG": "1"}
        finally:
            listener.close()
    quiet = Systemd({})
    assert not quiet.enabled and quiet.ready("x") is False  # outside systemd: a no-op
    assert Systemd({"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_interval is None  # not ours


def test_run_notifies_ready_watchdog_reload_and_stopping(tmp_path, sim_factory, token):
    sim, server = sim_factory({"accounts": [{"name": "Sim101", "positions": [{"instrument": "MES 12-26", "side": "long", "quantity": 1, "price": 6000.0}]}]})
    rules = [{"name": "cap", "when": {"position_pnl": {"below": -500}}, "then": {"close": "all"}}]
    config = write_policy(tmp_path, server.base_url, rules, poll_interval="200ms")
    listener = NotifySocket(str(tmp_path / "notify.sock"))
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "10000000", "CROSSTRADE_TOKEN": token, "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([str(RISKD), "run", "-c", str(config)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        ready = listener.wait_for("READY", "1")
        assert "1 accounts, 1 positions, 1 rules" in ready["STATUS"]
        n = len(listener.messages)
        listener.wait_for("WATCHDOG", "1", after=n)  # pinged by later ticks, not only at start
        wait_until(lambda: sum("WATCHDOG" in m for m in listener.drain()) >= 3, timeout=10)

        n = len(listener.messages)
        proc.send_signal(signal.SIGHUP)
        reloading = listener.wait_for("RELOADING", "1", after=n)
        assert int(reloading["MONOTONIC_USEC"]) > 0
        listener.wait_for("READY", "1", after=n)

        proc.send_signal(signal.SIGTERM)
        stopping = listener.wait_for("STOPPING", "1")
        assert "SIGTERM" in stopping["STATUS"]
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        listener.close()
    assert sim.request_log(), "riskd polled the simulator"


def test_watchdog_is_not_pinged_by_a_failing_tick(tmp_path, sim_factory, token):
    """A tick that raises (here: its state store is gone) must not feed the watchdog."""
    from riskd import config, rules as rules_mod
    from riskd.audit import AuditTrail
    from riskd.daemon import Daemon
    from riskd.tick import build_ticker
    from riskd.state import Store

    sim, server = sim_factory({"accounts": [{"name": "Sim101"}]})
    path = write_policy(tmp_path, server.base_url, [{"name": "cap", "when": {"account_pnl": {"below": -500}}, "then": {"flatten": True}}])
    settings = config.load(path)
    loaded, hashes = rules_mod.load(settings.rules, settings.zone)
    listener = NotifySocket(str(tmp_path / "notify.sock"))
    audit = AuditTrail(str(tmp_path / "audit.jsonl"), secrets=[token])
    store = Store(tmp_path / "state")
    ticker = build_ticker(settings, loaded, token, audit, dry_run=False, store=store)
    daemon = Daemon(settings, ticker, audit, hashes, systemd=Systemd({"NOTIFY_SOCKET": str(tmp_path / "notify.sock")}))
    try:
        daemon._safe_tick("poll")
        assert listener.wait_for("WATCHDOG", "1")
        n = len(listener.drain())
        store.close()  # the next tick cannot save its state
        daemon._safe_tick("poll")
        time.sleep(0.2)  # give a (wrong) datagram time to arrive
        assert listener.drain()[n:] == []
        assert [e for e in (tmp_path / "audit.jsonl").read_text().splitlines() if '"tick_failed"' in e]
    finally:
        ticker.client.close()
        audit.close()
        listener.close()


def test_check_exits_78_on_a_bad_config_so_systemd_does_not_restart(tmp_path):
    (tmp_path / "riskd.yaml").write_text("poll_intervall: 1s\n")
    result = subprocess.run([str(RISKD), "check", "-c", str(tmp_path / "riskd.yaml")], capture_output=True, text=True, timeout=30)
    assert result.returncode == 78 and "did you mean 'poll_interval'" in result.stderr


def test_console_log_is_json_on_stdout_with_a_summary_line(tmp_path, sim_factory, token):
    import json

    sim, server = sim_factory({"accounts": [{"name": "Sim101", "positions": [{"instrument": "MES 12-26", "side": "long", "quantity": 2, "price": 6000.0}]}]})
    config = write_policy(tmp_path, server.base_url, [{"name": "cap", "when": {"position_pnl": {"below": -500}}, "then": {"close": "all"}}],
                          poll_interval="200ms", summary_interval="1s")
    env = {"CROSSTRADE_TOKEN": token, "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([str(RISKD), "run", "-c", str(config)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        summary = None
        deadline = time.monotonic() + 15
        lines = []
        while summary is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break  # riskd exited
            lines.append(line)
            event = json.loads(line)  # every console line is one JSON object
            if event["event"] == "summary" and event["ticks"] > 0:
                summary = event
        assert summary is not None, lines
        assert {"ticks", "api_p50_ms", "api_p99_ms", "bucket", "accounts", "positions", "firings", "failures", "errors"} <= summary.keys()
        assert summary["positions"] == 1 and summary["accounts"] == 1 and summary["api_p50_ms"] > 0
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()
    assert token not in "".join(lines)


def test_metrics_port_in_use_is_logged_and_riskd_keeps_running(tmp_path, sim_factory, riskd_factory, token):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    try:
        sim, server = sim_factory({"accounts": [{"name": "Sim101"}]})
        config = write_policy(tmp_path, server.base_url, [{"name": "cap", "when": {"account_pnl": {"below": -500}}, "then": {"flatten": True}}],
                              metrics=f"127.0.0.1:{blocker.getsockname()[1]}")
        proc = riskd_factory(config, token)
        wait_until(lambda: "metrics_unavailable" in proc.output(), timeout=10)
        count = len(sim.request_log())
        wait_until(lambda: len(sim.request_log()) > count + 1, timeout=10)  # still polling
        assert proc.stop() == 0
    finally:
        blocker.close()


def test_watchdog_is_not_pinged_while_a_tick_hangs_in_a_trickled_body(tmp_path, token):
    """While a tick is stuck reading a trickled snapshot, no WATCHDOG=1 goes out (systemd's watchdog
    sees the hang); the tick ends at the request's 1 s deadline, and only then pings (an API error
    handled is a healthy tick)."""
    import threading

    from riskd.daemon import Daemon

    from harness import Rig, one_position
    from trickle import TrickleServer

    rig = Rig(tmp_path, token, one_position(), [], timeout=timedelta(seconds=1))
    listener = NotifySocket(str(tmp_path / "notify.sock"))
    try:
        daemon = Daemon(rig.settings, rig.ticker, rig.audit, {}, systemd=Systemd({"NOTIFY_SOCKET": str(tmp_path / "notify.sock")}))
        with TrickleServer(interval=0.1) as server:
            rig.ticker.client._http.base_url = server.base_url + "/"
            started = time.monotonic()
            tick = threading.Thread(target=daemon._safe_tick, args=("poll",))
            tick.start()
            assert server.trickling.wait(5)
            while True:
                seen = list(listener.drain())
                if not tick.is_alive():
                    break
                assert not any("WATCHDOG" in m for m in seen), "pinged while the tick hangs"  # all sent while it was alive
            took = time.monotonic() - started
        assert took < 2.0, took
        assert listener.wait_for("WATCHDOG", "1", timeout=2)
        assert rig.events("api_error")[0]["error"].startswith("deadline:")
    finally:
        listener.close()
        rig.close()
