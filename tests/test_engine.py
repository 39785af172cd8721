"""The pure engine: every condition and action (tables), and the firing rules of SPEC §3
"When a rule fires" — edges, re-arming, reopened positions, `for`, timed occurrences, locks,
severity arbitration, the session boundary and reloads. All with injected instants."""

from __future__ import annotations

import ast
from datetime import datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo
from pathlib import Path

import pytest
from rulekit import CHICAGO, MORNING, NY, SETTINGS, Harness, acct, bodies, fires, ny, pos, rule, seconds

from riskd import engine
from riskd.engine import EngineSettings
from riskd.model import Severity

# ---------------------------------------------------------------------------------------------
# Conditions: one row per threshold edge. (when, account as the API shows it, fires?)

CONDITION_TABLE = [
    ("position_pnl: {below: -500}", acct("Sim101", pos(pnl=-500.01)), True),
    ("position_pnl: {below: -500}", acct("Sim101", pos(pnl=-500.0)), False),
    ("position_pnl: {above: 300}", acct("Sim101", pos(pnl=300.5)), True),
    ("position_pnl: {above: 300}", acct("Sim101", pos(pnl=300.0)), False),
    ("position_size: {above: 10}", acct("Sim101", pos(quantity=11)), True),
    ("position_size: {above: 10}", acct("Sim101", pos(quantity=11, side="Short")), True),
    ("position_size: {above: 10}", acct("Sim101", pos(quantity=10)), False),
    ("account_pnl: {below: -1000}", acct("Sim101", pos(pnl=-401), realized=-600), True),
    ("account_pnl: {below: -1000}", acct("Sim101", pos(pnl=-400), realized=-600), False),
    ("account_pnl: {below: -1000, basis: realized}", acct("Sim101", pos(pnl=900), realized=-1001), True),
    ("account_pnl: {below: -1000, basis: realized}", acct("Sim101", pos(pnl=-5000), realized=-999), False),
    ("account_pnl: {below: -1000, basis: unrealized}", acct("Sim101", pos(pnl=-1001), realized=500), True),
    ("account_pnl: {below: -1000, net_of_commission: true}", acct("Sim101", realized=-950, commission=60), True),
    ("account_pnl: {below: -1000}", acct("Sim101", realized=-950, commission=60), False),
    ("account_pnl: {above: 2000}", acct("Sim101", pos(pnl=1500), realized=501), True),
    ("account_pnl: {above: 2000, basis: realized}", acct("Sim101", pos(pnl=1500), realized=501), False),
    ("account_drawdown: {limit: 300}", acct("Sim101", realized=-300), True),  # peak 0: a static $300 floor
    ("account_drawdown: {limit: 300}", acct("Sim101", realized=-299.99), False),
    ("account_drawdown: {limit: 50%}", acct("Sim101", realized=0), False),  # N% of a zero peak is no limit yet
]


@pytest.mark.parametrize(("when", "account", "expected"), CONDITION_TABLE)
def test_condition_threshold_edges_fire_exactly_past_the_threshold(when, account, expected):
    h = Harness(rule("r", when, "flatten: true"))
    assert bool(fires(h.tick(MORNING, account))) is expected


def test_condition_position_age_fires_once_older_than_the_limit():
    h = Harness(rule("old", "position_age: {above: 30m}"))
    t0 = MORNING
    assert fires(h.tick(t0, acct("Sim101", pos()))) == []  # first seen now
    assert fires(h.tick(t0 + timedelta(minutes=30), acct("Sim101", pos()))) == []
    assert fires(h.tick(t0 + timedelta(minutes=30, seconds=1), acct("Sim101", pos()))) == [("old", "Sim101", "MES 12-26")]


# The CrossTrade account-manager example: after $100, trailing 95 %; a $125 peak stops out at $6.25.
@pytest.mark.parametrize(("peak", "then_pnl", "expected"), [
    (125.0, 6.25, True),
    (125.0, 6.26, False),
    (99.0, -500.0, False),  # never reached the activation level: not armed
    (100.0, 5.0, True),
])
def test_condition_drawdown_percent_of_peak_matches_the_crosstrade_example(peak, then_pnl, expected):
    h = Harness(rule("dd", 'account_drawdown: {limit: "95%", after: 100}', "flatten: true"))
    assert fires(h.tick(MORNING, acct("Sim101", realized=peak))) == []
    assert bool(fires(h.tick(MORNING + seconds(1), acct("Sim101", realized=then_pnl)))) is expected


