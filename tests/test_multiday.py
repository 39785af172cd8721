"""Several sessions of two evaluation accounts, end to end from YAML through the simulator over HTTP
on one clock: session breaks, a restart, a day riskd was down. One account carries an end-of-day
trailing drawdown that freezes at start + 100, the other a weekly loss limit."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from conftest import run_cli, write_policy
from harness import Rig

from riskd import engine
from riskd.engine import State
from riskd.state import Store

NY = ZoneInfo("America/New_York")
START = datetime(2026, 11, 30, 10, 0, tzinfo=NY).astimezone(timezone.utc)  # Monday 10:00 New York
RULES = [
    {"name": "eod-trailing", "accounts": "EVAL1",
     "when": {"account_drawdown": {"limit": 2000, "metric": "balance", "trail": "end_of_day", "start": 50000, "stop_trailing_at": 50100}},
     "then": {"flatten": True}},
    {"name": "weekly-limit", "accounts": "EVAL2", "when": {"account_pnl": {"below": -2000, "period": "week"}}, "then": {"flatten": True}},
]
SCENARIO = {"accounts": [{"name": "EVAL1", "cash": 50000.0, "positions": []}, {"name": "EVAL2", "cash": 50000.0, "positions": []}],
            "prices": {"ES 12-26": 6000.0, "NQ 12-26": 21000.0}, "rate_limit": {"per_second": 3, "burst": 20}}


def at(day: int, hour: int, minute: int = 0) -> float:
    """Seconds from START to that New York wall time (2026-11-`day`, or December when day > 30)."""
    month, dom = (11, day) if day <= 30 else (12, day - 30)
    return (datetime(2026, month, dom, hour, minute, tzinfo=NY).astimezone(timezone.utc) - START).total_seconds()


def trade(rig: Rig, account: str, instrument: str, points: float) -> None:
    """One round trip of 1 contract, entered at the market and exited `points` away."""
    price = {"ES 12-26": 6000.0, "NQ 12-26": 21000.0}[instrument]
    rig.sim.open_position(account, instrument, "long", 1, price=price)
    rig.sim.open_position(account, instrument, "short", 1, price=price + points)


def rows(rig: Rig) -> dict[str, dict]:
    ticker = rig.ticker
    assert ticker is not None and ticker.last_snapshot is not None
    now = rig.clock.utc()
    out = engine.explain(ticker.rules, ticker.state, ticker.last_snapshot, now, rig.settings.engine)
    return {r["target"]: r["conditions"][0] for r in out}


def test_weekly_limit_and_a_frozen_end_of_day_floor_across_sessions_a_restart_and_a_day_riskd_was_down(tmp_path):
    rig = Rig(tmp_path, "tok-multiday-123456", SCENARIO, RULES, start=START)
    try:
        sim = rig.sim
        # Monday: EVAL1 +1,500 (ES, 30 points), EVAL2 -800 (NQ, 40 points)
        trade(rig, "EVAL1", "ES 12-26", 30)
        trade(rig, "EVAL2", "NQ 12-26", -40)
        rig.tick_at(at(30, 10, 5))
        sim.end_session()
        # Tuesday: EVAL1 +700 (closes at 52,200: the floor would be 50,200, it freezes at 50,100); EVAL2 -700
        rig.tick_at(at(30, 18, 5))
        assert rows(rig)["EVAL1"]["threshold"] == "$2000.00 below the end-of-day high (high 51500.00, floor 49500.00, freezes at 50100.00)"
        trade(rig, "EVAL1", "ES 12-26", 14)
        trade(rig, "EVAL2", "NQ 12-26", -35)
        rig.tick_at(at(31, 11, 0))
        rig.stop_riskd()  # a restart mid-session
        rig.start_riskd()
        rig.tick_at(at(31, 11, 1))
        assert rig.posts() == []
        sim.end_session()
        # Wednesday: riskd is down all day. EVAL1 -500 (closes at 51,700), EVAL2 -300 (the week at -1,800)
        rig.stop_riskd()
        trade(rig, "EVAL1", "ES 12-26", -10)
        trade(rig, "EVAL2", "NQ 12-26", -15)
        sim.end_session()
        # Thursday: riskd is back
        rig.clock.advance_to(at(33, 9, 30))
        rig.start_riskd()
        rig.tick()
        view = rows(rig)
        assert view["EVAL1"]["threshold"] == "$2000.00 below the end-of-day high (high 52200.00, floor 50100.00, frozen at 50100.00)"
        assert view["EVAL1"]["distance"] == "$1600.00 to go" and view["EVAL2"]["seen"] == -1800
        first, gap = rig.events("period_gap")  # Monday: no earlier record (weeklyProfitLoss used); Thursday: Wednesday unseen
        assert (first["session"], first["since"], first["source"]) == ("2026-11-30", None, "weeklyProfitLoss")
        assert (gap["account"], gap["period"], gap["since"], gap["unseen"], gap["source"]) == ("eval2", "week", "2026-12-01", -300.0,
                                                                                               "balance")
        # EVAL2 loses 201 more: -2,001 this week, with a session P&L of only -201
        sim.open_position("EVAL2", "NQ 12-26", "long", 1, price=21000.0)
        sim.set_price("NQ 12-26", 20989.95)
        rig.tick_at(at(33, 9, 31))
        (flat2,) = rig.posts("/positions/flatten")
        assert "/EVAL2/" in flat2.path
        (fired,) = rig.events("fired", rule="weekly-limit")
        assert fired["inputs"]["period_pnl"] == -2001.0 and fired["inputs"]["gap"]["counted"] == -300.0
        # EVAL1 gives back 1,500 open: balance 50,200 is above the frozen floor; 1,600 reaches it
        sim.open_position("EVAL1", "ES 12-26", "long", 1, price=6000.0)
        sim.set_price("ES 12-26", 5970.0)
        rig.tick_at(at(33, 10, 0))
        assert len(rig.posts("/positions/flatten")) == 1
        sim.set_price("ES 12-26", 5968.0)
        rig.tick_at(at(33, 10, 1))
        flats = rig.posts("/positions/flatten")
        assert len(flats) == 2 and "/EVAL1/" in flats[1].path
        (eod,) = rig.events("fired", rule="eod-trailing")
        assert eod["inputs"]["floor"] == 50100.0 and eod["inputs"]["high"] == 52200.0 and eod["inputs"]["frozen"] is True
        rig.tick_at(at(33, 10, 2))
        assert len(rig.posts("/positions/flatten")) == 2  # never twice in a session
        sim.end_session()
        # Friday: both limits still hold (the week is at -2,001, the balance at the floor): each account
        # is kept flat once more in the new session
        rig.tick_at(at(34, 10, 0))
        assert sorted(r.path.split("/")[4] for r in rig.posts("/positions/flatten")[2:]) == ["EVAL1", "EVAL2"]
        sim.end_session(new_week=True)
        # the next week: EVAL2's week starts over on Sunday 18:00; EVAL1's floor is still frozen at 50,100
        trade(rig, "EVAL2", "NQ 12-26", -25)
        rig.tick_at(at(36, 18, 5))
        view = rows(rig)
        assert view["EVAL2"]["seen"] == -500 and view["EVAL1"]["threshold"].endswith("floor 50100.00, frozen at 50100.00)")
        assert [r.path.split("/")[4] for r in rig.posts("/positions/flatten")[4:]] == ["EVAL1"]
        store_dir = rig.settings.state_dir
    finally:
        rig.close()
    state: State = Store.peek(store_dir)
    assert state.marks["eval1"][1] == 52200.0 and sorted(state.ledger["eval2"]) == ["2026-11-30", "2026-12-01", "2026-12-03",
                                                                                   "2026-12-04", "2026-12-07"]


def test_riskd_once_shows_the_high_water_mark_the_floor_and_the_distance(tmp_path, sim_factory, token):
    sim, server = sim_factory({"accounts": [{"name": "EVAL1", "cash": 51000.0, "positions": []}]})
    weekly = {**RULES[1], "accounts": "EVAL1"}
    config = write_policy(tmp_path, server.base_url, [RULES[0], weekly])
    store = Store(tmp_path / "state")
    store.save(State(marks={"eval1": [53000.0, 52500.0]}), START)  # what earlier sessions left
    store.close()
    result = run_cli("once", "-c", str(config), "--dry-run", env={"CROSSTRADE_TOKEN": token})
    assert result.returncode == 0, result.stderr
    assert ("account_drawdown=balance 51000.00  ($2000.00 below the end-of-day high (high 52500.00, floor 50100.00, frozen at 50100.00))"
            "  $900.00 to go") in result.stdout
    # no record before this session: the week before it is the account's weeklyProfitLoss (0 in the simulator), and it says so
    assert ("account_pnl=0.00  (below -2000.00 this week)  $2000.00 to go (counts 0.00 riskd did not see, from weeklyProfitLoss)"
            in result.stdout), result.stdout
