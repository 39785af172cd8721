"""Risk beyond one session through the pure engine: week and month P&L from the recorded session
closes (and what riskd did not see), balance drawdowns with their high-water marks, and the
rule checks that refuse contradictory combinations."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from hypothesis import given, settings, strategies as st
from rulekit import NY, Harness, acct, bodies, fires, ny, policy, pos, rule, seconds

from riskd import engine
from riskd.engine import State
from riskd.errors import ConfigError
from riskd.schedule import period_of

PROPERTY = settings(max_examples=60, deadline=None)
WEEKLY = rule("weekly-limit", "account_pnl: {below: -2500, period: week}", "flatten: true")
MONTHLY = rule("monthly-limit", "account_pnl: {below: -4000, period: month}", "flatten: true")


def restarted(h: Harness) -> Harness:
    """The same rules on the state as the store keeps it (a JSON document), as after a restart."""
    again = Harness(h.rules)
    again.state = State.from_json(json.loads(json.dumps(h.state.to_json())))
    return again


# -- periods ------------------------------------------------------------------------------------


def test_week_pnl_adds_the_recorded_sessions_and_fires_in_the_session_that_crosses_the_limit():
    h = Harness(WEEKLY)
    # Sunday 2026-11-29 18:00 New York opens Monday's session, the first of the week
    assert h.tick(ny(2026, 11, 29, 19, 0), acct(realized=-1000)) == []
    assert h.tick(ny(2026, 12, 1, 10, 0), acct(cash=49000, realized=-1000)) == []  # Tuesday's session: -2,000 this week
    h = restarted(h)
    assert h.tick(ny(2026, 12, 2, 10, 0), acct("Sim101", pos(pnl=-200), cash=48000, realized=-299)) == []  # -2,499
    hit = h.tick(ny(2026, 12, 2, 10, 1), acct("Sim101", pos(pnl=-200), cash=48000, realized=-301))
    assert bodies(hit) == [("flatten", {})]
    assert hit[0].inputs["period_pnl"] == -2501 and hit[0].inputs["session_pnl"] == -501 and "gap" not in hit[0].inputs
    # the next week starts over: Sunday 2026-12-06 18:00
    assert h.tick(ny(2026, 12, 6, 18, 0), acct(cash=47000, realized=-100)) == []


def test_a_day_riskd_was_down_is_counted_from_the_balance_and_audited_as_a_gap():
    h = Harness(WEEKLY)
    h.tick(ny(2026, 11, 29, 19, 0), acct(realized=-1000))  # Monday's session
    # Tuesday's session unseen (riskd down): it lost 900; Wednesday opens at 48,100
    hit = h.tick(ny(2026, 12, 2, 10, 0), acct(cash=48100, realized=-601))
    assert bodies(hit) == [("flatten", {})] and hit[0].inputs["period_pnl"] == -2501
    assert h.state.gaps["sim101"]["week"] == {"period": "week", "since": "2026-11-30", "unseen": -900.0, "source": "balance",
                                              "counted": -900.0}


def test_down_across_the_start_of_the_week_uses_weekly_profit_loss_where_the_api_gives_it():
    h = Harness(WEEKLY)
    h.tick(ny(2026, 11, 27, 10, 0), acct(realized=300))  # Friday of the week before
    # back on Wednesday's session: Monday and Tuesday unseen; the account reports the week so far
    weekly = acct(cash=48300, realized=-700, weekly=-2700)
    hit = h.tick(ny(2026, 12, 2, 10, 0), weekly)
    assert bodies(hit) == [("flatten", {})] and hit[0].inputs["period_pnl"] == -2700
    assert h.state.gaps["sim101"]["week"]["source"] == "weeklyProfitLoss" and h.state.gaps["sim101"]["week"]["counted"] == -2000


def test_a_stale_weekly_profit_loss_never_hides_a_loss_the_balance_shows():
    h = Harness(WEEKLY)
    h.tick(ny(2026, 11, 27, 10, 0), acct(realized=300))
    hit = h.tick(ny(2026, 12, 2, 10, 0), acct(cash=48000, realized=-600, weekly=-600))  # weeklyProfitLoss says nothing earlier
    assert bodies(hit) == [("flatten", {})] and h.state.gaps["sim101"]["week"]["source"] == "balance"


def test_without_weekly_profit_loss_an_unplaceable_loss_counts_and_a_gain_does_not():
    down = Harness(WEEKLY)
    down.tick(ny(2026, 11, 27, 10, 0), acct(realized=300))
    assert bodies(down.tick(ny(2026, 12, 2, 10, 0), acct(cash=48000, realized=-600))) == [("flatten", {})]  # -2,300 unseen counted
    up = Harness(WEEKLY)
    up.tick(ny(2026, 11, 27, 10, 0), acct(realized=300))
    assert up.tick(ny(2026, 12, 2, 10, 0), acct(cash=53000, realized=-2400)) == []  # a gain riskd cannot place is not counted
    assert up.state.gaps["sim101"]["week"]["counted"] == 0.0


def test_month_pnl_spans_weeks_and_starts_over_with_the_first_trading_date_of_the_month():
    h = Harness(MONTHLY)
    h.tick(ny(2026, 11, 2, 10, 0), acct(realized=-1500))  # November
    h.tick(ny(2026, 11, 16, 10, 0), acct(cash=48500, realized=-1500))
    hit = h.tick(ny(2026, 11, 30, 10, 0), acct(cash=47000, realized=-1001))  # Dec 1's session opens Nov 30 18:00
    assert bodies(hit) == [("flatten", {})] and hit[0].inputs["period_pnl"] == -4001
    # the session that opened Monday 2026-11-30 18:00 is December 1's: a new month
    assert h.tick(ny(2026, 11, 30, 18, 30), acct(cash=45999, realized=-100)) == []


@PROPERTY
@given(st.integers(min_value=-3 * 86400, max_value=3 * 86400), st.sampled_from([ny(2026, 11, 29, 18, 0), ny(2026, 3, 8, 18, 0)]))
def test_property_the_week_rolls_exactly_at_sunday_s_session_start(offset_s, boundary):
    settings = engine.EngineSettings(zone=NY)  # 2026-03-08 is the day the clocks spring forward
    t = boundary + timedelta(seconds=offset_s)
    first = period_of(engine.session_of(boundary, settings), "week")
    assert (period_of(engine.session_of(t, settings), "week") == first) == (t >= boundary)


@PROPERTY
@given(st.integers(min_value=-86400, max_value=86400))
def test_property_the_month_rolls_exactly_at_the_session_start_of_its_first_trading_date(offset_s):
    settings = engine.EngineSettings(zone=NY)
    boundary = ny(2026, 11, 30, 18, 0)  # opens the session of 2026-12-01
    t = boundary + timedelta(seconds=offset_s)
    assert (period_of(engine.session_of(t, settings), "month") == "2026-12") == (t >= boundary)


def test_an_edited_period_rule_keeps_the_account_s_record():
    h = Harness(WEEKLY)
    h.tick(ny(2026, 11, 30, 10, 0), acct(realized=-1500))
    h.reload(rule("weekly-limit", "account_pnl: {below: -1800, period: week}", "flatten: true"))  # edited: its markers start over
    hit = h.tick(ny(2026, 12, 1, 10, 0), acct(cash=48500, realized=-301))
    assert bodies(hit) == [("flatten", {})] and hit[0].inputs["period_pnl"] == -1801


# -- balance drawdowns ----------------------------------------------------------------------------

EOD = rule("eod-trailing", "account_drawdown: {limit: 2500, metric: balance, trail: end_of_day, start: 50000, stop_trailing_at: 50100}",
           "flatten: true")


def test_end_of_day_trailing_moves_only_with_closing_balances_and_freezes_at_stop_trailing_at():
    h = Harness(EOD)
    t = ny(2026, 11, 30, 10, 0)
    assert h.tick(t, acct("Sim101", pos(pnl=3000), cash=50000)) == []  # an intraday high of 53,000 does not move an end-of-day floor
    assert h.tick(t + seconds(1), acct(cash=50000, realized=-2499)) == []  # 47,501 > 47,500
    hit = h.tick(t + seconds(2), acct(cash=50000, realized=-2500))
    assert bodies(hit) == [("flatten", {})] and hit[0].inputs["floor"] == 47500 and hit[0].inputs["high"] == 50000
    h = Harness(EOD)
    h.tick(ny(2026, 11, 30, 10, 0), acct(cash=50000, realized=1800))
    assert h.tick(ny(2026, 12, 1, 10, 0), acct(cash=51800, realized=-2499)) == []  # closed at 51,800: floor 49,300
    assert fires(h.tick(ny(2026, 12, 1, 10, 1), acct(cash=51800, realized=-2500))) == [("eod-trailing", "Sim101", None)]
    h = restarted(h)
    h.tick(ny(2026, 12, 2, 10, 0), acct(cash=53000, realized=0))  # closed at 53,000 (riskd missed the rest): floor capped at 50,100
    h = restarted(h)
    row = next(r for r in h.explain(ny(2026, 12, 3, 10, 0), acct(cash=54000, realized=-3800)) if r["rule"] == "eod-trailing")
    (cond,) = row["conditions"]
    assert cond["threshold"] == "$2500.00 below the end-of-day high (high 54000.00, floor 50100.00, frozen at 50100.00)"
    assert cond["distance"] == "$100.00 to go" and cond["seen"] == "balance 50200.00"


def test_intraday_trailing_follows_open_profit_and_never_starts_below_start():
    h = Harness(rule("intraday", "account_drawdown: {limit: 2000, metric: balance, start: 50000}", "flatten: true"))
    t = ny(2026, 11, 30, 10, 0)
    assert h.tick(t, acct(cash=49000)) == []  # below start: the high is still 50,000, floor 48,000
    assert h.tick(t + seconds(1), acct("Sim101", pos(pnl=2500), cash=49000)) == []  # 51,500: floor 49,500
    hit = h.tick(t + seconds(2), acct("Sim101", pos(pnl=500), cash=49000))
    assert bodies(hit) == [("flatten", {})] and hit[0].inputs["high"] == 51500 and hit[0].inputs["floor"] == 49500


balances = st.lists(st.tuples(st.integers(min_value=0, max_value=3), st.floats(min_value=-4000, max_value=4000, allow_nan=False)),
                    min_size=1, max_size=30)


@PROPERTY
@given(balances)
def test_property_high_water_marks_and_floors_never_move_down_and_a_firing_never_repeats_unarmed(steps):
    h = Harness(EOD + rule("intraday", "account_drawdown: {limit: 1500, metric: balance}", "flatten: true"))
    t, cash, last_marks, last_floor = ny(2026, 11, 30, 10, 0), 50000.0, None, {}
    for i, (days, pnl) in enumerate(steps):
        if days:
            cash += pnl
            t += timedelta(days=days)
        t += seconds(1)
        decisions = h.tick(t, acct(cash=cash, realized=pnl))
        marks = h.state.marks["sim101"]
        if last_marks is not None:
            assert marks[0] >= last_marks[0] and marks[1] >= last_marks[1]
        last_marks = marks
        for row in h.explain(t, acct(cash=cash, realized=pnl)):
            floor = float(row["conditions"][0]["threshold"].split("floor ")[1].split(",")[0].rstrip(")"))
            assert floor >= last_floor.get(row["rule"], floor)
            last_floor[row["rule"]] = floor
        assert len(fires(decisions)) == len({d.rule for d in decisions if d.kind == "fire"})


@PROPERTY
@given(st.lists(st.tuples(st.integers(0, 1), st.floats(min_value=-3000, max_value=3000, allow_nan=False)), min_size=1, max_size=30))
def test_property_a_period_or_balance_rule_fires_at_most_once_a_session_until_seen_false(steps):
    h = Harness(WEEKLY + EOD)
    t, cash, fired_in, held_false = ny(2026, 11, 30, 10, 0), 50000.0, {}, {}
    for new_session, pnl in steps:
        if new_session:
            cash += pnl / 2
            t += timedelta(days=1)
        t += seconds(1)
        account = acct(cash=cash, realized=pnl)
        session = engine.session_of(t, h.settings)
        for d in h.tick(t, account):
            if d.kind == "fire":
                key = (d.rule, session)
                assert key not in fired_in or held_false.get(d.rule, False), f"{d.rule} fired twice in {session} without re-arming"
                fired_in[key], held_false[d.rule] = True, False
        for row in h.explain(t, account):
            if not row["conditions"][0]["holds"]:
                held_false[row["rule"]] = True


# -- checks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("when, message", [
    ("account_drawdown: {limit: 300, trail: end_of_day}", "when.account_drawdown.trail: 'trail: end_of_day' needs 'metric: balance'"),
    ("account_drawdown: {limit: 300, start: 50000}", "when.account_drawdown.start: 'start' applies only with 'metric: balance'"),
    ("account_drawdown: {limit: 300, metric: balance, after: 100}", "when.account_drawdown.after: 'after' arms a session P&L drawdown"),
    ("account_drawdown: {limit: 2500, metric: balance, start: 50000, stop_trailing_at: 47000}",
     "when.account_drawdown.stop_trailing_at: the floor starts at 47500.00"),
    ("account_pnl: {below: -100, basis: unrealized, period: week}", "when.account_pnl.period: the open P&L (basis: unrealized)"),
    ("account_pnl: {below: -100, period: year}", "when.account_pnl.period:"),
    ("trades: {above: -1}", "when.trades.above: invalid count -1"),
])
def test_contradictory_combinations_are_refused_with_a_located_message(when, message):
    with pytest.raises(ConfigError) as err:
        policy(rule("r", when, "flatten: true"))
    text = str(err.value)
    assert "<rules>:3:" in text and "rule r:" in text and message in text, text


def test_a_snapshot_without_net_liquidation_is_not_a_balance_of_zero():
    from dataclasses import replace

    h = Harness(EOD + WEEKLY)
    h.tick(ny(2026, 11, 30, 10, 0), acct(cash=52000))
    marks = h.state.marks["sim101"]
    glitch = replace(acct(cash=52000), net_liquidation=0.0, balance_known=False)
    assert h.tick(ny(2026, 11, 30, 10, 1), glitch) == [] and h.tick(ny(2026, 12, 1, 10, 0), glitch) == []
    assert h.state.marks["sim101"] == marks and set(h.state.ledger["sim101"]) == {"2026-11-30"}
    row = next(r for r in h.explain(ny(2026, 12, 1, 10, 1), glitch) if r["rule"] == "eod-trailing")
    assert row["conditions"][0]["seen"] == "balance not reported"