def test_condition_drawdown_dollars_trails_the_session_peak():
    h = Harness(rule("dd", "account_drawdown: {limit: 300, after: 500}", "flatten: true"))
    path = [(0, False), (499, False), (150, False), (650, False), (351, False), (350, True)]  # peak 499: not armed; then 650
    for i, (pnl, expected) in enumerate(path):
        assert bool(fires(h.tick(MORNING + seconds(i), acct("Sim101", realized=pnl)))) is expected, (i, pnl)


# Clock conditions, with days and zones. 2026-11-27 is a Friday, 2026-11-28 a Saturday.
CLOCK_TABLE = [
    ('between: ["09:30", "16:00"]', ny(2026, 11, 27, 9, 29, 59), False),
    ('between: ["09:30", "16:00"]', ny(2026, 11, 27, 9, 30), True),
    ('between: ["09:30", "16:00"]', ny(2026, 11, 27, 15, 59, 59), True),
    ('between: ["09:30", "16:00"]', ny(2026, 11, 27, 16, 0), False),
    ('between: ["09:30", "16:00"]', ny(2026, 11, 28, 10, 0), False),  # Saturday: not a weekday
    ('between: ["09:30", "16:00"], days: daily', ny(2026, 11, 28, 10, 0), True),
    # a window that wraps midnight belongs to the day it opens on
    ('between: ["18:00", "02:00"], days: [fri]', ny(2026, 11, 27, 23, 0), True),
    ('between: ["18:00", "02:00"], days: [fri]', ny(2026, 11, 28, 1, 59, 59), True),
    ('between: ["18:00", "02:00"], days: [fri]', ny(2026, 11, 28, 2, 0), False),
    ('between: ["18:00", "02:00"], days: [fri]', ny(2026, 11, 27, 1, 0), False),  # Thursday's window
    ('outside: ["09:30", "16:00"]', ny(2026, 11, 27, 8, 0), True),
    ('outside: ["09:30", "16:00"]', ny(2026, 11, 27, 10, 0), False),
    ('outside: ["09:30", "16:00"]', ny(2026, 11, 28, 8, 0), False),  # days: weekdays by default
    ('between: ["08:30", "15:00"], timezone: America/Chicago', ny(2026, 11, 27, 9, 30), True),
    ('between: ["08:30", "15:00"], timezone: America/Chicago', ny(2026, 11, 27, 16, 0), False),
]


@pytest.mark.parametrize(("when", "now", "expected"), CLOCK_TABLE)
def test_condition_clock_windows_hold_in_the_rule_zone_on_the_rule_days(when, now, expected):
    h = Harness(rule("w", when, "flatten: true"))
    assert bool(fires(h.tick(now, acct("Sim101", pos())))) is expected


def test_condition_derived_money_is_audited_in_cents_while_the_check_uses_the_exact_sum():
    # -1000.1 + -99.7 - 0.62 is -1100.4199999999998 in floating point: a person reads -1100.42
    h = Harness(rule("day", "account_pnl: {below: -1100, net_of_commission: true}", "flatten: true", accounts="Sim101")
                + rule("giveback", "account_drawdown: {limit: 1000.3}", "flatten: true", accounts="Sim102"))
    decisions = h.tick(MORNING, acct("Sim101", pos(), realized=-1000.1, unrealized=-99.7, commission=0.62),
                       acct("Sim102", pos(), realized=-1000.1, unrealized=-99.7))
    seen = {d.rule: d.inputs for d in decisions if d.kind == "fire"}
    assert seen["day"]["account_pnl"] == -1100.42
    assert (seen["giveback"]["account_pnl"], seen["giveback"]["peak"], seen["giveback"]["floor"]) == (-1099.8, 0.0, -1000.3)


def test_condition_for_requires_the_conditions_to_hold_continuously():
    h = Harness(rule("held", "position_pnl: {below: -500}, for: 3s"))
    losing, fine = acct("Sim101", pos(pnl=-600)), acct("Sim101", pos(pnl=-100))
    assert fires(h.tick(MORNING, losing)) == []
    assert fires(h.tick(MORNING + seconds(2), losing)) == []
    assert fires(h.tick(MORNING + seconds(2.5), fine)) == []  # a good tick resets the hold
    assert fires(h.tick(MORNING + seconds(3), losing)) == []
    assert fires(h.tick(MORNING + seconds(5.9), losing)) == []
    decisions = h.tick(MORNING + seconds(6), losing)
    assert fires(decisions) == [("held", "Sim101", "MES 12-26")]
    assert decisions[0].inputs["held_s"] == 3.0


