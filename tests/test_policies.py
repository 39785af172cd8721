"""Every shipped policy (rules/*.yaml) is exercised like code: a scenario per file tells the story a
trader expects, tick by tick, through the pure engine. A shipped file without a scenario fails."""

from __future__ import annotations

from pathlib import Path

import pytest
from rulekit import NY, Harness, acct, bodies, fires, minutes, ny, pos, seconds

from riskd import rules

EXAMPLES = Path(rules.__file__).parent / "examples"


def shipped(name: str) -> Harness:
    loaded, _ = rules.load(EXAMPLES / name, NY)
    return Harness(loaded)


def scenario_daily_loss_limit() -> None:
    h = shipped("daily-loss-limit.yaml")
    t = ny(2026, 11, 27, 11, 0)
    assert h.tick(t, acct("Sim101", pos(pnl=-300), realized=-600), acct("Sim102", realized=-500)) == []  # -900: fine
    hit = h.tick(t + seconds(1), acct("Sim101", pos(pnl=-401), realized=-600), acct("Sim102", pos(), realized=-500))
    assert bodies(hit) == [("flatten", {})] and hit[0].account == "Sim101"  # only the account over the limit
    h.tick(t + seconds(2), acct("Sim101", realized=-1001), acct("Sim102", pos(), realized=-500))
    reentry = h.tick(t + seconds(3), acct("Sim101", pos("NQ 12-26", 1), realized=-1001), acct("Sim102", pos(), realized=-500))
    assert bodies(reentry) == [("flatten", {"instrument": "NQ 12-26"})] and reentry[0].account == "Sim101"
    ended = h.tick(ny(2026, 11, 27, 18, 0), acct("Sim101", pos("NQ 12-26", 1)), acct("Sim102", pos()))  # next session
    assert [(d.kind, d.account) for d in ended] == [("lock_ended", "sim101")] and not [o for d in ended for o in d.orders]


def scenario_eod_flatten() -> None:
    h = shipped("eod-flatten.yaml")
    accounts = (acct("Sim101", pos("MES 12-26"), pos("ES 12-26")), acct("Sim102", pos("NQ 12-26")))
    assert h.tick(ny(2026, 12, 4, 16, 57, 59), *accounts) == []
    at = h.tick(ny(2026, 12, 4, 16, 58), *accounts)  # two minutes before the 16:00 CT close
    assert sorted((d.account, o.body().get("instrument")) for d in at for o in d.orders) == [("Sim101", None), ("Sim102", None)]
    late = h.tick(ny(2026, 12, 4, 16, 59), acct("Sim101", pos("MES 12-26")), acct("Sim102"))  # re-entry before the break
    assert bodies(late) == [("flatten", {"instrument": "MES 12-26"})]
    ended = h.tick(ny(2026, 12, 4, 18, 1), acct("Sim101", pos("MES 12-26")))  # new session: free to trade
    assert {d.kind for d in ended} == {"lock_ended"} and not [o for d in ended for o in d.orders]
    assert h.tick(ny(2026, 12, 5, 16, 58), acct("Sim101", pos("MES 12-26"))) == []  # Saturday
    h = shipped("eod-flatten.yaml")
    assert h.tick(ny(2026, 12, 24, 13, 12, 59), *accounts) == []
    assert len(h.tick(ny(2026, 12, 24, 13, 13), *accounts)) == 2  # 12:15 CT early close - 2 min
    christmas = h.tick(ny(2026, 12, 25, 16, 58), *accounts)  # Christmas Day: no session (the locks of the 24th end: audited)
    assert {d.kind for d in christmas} <= {"lock_ended"} and not [o for d in christmas for o in d.orders]


