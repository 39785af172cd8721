"""The Ticker's polling under faults: back-off, a refused token, staleness and recovery, health."""

from __future__ import annotations

from datetime import timedelta

import pytest
import yaml

from riskd.sim import Fault
from riskd.state import Store

from conftest import run_cli
from harness import Rig, one_position

CAP = [{"name": "cap", "instruments": "MES", "when": {"position_pnl": {"below": -100}}, "then": {"close": "all"}}]


@pytest.fixture
def rig(tmp_path, token):
    rig = Rig(tmp_path, token, one_position(market=6000.0), CAP)
    yield rig
    rig.close()


def _polls(rig: Rig) -> list[float]:
    return [r.t for r in rig.sim.request_log() if r.method == "GET"]


def test_tick_backs_off_polling_after_errors_but_never_beyond_two_intervals(rig):
    rig.sim.inject(Fault("status", status=500, match="GET /accounts/snapshot", start=0, duration=10))
    for t in range(0, 20):
        rig.tick_at(t * 0.5)  # the daemon's scheduler wakes the ticker often; the back-off decides
    polls = _polls(rig)
    gaps = [b - a for a, b in zip(polls, polls[1:])]
    failing = [g for a, g in zip(polls, gaps) if a < 10]
    assert all(0.4 <= g <= 2.05 for g in failing), gaps
    assert len(polls) < 20  # fewer polls than wake-ups while it fails
    assert rig.events("api_error")[0]["retry"].startswith("next poll in")


def test_tick_refused_token_is_one_loud_error_and_a_poll_a_minute_not_a_storm(tmp_path, token, capsys):
    rig = Rig(tmp_path, token, one_position(), CAP)
    try:
        rig.sim.inject(Fault("status", status=401, body={"success": False, "error": "unauthorized", "detail": "Invalid or missing API key"},
                             match="GET /accounts/snapshot", count=3))
        for t in range(0, 200):
            rig.tick_at(t)
        polls = _polls(rig)
        assert [round(t / 60) for t in polls[:4]] == [0, 1, 2, 3]  # refused at 0, 60, 120; accepted at 180
        assert len([t for t in polls if t < 180]) == 3
        assert all(0.9 < b - a < 1.1 for a, b in zip(polls[3:], polls[4:]))  # then once per tick again
        errors = rig.events("api_error")
        assert [e["status"] for e in errors] == [401, 401, 401]
        assert "the token was refused" in errors[0]["retry"] and "60s" in errors[0]["retry"]
        out = capsys.readouterr().out
        assert out.count("auth_refused") == 1  # one loud error, later refusals are plain warnings
        assert token not in out
    finally:
        rig.close()


def test_tick_no_successful_poll_for_stale_after_is_audited_once_and_recovery_too(rig, tmp_path, token):
    rig.tick_at(0)
    rig.server.refuse()
    try:
        for t in range(1, 12):
            rig.tick_at(t)
        stale = rig.events("stale")
        assert len(stale) == 1
        assert stale[0]["stale_after_s"] == 5.0 and stale[0]["last_error"].startswith("ConnectError (http://127.0.0.1:")
        assert rig.ticker.health.stale and rig.ticker.health.stale_since is not None
        health = Store.peek_health(tmp_path / "state")
        assert health["stale"] is True and health["last_error"].startswith("ConnectError (http://127.0.0.1:")

        # `riskd once` shows it (a dry look: it does not need riskd's lock)
        config = tmp_path / "riskd.yaml"
        config.write_text(yaml.safe_dump({"crosstrade": {"base_url": rig.server.base_url, "timeout": "500ms"}, "rules": "rules/",
                                          "state_dir": "state/", "audit_log": "once-audit.jsonl"}))
        shown = run_cli("once", "-c", str(config), "--dry-run", env={"CROSSTRADE_TOKEN": token})
        assert shown.returncode == 1
        assert "STALE since" in shown.stdout and "ConnectError" in shown.stdout
        assert "no usable snapshot from the API: ConnectError" in shown.stderr
    finally:
        rig.server.resume()
    rig.tick_at(13)
    rig.tick_at(14)
    recovered = rig.events("recovered")
    assert len(recovered) == 1 and recovered[0]["stale_for_s"] >= 1
    assert Store.peek_health(tmp_path / "state")["stale"] is False
    assert len(rig.events("stale")) == 1


