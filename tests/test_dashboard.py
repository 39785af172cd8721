"""The live dashboard (riskd/dashboard.py): its view of riskd's in-memory state through the real
Ticker against the simulator over HTTP on the harness clock; its HTTP routes and access rules; the
page rendered in headless Chromium (a screenshot); and a real `riskd run` whose page shows a change
in the simulator within two poll intervals."""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import struct
import time
import urllib.error
import urllib.request
import zlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from chromium import Chromium
from conftest import wait_until, write_policy
from harness import Rig
from riskd import config, trail
from riskd.dashboard import Dashboard, serve
from riskd.errors import ConfigError
from riskd.redact import Redactor

ARTIFACTS = Path(os.environ.get("RISKD_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "build" / "test-artifacts"))

SCENARIO: dict[str, Any] = {
    "rate_limit": None,
    "accounts": [
        {"name": "Sim101", "positions": [{"instrument": "MES 12-26", "side": "long", "quantity": 4, "price": 6000.0},
                                         {"instrument": "ES 12-26", "side": "long", "quantity": 2, "price": 6000.0}]},
        {"name": "Sim102", "positions": [{"instrument": "NQ 12-26", "side": "long", "quantity": 3, "price": 21000.0}]},
        {"name": "Apex-7", "positions": [{"instrument": "MNQ 12-26", "side": "short", "quantity": 10, "price": 21000.0}]},
    ],
    "prices": {"MES 12-26": 6000.0, "ES 12-26": 6000.0, "NQ 12-26": 21000.0, "MNQ 12-26": 21000.0},
}
RULES = [
    {"name": "mes-loss-cap", "instruments": "MES", "when": {"position_pnl": {"below": -500}}, "then": {"close": "all"}},
    {"name": "daily-loss-limit", "when": {"account_pnl": {"below": -1000}}, "then": {"flatten": True, "lock": True}},
    {"name": "trailing-drawdown", "accounts": "Sim102", "when": {"account_drawdown": {"limit": 300, "after": 500}},
     "then": {"flatten": True}},
]


def _view(rig: Rig, dash: Dashboard, t: float) -> dict[str, Any]:
    rig.tick_at(t)
    dash.on_tick()
    return dash.view()


def _rows(view: dict[str, Any], rule: str, account: str) -> list[dict[str, Any]]:
    return [r for a in view["accounts"] if a["account"] == account for r in a["rules"] if r["rule"] == rule]


def _account(view: dict[str, Any], name: str) -> dict[str, Any]:
    return next(a for a in view["accounts"] if a["account"] == name)


@pytest.fixture
def rig(tmp_path: Path, token: str):
    rig = Rig(tmp_path, token, SCENARIO, RULES, timeout=timedelta(seconds=2))  # a loaded machine must not time out a poll
    yield rig
    rig.close()


def test_view_has_the_pnl_so_far_distances_rule_states_locks_and_what_each_close_closed(rig: Rig):
    dash = Dashboard(rig.ticker, redactor=Redactor([rig.token]))
    rig.audit.observers.append(dash.on_audit)
    _view(rig, dash, 0.0)
    rig.sim.set_price("MES 12-26", 5990.0)  # 4 x $5 x -10 = -200
    view = _view(rig, dash, 1.0)
    sim101 = _account(view, "Sim101")
    assert [p[1] for p in sim101["series"]] == [0.0, -200.0] and sim101["pnl"] == -200.0
    (cap,) = _rows(view, "mes-loss-cap", "Sim101")
    bar = cap["conditions"][0]
    assert (cap["state"], bar["gap"], bar["gap_percent"], bar["used"]) == ("armed", 300.0, 60.0, 0.4)  # $300 of $500 to go
    (daily,) = _rows(view, "daily-loss-limit", "Sim101")
    assert (daily["conditions"][0]["gap"], daily["conditions"][0]["used"]) == (800.0, 0.2)

    rig.sim.set_price("MES 12-26", 5974.0)  # -520: the loss cap closes all 4
    rig.sim.set_price("MNQ 12-26", 21055.0)  # short 10 MNQ x $2 x -55 = -1,100: Apex-7 is flattened and locked
    view = _view(rig, dash, 2.0)
    rig.settle_server()
    view = _view(rig, dash, 3.0)
    assert [p[1] for p in _account(view, "Sim101")["series"]] == [0.0, -200.0, -520.0, -520.0]
    closes = {a["rule"]: a for a in view["actions"]}
    assert closes["mes-loss-cap"]["ok"] and [c["text"] for c in closes["mes-loss-cap"]["closed"]] == ["4 of Long 4 MES 12-26 at -520.00"]
    assert [c["text"] for c in closes["daily-loss-limit"]["closed"]] == ["10 of Short 10 MNQ 12-26 at -1,100.00"]
    assert _rows(view, "mes-loss-cap", "Sim101") == []  # nothing left in scope: the MES position is closed
    apex = _account(view, "Apex-7")
    assert [(x["by"], x["until"]) for x in apex["locks"]] == [("daily-loss-limit", "2026-03-10T18:00:00-04:00")]  # 18:00 New York, in the rules' zone
    assert [r["state"] for r in _rows(view, "daily-loss-limit", "Apex-7")] == ["locked"]
    assert [r["state"] for r in _rows(view, "daily-loss-limit", "Sim101")] == ["armed"]
    assert view["health"]["stale"] is False and view["health"]["firings"] == 2
    assert (view["poll_interval_s"], view["timezone"], view["session"]) == (1.0, "America/New_York", "2026-03-10")
    assert rig.token.encode() not in dash.encoded()[1]


def test_view_shows_an_operators_pause_lock_and_commands_with_who_asked(tmp_path: Path, token: str):
    from test_control import Controlled

    c = Controlled(tmp_path, token, SCENARIO, RULES)
    try:
        dash = Dashboard(c.rig.ticker)
        c.rig.audit.observers.append(dash.on_audit)
        c.rig.tick_at(1)
        until = (c.rig.clock.utc() + timedelta(minutes=30)).isoformat()
        assert c.ask("pause", rule="trailing-drawdown", until=until)["status"] == "done"
        assert c.ask("lock", account="Sim102", until=until, reason="tilt")["status"] == "done"
        view = dash.view()
    finally:
        c.close()
    assert [r["state"] for r in _rows(view, "trailing-drawdown", "Sim102")] == ["paused"]
    assert [(p["rule"], p["until"]) for p in view["paused"]] == [("trailing-drawdown", until)]
    assert [(x["by"], x["until"]) for x in _account(view, "Sim102")["locks"]] == [("operator:lock", until)]
    assert [(x["verb"], x["status"], x["reason"]) for x in view["commands"]] == [("lock", "done", "tilt"), ("pause", "done", "test")]
    assert all(x["user"] for x in view["commands"])  # the Unix user who asked


def test_after_a_restart_the_chart_starts_from_the_sessions_samples_in_the_trail(rig: Rig):
    for minute, price in enumerate((6000.0, 5995.0, 5990.0)):  # one sample a minute per account
        rig.sim.set_price("MES 12-26", price)
        rig.tick_at(60.0 * minute)
    rig.stop_riskd()  # riskd restarts: its in-memory points are gone
    rig.start_riskd()
    dash = Dashboard(rig.ticker)
    rig.sim.set_price("MES 12-26", 5985.0)
    rig.tick_at(180.0)
    dash.on_tick()
    assert dash.seed(trail.read([rig.audit_path])) == 9  # 3 samples before the live point, of each of the 3 accounts
    assert [p[1] for p in _account(dash.view(), "Sim101")["series"]] == [0.0, -100.0, -200.0, -300.0]


def _get(url: str, **headers: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except urllib.error.URLError:  # not listening (yet)
        return 0, b""


def test_every_route_needs_the_token_answers_loopback_names_only_and_changes_nothing(rig: Rig):
    access = secrets.token_hex(16)
    dash = Dashboard(rig.ticker, redactor=Redactor([rig.token, access]), token=access)
    rig.tick_at(0.0)
    dash.on_tick()
    server = serve("127.0.0.1", 0, dash)
    try:
        base = server.url
        assert _get(base)[0] == 401 and _get(base + "state.json?token=wrong")[0] == 401 and _get(base + "events")[0] == 401
        status, page = _get(base + f"?token={access}")
        assert status == 200 and b"EventSource" in page
        assert b"http://" not in page and b"https://" not in page and b" src=" not in page  # no external asset
        status, body = _get(base + "state.json", Authorization=f"Bearer {access}")
        assert status == 200 and [a["account"] for a in json.loads(body)["accounts"]] == ["Sim101", "Sim102", "Apex-7"]
        assert access.encode() not in body and rig.token.encode() not in body
        assert _get(base + f"?token={access}", Host="attacker.example:80")[0] == 403  # a rebound DNS name
        assert _get(base + f"?token={access}", Host=f"localhost:{server.server_address[1]}")[0] == 200  # an SSH tunnel's
        request = urllib.request.Request(base + f"state.json?token={access}", data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 405
        with urllib.request.urlopen(base + f"events?token={access}", timeout=5) as stream:
            assert stream.headers["Content-Type"] == "text/event-stream"
            first = stream.readline()
            rig.tick_at(1.0)
            dash.on_tick()  # the next tick is pushed
            stream.readline()
            second = stream.readline()
        first_view, second_view = json.loads(first[6:]), json.loads(second[6:])
        assert first_view["health"]["ticks"] == 1 and second_view["health"]["ticks"] == 2
        # the whole chart once, then only each account's newest point: an open page does not reload the session every tick
        assert len(first_view["accounts"][0]["series"]) == 1 and "series" not in second_view["accounts"][0]
        assert second_view["accounts"][0]["tail"] == [[int(rig.ticker.last_snapshot.taken_at.timestamp() * 1000), 0.0]]
    finally:
        server.stop()


def test_dashboard_address_and_token_are_checked_at_start(tmp_path: Path):
    path = tmp_path / "riskd.yaml"
    path.write_text("crosstrade: {base_url: sim}\ndashboard: localhost\n")
    with pytest.raises(ConfigError) as bad:
        config.load(path)
    assert "riskd.yaml:2:12" in str(bad.value) and "127.0.0.1:9466" in str(bad.value)
    path.write_text("crosstrade: {base_url: sim}\ndashboard: 9466\n")
    assert config.load(path).dashboard == ("127.0.0.1", 9466)
    (tmp_path / "dashboard-token").write_text("short\n")
    with pytest.raises(ConfigError, match="at least 16"):
        config.read_dashboard_token({"CREDENTIALS_DIRECTORY": str(tmp_path)})
    (tmp_path / "dashboard-token").write_text("a" * 24 + "\n")
    assert config.read_dashboard_token({"CREDENTIALS_DIRECTORY": str(tmp_path)}) == "a" * 24
    assert config.read_dashboard_token({}) is None
    from riskd.cli import _parser

    assert _parser().parse_args(["run", "--sim", "--dashboard", "9467"]).dashboard == ("127.0.0.1", 9467)
    with pytest.raises(SystemExit):
        _parser().parse_args(["run", "--dashboard", "nope"])


def _not_blank(png: bytes, size: tuple[int, int]) -> None:
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == size
    at, idat = 8, b""
    while at < len(png):
        length = struct.unpack(">I", png[at:at + 4])[0]
        if png[at + 4:at + 8] == b"IDAT":
            idat += png[at + 8:at + 8 + length]
        at += 12 + length
    assert len(set(zlib.decompress(idat)[::7])) > 20


def test_page_renders_a_morning_in_headless_chromium(rig: Rig, tmp_path: Path):
    """Two and a half hours of a session, a tick every minute of harness time; the screenshot lands
    in build/test-artifacts/riskd-dashboard.png (docs/dashboard.png is one)."""
    dash = Dashboard(rig.ticker, redactor=Redactor([rig.token]))
    rig.audit.observers.append(dash.on_audit)
    path = {0: (6000.0, 6000.0, 21000.0, 21000.0), 1800: (6004.0, 6003.0, 21005.0, 21010.0),
            3600: (5996.0, 5998.0, 21010.0, 21030.0), 5400: (5983.0, 6004.0, 21006.0, 21045.0),
            7200: (5974.0, 6006.0, 21007.5, 21055.0), 9000: (5970.0, 6005.0, 21008.0, 21040.0)}
    steps = sorted(path)
    for t in range(0, 9001, 60):
        below = max(s for s in steps if s <= t)
        above = min((s for s in steps if s > t), default=below)
        share = (t - below) / (above - below) if above != below else 0.0
        for instrument, a, b in zip(("MES 12-26", "ES 12-26", "NQ 12-26", "MNQ 12-26"), path[below], path[above]):
            rig.sim.set_price(instrument, round((a + (b - a) * share) * 4) / 4)
        rig.tick_at(float(t))
        dash.on_tick()
    rig.settle_server()
    rig.tick_at(9030.0)
    dash.on_tick()
    server = serve("127.0.0.1", 0, dash)
    browser = Chromium(tmp_path / "chromium", 1280, 1400)
    try:
        browser.open(server.url)
        wait_until(lambda: browser.evaluate("document.body.dataset.ticks") == str(rig.ticker.health.ticks), timeout=15)
        text = browser.evaluate("document.body.innerText")
        assert re.search(r"closed 4 of Long 4 MES 12-26 at -5\d\d\.\d\d", text) and "LOCKED until" in text
        assert browser.evaluate("document.querySelectorAll('svg.chart polyline').length") == 3
        assert browser.evaluate("document.querySelectorAll('.bar i').length") >= 4
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        _not_blank(browser.screenshot(ARTIFACTS / "riskd-dashboard.png"), (1280, 1400))
    finally:
        browser.close()
        server.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_change_in_the_simulator_shows_on_the_page_within_two_poll_intervals(tmp_path, sim_factory, riskd_factory, token):
    sim, server = sim_factory({k: v for k, v in SCENARIO.items() if k != "rate_limit"} | {"rate_limit": None})
    port = _free_port()
    access = secrets.token_hex(16)
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "dashboard-token").write_text(access + "\n")
    proc = riskd_factory(write_policy(tmp_path, server.base_url, RULES, poll_interval="1s", dashboard=f"127.0.0.1:{port}"), token,
                         env={"CREDENTIALS_DIRECTORY": str(creds)})
    url = f"http://127.0.0.1:{port}/"
    wait_until(lambda: proc.proc.poll() is None and _get(url + f"state.json?token={access}")[0] == 200, timeout=15, interval=0.1)
    browser = Chromium(tmp_path / "chromium")
    try:
        browser.open(url + f"?token={access}")
        pnl = "document.querySelector('[data-pnl=\"Sim101\"]')?.textContent"
        wait_until(lambda: browser.evaluate(pnl) == "0.00", timeout=15)
        changed = time.monotonic()
        sim.set_price("MES 12-26", 5990.0)  # Sim101: 4 x $5 x -10 = -200
        wait_until(lambda: browser.evaluate(pnl) == "-200.00", timeout=5, interval=0.02)
        shown_after = time.monotonic() - changed
        stopping = time.monotonic()
        assert proc.stop() == 0  # with the page still open: its event stream does not hold up the stop
        stop_took = time.monotonic() - stopping
    finally:
        browser.close()
    assert shown_after <= 2 * 1.0, f"the page showed the change after {shown_after:.2f}s"
    assert stop_took < 5.0, f"SIGTERM took {stop_took:.2f}s with the page open"
    assert access not in proc.audit_path.read_text() and access not in proc.output()
