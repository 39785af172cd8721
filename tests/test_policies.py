"""Every shipped policy (rules/*.yaml) is exercised like code: a scenario per file tells the story a
trader expects, tick by tick, through the pure engine. A shipped file without a scenario fails."""

from __future__ import annotations

from pathlib import Path

import pytest
from rulekit import NY, Harness, acct, bodies, fires, ny, pos, seconds

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
    assert h.tick(ny(2026, 11, 27, 16, 57, 59), *accounts) == []
    at = h.tick(ny(2026, 11, 27, 16, 58), *accounts)
    assert sorted((d.account, o.body().get("instrument")) for d in at for o in d.orders) == [("Sim101", None), ("Sim102", None)]
    late = h.tick(ny(2026, 11, 27, 16, 59), acct("Sim101", pos("MES 12-26")), acct("Sim102"))  # re-entry before the break
    assert bodies(late) == [("flatten", {"instrument": "MES 12-26"})]
    ended = h.tick(ny(2026, 11, 27, 18, 1), acct("Sim101", pos("MES 12-26")))  # new session: free to trade
    assert {d.kind for d in ended} == {"lock_ended"} and not [o for d in ended for o in d.orders]
    assert h.tick(ny(2026, 11, 28, 16, 58), acct("Sim101", pos("MES 12-26"))) == []  # Saturday


def scenario_eod_trim() -> None:
    h = shipped("eod-trim.yaml")
    accounts = (acct("Sim101", pos("MES 12-26", 3), pos("ES 12-26", 1)),)
    assert h.tick(ny(2026, 11, 27, 15, 54, 59), *accounts) == []
    assert bodies(h.tick(ny(2026, 11, 27, 15, 55), *accounts)) == [
        ("close", {"instrument": "MES 12-26", "percent": 0.5}), ("cancel_orders", {"instrument": "MES 12-26"}),
        ("close", {"instrument": "ES 12-26", "percent": 0.5}), ("cancel_orders", {"instrument": "ES 12-26"})]
    assert h.tick(ny(2026, 11, 27, 15, 55, 1), acct("Sim101", pos("MES 12-26", 1))) == []  # once per day
    assert h.tick(ny(2026, 11, 28, 15, 55), acct("Sim101", pos("MES 12-26", 1))) == []  # weekend


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


SCENARIOS = {
    "daily-loss-limit.yaml": scenario_daily_loss_limit,
    "eod-flatten.yaml": scenario_eod_flatten,
    "eod-trim.yaml": scenario_eod_trim,
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