def test_tick_stale_is_seen_while_backing_off_not_only_on_the_next_failed_poll(tmp_path, token):
    rig = Rig(tmp_path, token, one_position(market=6000.0), CAP, stale_after=timedelta(seconds=3))
    rig.tick_at(0)
    rig.sim.inject(Fault("status", status=429, retry_after=30, match="GET /accounts/snapshot", count=1))
    rig.tick_at(1)
    for t in range(2, 6):
        rig.tick_at(t)
    assert len(_polls(rig)) == 2  # Retry-After honoured up to its 5 s cap: no poll in between
    assert len(rig.events("stale")) == 1  # yet stale after 3 s without a successful poll
    rig.tick_at(7)
    rig.tick_at(8)
    assert len(_polls(rig)) == 4  # the 30 s hint was cut to 5 s: polling runs again
    rig.close()


def test_tick_malformed_and_unexpected_snapshots_are_audited_never_a_crash(rig):
    rig.sim.inject(Fault("malformed", match="GET /accounts/snapshot", count=1))
    rig.sim.inject(Fault("status", status=200, body={"accounts": [{"account": {"name": "Sim101"}, "positions": [{"instrument": "MES 12-26", "quantity": "lots"}]}]},
                         match="GET /accounts/snapshot", count=1))
    rig.sim.inject(Fault("status", status=200, body=["not", "a", "snapshot"], match="GET /accounts/snapshot", count=1))
    results = [rig.tick_at(t) for t in range(0, 8)]
    errors = rig.events("api_error")
    assert [e["error"] for e in errors[:3]] == [
        "unreadable response body",
        "unreadable account entries: Sim101: position 'MES 12-26': quantity is not a whole number (lots)",
        "unexpected snapshot: snapshot without an 'accounts' list",
    ]
    assert results[-1] is not None


def test_tick_after_stop_is_requested_sends_nothing_new(rig):
    rig.sim.set_price("MES 12-26", 5900.0)
    rig.ticker.stopping.set()
    assert rig.tick_at(0) is None
    assert rig.sim.request_log() == []


def test_tick_health_is_written_at_most_every_few_seconds(rig, tmp_path):
    for t in range(0, 13):
        rig.tick_at(t)
    health = Store.peek_health(tmp_path / "state")
    assert 13 - 6 <= health["polls_ok"] <= 13 and health["stale"] is False  # never older than 5 s (+1 tick)
    assert rig.ticker.health.last_ok - rig.clock.start >= timedelta(seconds=12)


def test_console_says_what_a_firing_closed_and_marks_a_dry_run(tmp_path, token):
    from structlog.testing import capture_logs

    rules = [{**CAP[0], "name": "live"}, {**CAP[0], "name": "rehearsal", "instruments": "ES", "dry_run": True}]
    scenario = one_position(market=5974.0, extra=[{"name": "Sim102", "positions": [
        {"instrument": "ES 12-26", "side": "long", "quantity": 2, "price": 6000.0}]}])
    scenario["prices"]["ES 12-26"] = 5990.0
    rig = Rig(tmp_path, token, scenario, rules)
    try:
        with capture_logs() as logs:
            rig.tick_at(1)
    finally:
        rig.close()
    said = {(e["event"], e["rule"]): e for e in logs if e["event"] in ("fired", "action")}
    assert said[("action", "live")]["result"] == "closed 4 of Long 4 MES 12-26 at -520.00"
    assert "dry_run" not in said[("fired", "live")]
    assert said[("fired", "rehearsal")]["dry_run"] == "decided and audited, nothing will be sent"
    assert said[("action", "rehearsal")]["result"] == (
        'dry run, nothing sent: would POST accounts/Sim102/positions/close {"instrument": "ES 12-26"}')