def test_condition_at_fires_at_the_wall_clock_second_on_the_rule_days_only():
    h = Harness(rule("trim", 'at: "15:55"', "close: 50%"))
    account = acct("Sim101", pos())
    assert fires(h.tick(ny(2026, 11, 27, 15, 54, 59), account)) == []
    assert fires(h.tick(ny(2026, 11, 27, 15, 55), account)) == [("trim", "Sim101", "MES 12-26")]
    assert fires(h.tick(ny(2026, 11, 28, 15, 55), account)) == []  # Saturday


# ---------------------------------------------------------------------------------------------
# Actions: the API calls each `then` sends for a 7-lot MES position (plus a 3-lot ES one).

ACTION_TABLE = [
    ("close: all", [("close", {"instrument": "MES 12-26"})]),
    ("close: 100%", [("close", {"instrument": "MES 12-26"})]),
    ("close: 50%", [("close", {"instrument": "MES 12-26", "percent": 0.5})]),
    ("close: 2", [("close", {"instrument": "MES 12-26", "quantity": 2})]),
    ("reduce_to: 5", [("close", {"instrument": "MES 12-26", "quantity": 2})]),
    ("reduce_to: 7", []),  # not larger than 5: nothing to do
    ("close: 50%, cancel_orders: true", [("close", {"instrument": "MES 12-26", "percent": 0.5}),
                                          ("cancel_orders", {"instrument": "MES 12-26"})]),
    ("reduce_to: 5, cancel_orders: true", [("close", {"instrument": "MES 12-26", "quantity": 2}),
                                            ("cancel_orders", {"instrument": "MES 12-26"})]),
    ("flatten: true", [("flatten", {"instrument": "MES 12-26"})]),  # a position condition: per position
]


@pytest.mark.parametrize(("then", "expected"), ACTION_TABLE)
def test_action_sends_the_documented_request_per_matched_position(then, expected):
    h = Harness(rule("a", "position_size: {above: 0}", then, instruments="MES"))
    decisions = h.tick(MORNING, acct("Sim101", pos("MES 12-26", 7), pos("ES 12-26", 3)))
    assert bodies(decisions) == expected


@pytest.mark.parametrize(("then", "severity"), [
    ("flatten: true", Severity.FLATTEN), ("close: all", Severity.CLOSE_ALL), ("close: 100%", Severity.CLOSE_ALL),
    ("close: 50%", Severity.PARTIAL), ("close: 3", Severity.PARTIAL), ("reduce_to: 1", Severity.PARTIAL),
])
def test_action_severity_orders_flatten_over_close_all_over_partial(then, severity):
    assert Harness(rule("a", "position_size: {above: 0}", then)).rules[0].action.severity is severity


def test_action_flatten_account_level_flattens_the_whole_account_once():
    h = Harness(rule("dll", "account_pnl: {below: -1000}", "flatten: true"))
    decisions = h.tick(MORNING, acct("Sim101", pos("MES 12-26", pnl=-800), pos("ES 12-26", pnl=-300)))
    assert bodies(decisions) == [("flatten", {})]
    assert decisions[0].orders[0].account == "Sim101" and decisions[0].instrument is None


def test_action_timed_flatten_of_many_accounts_sends_accounts_holding_positions_first():
    h = Harness(rule("eod", 'at: "16:58", days: daily', "flatten: true"))
    flat = [acct(f"Flat{i}") for i in range(3)]
    decisions = h.tick(ny(2026, 11, 27, 16, 58), *flat, acct("Busy", pos("MES 12-26")), acct("Flat9"))
    assert [d.account for d in decisions if d.kind == "fire"] == ["Busy", "Flat0", "Flat1", "Flat2", "Flat9"]


def test_action_flatten_with_instrument_filter_flattens_only_matched_instruments():
    h = Harness(rule("dll", "account_pnl: {below: -1000}", "flatten: true", instruments="[MES, MNQ]"))
    decisions = h.tick(MORNING, acct("Sim101", pos("MES 12-26", pnl=-800), pos("ES 12-26", pnl=-300), pos("MNQ 12-26")))
    assert bodies(decisions) == [("flatten", {"instrument": "MES 12-26"}), ("flatten", {"instrument": "MNQ 12-26"})]


def test_action_disabled_rule_never_decides():
    h = Harness(rule("off", "position_size: {above: 0}", enabled="false"))
    assert h.tick(MORNING, acct("Sim101", pos())) == []


