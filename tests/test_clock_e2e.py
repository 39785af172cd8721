"""The real `riskd run` under libfaketime (Debian package `faketime`): CLOCK_REALTIME steps back 15 s,
then back an hour, while the monotonic clock runs on untouched (an NTP correction, an operator's
`date -s`). Polls keep their cadence, a breach after the steps is closed, and each step is audited.

libfaketime reads the offset from FAKETIME_TIMESTAMP_FILE on every clock call (FAKETIME_NO_CACHE=1),
so the test steps riskd's wall clock while it runs by rewriting that file.
"""

from __future__ import annotations

import glob
from pathlib import Path

from conftest import wait_until, write_policy

LIBFAKETIME = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1") + glob.glob("/usr/lib/faketime/libfaketimeMT.so.1"))


def _polls(sim) -> list[float]:
    return [r.t for r in sim.request_log() if r.method == "GET" and r.path.endswith("/accounts/snapshot")]


def _faketime_env(offset_file: Path) -> dict[str, str]:
    assert LIBFAKETIME, "libfaketime is not installed (apt-get install -y faketime; .ci/run installs it)"
    # the offset file is read again at most once a second (reading it on every call made each GIL hand-over a file read)
    return {"LD_PRELOAD": LIBFAKETIME[0], "FAKETIME_TIMESTAMP_FILE": str(offset_file), "FAKETIME_CACHE_DURATION": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1", "NO_FAKE_STAT": "1"}


def test_wall_clock_stepped_back_15_s_then_an_hour_polls_continue_the_breach_is_closed_and_each_step_is_audited(
        tmp_path, sim_factory, riskd_factory, token):
    scenario = {"accounts": [{"name": "Sim101", "positions": [{"instrument": "MES 12-26", "side": "long", "quantity": 4, "price": 6000.0}]}],
                "prices": {"MES 12-26": 6000.0}}
    sim, server = sim_factory(scenario)  # the simulator runs on the real clock, outside libfaketime
    rules = [{"name": "cap", "instruments": "MES", "when": {"position_pnl": {"below": -50}}, "then": {"close": "all"}}]
    config = write_policy(tmp_path, server.base_url, rules, poll_interval="200ms")
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    riskd = riskd_factory(config, token, env=_faketime_env(offset))
    riskd.wait_for("started", timeout=20)
    wait_until(lambda: len(_polls(sim)) >= 3, timeout=15, interval=0.02)

    offset.write_text("-15\n")  # NTP steps the wall clock back 15 s
    (back15,) = riskd.wait_for("clock_step", timeout=10)
    assert back15["direction"] == "back" and abs(back15["step_s"] + 15) < 1.0
    before = len(_polls(sim))
    wait_until(lambda: len(_polls(sim)) >= before + 5, timeout=5, interval=0.02)  # 1 s of 200 ms polls, not a 15 s pause

    offset.write_text("-3615\n")  # and back another hour
    steps = riskd.wait_for("clock_step", timeout=10, count=2)
    assert steps[1]["direction"] == "back" and abs(steps[1]["step_s"] + 3600) < 1.0
    before = len(_polls(sim))
    wait_until(lambda: len(_polls(sim)) >= before + 5, timeout=5, interval=0.02)
    assert not riskd.events("stale")

    sim.set_price("MES 12-26", 5980.0)  # 4 MES * $5 * -20 = -$400: the breach, after both steps
    (action,) = riskd.wait_for("action", timeout=10)
    assert action["ok"] and action["request"]["path"] == "accounts/Sim101/positions/close"
    assert sim.positions() == []
    closes = [r for r in sim.request_log() if r.method == "POST"]
    assert len(closes) == 1
    gaps = [b - a for a, b in zip(_polls(sim), _polls(sim)[1:])]
    assert max(gaps) < 2.0, f"a poll gap of {max(gaps):.1f} s"
    assert riskd.stop() == 0
    stopped = riskd.events("stopped")
    assert stopped and not riskd.events("tick_failed")