def scenario_eod_trim() -> None:
    h = shipped("eod-trim.yaml")
    accounts = (acct("Sim101", pos("MES 12-26", 3), pos("ES 12-26", 1)),)
    assert h.tick(ny(2026, 12, 4, 15, 54, 59), *accounts) == []
    assert bodies(h.tick(ny(2026, 12, 4, 15, 55), *accounts)) == [
        ("close", {"instrument": "MES 12-26", "percent": 0.5}), ("cancel_orders", {"instrument": "MES 12-26"}),
        ("close", {"instrument": "ES 12-26", "percent": 0.5}), ("cancel_orders", {"instrument": "ES 12-26"})]
    assert h.tick(ny(2026, 12, 4, 15, 55, 1), acct("Sim101", pos("MES 12-26", 1))) == []  # once per day
    assert h.tick(ny(2026, 12, 5, 15, 55), acct("Sim101", pos("MES 12-26", 1))) == []  # weekend
    early = h.tick(ny(2026, 11, 27, 12, 10), acct("Sim101", pos("MES 12-26", 2)))  # day after Thanksgiving: 12:15 CT - 65 min
    assert bodies(early)[0] == ("close", {"instrument": "MES 12-26", "percent": 0.5})
    assert h.tick(ny(2026, 11, 27, 15, 55), acct("Sim101", pos("MES 12-26", 1))) == []  # not again at the regular time


def scenario_loss_cap() -> None:
    h = shipped("loss-cap.yaml")
    t = ny(2026, 11, 27, 11, 0)
    book = lambda mes: acct("Sim101", pos("MES 12-26", 2, mes), pos("MESX 12-26", 1, -900), pos("ES 12-26", 1, -5000))  # noqa: E731
    assert h.tick(t, book(-500.0)) == []  # at the cap is not past it; MESX and ES are not MES
    assert bodies(h.tick(t + seconds(1), book(-500.01))) == [("close", {"instrument": "MES 12-26"})]
    assert h.tick(t + seconds(2), book(-700)) == []  # the same position never twice


def scenario_size_cap() -> None:
    h = shipped("size-cap.yaml")
    t = ny(2026, 11, 27, 11, 0)
    decisions = h.tick(t, acct("Sim101", pos("MES 12-26", 12), pos("MNQ 12-26", 10), pos("ES 12-26", 7), pos("NQ 12-26", 40)))
    assert bodies(decisions) == [("close", {"instrument": "MES 12-26", "quantity": 2}), ("close", {"instrument": "ES 12-26", "quantity": 2})]
    assert h.tick(t + seconds(1), acct("Sim101", pos("MES 12-26", 10), pos("ES 12-26", 5))) == []
    again = h.tick(t + seconds(2), acct("Sim101", pos("MES 12-26", 15), pos("ES 12-26", 5)))  # added after being capped
    assert bodies(again) == [("close", {"instrument": "MES 12-26", "quantity": 5})]


def scenario_trading_window() -> None:
    h = shipped("trading-window.yaml")
    early = ny(2026, 11, 27, 9, 29, 50)
    assert h.tick(early, acct("Sim101", pos())) == []
    assert h.tick(early + seconds(4), acct("Sim101", pos())) == []
    assert bodies(h.tick(early + seconds(5), acct("Sim101", pos()))) == [("close", {"instrument": "MES 12-26"})]  # 5 s outside
    assert h.tick(ny(2026, 11, 27, 12, 0), acct("Sim101", pos("ES 12-26"))) == []  # inside the window
    close = ny(2026, 11, 27, 15, 59)
    assert h.tick(close, acct("Sim101", pos("ES 12-26"))) == []
    assert fires(h.tick(close + seconds(5), acct("Sim101", pos("ES 12-26")))) == [("outside-trading-window", "Sim101", "ES 12-26")]
    assert h.tick(ny(2026, 11, 28, 20, 0), acct("Sim101", pos("NQ 12-26"))) == []  # weekends are not covered by `days`


def scenario_trailing_drawdown() -> None:
    h = shipped("trailing-drawdown.yaml")
    t = ny(2026, 11, 27, 11, 0)
    for i, pnl in enumerate([200, 499, 0, -250]):  # never reached +500: not armed
        assert h.tick(t + seconds(i), acct("Sim101", realized=pnl)) == []
    assert h.tick(t + seconds(10), acct("Sim101", pos(pnl=300), realized=450)) == []  # peak 750
    assert h.tick(t + seconds(11), acct("Sim101", pos(pnl=1), realized=450)) == []  # 451: gave back 299
    hit = h.tick(t + seconds(12), acct("Sim101", pos(pnl=0), realized=450), acct("Sim102", realized=-100))
    assert bodies(hit) == [("flatten", {})] and hit[0].account == "Sim101"
    assert hit[0].inputs["peak"] == 750 and hit[0].inputs["floor"] == 450