def test_action_dry_run_rule_is_marked_dry():
    h = Harness(rule("dry", "position_size: {above: 0}", dry_run="true"))
    assert [d.dry_run for d in h.tick(MORNING, acct("Sim101", pos()))] == [True]


def test_action_lock_closes_a_position_opened_after_the_firing_at_the_next_tick():
    h = Harness(rule("dll", "account_pnl: {below: -1000}", "flatten: true, lock: true"))
    assert bodies(h.tick(MORNING, acct("Sim101", pos(pnl=-1200)), acct("Sim102", pos(pnl=-1200, quantity=1)))) == [
        ("flatten", {}), ("flatten", {})]
    # flat now; realized loss keeps the condition true; a re-entry on Sim101 is closed at once
    h.tick(MORNING + seconds(1), acct("Sim101", realized=-1200), acct("Sim102", realized=-1200))
    reopened = h.tick(MORNING + seconds(2), acct("Sim101", pos("ES 12-26", 1), realized=-1200), acct("Sim102", realized=-1200))
    assert bodies(reopened) == [("flatten", {"instrument": "ES 12-26"})]
    assert reopened[0].reason == "position opened while the account is locked"
    # even after P&L recovers above the limit, the lock holds for the session
    again = h.tick(MORNING + seconds(3), acct("Sim101", pos("NQ 12-26", 1), realized=500), acct("Sim102"))
    assert bodies(again) == [("flatten", {"instrument": "NQ 12-26"})]


def test_action_lock_covers_only_the_rule_scope():
    h = Harness(rule("mes-cap", "position_pnl: {below: -500}", "close: all, lock: true", instruments="MES"))
    h.tick(MORNING, acct("Sim101", pos("MES 12-26", pnl=-600)))
    reopened = h.tick(MORNING + seconds(1), acct("Sim101", pos("MES 03-27"), pos("ES 12-26")))
    assert bodies(reopened) == [("flatten", {"instrument": "MES 03-27"})]


def test_action_lock_is_set_only_when_the_firing_was_acknowledged():
    h = Harness(rule("dll", "account_pnl: {below: -1000}", "flatten: true, lock: true"))
    h.tick(MORNING, acct("Sim101", realized=-1200), ack=False)
    assert h.state.locks == {}
    h.tick(MORNING + seconds(1), acct("Sim101", realized=-1200))
    assert list(h.state.locks) == ["dll|sim101"]


# ---------------------------------------------------------------------------------------------
# Firing semantics.


def test_firing_edge_rule_fires_once_while_true_and_again_after_seen_false():
    h = Harness(rule("cap", "position_pnl: {below: -500}", "close: 50%"))
    path = [-600, -700, -800, -100, -900, -950]
    got = [bool(fires(h.tick(MORNING + seconds(i), acct("Sim101", pos(pnl=p))))) for i, p in enumerate(path)]
    assert got == [True, False, False, False, True, False]


def test_firing_unacknowledged_firing_is_retried_next_tick_and_counts_once_acknowledged():
    h = Harness(rule("cap", "position_pnl: {below: -500}"))
    losing = acct("Sim101", pos(pnl=-600))
    assert fires(h.tick(MORNING, losing, ack=False))  # the API failed: not counted
    assert fires(h.tick(MORNING + seconds(1), losing))  # tried again, acknowledged this time
    assert fires(h.tick(MORNING + seconds(2), losing)) == []


def test_firing_reopened_position_is_a_new_target():
    h = Harness(rule("cap", "position_pnl: {below: -500}", "close: 50%"))
    assert fires(h.tick(MORNING, acct("Sim101", pos(pnl=-600))))
    assert fires(h.tick(MORNING + seconds(1), acct("Sim101", pos(pnl=-600)))) == []
    h.tick(MORNING + seconds(2), acct("Sim101"))  # closed: gone once two well-formed snapshots agree
    h.tick(MORNING + seconds(3), acct("Sim101"))
    assert fires(h.tick(MORNING + seconds(4), acct("Sim101", pos(pnl=-600))))  # reopened, still losing


def test_firing_position_that_flips_side_between_snapshots_is_a_new_target():
    h = Harness(rule("cap", "position_pnl: {below: -500}", "close: 50%"))
    assert fires(h.tick(MORNING, acct("Sim101", pos(pnl=-600))))
    assert fires(h.tick(MORNING + seconds(1), acct("Sim101", pos(pnl=-600)))) == []
    flipped = h.tick(MORNING + seconds(2), acct("Sim101", pos(pnl=-600, side="Short")))  # never seen flat
    assert fires(flipped) == []  # a reversal is a new target once a second snapshot confirms it
    assert fires(h.tick(MORNING + seconds(3), acct("Sim101", pos(pnl=-600, side="Short")))) == [("cap", "Sim101", "MES 12-26")]


