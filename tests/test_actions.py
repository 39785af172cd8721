"""Exactly-once actions: intents, unknown outcomes settled against fresh snapshots, API faults.

The Ticker runs in-process against the simulator over real HTTP (tests/harness.py), on a clock that
jumps between ticks while network waits pass in real time.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from riskd.actions import settled_as_applied
from riskd.model import Decision, Order, Severity
from riskd.sim import Fault

from harness import Rig, one_position

HALF = [{"name": "trim", "instruments": "MES", "when": {"position_pnl": {"below": -100}}, "then": {"close": "50%"}}]


@pytest.fixture
def rig_factory(tmp_path, token):
    rigs: list[Rig] = []

    def make(scenario, rules, **kw) -> Rig:
        rig = Rig(tmp_path / f"rig{len(rigs)}", token, scenario, rules, **kw)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()


def _losing(quantity: int = 4) -> dict:
    return one_position(quantity=quantity, market=5990.0)  # 4 MES * $5 * -10 = -$200


# -- unknown outcomes ----------------------------------------------------------------------------


def test_act_lost_response_on_partial_close_is_settled_as_done_and_never_repeated(rig_factory):
    rig = rig_factory(_losing(), HALF)
    rig.sim.inject(Fault("lost_response", match="POST */positions/close", count=1))
    rig.tick_at(0)
    assert rig.events("action")[0]["outcome"] == "unknown"
    for t in range(1, 6):
        rig.tick_at(t)
    assert len(rig.posts("/positions/close")) == 1
    assert rig.quantities() == {("Sim101", "MES 12-26"): 2}
    resolved = rig.events("action_resolved")
    assert [r["verdict"].split(":")[0] for r in resolved] == ["done"]
    assert resolved[0]["seen_before"] == {"MES 12-26": 4} and resolved[0]["seen_now"] == {"MES 12-26": 2}


def test_act_answer_later_than_the_timeout_is_not_resent_before_it_could_have_landed(rig_factory):
    """A close the relay holds past riskd's timeout is applied late: the next snapshot still shows
    the old quantity, and sending again would close a second half."""
    rig = rig_factory(_losing(), HALF, timeout=timedelta(seconds=0.3))
    rig.sim.inject(Fault("latency", match="POST */positions/close", ms=600, count=1))
    rig.tick_at(0)  # times out after 0.3 s; the simulator applies it at 0.6 s
    assert rig.events("action")[0]["outcome"] == "unknown"
    rig.tick()  # at once: the position is unchanged, but the request may still land
    assert rig.sim.in_progress() == 1, "the test needs the close still held by the simulator here"
    assert len(rig.posts("/positions/close")) == 1
    assert rig.events("deferred") == [] and len(rig.events("fired")) == 1
    rig.settle_server()
    rig.tick()
    assert rig.events("action_resolved")[0]["verdict"].startswith("done")
    for t in range(2, 6):
        rig.tick_at(t)
    assert len(rig.posts("/positions/close")) == 1
    assert rig.quantities() == {("Sim101", "MES 12-26"): 2}


@pytest.mark.parametrize("fault", [
    Fault("timeout", match="POST */positions/close", ms=400, count=1),
    Fault("status", match="POST */positions/close", status=500, count=1),
    Fault("reset", match="POST */positions/close", count=1),
])
def test_act_unknown_outcome_not_applied_is_retried_once_it_cannot_land(rig_factory, fault):
    rig = rig_factory(_losing(), HALF, settle_window=timedelta(seconds=3))
    rig.sim.inject(fault)
    rig.tick_at(0)
    assert rig.events("action")[0]["outcome"] == "unknown"
    rig.settle_server()
    for t in (1, 2, 3):  # unchanged, but within the settle window (3 s after it was sent): it may still land
        rig.tick_at(t)
    assert rig.events("action_resolved") == [] and len(rig.posts("/positions/close")) == 1
    rig.tick_at(4)  # past the window, unchanged, and no fill in the executions: not applied, so the rule acts again
    resolved = rig.events("action_resolved")[0]
    assert resolved["verdict"].startswith("not applied") and resolved["fills"] == []
    for t in range(5, 8):
        rig.tick_at(t)
    assert len(rig.posts("/positions/close", applied=True)) == 1
    assert rig.quantities() == {("Sim101", "MES 12-26"): 2}
    assert [e["outcome"] for e in rig.events("action")] == ["unknown", "ok"]


@pytest.mark.parametrize("step", [-3600.0, -15.0])
def test_act_a_close_in_doubt_settles_on_time_when_the_wall_clock_steps_back(rig_factory, step):
    """A wall-clock step back (NTP) between the send and the settle must not keep the close in doubt
    for the size of the step: the settle window runs on the monotonic clock."""
    rig = rig_factory(_losing(), HALF, settle_window=timedelta(seconds=3))
    rig.sim.inject(Fault("status", match="POST */positions/close", status=500, count=1))
    rig.tick_at(0)
    assert rig.events("action")[0]["outcome"] == "unknown"
    rig.clock.step_wall(step)
    for t in range(1, 8):
        rig.tick_at(t)
    assert rig.events("action_resolved")[0]["verdict"].startswith("not applied")
    assert len(rig.posts("/positions/close", applied=True)) == 1 and rig.quantities() == {("Sim101", "MES 12-26"): 2}


def test_act_rejected_close_backs_off_on_the_monotonic_clock_when_the_wall_clock_steps_back(rig_factory):
    rig = rig_factory(_losing(), HALF)
    rig.sim.inject(Fault("status", match="POST */positions/close", status=400, count=1))  # refused: back-off 2 s
    rig.tick_at(0)
    rig.clock.step_wall(-3600)
    for t in range(1, 5):
        rig.tick_at(t)
    assert len(rig.posts("/positions/close", applied=True)) == 1 and rig.quantities() == {("Sim101", "MES 12-26"): 2}


def test_act_malformed_answer_to_a_close_is_settled_against_the_position(rig_factory):
    rig = rig_factory(_losing(), HALF)
    rig.sim.inject(Fault("malformed", match="POST */positions/close", count=1))
    for t in range(4):
        rig.tick_at(t)
    assert len(rig.posts("/positions/close")) == 1
    assert rig.quantities() == {("Sim101", "MES 12-26"): 2}
    assert rig.events("action")[0]["error"] == "unreadable response body"


def test_act_partial_close_waits_while_another_close_on_its_position_is_in_doubt(rig_factory):
    """Whether an in-doubt close landed is read off the position's quantity, so no other partial
    close of that position may change it meanwhile."""
    first = {"name": "trim", "instruments": "MES", "when": {"position_pnl": {"below": -100}}, "then": {"close": "50%"}}
    second = {"name": "size-down", "instruments": "MES", "when": {"account_pnl": {"below": -300}}, "then": {"reduce_to": 1}}
    rig = rig_factory(_losing(), [first, second], timeout=timedelta(seconds=0.3))
    rig.sim.inject(Fault("latency", match="POST */positions/close", ms=600, count=1))
    rig.tick_at(0)  # P&L -200: trim fires; its answer comes too late
    rig.sim.set_price("MES 12-26", 5980.0)  # P&L -400: size-down holds too
    rig.tick()
    assert [e["rule"] for e in rig.events("fired")] == ["trim"]
    deferred = rig.events("deferred")
    assert [d["rule"] for d in deferred] == ["size-down"] and "waiting for the outcome of trim|" in deferred[0]["reason"]
    rig.settle_server()
    for t in range(1, 5):
        rig.tick_at(t)
    bodies = [c.body for c in rig.posts("/positions/close", applied=True)]
    assert bodies == [{"instrument": "MES 12-26", "percent": 0.5}, {"instrument": "MES 12-26", "quantity": 1}]
    assert rig.quantities() == {("Sim101", "MES 12-26"): 1}


def test_act_close_applied_long_after_the_timeout_is_still_one_close(rig_factory):
    """The relay holds the close past riskd's 0.3 s timeout and applies it 12 s after it arrived:
    riskd must not send it again while it may still land (settle_window 20 s)."""
    rig = rig_factory(_losing(), HALF, timeout=timedelta(seconds=0.3), settle_window=timedelta(seconds=20))
    rig.sim.inject(Fault("late_apply", match="POST */positions/close", ms=400, apply_ms=12000, count=1))
    rig.tick_at(0)
    assert rig.events("action")[0]["outcome"] == "unknown"
    settled_at = None
    for t in range(1, 30):
        rig.tick_at(t)
        if settled_at is None and rig.events("action_resolved"):
            settled_at = t
    assert len(rig.posts("/positions/close")) == 1
    assert rig.quantities() == {("Sim101", "MES 12-26"): 2}
    (resolved,) = rig.events("action_resolved")
    assert resolved["verdict"].startswith("done: the position changed") and settled_at in (12, 13)


@pytest.mark.parametrize("status, body", [(408, None), (200, {"success": False})])
def test_act_close_refused_but_applied_is_not_sent_again(rig_factory, status, body):
    rig = rig_factory(_losing(), HALF)
    rig.sim.inject(Fault("applied_refused", match="POST */positions/close", status=status, body=body, count=1))
    for t in range(6):
        rig.tick_at(t)
    assert len(rig.posts("/positions/close")) == 1
    assert rig.quantities() == {("Sim101", "MES 12-26"): 2}
    assert rig.events("action_resolved")[0]["verdict"].startswith("done: the position changed")


def test_act_close_applied_then_reopened_is_found_in_the_executions(rig_factory):
    """The close timed out, was applied, and the trader bought the lots back before riskd looked:
    the position shows the old size, but the executions show the fill, so it is not sent again."""
    rig = rig_factory(_losing(), HALF, settle_window=timedelta(seconds=2))
    rig.sim.inject(Fault("lost_response", match="POST */positions/close", count=1))
    rig.tick_at(0)
    rig.sim.open_position("Sim101", "MES 12-26", "long", 2, price=5990.0)  # back to 4 lots
    for t in range(1, 6):
        rig.tick_at(t)
    assert len(rig.posts("/positions/close")) == 1
    resolved = rig.events("action_resolved")[0]
    assert resolved["verdict"].startswith("done: the executions show a fill") and resolved["fills"]


def test_act_in_doubt_close_waits_while_the_executions_cannot_be_read(rig_factory):
    rig = rig_factory(_losing(), HALF, settle_window=timedelta(seconds=1))
    rig.sim.inject(Fault("timeout", match="POST */positions/close", ms=400, count=1))
    rig.sim.inject(Fault("status", match="GET */executions", status=500, count=3))
    rig.tick_at(0)
    rig.settle_server()
    for t in range(1, 7):  # in the window at 1; the executions fail at 2, 3, 4: no evidence, no resend
        rig.tick_at(t)
        if t < 5:
            assert len(rig.posts("/positions/close")) == 1
    assert len([d for d in rig.events("deferred") if "executions cannot be read" in d["reason"]]) == 1  # said once
    assert rig.events("action_resolved")[0]["verdict"].startswith("not applied")
    assert len(rig.posts("/positions/close", applied=True)) == 1 and rig.quantities() == {("Sim101", "MES 12-26"): 2}


# -- refusals and retries ------------------------------------------------------------------------


def test_act_two_429s_on_a_close_then_success_closes_exactly_once(rig_factory):
    rig = rig_factory(_losing(), HALF)
    rig.sim.inject(Fault("status", match="POST */positions/close", status=429, count=2))
    rig.tick_at(0)
    closes = rig.posts("/positions/close")
    assert [c.status for c in closes] == [429, 429, 200]
    for t in range(1, 4):
        rig.tick_at(t)
    assert len(rig.posts("/positions/close", applied=True)) == 1
    assert rig.quantities() == {("Sim101", "MES 12-26"): 2}
    (action,) = rig.events("action")
    assert action["ok"] is True and [a["status"] for a in action["earlier_attempts"]] == [429, 429]


def test_act_429_retry_after_is_honoured_before_the_next_attempt(rig_factory):
    rig = rig_factory(_losing(), HALF, timeout=timedelta(seconds=2))
    rig.sim.inject(Fault("status", match="POST */positions/close", status=429, retry_after=1.5, count=1))
    rig.tick_at(0)
    first, second = rig.posts("/positions/close")
    assert first.status == 429 and second.status == 200
    assert second.t - first.t >= 1.5


def test_act_six_408s_keep_riskd_running_audited_and_it_acts_once_the_bridge_is_back(rig_factory):
    rig = rig_factory(_losing(), HALF)
    rig.sim.inject(Fault("status", status=408, count=6))
    t = 0.0
    while not rig.posts("/positions/close", applied=True) and t < 30:
        rig.tick_at(t)
        t += 1
    faulted = [r for r in rig.sim.request_log() if r.fault == "status"]
    assert len(faulted) == 6 and all(r.status == 408 for r in faulted)
    errors = rig.events("api_error", status=408)
    assert errors and all(e["error"].startswith("ninjatrader_disconnected") for e in errors)
    assert all("next poll in" in e["retry"] for e in errors)
    assert len(rig.posts("/positions/close", applied=True)) == 1
    # no tight loop: never more than one poll per poll interval while the bridge was down
    polls = [r.t for r in rig.sim.request_log() if r.method == "GET"]
    assert all(b - a >= 0.9 for a, b in zip(polls, polls[1:]))
    for later in range(int(t), int(t) + 3):
        rig.tick_at(later)
    assert len(rig.posts("/positions/close")) == len([r for r in rig.posts("/positions/close") if r.status in (200, 408)])
    assert rig.quantities() == {("Sim101", "MES 12-26"): 2}


def test_act_408_on_the_close_is_retried_on_a_later_tick_not_in_a_loop(rig_factory):
    rig = rig_factory(_losing(), HALF)
    rig.sim.inject(Fault("status", match="POST */positions/close", status=408, count=3))
    per_tick = []
    for t in range(6):
        before = len(rig.posts("/positions/close"))
        rig.tick_at(t)
        per_tick.append(len(rig.posts("/positions/close")) - before)
    closes = rig.posts("/positions/close")
    assert [c.status for c in closes] == [408, 408, 408, 200]
    assert max(per_tick) == 1  # one attempt per tick (counted per tick: a slow machine stretches real time, not ticks)
    assert rig.quantities() == {("Sim101", "MES 12-26"): 2}


def test_act_connection_refused_during_a_close_is_retried_and_closes_once(rig_factory):
    rig = rig_factory(_losing(), HALF)
    rig.tick_at(0)  # nothing: wait, the rule fires at once. Use a fresh position instead.
    rig.sim.open_position("Sim101", "MES 03-27", "long", 4, price=6000.0)
    rig.sim.set_price("MES 03-27", 5990.0)
    rig.server.refuse()
    try:
        rig.tick_at(1)  # the poll is refused: nothing seen, nothing sent
    finally:
        rig.server.resume()
    assert rig.events("api_error")[-1]["outcome"] == "unsent"
    for t in range(2, 6):
        rig.tick_at(t)
    applied = rig.posts("/positions/close", applied=True)
    assert sorted(c.body["instrument"] for c in applied) == ["MES 03-27", "MES 12-26"]


def test_act_rejected_order_is_retried_with_back_off_not_every_tick(rig_factory):
    rig = rig_factory(_losing(), HALF, timeout=timedelta(seconds=2))  # a loaded machine must not time out a close (a 4th reason to wait)
    rig.sim.inject(Fault("status", match="POST */positions/close", status=400, body={"success": False, "error": "invalid_argument"}, count=3))
    for t in range(20):
        rig.tick_at(t)
    closes = rig.posts("/positions/close")
    assert [c.status for c in closes] == [400, 400, 400, 200]
    gaps = [b.t - a.t for a, b in zip(closes, closes[1:])]
    assert all(wait - 0.1 <= gap < wait + 1.5 for wait, gap in zip([2, 4, 8], gaps)), gaps  # 2 s, doubling; at the next tick
    assert len(rig.events("deferred")) == 3  # once per back-off, not once per tick


def test_act_a_trickled_close_to_one_account_never_holds_back_another_accounts_close(rig_factory):
    """A1's close answer comes a byte at a time until the request deadline; A2's close goes out beside
    it and lands at once. The tick returns at its deadline (audited), the next poll is not held back,
    and A1's close is settled once its answer is over: one close per account."""
    scenario = {"accounts": [{"name": "A1", "positions": [{"instrument": "MES 12-26", "side": "long", "quantity": 4, "price": 6000.0}]},
                             {"name": "A2", "positions": [{"instrument": "MES 12-26", "side": "long", "quantity": 2, "price": 6000.0}]}],
                "prices": {"MES 12-26": 5990.0}, "rate_limit": {"per_second": 3, "burst": 20}}
    rules = [{"name": "cap", "instruments": "MES", "when": {"position_pnl": {"below": -50}}, "then": {"close": "all"}}]
    rig = rig_factory(scenario, rules, timeout=timedelta(seconds=1.5))
    rig.ticker.deadline_s = 0.3  # the tick waits 0.3 s for its closes (the trickled one takes the whole 1.5 s)
    rig.sim.inject(Fault("trickle", match="POST /accounts/A1/positions/close", bytes=1, ms=100, count=1))
    rig.tick_at(0)
    a1 = next(e["key"] for e in rig.events("fired") if e["account"] == "A1")
    assert rig.ticker.executor.acting == [a1]  # still reading A1's answer
    (a2_action,) = rig.events("action", account="A2")
    assert a2_action["ok"] and ("A2", "MES 12-26") not in rig.quantities()
    (overrun,) = rig.events("tick_overrun")
    assert overrun["sending"] == [a1] and overrun["deadline_s"] == 0.3
    polls = len([r for r in rig.sim.request_log() if r.path.endswith("/accounts/snapshot")])
    rig.tick_at(1)
    assert len([r for r in rig.sim.request_log() if r.path.endswith("/accounts/snapshot")]) == polls + 1  # polled meanwhile
    assert rig.ticker.executor.acting == [a1]
    assert len(rig.events("fired", account="A1")) == 1  # in flight: not fired again
    rig.ticker.executor.wait_sends(5.0)
    for t in range(2, 5):
        rig.tick_at(t)
    assert [e["outcome"] for e in rig.events("action", account="A1")] == ["unknown"]  # cut at the request deadline
    assert rig.events("action_resolved", key=a1)[0]["verdict"].startswith("done")
    assert len(rig.posts("/accounts/A1/positions/close")) == 1 and len(rig.posts("/accounts/A2/positions/close")) == 1
    assert rig.quantities() == {}


