"""The daemon (riskd/daemon.py): reload, signals, scheduling on the monotonic clock, stop, watchdog."""

from __future__ import annotations

import signal
import subprocess
import time

from riskd.daemon import Daemon

from conftest import RISKD, wait_until, write_policy
from harness import Rig, one_position

CAP = [{"name": "cap", "instruments": "MES", "when": {"position_pnl": {"below": -100}}, "then": {"close": "all"}}]


def test_daemon_reload_that_raises_anything_is_rules_rejected_and_keeps_the_old_rules(tmp_path, token):
    rig = Rig(tmp_path, token, one_position(), CAP)
    try:
        daemon = Daemon(rig.settings, rig.ticker, rig.audit, {})
        before = rig.ticker.rules
        # a number with 5,000 digits: int() raises ValueError (not a ConfigError) inside the loader
        rig.rules_path.write_text("rules:\n- name: cap\n  when: {position_pnl: {below: -1" + "0" * 5000 + "}}\n  then: {close: all}\n")
        assert daemon.reload() is False
        (rejected,) = rig.events("rules_rejected")
        assert rejected["kept_rules"] == 1 and rejected["errors"] and rejected["errors"][0]
        assert rig.ticker.rules is before
        rig.sim.set_price("MES 12-26", 5990.0)
        rig.tick_at(1)  # the old rules still protect the account
        assert rig.quantities() == {}
    finally:
        rig.close()