def test_firing_per_target_positions_and_accounts_fire_independently():
    h = Harness(rule("cap", "position_pnl: {below: -500}") + rule("dll", "account_pnl: {below: -1000}", "flatten: true"))
    decisions = h.tick(MORNING, acct("Sim101", pos("MES 12-26", pnl=-600), pos("ES 12-26", pnl=-100)),
                       acct("Sim102", pos("MES 12-26", pnl=-501), realized=-900))
    assert sorted(fires(decisions)) == [("cap", "Sim101", "MES 12-26"), ("dll", "Sim102", None)]
    superseded = [(d.rule, d.account) for d in decisions if d.kind == "superseded"]
    assert superseded == [("cap", "Sim102")]  # the account flatten covers Sim102's MES


def test_firing_account_missing_from_one_snapshot_keeps_its_markers():
    h = Harness(rule("cap", "position_pnl: {below: -500}", "close: 50%") + rule("dll", "account_pnl: {below: -100}", "flatten: true"))
    both = (acct("Sim101", pos(pnl=-600)), acct("Sim102", pos(pnl=-50), realized=-200))
    assert len(fires(h.tick(MORNING, *both))) == 2
    h.tick(MORNING + seconds(1), acct("Sim102", realized=-200))  # Sim101 not in this snapshot
    h.tick(MORNING + seconds(2), acct("Sim102", realized=-200))
    assert fires(h.tick(MORNING + seconds(3), *both)) == []  # back, same position, nothing new


def test_firing_instrument_filter_root_matches_every_contract_but_not_a_longer_root():
    h = Harness(rule("cap", "position_size: {above: 0}", instruments="MES"))
    decisions = h.tick(MORNING, acct("Sim101", pos("MES 12-26"), pos("MES 03-27"), pos("MESX 12-26")))
    assert sorted(i for _, _, i in fires(decisions)) == ["MES 03-27", "MES 12-26"]


def test_firing_account_filter_is_a_case_insensitive_glob():
    h = Harness(rule("cap", "position_size: {above: 0}", accounts='["sim1*"]'))
    decisions = h.tick(MORNING, acct("SIM101", pos()), acct("Sim102", pos()), acct("Live1", pos()))
    assert sorted(a for _, a, _ in fires(decisions)) == ["SIM101", "Sim102"]


# Timed rules.


def test_timed_rule_fires_once_per_occurrence_for_targets_present_at_that_second():
    h = Harness(rule("trim", 'at: "15:55"', "close: 50%"))
    at = ny(2026, 11, 27, 15, 55)
    assert fires(h.tick(at, acct("Sim101", pos("MES 12-26")))) == [("trim", "Sim101", "MES 12-26")]
    later = h.tick(at + seconds(1), acct("Sim101", pos("MES 12-26"), pos("ES 12-26")))  # ES opened after 15:55
    assert fires(later) == []
    assert fires(h.tick(ny(2026, 11, 30, 15, 55), acct("Sim101", pos("MES 12-26")))) == [("trim", "Sim101", "MES 12-26")]  # Monday


def test_timed_rule_unacknowledged_target_is_retried_until_done():
    h = Harness(rule("trim", 'at: "15:55"', "close: 50%"))
    at = ny(2026, 11, 27, 15, 55)
    assert fires(h.tick(at, acct("Sim101", pos()), ack=False))
    assert fires(h.tick(at + seconds(1), acct("Sim101", pos())))
    assert fires(h.tick(at + seconds(2), acct("Sim101", pos()))) == []


def test_timed_rule_missed_within_grace_fires_late_beyond_grace_is_audited_missed_once():
    text = rule("trim", 'at: "15:55"', "close: 50%")
    h = Harness(text)
    h.tick(ny(2026, 11, 26, 12, 0), acct("Sim101", pos()))  # known since Thursday
    decisions = h.tick(ny(2026, 11, 27, 15, 55, 59), acct("Sim101", pos()))  # 59 s late, grace 60 s
    assert fires(decisions) == [("trim", "Sim101", "MES 12-26")]
    h2 = Harness(text)
    h2.tick(ny(2026, 11, 26, 12, 0), acct("Sim101", pos()))
    late = h2.tick(ny(2026, 11, 27, 15, 57), acct("Sim101", pos()))
    assert [(d.kind, d.rule) for d in late] == [("missed", "trim")] and "misfire_grace 60s" in late[0].reason
    assert h2.tick(ny(2026, 11, 27, 15, 58), acct("Sim101", pos())) == []


