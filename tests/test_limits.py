"""Profit floors, alerts and timed locks in the pure engine, the rule checks that refuse
contradictory combinations, and properties of their state (hypothesis):

- a profit floor never fires before its trigger was reached, and never twice without re-arming;
- a reduce-only lock never lets a position end a tick above its allowance without a close of
  exactly the excess, never sends that close again while the position shows the size it was sized
  on (a lagging snapshot), and its allowance never rises;
- a timed lock is enforced strictly before its end and never after, across session boundaries, and
  its end is audited once;
- the week starts at the first session_start on or after Sunday.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rulekit import MORNING, NY, Harness, acct, bodies, fires, ny, policy, pos, rule, seconds

from riskd.errors import ConfigError
from riskd.schedule import session_end, week_bounds

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        policy(text)
    return [str(p) for p in exc.value.problems]


# ---------------------------------------------------------------------------------------------
# `riskd check`: contradictory combinations, located.


@pytest.mark.parametrize("when, then, expected", [
    ("account_pnl: {below: 900, once_above: 800}", "flatten: true",
     "<rules>:3:50: rule r: when.account_pnl.once_above: the floor (900) must be below the trigger (800), or the rule fires the "
     "moment it arms; raise once_above or lower below"),
    ("account_pnl: {above: 900, once_above: 800}", "flatten: true",
     "<rules>:3:50: rule r: when.account_pnl.once_above: 'once_above' arms a floor: use it with 'below' "
     "(e.g. {below: 400, once_above: 800}), not 'above'"),
    ("account_pnl: {below: 400, once_above: 800, basis: realized}", "flatten: true",
     "<rules>:3:50: rule r: when.account_pnl.once_above: 'once_above' is measured on the session P&L peak (realized + unrealized, "
     "before commission); remove basis/net_of_commission, or once_above"),
    ("account_pnl: {below: -700}", "alert: careful, cancel_orders: true",
     "<rules>:4:43: rule r: then.cancel_orders: 'alert' sends no request; remove 'cancel_orders'"),
    ("account_pnl: {below: -700}", "alert: careful, lock: 30m",
     "<rules>:4:34: rule r: then.lock: 'lock' needs 'flatten: true' or 'close: all' (a lock keeps the scope flat); or write "
     "lock: {until: ..., reduce_only: true} to only stop positions growing"),
    ("account_pnl: {below: -700}", "flatten: true, lock: {until: 30x}",
     "<rules>:4:33: rule r: then.lock: invalid lock end '30x'; write true (until the session ends), a duration such as 30m, "
     "session_end, week_end, or {until: 30m, reduce_only: true, undo: never}"),
    ("account_pnl: {below: -700}", "flatten: true, lock: {until: 1h, reduce_onyl: true}",
     "<rules>:4:33: rule r: then.lock: unknown key 'reduce_onyl' in lock; did you mean 'reduce_only'?"),
    ("account_pnl: {below: -700}", "alert: ''",
     "<rules>:4:19: rule r: then.alert: invalid alert ''; write the text to send, e.g. alert: \"down $700: $300 from the daily limit\""),
    ("account_pnl: {below: -700}", "alert: hi, flatten: true",
     "<rules>:4:11: rule r: then: give exactly one of 'close', 'reduce_to', 'flatten' or 'alert' (found flatten, alert)"),
])
def test_check_refuses_contradictions_with_located_messages(when, then, expected):
    assert expected in _problems(rule("r", when, then))


def test_lock_forms_parse_to_their_end_and_reduce_only():
    rules = policy(rule("a", "account_pnl: {below: -1}", "flatten: true, lock: true")
                   + rule("b", "account_pnl: {below: -1}", "flatten: true, lock: week_end")
                   + rule("c", "account_pnl: {below: -1}", "close: all, lock: 30m")
                   + rule("d", "account_pnl: {below: -1}", "reduce_to: 2, lock: {until: 2h, reduce_only: true}"))
    assert [(r.action.lock, r.action.lock_until, r.action.reduce_only) for r in rules] == [
        (True, "session_end", False), (True, "week_end", False), (True, timedelta(minutes=30), False), (True, timedelta(hours=2), True)]


# ---------------------------------------------------------------------------------------------
# Behaviour.


FLOOR = rule("floor", "account_pnl: {below: 400, once_above: 800}", "flatten: true")


def test_profit_floor_is_inactive_until_the_trigger_then_fires_below_the_floor():
    h = Harness(FLOOR)
    assert fires(h.tick(MORNING, acct(realized=300))) == []  # below 400 but never up 800: not armed
    row = h.explain(MORNING, acct(realized=300))[0]["conditions"][0]
    assert row["distance"] == "inactive until the session P&L reaches 800.00 ($500.00 to go)"
    h.tick(MORNING + seconds(1), acct(realized=850))
    row = h.explain(MORNING + seconds(2), acct(realized=500))[0]["conditions"][0]
    assert row["threshold"] == "below 400.00 once the peak reached 800.00 (peak 850.00)" and row["distance"] == "$100.00 to go"
    assert fires(h.tick(MORNING + seconds(3), acct(realized=399))) == [("floor", "Sim101", None)]
    assert h.history[-1][1].inputs["peak"] == 850.0


def test_profit_floor_rearms_with_the_next_session():
    h = Harness(FLOOR)
    h.tick(ny(2026, 11, 27, 10), acct(realized=900))
    assert fires(h.tick(ny(2026, 11, 27, 19), acct(realized=300))) == []  # the new session has no peak yet


def test_alert_fires_on_the_edge_with_no_orders_beside_a_flatten():
    h = Harness(rule("warn", "account_pnl: {below: -700}", "alert: 'down $700'") + rule("limit", "account_pnl: {below: -1000}", "flatten: true"))
    first = h.tick(MORNING, acct("Sim101", pos(pnl=-750)))
    assert [(d.rule, d.action, d.orders, d.reason) for d in first] == [("warn", "alert", (), "down $700")]
    assert h.tick(MORNING + seconds(1), acct("Sim101", pos(pnl=-800))) == []  # edge-triggered
    both = h.tick(MORNING + seconds(2), acct("Sim101", pos(pnl=-1100)))
    assert [(d.kind, d.rule) for d in both] == [("fire", "limit")]  # the alert is not re-sent, not superseding
    h.tick(MORNING + seconds(3), acct("Sim101", pos(pnl=-100)))  # seen false: re-armed
    assert fires(h.tick(MORNING + seconds(4), acct("Sim101", pos(pnl=-710)))) == [("warn", "Sim101", None)]


def test_lock_shows_in_the_explanation_with_its_end():
    h = Harness(rule("cool", "account_pnl: {below: -500}", "flatten: true, lock: 30m"))
    h.tick(MORNING, acct("Sim101", pos(pnl=-600)))
    row = [c for c in h.explain(MORNING + seconds(60), acct())[0]["conditions"] if c["name"] == "lock"][0]
    assert row["threshold"] == "until 2026-11-27T15:30:00+00:00" and row["distance"] == "ends in 29m00s"


def test_week_starts_at_the_first_session_start_on_or_after_sunday():
    assert week_bounds(ny(2026, 11, 25, 10), NY, time(18)) == (ny(2026, 11, 22, 18), ny(2026, 11, 29, 18))
    assert week_bounds(ny(2026, 11, 29, 17, 59), NY, time(18))[1] == ny(2026, 11, 29, 18)
    assert week_bounds(ny(2026, 11, 29, 18), NY, time(18))[0] == ny(2026, 11, 29, 18)  # the boundary belongs to the new week
    assert week_bounds(ny(2026, 3, 8, 19), NY, time(18))[0] == ny(2026, 3, 8, 18)  # DST-change Sunday
    assert session_end(ny(2026, 11, 27, 17, 59), NY, time(18)) == ny(2026, 11, 27, 18)
    assert session_end(ny(2026, 11, 27, 18), NY, time(18)) == ny(2026, 11, 28, 18)


# ---------------------------------------------------------------------------------------------
# Properties.


@PROPERTY
@given(st.lists(st.sampled_from([-200.0, 100.0, 390.0, 420.0, 790.0, 810.0, 1200.0]), min_size=1, max_size=30))
def test_property_profit_floor_fires_only_after_the_trigger_and_never_twice_without_rearming(pnls):
    h = Harness(FLOOR)
    peak, armed_edge = 0.0, True
    for i, pnl in enumerate(pnls):
        peak = max(peak, pnl)
        fired = fires(h.tick(MORNING + seconds(i), acct(realized=pnl)))
        holds = peak >= 800 and pnl < 400
        assert bool(fired) == (holds and armed_edge)
        armed_edge = not holds


# one tick: the position's quantity (0: flat) and whether the API applies what riskd sends
lock_tick = st.tuples(st.integers(0, 8), st.booleans())


@PROPERTY
@given(st.integers(1, 6), st.lists(lock_tick, min_size=1, max_size=25))
def test_property_reduce_only_lock_closes_exactly_the_excess_once_and_never_raises_the_allowance(start, ticks):
    h = Harness(rule("ro", "account_pnl: {below: -100}", "alert: stop adding, lock: {until: week_end, reduce_only: true}"))
    h.tick(MORNING, acct("Sim101", pos(quantity=start), realized=-200))
    key = next(iter(h.state.lock_terms))
    allowed = h.state.lock_terms[key]["sizes"]["sim101|MES 12-26|Long"]
    assert allowed == start
    last: int | None = start  # the quantity riskd remembers for the position (forgotten after two snapshots without it)
    absent = 0
    acted_on: dict[str, int] = {}  # acknowledged close-backs: key -> the size each was sized on
    for i, (qty, applied) in enumerate(ticks, 1):
        held = qty
        if qty:
            confirmed = last if last is not None and qty > 2 * last else qty  # one implausible jump never sizes a close
            last, absent = qty, 0
        else:
            confirmed, absent = 0, absent + 1
            last = None if absent >= 2 else last
        decisions = h.tick(MORNING + seconds(i), acct("Sim101", pos(quantity=held), realized=-200) if held else acct(realized=-200), ack=applied)
        sizes = h.state.lock_terms[key].get("sizes", {})
        now_allowed = sizes.get("sim101|MES 12-26|Long", 0)
        assert now_allowed <= allowed  # never rises
        for d in decisions:
            if d.kind == "fire":
                assert acted_on.get(d.key) != confirmed  # never sent again while the position shows the size it was sized on
                assert confirmed > allowed
                assert bodies([d]) in ([("close", {"instrument": "MES 12-26", "quantity": confirmed - allowed})],
                                       [("flatten", {"instrument": "MES 12-26"})])
                if applied:
                    acted_on[d.key] = confirmed
        if not any(d.kind == "fire" for d in decisions) and confirmed > allowed:
            # only an acknowledged close waiting to show, for the same position identity, may leave an excess
            assert any(k in h.state.fired and seen == confirmed for k, seen in acted_on.items())
        if (qty and confirmed <= allowed) or last is None:
            acted_on.clear()  # back within the allowance, or gone for good: a new increase is a new firing
        allowed = now_allowed


@PROPERTY
@given(st.integers(1, 600), st.lists(st.integers(0, 900), min_size=1, max_size=12))
def test_property_a_timed_lock_is_enforced_strictly_before_its_end_and_never_after(minutes, offsets):
    h = Harness(rule("cool", "account_pnl: {below: -500}", f"flatten: true, lock: {minutes}m"))
    set_at = ny(2026, 11, 25, 10)  # a Wednesday: the lock may cross one or more session boundaries
    h.tick(set_at, acct(realized=-600))
    for offset in sorted(set(offsets)):
        now = set_at + timedelta(minutes=offset, seconds=30)
        decisions = h.tick(now, acct("Sim101", pos(quantity=1), realized=0))
        locked = [d for d in decisions if d.reason == "position opened while the account is locked"]
        assert bool(locked) == (now < set_at + timedelta(minutes=minutes))
        if now >= set_at + timedelta(minutes=minutes):
            assert h.state.locks == {} and h.state.lock_terms == {}
        ends = [d for _, d in h.history if d.kind == "lock_ended"]
        assert len(ends) == (1 if now >= set_at + timedelta(minutes=minutes) else 0)  # audited once, when it ends
        h.tick(now + seconds(1), acct(realized=0))  # the trader is flat again (two snapshots): the next entry is a new position
        h.tick(now + seconds(2), acct(realized=0))


def test_lock_end_is_a_utc_instant_after_a_restart_of_the_state():
    from riskd.engine import State

    h = Harness(rule("wk", "account_pnl: {below: -500}", "flatten: true, lock: week_end"))
    h.tick(MORNING, acct(realized=-600))
    restored = State.from_json(h.state.to_json())
    assert restored.lock_terms == h.state.lock_terms
    assert datetime.fromisoformat(restored.lock_terms["wk|sim101"]["until"]) == ny(2026, 11, 29, 18)
    assert datetime.fromisoformat(restored.lock_terms["wk|sim101"]["until"]).tzinfo == timezone.utc


# ---------------------------------------------------------------------------------------------
# Size across positions.


def test_size_checks_refuse_contradictions_with_located_messages():
    assert _problems(rule("r", "instrument_size: {above: 5}, account_size: {above: 3}", "reduce_to: 3")) == [
        "<rules>:3:55: rule r: when.account_size: give one of 'instrument_size' or 'account_size' per rule (write two rules)"]
    assert _problems(rule("r", "instrument_size: {above: 5}, position_pnl: {below: -3}", "close: all")) == [
        "<rules>:3:29: rule r: when.instrument_size: 'instrument_size' counts across positions and 'position_pnl' looks at one; "
        "write them as two rules"]
    assert _problems(rule("r", "instrument_size: {above: 5}", "close: 50%")) == [
        "<rules>:4:19: rule r: then.close: with 'instrument_size' write reduce_to: N (the excess, newest positions first), "
        "close: all or flatten: true; a share or a count per position has no single meaning"]
    assert _problems(rule("r", "account_size: {above: 5}", "reduce_to: 6")) == [
        "<rules>:4:23: rule r: then.reduce_to: reduce_to 6 keeps more than the account_size cap of 5: nothing would be closed; "
        "write reduce_to: 5 or less"]
    assert _problems(rule("r", "account_size: {above: 5, micro_weight: 0}", "reduce_to: 5")) == [
        "<rules>:3:51: rule r: when.account_size.micro_weight: invalid micro weight 0; write what one micro counts as against its "
        "full-size contract, more than 0 and at most 1, such as 0.1"]


def test_instrument_size_weighs_micros_and_trims_the_newest_positions_first():
    h = Harness(rule("cap", "instrument_size: {above: 5}", "reduce_to: 5"))
    assert h.tick(MORNING, acct("Sim101", pos("NQ 12-26", 4), pos("MNQ 12-26", 8), pos("ES 12-26", 5))) == []  # 4.8 NQ, 5 ES
    d = h.tick(MORNING + seconds(1), acct("Sim101", pos("NQ 12-26", 4), pos("MNQ 12-26", 8), pos("ES 12-26", 5), pos("MNQ 03-27", 9)))
    assert bodies(d) == [("close", {"instrument": "MNQ 03-27", "quantity": 7})]  # 5.7 NQ: 7 micros of the newest
    assert d[0].inputs["sizes"] == {"NQ": 5.7, "ES": 5.0}
    row = h.explain(MORNING + seconds(2), acct("Sim101", pos("NQ 12-26", 4), pos("MNQ 12-26", 8)))[0]["conditions"][0]
    assert (row["seen"], row["threshold"], row["distance"]) == (4.8, "above 5 full-size contract(s), NQ and its micros",
                                                                "more than 0.2 contract(s) to go")


def test_micro_weight_overrides_the_table():
    h = Harness(rule("cap", "account_size: {above: 2, micro_weight: 0.5}", "reduce_to: 2"))
    assert h.tick(MORNING, acct("Sim101", pos("CL 12-26", 1))) == []
    d = h.tick(MORNING + seconds(1), acct("Sim101", pos("MES 12-26", 3), pos("CL 12-26", 1)))  # 3 x 0.5 + 1 = 2.5
    assert bodies(d) == [("close", {"instrument": "MES 12-26", "quantity": 1})]  # one micro of the newest is enough


position_sizes = st.dictionaries(st.sampled_from(["NQ 12-26", "NQ 03-27", "MNQ 12-26", "MNQ 03-27", "ES 12-26", "MES 12-26"]),
                                 st.integers(1, 30), min_size=1)


@PROPERTY
@given(st.lists(position_sizes, min_size=1, max_size=6), st.integers(1, 8))
def test_property_size_reduction_never_leaves_more_than_the_cap_nor_closes_more_than_needed(order_of_entries, cap):
    from riskd import sizes

    h = Harness(rule("cap", "instrument_size: {above: %d}" % cap, "reduce_to: %d" % cap))
    for i, held in enumerate(order_of_entries):
        positions = [pos(inst, qty) for inst, qty in sorted(held.items())]
        h.tick(MORNING + seconds(2 * i), acct("Sim101", *positions), ack=False)  # a jump is trusted once a second snapshot agrees
        decisions = h.tick(MORNING + seconds(2 * i + 1), acct("Sim101", *positions), ack=False)
        groups = sizes.by_root(positions)
        over = {root for root, ps in groups.items() if sizes.weighted(ps) > cap}
        closes = [o for d in decisions for o in d.orders]
        assert bool(closes) == bool(over)
        for root, ps in groups.items():
            closed = {o.instrument: o.quantity for o in closes if sizes.weigh(o.instrument)[0] == root}
            left = [pos(p.instrument, p.quantity - closed.get(p.instrument, 0)) for p in ps]
            assert all(p.quantity >= 0 for p in left)  # never more than is open
            if root in over:
                remaining = sizes.weighted(left)
                assert remaining <= cap + 1e-9  # never above the cap
                biggest = max(sizes.weigh(i)[1] for i in closed)
                assert remaining > cap - biggest - 1e-9  # never a contract more than needed
            else:
                assert closed == {}


@PROPERTY
@given(st.lists(st.sampled_from([6, 8, 10, 11, 12]), min_size=1, max_size=25))  # never more than double: every size is trusted
def test_property_size_cap_fires_once_per_excursion_over_the_cap(micros):
    h = Harness(rule("cap", "account_size: {above: 1}", "alert: over one contract"))
    over_before = False
    for i, n in enumerate(micros):
        fired = fires(h.tick(MORNING + seconds(i), acct("Sim101", pos("MES 12-26", n))))
        over = n > 10
        assert bool(fired) == (over and not over_before)
        over_before = over


def test_a_reduce_only_lock_shows_what_it_allows():
    h = Harness(rule("ro", "account_pnl: {below: -100}", "alert: stop, lock: {until: 1h, reduce_only: true}"))
    h.tick(MORNING, acct("Sim101", pos("MES 12-26", 3), pos("ES 12-26", 1, side="Short"), realized=-200))
    row = [c for c in h.explain(MORNING + seconds(1), acct("Sim101", pos("MES 12-26", 3), pos("ES 12-26", 1, side="Short"),
                                                           realized=-200))[0]["conditions"] if c["name"] == "lock"][0]
    assert row["seen"] == "locked since 2026-11-27T15:00:00+00:00 (reduce only: allows ES 12-26 short 1, MES 12-26 long 3)"


def test_the_micro_table_in_the_rules_readme_is_the_one_riskd_uses():
    from pathlib import Path

    from riskd import sizes

    readme = (Path(__file__).resolve().parents[1] / "riskd" / "examples" / "README.md").read_text()
    table = readme.split("| micro | counts under | why 0.1 |", 1)[1].split("\n\n", 1)[0]
    rows = [line.split("|")[1:3] for line in table.strip().splitlines()[1:]]
    assert {micro.strip(" `"): full.strip(" `") for micro, full in rows} == sizes.MICROS


def test_reduce_only_lock_closes_back_again_when_the_trader_adds_after_a_close_back():
    h = Harness(rule("ro", "account_pnl: {below: -100}", "alert: stop, lock: {until: 1h, reduce_only: true}"))
    h.tick(MORNING, acct("Sim101", pos(quantity=4), realized=-200))
    assert bodies(h.tick(MORNING + seconds(1), acct("Sim101", pos(quantity=6), realized=-200))) == [
        ("close", {"instrument": "MES 12-26", "quantity": 2})]
    assert h.tick(MORNING + seconds(2), acct("Sim101", pos(quantity=6), realized=-200)) == []  # the close has not shown yet
    assert bodies(h.tick(MORNING + seconds(3), acct("Sim101", pos(quantity=7), realized=-200))) == [  # it landed, and 3 more came
        ("close", {"instrument": "MES 12-26", "quantity": 3})]
    assert h.tick(MORNING + seconds(4), acct("Sim101", pos(quantity=4), realized=-200)) == []