def scenario_evaluation_account() -> None:
    from dataclasses import replace

    from riskd import trades

    h = shipped("evaluation-account.yaml")
    t = ny(2026, 11, 30, 10, 0)  # Monday
    # daily loss: -900 net of commission is the stop, $100 inside the firm's $1,000
    assert h.tick(t, acct("EVAL1", pos(pnl=-400), realized=-480, commission=20)) == []  # -900 is not below -900
    hit = h.tick(t + seconds(1), acct("EVAL1", pos(pnl=-401), realized=-480, commission=20), acct("Sim101", realized=-5000))
    assert fires(hit) == [("eval-daily-loss", "EVAL1", None)] and bodies(hit) == [("flatten", {})]  # Sim101 is not an EVAL account
    assert bodies(h.tick(t + seconds(2), acct("EVAL1", pos("NQ 12-26", 1), realized=-881, commission=20))) == [
        ("flatten", {"instrument": "NQ 12-26"})]  # locked for the session
    # weekly: Monday closed at -881 (gross); Tuesday -700; riskd was down Wednesday (-300)
    assert bodies(h.tick(ny(2026, 12, 1, 10, 0), acct("EVAL1", cash=49099, realized=-700))) == []  # -1,581 this week (the lock ended: audited)
    hit = h.tick(ny(2026, 12, 3, 10, 0), acct("EVAL1", cash=48099, realized=-120))  # -1,581 - 300 unseen - 120 = -2,001
    assert fires(hit) == [("eval-weekly-loss", "EVAL1", None)] and hit[0].inputs["gap"]["unseen"] == -300
    assert fires(h.tick(ny(2026, 12, 4, 10, 0), acct("EVAL1", cash=47979))) == [("eval-weekly-loss", "EVAL1", None)]  # kept flat all week
    assert bodies(h.tick(ny(2026, 12, 7, 10, 0), acct("EVAL1", cash=47979))) == []  # a new week (the weekly lock ended: audited)
    # loss streak: round trips as the tick counts them from executions (riskd.trades)
    entry, start, k = None, ny(2026, 12, 7, 11, 0), 0
    for result in (-50, -25, 10, -40, -60, -35):  # the third loser in a row fires
        k += 2
        before, after = acct("EVAL1", pos("MES 12-26", 1), cash=47979), acct("EVAL1", cash=47979 + result)
        fill = {"id": f"x{k}", "epoch": int((start + seconds(k)).timestamp() * 1000), "account": "EVAL1", "instrument": "MES 12-26",
                "marketPosition": "Short", "quantity": 1, "price": 6000.0 + result / 5}
        entry, _ = trades.fold(entry, "2026-12-07", before, after, start + seconds(k - 1), start + seconds(k), {"executions": [fill]})
        h.state = replace(h.state, trades={"eval1": entry})
        decisions = h.tick(start + seconds(k), after)
        assert fires(decisions) == ([("eval-loss-streak", "EVAL1", None)] if result == -35 else []), (result, entry)