def test_timed_rule_first_loaded_after_its_time_today_is_not_missed():
    h = Harness(rule("trim", 'at: "15:55"', "close: 50%"))
    assert h.tick(ny(2026, 11, 27, 16, 30), acct("Sim101", pos())) == []


def test_timed_rule_session_boundary_does_not_report_the_previous_session_occurrence_missed():
    h = Harness(rule("trim", 'at: "15:55"', "close: 50%"))
    h.tick(ny(2026, 11, 26, 12, 0), acct("Sim101", pos()))
    assert fires(h.tick(ny(2026, 11, 26, 15, 55), acct("Sim101", pos())))
    assert h.tick(ny(2026, 11, 26, 18, 0, 1), acct("Sim101", pos())) == []  # new session: nothing missed


def test_timed_rule_with_a_condition_fires_only_for_targets_meeting_it():
    h = Harness(rule("eod-losers", 'at: "15:55", position_pnl: {below: 0}', "close: all"))
    decisions = h.tick(ny(2026, 11, 27, 15, 55), acct("Sim101", pos("MES 12-26", pnl=-10), pos("ES 12-26", pnl=10)))
    assert fires(decisions) == [("eod-losers", "Sim101", "MES 12-26")]


@pytest.mark.parametrize(("zone", "at", "local_fire"), [
    ("America/New_York", "02:30", (2026, 3, 8, 3, 0, 0)),  # spring forward: 02:30 never exists; fire when the clock passes it
    ("America/Chicago", "02:30", (2026, 3, 8, 3, 0, 0)),
    ("America/New_York", "16:58", (2026, 3, 8, 16, 58, 0)),
    ("America/New_York", "01:30", (2026, 11, 1, 1, 30, 0)),  # fall back: the first 01:30 (EDT)
    ("America/Chicago", "16:00", (2026, 11, 1, 16, 0, 0)),
])
def test_timed_rule_on_dst_change_days_fires_at_local_wall_time_once(zone, at, local_fire):
    h = Harness(rule("sunday", f'at: "{at}", days: daily, timezone: {zone}', "flatten: true"))
    expected = datetime(*local_fire, tzinfo=ZoneInfo(zone)).astimezone(timezone.utc)
    h.tick(expected - timedelta(days=1), acct("Sim101", pos()))
    assert fires(h.tick(expected - seconds(1), acct("Sim101", pos()))) == []
    assert fires(h.tick(expected, acct("Sim101", pos()))) == [("sunday", "Sim101", None)]
    assert fires(h.tick(expected + timedelta(hours=1), acct("Sim101", pos()))) == []  # the repeated hour does not fire again


def test_timed_next_occurrence_skips_days_and_crosses_dst():
    r = Harness(rule("t", 'at: "16:58", days: [mon, fri]', "flatten: true")).rules[0]
    assert engine.next_occurrence(r, ny(2026, 3, 6, 17, 0)) == ny(2026, 3, 9, 16, 58)  # Fri after 16:58 -> Mon (after DST)
    assert engine.next_occurrence(r, ny(2026, 3, 6, 17, 0)).astimezone(NY).utcoffset() == timedelta(hours=-4)
    assert engine.last_occurrence(r, ny(2026, 3, 9, 12, 0)) == ny(2026, 3, 6, 16, 58)


# Arbitration.


def test_arbitration_flatten_beats_close_all_beats_partial_and_losers_are_superseded():
    h = Harness(rule("trim", "position_pnl: {below: -100}", "close: 50%")
                + rule("cap", "position_pnl: {below: -100}", "close: all")
                + rule("dll", "account_pnl: {below: -100}", "flatten: true"))
    decisions = h.tick(MORNING, acct("Sim101", pos(pnl=-600)))
    assert fires(decisions) == [("dll", "Sim101", None)]
    assert sorted((d.rule, d.kind) for d in decisions if d.kind != "fire") == [("cap", "superseded"), ("trim", "superseded")]
    assert all("rule dll (flatten) covers this target" == d.reason for d in decisions if d.kind == "superseded")
    assert fires(h.tick(MORNING + seconds(1), acct("Sim101", pos(pnl=-600)))) == []  # covered: nothing fires later


