"""One tick (riskd/tick.py) in-process against the simulator over real HTTP, on one simulated clock:
the order of acting and auditing, deadlines, concurrency across accounts, clock steps."""

from __future__ import annotations

import pytest

from harness import Rig, one_position


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
