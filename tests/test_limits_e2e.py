"""Profit floors, alerts and timed locks end to end: rule files through the in-process ticker
against the simulator over real HTTP on 127.0.0.1, on one simulated clock (tests/harness.py).

- a profit floor arms at +$800, survives a restart, warns with an alert (notified on every
  channel, no request sent) and flattens once below $400, exactly once;
- a 30-minute cooldown lock flattens a re-entry; after 30 minutes it ends (audited `lock_ended`) and a
  re-entry stays open;
- a reduce-only lock until week_end closes back an increase by the excess, follows a reduction
  down, outlives the session boundary and a restart, and ends at Sunday's session start.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from conftest import wait_until
from harness import Rig, one_position
from test_notify import WebhookServer, target

from riskd import report
from riskd.notify import Notifier, Webhook

# the client's answer timeout (real time): a loaded machine must not turn a close into an unknown outcome
ANSWER_WAIT = {"timeout": timedelta(seconds=2)}

# MES: $5 a point; 4 contracts long at 6000
FLOOR_RULES = [
    {"name": "keep-400", "when": {"account_pnl": {"below": 400, "once_above": 800}}, "then": {"flatten": True}},
    {"name": "giving-back", "when": {"account_pnl": {"below": 600, "once_above": 800}}, "then": {"alert": "giving back the day's gain"}},
]


def test_profit_floor_arms_survives_a_restart_alerts_every_channel_then_flattens_once(tmp_path, token):
    rig = Rig(tmp_path, token, one_position(quantity=4), FLOOR_RULES, **ANSWER_WAIT)
    stale_only = WebhookServer()  # a channel configured for `stale` only still gets the alert
    notifier = Notifier([Webhook(target("ops", events=("stale",)), stale_only.url, "h")])
    try:
        rig.tick_at(0)
        rig.sim.set_price("MES 12-26", 6030.0)  # +$600: not armed, below 600 would be no alert yet either
        rig.tick_at(1)
        assert rig.events("fired") == []
        rig.sim.set_price("MES 12-26", 6041.0)  # +$820: both floors arm
        rig.tick_at(2)
        rig.stop_riskd()  # the armed floor is in the state store
        rig.start_riskd()
        rig.audit.observers.append(notifier.on_audit)
        rig.sim.set_price("MES 12-26", 6028.0)  # +$560: the warning
        rig.tick_at(3)
        rig.tick_at(4)
        alerts = rig.events("fired", rule="giving-back")
        assert len(alerts) == 1 and alerts[0]["action"] == "alert" and alerts[0]["reason"] == "giving back the day's gain"
        assert alerts[0]["inputs"]["peak"] == 820.0 and alerts[0]["inputs"]["armed"] is True
        assert alerts[0]["orders"] == [] and rig.posts() == [] and rig.events("action") == []  # no request
        wait_until(lambda: stale_only.json_bodies(), timeout=5)
        sent = [e for b in stale_only.json_bodies() for e in b["events"]]
        assert [e["class"] for e in sent] == ["alert"] and "giving back the day's gain" in sent[0]["text"]

        rig.sim.set_price("MES 12-26", 6019.0)  # +$380: below the floor
        for t in (5, 6, 7):
            rig.tick_at(t)
        assert [r.path for r in rig.posts(applied=True)] == ["/v1/api/accounts/Sim101/positions/flatten"]
        assert rig.quantities() == {}
        floor = rig.events("fired", rule="keep-400")
        assert len(floor) == 1 and floor[0]["inputs"]["account_pnl"] == 380.0
        assert floor[0]["threshold"]["account_pnl"]["once_above"] == 800.0

        lines = rig.events()  # the day's report says the alert sent no request
        page = report.build(report.collect(lines, report.days_in(lines)[0]), None, [], rig.clock.utc())
        assert "alert (no request; sent to the notify targets): giving back the day" in page
    finally:
        notifier.close(1)
        stale_only.close()
        rig.close()


COOLDOWN = [{"name": "mes-stop", "instruments": "MES", "when": {"position_pnl": {"below": -100}},
             "then": {"close": "all", "lock": "30m"}}]


def test_cooldown_lock_flattens_a_reentry_for_30_minutes_then_lets_it_stay(tmp_path, token):
    rig = Rig(tmp_path, token, one_position(quantity=2), COOLDOWN, **ANSWER_WAIT)
    try:
        rig.tick_at(0)
        rig.sim.set_price("MES 12-26", 5985.0)  # -$150 on 2 lots
        rig.tick_at(1)
        assert rig.quantities() == {}
        rig.sim.open_position("Sim101", "MES 12-26", "long", 1)  # revenge trade 10 minutes later: closed
        rig.tick_at(600)
        assert rig.quantities() == {}
        reentry = rig.events("fired", reason="position opened while the account is locked")
        assert len(reentry) == 1 and reentry[0]["inputs"]["locked_until"].startswith("2026-03-10T14:30:01")
        rig.sim.open_position("Sim101", "MES 12-26", "long", 1)  # after the cooldown: it stays
        rig.tick_at(1802)
        rig.tick_at(1803)
        assert rig.quantities() == {("Sim101", "MES 12-26"): 1}
        assert len(rig.posts(applied=True)) == 2  # the stop and the one re-entry
        ended = rig.events("lock_ended")
        assert [(e["rule"], e["account"], e["key"]) for e in ended] == [("mes-stop", "sim101", "mes-stop|sim101")]
        assert ended[0]["reason"].endswith("ended at " + reentry[0]["inputs"]["locked_until"])
    finally:
        rig.close()


REDUCE_ONLY = [{"name": "no-adding", "when": {"account_pnl": {"below": -100}},
                "then": {"alert": "down $100: reduce only until the week ends", "lock": {"until": "week_end", "reduce_only": True}}}]


def test_reduce_only_lock_closes_back_increases_follows_reductions_and_ends_with_the_week(tmp_path, token):
    rig = Rig(tmp_path, token, one_position(quantity=4, market=5994.0), REDUCE_ONLY, **ANSWER_WAIT)  # -$120: fires at once
    try:
        rig.tick_at(0)
        assert rig.events("fired", rule="no-adding")[0]["inputs"]["reduce_only"] is True and rig.posts() == []
        rig.sim.open_position("Sim101", "MES 12-26", "long", 2)  # adds 2: closed back to 4
        rig.tick_at(1)
        closes = rig.posts("/positions/close", applied=True)
        assert [c.body for c in closes] == [{"instrument": "MES 12-26", "quantity": 2}]
        assert rig.quantities() == {("Sim101", "MES 12-26"): 4}
        rig.sim.open_position("Sim101", "MES 12-26", "short", 3)  # the trader takes 3 off: allowed
        rig.tick_at(2)
        rig.tick_at(3)  # two snapshots agree: the lock now allows 1
        rig.stop_riskd()
        rig.start_riskd()
        rig.clock.advance_to(9 * 3600)  # past 18:00 New York: a new session, the lock runs on
        rig.sim.open_position("Sim101", "MES 12-26", "long", 1)
        rig.tick()
        closes = rig.posts("/positions/close", applied=True)
        assert [c.body for c in closes][1:] == [{"instrument": "MES 12-26", "quantity": 1}]
        assert rig.quantities() == {("Sim101", "MES 12-26"): 1}

        sunday_open = datetime(2026, 3, 15, 22, 0, tzinfo=timezone.utc)  # Sunday 18:00 New York (EDT)
        rig.clock.advance_to((sunday_open - rig.clock.start).total_seconds() + 1)
        rig.sim.open_position("Sim101", "MES 12-26", "long", 3)
        rig.tick()
        rig.tick_at((sunday_open - rig.clock.start).total_seconds() + 2)
        assert rig.quantities() == {("Sim101", "MES 12-26"): 4}  # the week ended: nothing closed
        assert len(rig.posts(applied=True)) == 2
    finally:
        rig.close()


NQ_CAP = [{"name": "nq-cap", "instruments": ["NQ", "MNQ"], "when": {"instrument_size": {"above": 5}}, "then": {"reduce_to": 5}},
          {"name": "account-cap", "when": {"account_size": {"above": 8}}, "then": {"flatten": True}}]


def test_contract_cap_counts_months_and_micros_together_and_trims_the_newest_position(tmp_path, token):
    scenario = {
        "accounts": [{"name": "Sim101", "positions": [
            {"instrument": "NQ 12-26", "side": "long", "quantity": 4, "price": 21000.0},
            {"instrument": "MNQ 12-26", "side": "long", "quantity": 8, "price": 21000.0},
            {"instrument": "ES 12-26", "side": "long", "quantity": 1, "price": 6000.0},
        ]}],
        "prices": {"NQ 12-26": 21000.0, "MNQ 12-26": 21000.0, "NQ 03-27": 21100.0, "ES 12-26": 6000.0},
    }
    rig = Rig(tmp_path, token, scenario, NQ_CAP, **ANSWER_WAIT)
    try:
        rig.tick_at(0)  # 4.8 NQ, 5.8 in all: under both caps
        assert rig.events("fired") == []
        rig.sim.open_position("Sim101", "NQ 03-27", "long", 2)  # the back month: 6.8 NQ
        rig.tick_at(1)
        rig.tick_at(2)
        closes = rig.posts("/positions/close", applied=True)
        assert [c.body for c in closes] == [{"instrument": "NQ 03-27", "quantity": 2}]  # the newest gives up the excess
        fired = rig.events("fired", rule="nq-cap")
        assert len(fired) == 1 and fired[0]["inputs"]["instrument_size"] == 6.8 and fired[0]["inputs"]["root"] == "NQ"
        assert fired[0]["inputs"]["sizes"] == {"NQ": 6.8}  # ES is outside the rule's instruments
        assert rig.quantities() == {("Sim101", "NQ 12-26"): 4, ("Sim101", "MNQ 12-26"): 8, ("Sim101", "ES 12-26"): 1}

        rig.sim.open_position("Sim101", "MNQ 12-26", "long", 5)  # 5.3 NQ: 3 micros over
        rig.tick_at(3)
        rig.tick_at(4)
        assert [c.body for c in rig.posts("/positions/close", applied=True)][1:] == [{"instrument": "MNQ 12-26", "quantity": 3}]
        assert rig.quantities()[("Sim101", "MNQ 12-26")] == 10

        rig.sim.open_position("Sim101", "ES 12-26", "long", 3)  # 5 NQ + 4 ES = 9 > 8 in all: flatten the account
        rig.tick_at(5)
        rig.tick_at(6)
        assert [r.path for r in rig.posts("/positions/flatten", applied=True)] == ["/v1/api/accounts/Sim101/positions/flatten"]
        assert rig.posts("/positions/flatten")[0].body == {}  # the whole of this one account: no instrument
    finally:
        rig.close()


def test_riskd_once_explains_floors_and_caps_and_an_alert_sends_nothing(tmp_path, sim_factory, token):
    from conftest import run_cli, write_policy

    scenario = {"accounts": [{"name": "Sim101", "positions": [
        {"instrument": "NQ 12-26", "side": "long", "quantity": 4, "price": 21000.0},
        {"instrument": "MNQ 12-26", "side": "long", "quantity": 8, "price": 21000.0}]}],
        "prices": {"NQ 12-26": 20990.0, "MNQ 12-26": 20990.0}}  # 4 x $20 x -10 + 8 x $2 x -10 = -$960
    sim, server = sim_factory(scenario)
    rules = [
        {"name": "keep-400", "when": {"account_pnl": {"below": 400, "once_above": 800}}, "then": {"flatten": True}},
        {"name": "nq-cap", "when": {"instrument_size": {"above": 5}}, "then": {"reduce_to": 5}},
        {"name": "warn", "when": {"account_pnl": {"below": -700}}, "then": {"alert": "down $700", "lock": {"until": "1h", "reduce_only": True}}},
    ]
    result = run_cli("once", "-c", str(write_policy(tmp_path, server.base_url, rules)), env={"CROSSTRADE_TOKEN": token})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "account_pnl=-960.00  (below 400.00 once the peak reached 800.00 (peak 0.00))  inactive until the session P&L reaches 800.00" in out
    assert "instrument_size=4.80  (above 5 full-size contract(s), NQ and its micros)  more than 0.2 contract(s) to go" in out
    assert "fire       warn" in out and "alert" in out
    assert [r.method for r in sim.request_log()] == ["GET"]  # the alert sent no request


def test_riskd_check_refuses_contradictory_limits_with_every_location(tmp_path):
    from conftest import run_cli, write_policy

    config = write_policy(tmp_path, "http://127.0.0.1:9", "rules:\n"
                          "  - name: floor\n    when: {account_pnl: {below: 900, once_above: 800}}\n    then: {flatten: true}\n"
                          "  - name: cap\n    when: {instrument_size: {above: 5}}\n    then: {close: 50%}\n"
                          "  - name: cool\n    when: {account_pnl: {below: -1}}\n    then: {alert: hi, lock: 30m}\n")
    result = run_cli("check", "-c", str(config))
    assert result.returncode == 78
    policy = tmp_path / "rules" / "policy.yaml"
    lines = [line for line in result.stderr.splitlines() if line.startswith(str(policy))]
    assert [line.split(": ", 3)[:3] for line in lines] == [
        [f"{policy}:3:50", "rule floor", "when.account_pnl.once_above"],
        [f"{policy}:7:19", "rule cap", "then.close"],
        [f"{policy}:10:29", "rule cool", "then.lock"],
    ]