def test_arbitration_tie_goes_to_file_order():
    h = Harness(rule("first", "position_pnl: {below: -100}") + rule("second", "position_size: {above: 0}"))
    decisions = h.tick(MORNING, acct("Sim101", pos(pnl=-600)))
    assert fires(decisions) == [("first", "Sim101", "MES 12-26")]
    assert [(d.rule, d.kind) for d in decisions if d.kind != "fire"] == [("second", "superseded")]


def test_arbitration_partial_winner_leaves_the_loser_to_look_again_next_tick():
    h = Harness(rule("trim", "position_size: {above: 0}", "close: 50%") + rule("cap", "position_size: {above: 5}", "reduce_to: 5"))
    first = h.tick(MORNING, acct("Sim101", pos(quantity=20)))
    assert fires(first) == [("trim", "Sim101", "MES 12-26")]
    assert "evaluated again next tick" in next(d.reason for d in first if d.kind == "superseded")
    second = h.tick(MORNING + seconds(1), acct("Sim101", pos(quantity=10)))  # trim closed 10
    assert bodies(second) == [("close", {"instrument": "MES 12-26", "quantity": 5})]  # the size cap still holds


def test_arbitration_different_instruments_do_not_compete():
    h = Harness(rule("trim", "position_size: {above: 0}", "close: 50%", instruments="ES")
                + rule("dll", "account_pnl: {below: -100}", "flatten: true", instruments="MES"))
    decisions = h.tick(MORNING, acct("Sim101", pos("MES 12-26", pnl=-600), pos("ES 12-26")))
    assert sorted(fires(decisions)) == [("dll", "Sim101", None), ("trim", "Sim101", "ES 12-26")]


# The session boundary (18:00 New York by default).


def test_session_boundary_resets_markers_peaks_and_locks():
    h = Harness(rule("dd", "account_drawdown: {limit: 300, after: 500}", "flatten: true, lock: true"))
    h.tick(ny(2026, 11, 26, 12, 0), acct("Sim101", realized=800))
    assert fires(h.tick(ny(2026, 11, 26, 13, 0), acct("Sim101", realized=500)))
    assert h.state.locks and h.state.peaks == {"sim101": 800}
    assert fires(h.tick(ny(2026, 11, 26, 17, 59, 59), acct("Sim101", pos(), realized=500)))  # locked: re-entry closed
    after = h.tick(ny(2026, 11, 26, 18, 0), acct("Sim101", pos(), realized=0))  # new session, P&L starts over
    assert fires(after) == [] and h.state.locks == {} and h.state.peaks == {"sim101": 0}
    assert h.state.session == "2026-11-27"


@pytest.mark.parametrize("day", [(2026, 3, 8), (2026, 11, 1)])
def test_session_boundary_is_18_00_local_on_dst_change_days(day):
    settings = SETTINGS
    assert engine.session_of(ny(*day, 17, 59, 59), settings) == "%04d-%02d-%02d" % day
    nxt = (ny(*day, 12) + timedelta(days=1)).astimezone(NY).date().isoformat()
    assert engine.session_of(ny(*day, 18, 0), settings) == nxt


def test_session_start_setting_moves_the_boundary():
    settings = EngineSettings(zone=CHICAGO, session_start=time(17, 0))
    h = Harness(rule("cap", "position_pnl: {below: -500}", "close: 50%"), settings)
    assert fires(h.tick(ny(2026, 11, 26, 17, 59), acct("Sim101", pos(pnl=-600))))
    assert fires(h.tick(ny(2026, 11, 26, 17, 59, 59), acct("Sim101", pos(pnl=-600)))) == []
    assert fires(h.tick(ny(2026, 11, 26, 18, 0), acct("Sim101", pos(pnl=-600))))  # 17:00 Chicago: new session


# Reloads: unchanged rules keep their state, edited ones start over.


def test_reload_unchanged_rules_keep_markers_locks_and_holds():
    text = (rule("cap", "position_pnl: {below: -500}", "close: 50%") + rule("dll", "account_pnl: {below: -1000}", "flatten: true, lock: true")
            + rule("held", "position_size: {above: 1}, for: 10s", "close: 1"))
    h = Harness(text)
    h.tick(MORNING, acct("Sim101", pos(pnl=-600)), acct("Sim102", realized=-1500))
    h.reload("# a comment changes nothing\n" + text + rule("new", "position_size: {above: 100}"))
    assert fires(h.tick(MORNING + seconds(5), acct("Sim101", pos(pnl=-600)), acct("Sim102", realized=-1500))) == []
    assert "dll|sim102" in h.state.locks
    assert fires(h.tick(MORNING + seconds(10), acct("Sim101", pos(pnl=-600)), acct("Sim102", realized=-1500))) == [
        ("held", "Sim101", "MES 12-26")]  # the 10 s hold kept counting across the reload