def scenario_evaluation_guards() -> None:
    h = shipped("evaluation-guards.yaml")
    t = ny(2026, 11, 30, 10, 0)  # Monday
    # the contract cap counts months and micros together: 4 NQ 12-26 + 10 MNQ (1.0) + 2 NQ 03-27 are 7 NQ
    book = (pos("NQ 12-26", 4), pos("MNQ 12-26", 10), pos("NQ 03-27", 2))
    h.tick(t, acct("EVAL1", *book[:2]))
    capped = h.tick(t + seconds(1), acct("EVAL1", *book))  # the newest (NQ 03-27) confirmed on a second snapshot
    capped = capped or h.tick(t + seconds(2), acct("EVAL1", *book))
    assert bodies(capped) == [("close", {"instrument": "NQ 03-27", "quantity": 2})]  # the newest give up the excess: 5 NQ left
    assert not fires(h.tick(t + seconds(3), acct("EVAL1", *book[:2])))
    # a stop-out closes the position and locks the account for 30 minutes
    t = ny(2026, 11, 30, 11, 0)
    stop = h.tick(t, acct("EVAL1", pos("ES 12-26", 1, pnl=-320)))
    assert fires(stop) == [("eval-stop-out-cooldown", "EVAL1", "ES 12-26")] and bodies(stop) == [("close", {"instrument": "ES 12-26"})]
    h.tick(t + seconds(1), acct("EVAL1", realized=-320))
    reentry = [h.tick(t + minutes(10) + seconds(i), acct("EVAL1", pos("MES 12-26", 1), realized=-320)) for i in range(2)]
    assert [("flatten", {"instrument": "MES 12-26"})] in [bodies(d) for d in reentry]  # inside the cooldown
    after = [h.tick(t + minutes(31) + seconds(i), acct("EVAL1", pos("MES 12-26", 1), realized=-320)) for i in range(3)]
    assert not [b for d in after for b in bodies(d)]  # after it: free to trade
    # warnings: an alert at -$700 of the day, sends nothing, once
    t = ny(2026, 12, 1, 10, 0)
    warned = h.tick(t, acct("EVAL1", realized=-690, commission=20))
    assert fires(warned) == [("eval-daily-warning", "EVAL1", None)] and bodies(warned) == [] and warned[0].action == "alert"
    assert not fires(h.tick(t + seconds(1), acct("EVAL1", realized=-750, commission=20)))  # edge-triggered


def scenario_eod_trailing_balance() -> None:
    h = shipped("eod-trailing-balance.yaml")
    assert h.tick(ny(2026, 11, 30, 10, 0), acct("EVAL1", pos(pnl=1500), cash=50000)) == []  # open profit does not move an EOD high
    assert h.tick(ny(2026, 11, 30, 15, 0), acct("EVAL1", cash=50000, realized=1200)) == []  # closes at 51,200
    assert h.tick(ny(2026, 12, 1, 10, 0), acct("EVAL1", cash=51200, realized=-2399)) == []  # floor 48,800
    hit = h.tick(ny(2026, 12, 1, 10, 1), acct("EVAL1", cash=51200, realized=-2400))
    assert fires(hit) == [("eval-eod-trailing", "EVAL1", None)] and hit[0].inputs["floor"] == 48800
    h.tick(ny(2026, 12, 2, 10, 0), acct("EVAL1", cash=48800 + 4000))  # closed at 52,800: the floor freezes at 50,200
    assert h.tick(ny(2026, 12, 3, 10, 0), acct("EVAL1", cash=55000, realized=-4799)) == []  # 50,201
    hit = h.tick(ny(2026, 12, 3, 10, 1), acct("EVAL1", cash=55000, realized=-4800))
    assert hit[0].inputs["floor"] == 50200 and hit[0].inputs["frozen"] is True and hit[0].inputs["high"] == 55000


SCENARIOS = {
    "daily-loss-limit.yaml": scenario_daily_loss_limit,
    "eod-flatten.yaml": scenario_eod_flatten,
    "eod-trim.yaml": scenario_eod_trim,
    "eod-trailing-balance.yaml": scenario_eod_trailing_balance,
    "evaluation-account.yaml": scenario_evaluation_account,
    "evaluation-guards.yaml": scenario_evaluation_guards,
    "loss-cap.yaml": scenario_loss_cap,
    "size-cap.yaml": scenario_size_cap,
    "trading-window.yaml": scenario_trading_window,
    "trailing-drawdown.yaml": scenario_trailing_drawdown,
}


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.y*ml")))
def test_shipped_policy_scenario_behaves_as_documented(name):
    assert name in SCENARIOS, f"rules/{name} is shipped without a scenario test: add one to SCENARIOS"
    SCENARIOS[name]()


def test_shipped_policies_are_at_least_the_documented_set():
    assert len(SCENARIOS) >= 6 and set(SCENARIOS) <= {p.name for p in EXAMPLES.glob("*.yaml")}


def test_shipped_policies_load_together_without_name_clashes():
    loaded, files = rules.load(EXAMPLES, NY)
    assert len(files) == len(SCENARIOS) and len({r.name for r in loaded}) == len(loaded)