def test_act_on_account_named_dot_dot_never_turns_into_flatten_everything(rig_factory):
    """`accounts/../positions/flatten` normalises to `POST /positions/flatten` with an empty body,
    which flattens EVERY account. riskd must refuse it and flatten the other accounts one by one."""
    scenario = one_position(market=5900.0, extra=[
        {"name": "..", "positions": [{"instrument": "ES 12-26", "side": "long", "quantity": 1, "price": 6000.0}]},
        {"name": "Keep", "positions": [{"instrument": "NQ 12-26", "side": "long", "quantity": 1, "price": 21000.0}]},
    ])
    scenario["prices"].update({"ES 12-26": 5900.0, "NQ 12-26": 21000.0})
    rules = [{"name": "daily-loss", "accounts": ["sim101", ".."], "when": {"account_pnl": {"below": -100}}, "then": {"flatten": True}}]
    rig = rig_factory(scenario, rules)
    for t in range(4):
        rig.tick_at(t)
    paths = [r.path for r in rig.posts()]
    assert "/v1/api/positions/flatten" not in paths
    assert paths == ["/v1/api/accounts/Sim101/positions/flatten"]
    assert rig.quantities() == {("..", "ES 12-26"): 1, ("Keep", "NQ 12-26"): 1}
    refused = [e for e in rig.events("action") if e["outcome"] == "refused"]
    assert refused and "would change the request path" in refused[0]["error"]