def test_reload_edited_rule_starts_over_and_removed_rule_drops_its_lock():
    h = Harness(rule("cap", "position_pnl: {below: -500}", "close: 50%") + rule("dll", "account_pnl: {below: -1000}", "flatten: true, lock: true"))
    h.tick(MORNING, acct("Sim101", pos(pnl=-600), realized=-1500))
    h.reload(rule("cap", "position_pnl: {below: -550}", "close: 50%"))
    assert fires(h.tick(MORNING + seconds(1), acct("Sim101", pos(pnl=-600), realized=-1500))) == [("cap", "Sim101", "MES 12-26")]
    assert h.state.locks == {}


# ---------------------------------------------------------------------------------------------
# explain: what `riskd once` prints.


def test_explain_reports_value_threshold_and_distance_per_target():
    h = Harness(rule("cap", "position_pnl: {below: -500}", instruments="MES")
                + rule("dd", "account_drawdown: {limit: 300, after: 500}", "flatten: true")
                + rule("trim", 'at: "15:55"', "close: 50%")
                + rule("held", "position_size: {above: 1}, for: 5s", "close: 1")
                + rule("window", 'between: ["16:00", "17:00"]', "flatten: true")
                + rule("off", "position_size: {above: 1}", enabled="false"))
    rows = h.explain(MORNING, acct("Sim101", pos(pnl=-420, quantity=2), realized=100))
    by_rule = {r["rule"]: r for r in rows}
    cap = by_rule["cap"]
    assert (cap["target"], cap["status"]) == ("Sim101 MES 12-26", "not met")
    assert cap["conditions"] == [{"name": "position_pnl", "holds": False, "seen": -420.0, "threshold": "below -500.00", "distance": "$80.00 to go",
                                  "gap": 80.0, "span": 500.0, "unit": "$", "gap_percent": 16.0}]
    assert by_rule["dd"]["conditions"][0]["distance"] == "inactive until the peak reaches 500.00"
    assert by_rule["trim"]["status"] == "timed" and by_rule["trim"]["next"] == "2026-11-27T15:55:00-05:00"
    assert by_rule["trim"]["conditions"][0]["distance"] == "next 2026-11-27T15:55:00-05:00 (in 5h55m)"
    assert by_rule["held"]["status"] == "holding" and by_rule["held"]["conditions"][-1]["distance"] == "5s to go"
    assert by_rule["window"]["conditions"][0]["distance"] == "holds from 2026-11-27T16:00:00-05:00 (in 6h00m)"
    assert by_rule["off"]["status"] == "disabled"


def test_explain_marks_fired_targets_and_rules_without_targets():
    h = Harness(rule("cap", "position_pnl: {below: -500}") + rule("es", "position_size: {above: 0}", instruments="ES"))
    h.tick(MORNING, acct("Sim101", pos(pnl=-600)))
    rows = h.explain(MORNING + seconds(1), acct("Sim101", pos(pnl=-600)))
    assert [(r["rule"], r["status"]) for r in rows] == [("cap", "fired"), ("es", "no target in scope")]
    assert rows[0]["conditions"][0]["distance"] == "holds"


# ---------------------------------------------------------------------------------------------
# Purity: the engine and the model never touch I/O or the clock.

FORBIDDEN_MODULES = {"httpx", "structlog", "apscheduler", "sqlite3", "socket", "os", "time", "subprocess", "logging", "riskd.daemon",
                     "riskd.crosstrade", "riskd.state", "riskd.audit", "riskd.actions"}


@pytest.mark.parametrize("module", ["engine", "model", "conditions", "schedule", "keys", "control", "status"])
def test_engine_and_model_import_no_io_and_never_read_the_clock(module):
    tree = ast.parse((Path(engine.__file__).parent / f"{module}.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in imported if m.split(".")[0] in FORBIDDEN_MODULES or m in FORBIDDEN_MODULES}
    clock_calls = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                   and n.func.attr in ("now", "utcnow", "today", "time_ns", "monotonic", "perf_counter")]
    assert clock_calls == []
    assert "open(" not in (Path(engine.__file__).parent / f"{module}.py").read_text()
