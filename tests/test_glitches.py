"""Bad snapshots never re-arm a rule, a timed firing reaches every target in scope, implausible sizes
never size a close, and one broken rule never silences the others (issue: never wrong on a bad day).

Each case goes from the raw JSON of GET /accounts/snapshot (as a glitchy bridge sends it) through
`parse_snapshot` and the pure engine, acknowledging every firing as the API would."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from riskd import engine
from riskd.crosstrade import parse_snapshot
from riskd.engine import State
from riskd.model import Decision

from rulekit import SETTINGS, policy, rule

START = datetime(2026, 11, 27, 15, 0, tzinfo=timezone.utc)  # Friday 10:00 New York


def position(quantity: int = 8, pnl: float = -1200.0, side: str = "Long", instrument: str = "MES 12-26") -> dict[str, Any]:
    return {"type": "NinjaTrader.Cbi.Position", "account": "Sim101", "instrument": instrument, "instrumentType": "Future",
            "marketPosition": side, "quantity": quantity, "averagePrice": 6000.0, "marketPrice": 5970.0,
            "unrealizedProfitLoss": pnl}


def entry(name: str = "Sim101", *positions: dict[str, Any], realized: float = 0.0) -> dict[str, Any]:
    unrealized = sum(p["unrealizedProfitLoss"] for p in positions)
    return {"account": {"name": name, "item": {"realizedProfitLoss": realized, "unrealizedProfitLoss": unrealized,
                                               "commission": 0.0, "netLiquidation": 50000.0 + realized + unrealized}},
            "positions": list(positions)}


def body(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"type": "snapshot", "accounts": list(entries)}


class Run:
    """The engine fed raw snapshot bodies, one per second; every fire decision is acknowledged."""

    def __init__(self, text: str):
        self.rules = policy(text)
        self.state = State()
        self.now = START
        self.fired: list[Decision] = []
        self.others: list[Decision] = []

    def tick(self, raw: dict[str, Any]) -> list[Decision]:
        snapshot = parse_snapshot(raw, self.now)
        decisions, self.state = engine.evaluate(self.rules, self.state, snapshot, self.now, SETTINGS)
        fires = [d for d in decisions if d.kind == "fire"]
        for d in fires:
            self.state = engine.acknowledge(self.state, d, self.now)
        self.fired += fires
        self.others += [d for d in decisions if d.kind != "fire"]
        self.now += timedelta(seconds=1)
        return fires


HALF = rule("half", "position_pnl: {below: -500}", "close: 50%")


def _mutate(kind: str) -> dict[str, Any]:
    """The snapshot after the first 50 % close (4 of 8 left, still below -500), glitched one way."""
    good = body(entry("Sim101", position(4, -600.0)))
    raw = copy.deepcopy(good)
    acct, pos = raw["accounts"][0], raw["accounts"][0]["positions"][0]
    if kind == "positions null":
        acct["positions"] = None
    elif kind == "positions missing":
        del acct["positions"]
    elif kind == "Flat with a quantity":
        pos["marketPosition"] = "Flat"
    elif kind == "no quantity":
        del pos["quantity"]
    elif kind == "no marketPosition":
        del pos["marketPosition"]
    elif kind == "lower-case long":
        pos["marketPosition"] = "long"
    elif kind == "one tick of Short":
        pos["marketPosition"] = "Short"
    elif kind == "instrument in lower case":
        pos["instrument"] = "mes 12-26"
    elif kind == "account name in upper case":
        acct["account"]["name"] = "SIM101"
    elif kind == "positions empty for one tick":
        acct["positions"] = []
    elif kind == "null P&L":
        pos["unrealizedProfitLoss"] = None
    elif kind == "quantity as a string":
        pos["quantity"] = "4"
    elif kind == "absurd quantity":
        pos["quantity"] = 10**30
    return raw


GLITCHES = ["positions null", "positions missing", "Flat with a quantity", "no quantity", "no marketPosition",
            "lower-case long", "one tick of Short", "instrument in lower case", "account name in upper case",
            "positions empty for one tick", "null P&L", "quantity as a string", "absurd quantity"]


@pytest.mark.parametrize("glitch", GLITCHES)
def test_glitch_one_bad_snapshot_never_sends_a_second_half_close(glitch):
    run = Run(HALF)
    assert [o.body() for d in run.tick(body(entry("Sim101", position(8, -1200.0)))) for o in d.orders] == [
        {"instrument": "MES 12-26", "percent": 0.5}]
    good = body(entry("Sim101", position(4, -600.0)))
    assert run.tick(good) == []  # 4 left, still below -500: fired once, not again
    run.tick(_mutate(glitch))
    for _ in range(3):
        run.tick(good)
    assert len(run.fired) == 1, f"{glitch}: {[d.key for d in run.fired]}"


def test_glitch_a_real_reversal_is_a_new_target_one_snapshot_later():
    run = Run(HALF)
    run.tick(body(entry("Sim101", position(8, -1200.0))))
    short = body(entry("Sim101", position(4, -600.0, side="Short")))
    assert run.tick(short) == []  # not yet confirmed
    assert [d.instrument for d in run.tick(short)] == ["MES 12-26"]  # confirmed: the new position is a new target


def test_glitch_a_position_gone_for_two_snapshots_then_reopened_is_a_new_target():
    run = Run(HALF)
    run.tick(body(entry("Sim101", position(8, -1200.0))))
    run.tick(body(entry("Sim101")))
    run.tick(body(entry("Sim101")))
    assert len(run.tick(body(entry("Sim101", position(2, -700.0))))) == 1


def test_glitch_unknown_account_keeps_its_markers_and_is_not_evaluated():
    run = Run(rule("dll", "account_pnl: {below: -1000}", "flatten: true"))
    losing = body(entry("Sim101", position(2, -200.0), realized=-900.0))
    assert len(run.tick(losing)) == 1
    null_figures = copy.deepcopy(losing)
    null_figures["accounts"][0]["account"]["item"]["realizedProfitLoss"] = None  # a null is not a zero P&L
    assert run.tick(null_figures) == []
    assert run.tick(losing) == []  # never seen above the limit: no second flatten
    assert len(run.fired) == 1


def test_plausibility_a_jump_in_quantity_never_sizes_a_reduce():
    run = Run(rule("keep5", "position_size: {above: 5}", "reduce_to: 5"))
    four = body(entry("Sim101", position(4, 0.0)))
    run.tick(four)
    assert run.tick(body(entry("Sim101", position(9, 0.0)))) == []  # 4 -> 9 in one snapshot: not trusted yet
    run.tick(four)
    assert run.fired == []
    assert parse_snapshot(body(entry("Sim101", position(10**15, 0.0))), START).unknown == {"sim101"}


def test_plausibility_a_confirmed_increase_is_reduced_to_the_cap():
    run = Run(rule("keep5", "position_size: {above: 5}", "reduce_to: 5"))
    run.tick(body(entry("Sim101", position(4, 0.0))))
    nine = body(entry("Sim101", position(9, 0.0)))
    run.tick(nine)
    assert [o.body() for d in run.tick(nine) for o in d.orders] == [{"instrument": "MES 12-26", "quantity": 4}]


def test_plausibility_close_n_never_asks_for_more_than_is_open():
    run = Run(rule("close50", "position_pnl: {below: -500}", "close: 50"))
    assert [o.body() for d in run.tick(body(entry("Sim101", position(1, -600.0)))) for o in d.orders] == [
        {"instrument": "MES 12-26", "quantity": 1}]


AT_CLOSE = rule("eod", 'at: "10:00:05"', "close: all")


def test_timed_an_account_missing_at_the_instant_is_closed_when_seen_within_grace():
    run = Run(AT_CLOSE)
    both = body(entry("Sim101", position(2, 0.0)), entry("Sim102", position(3, 0.0)))
    for _ in range(5):
        run.tick(both)  # 10:00:00 .. 10:00:04
    assert [d.account for d in run.tick(body(entry("Sim101", position(2, 0.0))))] == ["Sim101"]  # 10:00:05, Sim102 missing
    null = body(entry("Sim101"), entry("Sim102", position(3, 0.0)))
    null["accounts"][1]["positions"] = None
    assert run.tick(null) == []  # still not visible
    assert [d.account for d in run.tick(body(entry("Sim101"), entry("Sim102", position(3, 0.0))))] == ["Sim102"]
    assert [d.account for d in run.fired] == ["Sim101", "Sim102"]


def test_timed_an_account_unreadable_since_start_is_closed_when_readable_within_grace():
    """riskd has never seen Sim102 well-formed this session (it started during the glitch): the
    occurrence still waits for it, it does not count as 'no target in scope'."""
    run = Run(AT_CLOSE)
    glitched = body(entry("Sim101", position(2, 0.0)), entry("Sim102", position(3, 0.0)))
    glitched["accounts"][1]["positions"] = None
    for _ in range(6):
        run.tick(glitched)  # 10:00:00 .. 10:00:05, Sim102 unreadable throughout
    assert [d.account for d in run.fired] == ["Sim101"]
    run.tick(body(entry("Sim101"), entry("Sim102", position(3, 0.0))))
    assert [d.account for d in run.fired] == ["Sim101", "Sim102"]


def test_timed_an_account_never_seen_within_grace_is_audited_missed():
    run = Run(AT_CLOSE)
    both = body(entry("Sim101", position(2, 0.0)), entry("Sim102", position(3, 0.0)))
    for _ in range(5):
        run.tick(both)
    only = body(entry("Sim101", position(2, 0.0)))
    for _ in range(SETTINGS.misfire_grace.seconds + 2):
        run.tick(only)
    missed = [d for d in run.others if d.kind == "missed"]
    assert len(missed) == 1 and "sim102" in missed[0].reason and "not visible" in missed[0].reason
    assert [d.account for d in run.fired] == ["Sim101"]


def test_isolation_a_rule_that_raises_is_reported_and_the_others_still_act(monkeypatch):
    rules = policy(rule("broken", "position_pnl: {below: -500}", "close: 50%") + rule("cap", "position_pnl: {below: -500}", "close: all"))
    broken = rules[0]

    class Exploding:  # a threshold of -500 whose test raises
        below, above = -500.0, None

        def holds(self, value: float) -> bool:
            raise ZeroDivisionError("a bug in a condition")

    rules[0] = type(broken)(**{**{f: getattr(broken, f) for f in broken.__slots__}, "conditions": (("position_pnl", Exploding()),)})
    decisions, _ = engine.evaluate(rules, State(), parse_snapshot(body(entry("Sim101", position(2, -600.0))), START), START, SETTINGS)
    assert [(d.kind, d.rule) for d in decisions] == [("fire", "cap"), ("rule_failed", "broken")]
    assert "ZeroDivisionError" in decisions[1].reason


def test_state_written_by_the_previous_riskd_keeps_its_markers_under_case_insensitive_keys():
    old = {"session": "2026-11-27", "fired": {"half|Sim101|MES 12-26|2026-11-27T15:00:00+00:00": "2026-11-27T15:00:00+00:00"},
           "first_seen": {"sim101|MES 12-26|Long": "2026-11-27T15:00:00+00:00"}, "known": {}, "peaks": {}}
    run = Run(HALF)
    run.rules = policy(HALF)
    run.state = State.from_json(old)
    run.state = engine.replace(run.state, known={r.name: [r.digest, "2026-11-27T14:00:00+00:00"] for r in run.rules})
    assert run.tick(body(entry("Sim101", position(4, -600.0)))) == []  # the upgrade does not re-arm it


def test_timed_an_account_the_rule_names_is_waited_for_even_if_riskd_never_saw_it():
    """riskd's first readable snapshot comes after the instant (its first polls failed) and lacks the
    account the rule names: the occurrence waits for it, and closes it when it shows within grace."""
    run = Run(rule("eod", 'at: "10:00:00"', "close: all", accounts="Sim102"))
    run.now += timedelta(seconds=2)  # 10:00:02: the polls at 10:00:00 and :01 failed
    assert run.tick(body(entry("Sim101", position(2, 0.0)))) == []  # Sim102 missing, never seen
    assert [d.account for d in run.tick(body(entry("Sim101"), entry("Sim102", position(3, 0.0))))] == ["Sim102"]
