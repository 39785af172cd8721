"""One tick (riskd/tick.py) in-process against the simulator over real HTTP, on one simulated clock:
the order of acting and auditing, deadlines, concurrency across accounts, clock steps."""

from __future__ import annotations

from datetime import timedelta

from riskd.sim import Fault

from harness import Rig, one_position

CAP = [{"name": "cap", "instruments": "MES", "when": {"position_pnl": {"below": -100}}, "then": {"close": "all"}}]


def _overlapping(n: int) -> list[dict]:
    return [{"name": f"cap-{i:03d}", "instruments": "MES", "when": {"position_pnl": {"below": -100}}, "then": {"close": "all"}}
            for i in range(n)]


def test_tick_with_many_overlapping_rules_acts_before_it_audits_the_superseded_ones(tmp_path, token):
    rig = Rig(tmp_path, token, one_position(market=5990.0), _overlapping(200))
    try:
        rig.tick_at(0)
        events = [e["event"] for e in rig.events() if e["event"] in ("fired", "action", "superseded")]
        assert events.count("superseded") == 199 and events.count("action") == 1
        assert events.index("action") < events.index("superseded")  # the close does not wait for 199 audit lines
        assert events[:2] == ["fired", "action"]
        assert rig.quantities() == {}
    finally:
        rig.close()


def _polls(rig: Rig) -> list[float]:
    return [r.t for r in rig.sim.request_log() if r.method == "GET"]


def test_tick_wall_clock_step_is_audited_with_its_size_and_direction(tmp_path, token):
    rig = Rig(tmp_path, token, one_position(), CAP)
    try:
        rig.tick_at(0)
        rig.tick_at(1)
        rig.clock.step_wall(-15)  # NTP steps the clock back 15 s
        rig.tick_at(2)
        rig.clock.step_wall(3600)
        rig.tick_at(3)
        rig.clock.step_wall(0.5)  # small corrections are not steps
        rig.tick_at(4)
        steps = rig.events("clock_step")
        assert [(s["direction"], round(s["step_s"])) for s in steps] == [("back", -15), ("forward", 3600)]
        assert steps[0]["wall_now"] < steps[0]["wall_expected"] and steps[1]["wall_now"] > steps[1]["wall_expected"]
        assert len(_polls(rig)) == 5  # a poll on every tick, whatever the wall clock did
    finally:
        rig.close()


def test_tick_backing_off_when_the_wall_clock_steps_back_an_hour_polls_again_within_two_intervals(tmp_path, token):
    rig = Rig(tmp_path, token, one_position(), CAP)
    try:
        rig.sim.inject(Fault("status", status=500, match="GET /accounts/snapshot", count=1))
        rig.tick_at(0)  # fails: the next poll in about an interval
        rig.clock.step_wall(-3600)
        for t in range(1, 5):
            rig.tick_at(t * 0.5)
        assert len(_polls(rig)) >= 3  # back-off on the monotonic clock: not an hour of silence
        rig.sim.set_price("MES 12-26", 5990.0)
        rig.tick_at(3)
        assert rig.quantities() == {}  # the breach after the step is closed
    finally:
        rig.close()


def test_tick_stale_is_seen_after_stale_after_even_when_the_wall_clock_stepped_back(tmp_path, token):
    rig = Rig(tmp_path, token, one_position(), CAP)
    try:
        rig.tick_at(0)
        rig.server.refuse()
        rig.clock.step_wall(-3600)
        for t in range(1, 8):
            rig.tick_at(t)
        assert len(rig.events("stale")) == 1  # 5 s of monotonic time without a poll, whatever the wall says
    finally:
        rig.server.resume()
        rig.close()


def test_tick_forward_step_across_an_at_instant_is_a_misfire_within_grace_else_missed(tmp_path, token):
    rules = [{"name": "trim-near", "instruments": "MES", "when": {"at": "10:00:30", "days": "daily"}, "then": {"close": "50%"}},
             {"name": "trim-far", "accounts": "Sim102", "when": {"at": "10:00:40", "days": "daily"}, "then": {"flatten": True}}]
    extra = [{"name": "Sim102", "positions": [{"instrument": "MES 12-26", "side": "long", "quantity": 2, "price": 6000.0}]}]
    rig = Rig(tmp_path, token, one_position(extra=extra), rules, misfire_grace=timedelta(seconds=60))
    try:
        rig.tick_at(0)  # 10:00:00 New York
        rig.clock.step_wall(95)  # to 10:01:36: 10:00:30 is 66 s ago (missed), 10:00:40 56 s ago (within grace)
        rig.tick_at(1)
        (step,) = rig.events("clock_step")
        assert step["direction"] == "forward" and round(step["step_s"]) == 95
        assert [e["rule"] for e in rig.events("fired")] == ["trim-far"]
        assert "misfire_grace" in rig.events("missed", rule="trim-near")[0]["reason"]
        assert rig.quantities() == {("Sim101", "MES 12-26"): 4}
    finally:
        rig.close()


def test_tick_polls_cut_at_the_deadline_are_failed_polls_and_stale_is_audited_once(tmp_path, token):
    """A snapshot trickled one byte per 50 ms (each read within the 0.2 s timeout, the body ~2 s): every
    poll ends at its 0.2 s deadline as a failed poll, and 5 s (monotonic) of them make riskd stale."""
    from trickle import TrickleServer

    rig = Rig(tmp_path, token, one_position(), CAP)
    try:
        with TrickleServer(interval=0.05, good=1) as server:
            rig.ticker.client._http.base_url = server.base_url + "/"
            rig.tick_at(0)  # the one good answer
            for t in range(1, 8):
                rig.tick_at(t)  # polls that are due (the back-off skips some) each end at the deadline
        errors = rig.events("api_error")
        assert len(errors) >= 3 and all(e["error"] == "deadline: response body not complete after 0.2 s" for e in errors)
        assert all(e["latency_ms"] < 1000 for e in errors)  # cut at the deadline, not at the end of the body
        (stale,) = rig.events("stale")
        assert stale["last_error"].startswith("deadline:") and rig.ticker.health.stale
    finally:
        rig.close()
