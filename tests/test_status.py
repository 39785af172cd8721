"""`riskd status`'s view (riskd.status): built from what the ticker persisted (state, last snapshot,
health), read from the state store while the ticker still has it open, never from the API."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from riskd import status
from riskd.state import Store

from harness import Rig, one_position

RULES = [
    {"name": "loss", "when": {"account_pnl": {"below": -500}}, "then": {"flatten": True, "lock": {"undo": "never"}}},
    {"name": "cap", "instruments": "MES", "when": {"position_size": {"above": 10}}, "then": {"reduce_to": 10}},
    {"name": "trim", "when": {"at": "15:55"}, "then": {"close": "50%"}},
    {"name": "slow", "when": {"position_size": {"above": 1}, "for": "30s"}, "then": {"close": 1}, "dry_run": True},
]


def _view(rig: Rig, **kw) -> dict:
    seen = Store.peek_view(rig.settings.state_dir)  # read-only, beside the open writer
    assert seen is not None
    return status.build(rig.rules, seen["state"], seen["snapshot"], seen["health"], rig.clock.utc(), rig.settings.engine,
                        snapshot_at=seen["snapshot_at"], commands=seen["commands"], **kw)


def test_status_shows_figures_positions_rule_states_and_distances_in_dollars_and_percent(tmp_path, token):
    rig = Rig(tmp_path, token, one_position(quantity=4, market=5990.0), RULES)  # -$200
    try:
        assert Store.peek_view(rig.settings.state_dir)["snapshot"] is None  # nothing polled yet
        rig.tick_at(1)
        rig.tick_at(2)
        view = _view(rig)
        (account,) = view["accounts"]
        assert (account["account"], account["pnl"], account["net_liquidation"]) == ("Sim101", -200.0, 50000.0 - 200.0)
        assert [(p["instrument"], p["side"], p["quantity"]) for p in account["positions"]] == [("MES 12-26", "Long", 4)]
        assert (account["week_pnl"], account["cash_value"]) == (0.0, 50000.0)  # the API's weeklyProfitLoss and cashValue
        states = {r["rule"]: r for r in account["rules"]}
        assert states["loss"]["state"] == "armed"
        assert states["loss"]["conditions"][0] | {} == {"name": "account_pnl", "seen": -200.0, "threshold": "below -500.00",
                                                          "holds": False, "distance": "$300.00 to go", "gap": 300.0, "unit": "$",
                                                          "gap_percent": 60.0}
        assert states["cap"]["conditions"][0]["distance"] == "7 contract(s) to go"
        assert states["slow"]["state"] == "pending" and states["slow"]["dry_run"] is True
        assert states["trim"]["state"] == "timed"
        assert [t["rule"] for t in view["next_timed"]] == ["trim"] and view["next_timed"][0]["at"].startswith("2026-03-10T15:55")
        assert view["health"]["stale"] is False and view["daemon"]["running"] is True
        text = status.render(view)
        assert "account Sim101: session P&L -200.00" in text and "$300.00 to go (60% of the limit left)" in text
    finally:
        rig.close()


def test_status_shows_a_rule_lock_with_its_end_paused_rules_and_a_silent_daemon(tmp_path, token):
    rig = Rig(tmp_path, token, one_position(quantity=4, market=5870.0), RULES)  # -$2600: loss fires and locks
    try:
        rig.tick_at(1)
        rig.tick_at(7)  # the health row and snapshot are saved at most every 5 s
        assert rig.ticker is not None and rig.store is not None
        state = rig.ticker.state
        paused_until = (rig.clock.utc() + timedelta(hours=1)).isoformat()
        rig.store.save(replace(state, paused={"cap": paused_until}), rig.clock.utc())  # as `riskd pause cap --for 1h` leaves it
        view = _view(rig)
        (account,) = view["accounts"]
        assert account["positions"] == []
        assert account["locks"] == [{"by": "loss", "since": account["locks"][0]["since"], "until": view["session_end"], "undo": "never"}]
        assert {r["rule"]: r["state"] for r in account["rules"]}["loss"] == "locked"
        assert view["paused"] == [{"rule": "cap", "until": paused_until}]
        assert "LOCKED by loss until" in status.render(view) and "cannot be undone" in status.render(view)

        rig.clock.advance(60)  # no tick for a minute: the daemon is not heard from
        assert "NOT RUNNING?" in status.render(_view(rig))
    finally:
        rig.close()


def test_a_week_or_cash_figure_the_api_leaves_out_shows_as_unknown_and_never_makes_the_account_unreadable():
    from datetime import datetime, timezone

    from riskd.crosstrade import parse_snapshot

    entry = {"account": {"name": "Sim101", "item": {"realizedProfitLoss": -50.0, "weeklyProfitLoss": None, "cashValue": "n/a"}},
             "positions": []}
    snapshot = parse_snapshot({"accounts": [entry]}, datetime(2026, 3, 10, 14, 0, tzinfo=timezone.utc))
    (account,) = snapshot.accounts
    assert (account.realized_pnl, account.week_pnl, account.cash_value) == (-50.0, None, None) and not snapshot.unknown
    assert type(snapshot).from_json(snapshot.as_json()) == snapshot