# -- settled_as_applied ---------------------------------------------------------------------------


def _decision(*orders: Order) -> Decision:
    return Decision(kind="fire", rule="r", key="r|Sim101", account="Sim101", instrument=None, action="x",
                    severity=Severity.FLATTEN, orders=orders)


def test_settled_as_applied_close_counts_any_change_and_flatten_needs_every_position_changed():
    close = _decision(Order("close", "Sim101", "MES 12-26", percent=0.5))
    assert settled_as_applied(close, {"MES 12-26": 4}, {"MES 12-26": 2})
    assert settled_as_applied(close, {"MES 12-26": 4}, {"MES 12-26": 5})  # changed at all: never close twice
    assert not settled_as_applied(close, {"MES 12-26": 4}, {"MES 12-26": 4})
    flatten = _decision(Order("flatten", "Sim101", "MES 12-26"), Order("flatten", "Sim101", "ES 12-26"))
    assert settled_as_applied(flatten, {"MES 12-26": 4, "ES 12-26": 1}, {})
    assert not settled_as_applied(flatten, {"MES 12-26": 4, "ES 12-26": 1}, {"ES 12-26": 1})  # flatten ES again: harmless
    assert not settled_as_applied(_decision(Order("flatten", "Sim101")), {}, {})  # nothing to judge by: send again
