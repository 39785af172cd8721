"""Tests for riskd.sim: real HTTP (httpx) against a SimServer on 127.0.0.1, with a fake clock."""

from __future__ import annotations

import json
import math
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime

import httpx
import pytest

from riskd.sim import DEMO_SCENARIO, Fault, SimServer, Simulator, load_scenario, serve, validate_scenario

from harness import FakeClock

ITEM_KEYS = {
    "buyingPower", "cashValue", "commission", "dailyLossLimit", "dailyProfitTrigger",
    "excessInitialMargin", "excessIntradayMargin", "excessMaintenanceMargin", "excessPositionMargin",
    "fee", "grossRealizedProfitLoss", "initialMargin", "intradayMargin", "longOptionValue",
    "longStockValue", "lookAheadMaintenanceMargin", "maintenanceMargin", "netLiquidation",
    "netLiquidationByCurrency", "positionMargin", "realizedProfitLoss", "shortOptionValue",
    "shortStockValue", "sodCashValue", "sodLiquidatingValue", "totalCashBalance",
    "trailingMaxDrawdown", "unrealizedProfitLoss", "weeklyLossLimit", "weeklyProfitLoss",
    "weeklyProfitTrigger",
}
ACCOUNT_KEYS = {
    "id", "name", "displayName", "primaryUser", "provider", "denomination", "status", "dailyLossLimit",
    "minCashValue", "maxOrderSize", "maxPositionSize", "connection", "connectionStatus",
    "lastTransactionSum", "item",
}
POSITION_KEYS = {
    "type", "account", "instrument", "instrumentType", "marketPosition", "quantity", "averagePrice",
    "marketPrice", "unrealizedProfitLoss",
}

BASIC = {
    "rate_limit": None,
    "commission_per_contract": 0.5,
    "accounts": [
        {
            "name": "Sim101",
            "cash": 50000,
            "positions": [
                {"instrument": "MES 12-26", "side": "long", "quantity": 4, "price": 6000.0},
                {"instrument": "ES 12-26", "side": "short", "quantity": 3, "price": 6010.0},
            ],
            "orders": [
                {"instrument": "MES 12-26", "action": "Sell", "type": "StopMarket", "quantity": 4, "stop": 5950},
                {"instrument": "ES 12-26", "action": "Buy", "type": "StopMarket", "quantity": 3, "stop": 6050},
            ],
        },
        {
            "name": "Sim102",
            "cash": 25000,
            "positions": [{"instrument": "NQ 12-26", "side": "long", "quantity": 1, "price": 21000.0}],
        },
        {"name": "Sim103", "cash": 10000},
    ],
    "prices": {"MES 12-26": 5990.0, "ES 12-26": 6000.0, "NQ 12-26": 21010.0},
}


class Env:
    def __init__(self, scenario, clock: FakeClock):
        self.token = secrets.token_urlsafe()
        self.clock = clock
        self.sim = Simulator(scenario, token=self.token, clock=clock)
        self.server = SimServer(self.sim, host="127.0.0.1", port=0).start()
        self.client = httpx.Client(base_url=self.server.base_url, timeout=5.0,
                                   headers={"Authorization": f"Bearer {self.token}"})

    def get(self, path, **kw):
        return self.client.get(path, **kw)

    def post(self, path, body=None, **kw):
        return self.client.post(path, json=body, **kw)

    def close(self):
        self.client.close()
        self.server.stop()


@pytest.fixture
def make():
    envs = []

    def factory(scenario=BASIC, clock=None):
        env = Env(scenario, clock or FakeClock())
        envs.append(env)
        return env

    yield factory
    for env in envs:
        env.close()


@pytest.fixture
def env(make):
    return make()


# ------------------------------------------------------------------ shapes and P&L


def test_snapshot_shape_and_pnl(env):
    r = env.get("/accounts/snapshot")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    data = r.json()
    assert data["type"] == "snapshot"
    ts = datetime.fromisoformat(data["timestamp"])
    assert ts.utcoffset() is not None
    assert isinstance(data["epoch"], int) and abs(data["epoch"] / 1000 - time.time()) < 60
    accounts = {a["account"]["name"]: a for a in data["accounts"]}
    assert list(accounts) == ["Sim101", "Sim102", "Sim103"]

    acc = accounts["Sim101"]["account"]
    assert set(acc) == ACCOUNT_KEYS | {"type", "isAccountFlat"}
    assert acc["type"] == "NinjaTrader.Cbi.Account" and acc["isAccountFlat"] is False
    assert (acc["provider"], acc["denomination"], acc["status"], acc["connectionStatus"]) == (
        "Simulator", "UsDollar", "Enabled", "Connected")
    assert set(acc["item"]) == ITEM_KEYS
    assert all(isinstance(v, float) for v in acc["item"].values())
    assert accounts["Sim103"]["account"]["isAccountFlat"] is True
    assert accounts["Sim103"]["positions"] == []

    pos = {p["instrument"]: p for p in accounts["Sim101"]["positions"]}
    mes, es = pos["MES 12-26"], pos["ES 12-26"]
    assert set(mes) == POSITION_KEYS
    assert mes == {
        "type": "NinjaTrader.Cbi.Position", "account": "Sim101", "instrument": "MES 12-26",
        "instrumentType": "Future", "marketPosition": "Long", "quantity": 4, "averagePrice": 6000.0,
        "marketPrice": 5990.0, "unrealizedProfitLoss": -200.0,  # (5990-6000)*4*5
    }
    assert es["marketPosition"] == "Short" and es["quantity"] == 3
    assert es["unrealizedProfitLoss"] == pytest.approx(1500.0)  # short: (6010-6000)*3*50
    assert isinstance(es["averagePrice"], float) and isinstance(es["unrealizedProfitLoss"], float)
    item = acc["item"]
    assert item["unrealizedProfitLoss"] == pytest.approx(1300.0)
    assert item["netLiquidation"] == pytest.approx(51300.0)
    assert item["realizedProfitLoss"] == 0.0 and item["commission"] == 0.0


def test_end_session_settles_realized_pnl_into_the_opening_balance_and_weekly_profit_loss_spans_the_week(env):
    sim = env.sim

    def item():
        accounts = {a["account"]["name"]: a["account"]["item"] for a in env.get("/accounts/snapshot").json()["accounts"]}
        return accounts["Sim103"]

    sim.open_position("Sim103", "ES 12-26", "long", 1, price=6000.0)
    sim.open_position("Sim103", "ES 12-26", "short", 1, price=6010.0)  # +500
    first = item()
    sim.end_session()
    sim.open_position("Sim103", "ES 12-26", "long", 1, price=6000.0)
    sim.open_position("Sim103", "ES 12-26", "short", 1, price=5996.0)  # -200
    now = item()
    settled = first["realizedProfitLoss"] - first["commission"]
    assert first["realizedProfitLoss"] == 500.0 and now["realizedProfitLoss"] == -200.0
    assert now["sodCashValue"] == 10000.0 + settled
    assert now["netLiquidation"] == pytest.approx(10000.0 + settled - 200.0 - now["commission"])
    assert now["weeklyProfitLoss"] == pytest.approx(settled - 200.0 - now["commission"])
    sim.end_session(new_week=True)
    after = item()
    assert (after["realizedProfitLoss"], after["commission"], after["weeklyProfitLoss"]) == (0.0, 0.0, 0.0)
    assert after["sodCashValue"] == pytest.approx(now["netLiquidation"])


def test_account_endpoints(env):
    accounts = env.get("/accounts").json()
    assert accounts["success"] is True
    assert [a["name"] for a in accounts["accounts"]] == ["Sim101", "Sim102", "Sim103"]
    assert set(accounts["accounts"][0]) == ACCOUNT_KEYS

    one = env.get("/accounts/sim102").json()  # case-insensitive
    assert one["success"] is True and one["name"] == "Sim102" and set(one) == ACCOUNT_KEYS | {"success"}
    assert one["item"]["unrealizedProfitLoss"] == pytest.approx(200.0)

    positions = env.get("/accounts/SIM101/positions").json()
    assert positions["success"] is True and len(positions["positions"]) == 2

    allpos = env.get("/positions", params={"includeFlat": "false"}).json()
    assert allpos["success"] is True and allpos["count"] == 3 == len(allpos["positions"])
    assert all(p["tag"] is None and set(p) == POSITION_KEYS | {"tag"} for p in allpos["positions"])

    one_pos = env.get("/accounts/Sim101/position", params={"instrument": "MES 12-26"}).json()
    assert one_pos["success"] is True and one_pos["instrument"] == "MES 12-26" and one_pos["quantity"] == 4
    by_root = env.get("/accounts/Sim101/position", params={"instrument": "es"}).json()
    assert by_root["instrument"] == "ES 12-26"
    r = env.get("/accounts/Sim101/position", params={"instrument": "NQ 12-26"})
    assert r.status_code == 400 and r.json() == {"error": "No positions found for instrument 'NQ 12-26'"}

    orders = env.get("/accounts/Sim101/orders").json()
    assert orders["success"] is True and len(orders["orders"]) == 2
    o = orders["orders"][0]
    assert set(o) == {"orderId", "account", "instrument", "action", "orderType", "quantity", "limitPrice",
                      "stopPrice", "orderState"}
    assert (o["instrument"], o["action"], o["orderType"], o["quantity"], o["stopPrice"], o["orderState"]) == (
        "MES 12-26", "Sell", "StopMarket", 4, 5950.0, "Working")


def test_watermarks_track_highs(env):
    env.sim.set_price("NQ 12-26", 21100.0)  # +2000
    w = env.get("/accounts/Sim102/watermarks").json()
    assert w["success"] is True
    assert w["unrealized"] == pytest.approx(2000.0) and w["total"] == pytest.approx(2000.0)
    assert w["poscount"] == 1 and w["netliq"] == pytest.approx(27000.0)
    env.sim.set_price("NQ 12-26", 20950.0)  # -1000
    w = env.get("/accounts/Sim102/watermarks").json()
    assert w["total"] == pytest.approx(-1000.0)
    assert w["pnlhigh"] == pytest.approx(2000.0) and w["unrealhigh"] == pytest.approx(2000.0)
    assert w["netliqhigh"] == pytest.approx(27000.0) and w["pnl"] == 0.0


# ------------------------------------------------------------------ close semantics


def test_close_all_realizes_pnl_with_commission(env):
    r = env.post("/accounts/Sim101/positions/close", {"instrument": "MES 12-26"})
    assert r.status_code == 200
    body = r.json()
    assert body["success"] is True
    assert body["closedPositions"] == [{
        "type": "NinjaTrader.Cbi.Position", "account": "Sim101", "instrument": "MES 12-26",
        "instrumentType": "Future", "marketPosition": "Long", "quantity": 4, "averagePrice": 6000.0,
        "marketPrice": 5990.0, "unrealizedProfitLoss": -200.0,
    }]
    assert [p["instrument"] for p in env.sim.positions("Sim101")] == ["ES 12-26"]
    pnl = env.sim.account_pnl("Sim101")
    assert pnl["realized"] == pytest.approx(-200.0)
    assert pnl["commission"] == pytest.approx(2.0)  # 4 contracts * 0.5
    item = env.get("/accounts/Sim101").json()["item"]
    assert item["realizedProfitLoss"] == pytest.approx(-200.0) == item["grossRealizedProfitLoss"]
    assert item["commission"] == pytest.approx(2.0)
    assert item["netLiquidation"] == pytest.approx(50000 - 200 - 2 + 1500)
    # closing does NOT cancel working orders
    assert len(env.sim.orders("Sim101")) == 2


@pytest.mark.parametrize("size,percent,closed", [(3, 0.5, 2), (1, 0.1, 1), (10, 0.3, 3), (4, 1.0, 4), (4, 0.25, 1)])
def test_close_percent_is_a_fraction_rounded_up(make, size, percent, closed):
    env = make({"rate_limit": None, "accounts": [{"name": "Sim101", "positions": [
        {"instrument": "MES 12-26", "side": "long", "quantity": size, "price": 6000}]}]})
    body = env.post("/accounts/Sim101/positions/close", {"instrument": "MES 12-26", "percent": percent}).json()
    assert body["success"] is True and body["closedPositions"][0]["quantity"] == size
    left = env.sim.positions("Sim101")
    assert (left[0]["quantity"] if left else 0) == size - closed


def test_close_quantity_capped_and_wins_over_percent(env):
    body = env.post("/accounts/Sim101/positions/close",
                    {"instrument": "MES 12-26", "quantity": 1, "percent": 1.0}).json()
    assert body["success"] is True
    assert env.sim.positions("Sim101")[0]["quantity"] == 3
    body = env.post("/accounts/Sim101/positions/close", {"instrument": "MES 12-26", "quantity": 99}).json()
    assert body["closedPositions"][0]["quantity"] == 3
    assert [p["instrument"] for p in env.sim.positions("Sim101")] == ["ES 12-26"]
    assert env.sim.account_pnl("Sim101")["commission"] == pytest.approx(4 * 0.5)


@pytest.mark.parametrize("extra", [{"percent": 50}, {"percent": 0}, {"percent": -0.5}, {"quantity": 0},
                                   {"quantity": -2}, {"quantity": 1.5}, {"percent": "half"}])
def test_close_invalid_arguments(env, extra):
    r = env.post("/accounts/Sim101/positions/close", {"instrument": "MES 12-26", **extra})
    assert r.status_code == 400
    body = r.json()
    assert body["success"] is False and body["error"] == "invalid_argument" and body["detail"]
    assert env.sim.positions("Sim101")[0]["quantity"] == 4


def test_close_nothing_open_is_400_no_positions(env):
    r = env.post("/accounts/Sim101/positions/close", {"instrument": "ES 12-24"})
    assert r.status_code == 400
    assert r.json() == {"error": "No positions found for instrument 'ES 12-24'"}
    r = env.post("/accounts/Sim103/positions/close", {"instrument": "MES"})
    assert r.json() == {"error": "No positions found for instrument 'MES'"}


def test_partial_close_leaves_orders_and_cancel_by_instrument(env):
    env.post("/accounts/Sim101/positions/close", {"instrument": "MES 12-26", "percent": 0.5})
    assert env.sim.positions("Sim101")[0]["quantity"] == 2
    orders = env.get("/accounts/Sim101/orders").json()["orders"]
    assert len(orders) == 2
    mes_id = next(o["orderId"] for o in orders if o["instrument"] == "MES 12-26")
    r = env.post("/accounts/Sim101/orders/cancel", {"instrument": "MES 12-26"})
    assert r.json() == {"orderIds": [mes_id], "success": True}
    assert [o["instrument"] for o in env.sim.orders("Sim101")] == ["ES 12-26"]
    assert env.post("/accounts/Sim101/orders/cancel", {}).json()["success"] is True
    assert env.sim.orders("Sim101") == []


def test_account_flatten_closes_positions_and_cancels_orders(env):
    oid = env.sim.add_order("Sim102", "NQ 12-26", action="Sell", order_type="StopMarket", quantity=1,
                            stop_price=20900.0)
    body = env.post("/accounts/Sim101/positions/flatten", {"instrument": "MES 12-26"}).json()
    assert body["success"] is True and [p["instrument"] for p in body["closedPositions"]] == ["MES 12-26"]
    assert [o["instrument"] for o in env.sim.orders("Sim101")] == ["ES 12-26"]

    body = env.post("/accounts/Sim101/positions/flatten", {}).json()
    assert [p["instrument"] for p in body["closedPositions"]] == ["ES 12-26"]
    assert set(body) == {"closedPositions", "success"}
    assert env.sim.positions("Sim101") == [] and env.sim.orders("Sim101") == []
    snap = env.get("/accounts/snapshot").json()
    assert snap["accounts"][0]["account"]["isAccountFlat"] is True
    # already flat: success with an empty list; other accounts untouched
    assert env.post("/accounts/Sim101/positions/flatten", {}).json() == {"closedPositions": [], "success": True}
    assert len(env.sim.positions("Sim102")) == 1 and env.sim.orders("Sim102")[0]["orderId"] == oid
    # the closed instruments now show up as Flat with includeFlat=true
    flat = env.get("/positions", params={"includeFlat": "true"}).json()["positions"]
    assert {(p["instrument"], p["marketPosition"], p["quantity"]) for p in flat if p["account"] == "Sim101"} == {
        ("MES 12-26", "Flat", 0), ("ES 12-26", "Flat", 0)}


def test_global_flatten_empty_body_flattens_every_account(env):
    r = env.client.post("/positions/flatten")  # no body at all
    body = r.json()
    assert r.status_code == 200 and body["success"] is True
    assert len(body["closedPositions"]) == 3 and len(body["orderIds"]) == 2
    assert env.sim.positions() == [] and env.sim.orders() == []
    rec = [x for x in env.sim.requests if x.path == "/v1/api/positions/flatten"]
    assert len(rec) == 1 and rec[0].method == "POST" and rec[0].body is None and rec[0].status == 200


def test_global_flatten_filters(env):
    body = env.post("/positions/flatten", {"account": "sim101", "marketPosition": "short"}).json()
    assert [p["instrument"] for p in body["closedPositions"]] == ["ES 12-26"]
    assert len(body["orderIds"]) == 1
    assert [p["instrument"] for p in env.sim.positions()] == ["MES 12-26", "NQ 12-26"]
    body = env.post("/positions/flatten", {"instrument": "NQ"}).json()
    assert [p["instrument"] for p in body["closedPositions"]] == ["NQ 12-26"]
    r = env.post("/positions/flatten", {"account": "Sim999"})
    assert r.status_code == 404 and r.json()["error"] == "invalid_account"
    r = env.post("/positions/flatten", {"marketPosition": "sideways"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_argument"
    assert [p["instrument"] for p in env.sim.positions()] == ["MES 12-26"]


def test_root_matching_never_matches_longer_roots(make):
    env = make({"rate_limit": None, "point_values": {"MESX": 5},
                "accounts": [{"name": "Sim101", "positions": [
                    {"instrument": "MESX 12-26", "side": "long", "quantity": 2, "price": 100},
                    {"instrument": "MES 03-27", "side": "long", "quantity": 1, "price": 6000},
                    {"instrument": "MES 12-26", "side": "long", "quantity": 3, "price": 6000}]}]})
    # root -> front month of that root, never MESX
    body = env.post("/accounts/Sim101/positions/close", {"instrument": "mes"}).json()
    assert [p["instrument"] for p in body["closedPositions"]] == ["MES 12-26"]
    body = env.post("/accounts/Sim101/positions/close", {"instrument": "MES"}).json()
    assert [p["instrument"] for p in body["closedPositions"]] == ["MES 03-27"]
    r = env.post("/accounts/Sim101/positions/close", {"instrument": "MES"})
    assert r.status_code == 400 and r.json() == {"error": "No positions found for instrument 'MES'"}
    assert [(p["instrument"], p["quantity"]) for p in env.sim.positions()] == [("MESX 12-26", 2)]
    # month-code form
    body = env.post("/accounts/Sim101/positions/close", {"instrument": "MESXZ26"}).json()
    assert [p["instrument"] for p in body["closedPositions"]] == ["MESX 12-26"]


def test_open_position_controls(make):
    env = make({"rate_limit": None, "commission_per_contract": 1.0, "accounts": [{"name": "Sim101"}]})
    sim = env.sim
    sim.open_position("Sim101", "MES 12-26", side="long", quantity=2, price=6000.0)
    sim.open_position("Sim101", "MES 12-26", side="long", quantity=2, price=6010.0)
    assert sim.positions("Sim101")[0]["averagePrice"] == pytest.approx(6005.0)
    sim.set_price("MES 12-26", 6020.0)
    sim.open_position("Sim101", "MES 12-26", side="short", quantity=1)  # reduce at market
    pos = sim.positions("Sim101")[0]
    assert (pos["marketPosition"], pos["quantity"], pos["averagePrice"]) == ("Long", 3, 6005.0)
    pnl = sim.account_pnl("Sim101")
    assert pnl["realized"] == pytest.approx(75.0) and pnl["commission"] == pytest.approx(5.0)
    assert pnl["unrealized"] == pytest.approx(225.0) and pnl["total"] == pytest.approx(300.0)
    sim.open_position("Sim101", "MES 12-26", side="short", quantity=5, price=6020.0)  # flips
    pos = sim.positions("Sim101")[0]
    assert (pos["marketPosition"], pos["quantity"], pos["averagePrice"]) == ("Short", 2, 6020.0)


EXECUTION_KEYS = {
    "id", "type", "time", "epoch", "name", "orderId", "account", "serverName", "instrument", "instrumentType",
    "position", "marketPosition", "positionStrategy", "price", "quantity",
}


def test_executions_record_every_fill(make):
    env = make({**BASIC, "commission_per_contract": 0.0})
    wall0 = int(time.time() * 1000)
    assert env.get("/accounts/Sim101/executions").json() == {"executions": []}  # scenario positions are no fills
    env.sim.open_position("Sim101", "MES 12-26", side="long", quantity=2, price=5995.0)  # adds: Entry
    env.post("/accounts/Sim101/positions/close", {"instrument": "MES 12-26", "quantity": 1})  # Exit 1 @ 5990
    env.sim.open_position("Sim101", "NQ 12-26", side="short", quantity=1, price=21010.0)  # opens: Entry
    env.sim.open_position("Sim101", "NQ 12-26", side="long", quantity=3, price=21000.0)  # flips: Exit + Entry
    env.post("/accounts/Sim101/positions/flatten", {})  # Exit MES 5, Exit ES 3, Exit NQ 2
    wall1 = int(time.time() * 1000)
    r = env.get("/accounts/Sim101/executions")
    assert r.status_code == 200 and set(r.json()) == {"executions"}
    ex = r.json()["executions"]
    assert all(set(e) == EXECUTION_KEYS for e in ex)
    assert [(e["name"], e["instrument"], e["marketPosition"], e["quantity"], e["position"], e["price"]) for e in ex] == [
        ("Entry", "MES 12-26", "Long", 2, 6, 5995.0),
        ("Exit", "MES 12-26", "Short", 1, 5, 5990.0),
        ("Entry", "NQ 12-26", "Short", 1, 1, 21010.0),
        ("Exit", "NQ 12-26", "Long", 1, 0, 21000.0),
        ("Entry", "NQ 12-26", "Long", 2, 2, 21000.0),
        ("Exit", "MES 12-26", "Short", 5, 0, 5990.0),
        ("Exit", "ES 12-26", "Long", 3, 0, 6000.0),
        ("Exit", "NQ 12-26", "Short", 2, 0, 21010.0),
    ]
    assert ex[3]["orderId"] == ex[4]["orderId"]  # one order flipped the position
    assert len({e["id"] for e in ex}) == len(ex) and all(int(e["id"], 16) >= 0 for e in ex)
    for e in ex:
        assert e["type"] == "NinjaTrader.Cbi.Execution" and e["account"] == "Sim101"
        assert e["instrumentType"] == "Future" and e["positionStrategy"] == 0 and isinstance(e["serverName"], str)
        assert isinstance(e["epoch"], int) and wall0 <= e["epoch"] <= wall1  # the snapshot's (wall) time base
        assert "+" not in e["time"] and not e["time"].endswith("Z") and len(e["time"].split(".")[1]) == 7
        local = datetime.fromisoformat(e["time"][:26])  # naive local time, same moment as epoch
        assert abs(local.timestamp() * 1000 - e["epoch"]) < 2
    assert env.get("/accounts/snapshot").json()["epoch"] >= ex[-1]["epoch"]
    assert env.get("/accounts/Sim102/executions").json() == {"executions": []}
    assert len(env.sim.executions()) == len(ex)


def test_executions_lookback_on_the_sim_clock(make):
    clock = FakeClock()
    env = make(BASIC, clock)
    env.post("/accounts/Sim101/positions/close", {"instrument": "MES 12-26"})
    clock.advance(400)
    env.post("/accounts/Sim101/positions/close", {"instrument": "ES 12-26"})
    names = lambda q="": [e["instrument"] for e in env.get("/accounts/Sim101/executions" + q).json()["executions"]]
    assert names() == ["ES 12-26"]  # default 320 s
    assert names("?lookbackTime=900") == ["MES 12-26", "ES 12-26"]
    assert names("?lookbackTime=399") == ["ES 12-26"]
    for bad in ("901", "0", "-5", "abc", "1.5", ""):
        r = env.get("/accounts/Sim101/executions", params={"lookbackTime": bad})
        assert r.status_code == 400 and r.json()["error"] == "invalid_argument" and "900" in r.json()["detail"]
    assert env.get("/accounts/Nope/executions").status_code == 404
    assert env.post("/accounts/Sim101/executions").status_code == 405
    clock.advance(600)  # the MES fill is now older than the max lookback: forgotten
    env.sim.open_position("Sim101", "NQ 12-26", side="short", quantity=1)
    assert [e["instrument"] for e in env.sim.executions("Sim101")] == ["ES 12-26", "NQ 12-26"]


# ------------------------------------------------------------------ auth, rate limit, errors


def test_bad_or_missing_token_is_401(env):
    expected = {"success": False, "error": "unauthorized", "detail": "Invalid or missing API key"}
    r = httpx.get(env.server.base_url + "/accounts")
    assert r.status_code == 401 and r.json() == expected
    r = httpx.get(env.server.base_url + "/accounts", headers={"Authorization": f"Bearer {secrets.token_urlsafe()}"})
    assert r.status_code == 401 and r.json() == expected
    r = httpx.post(env.server.base_url + "/positions/flatten", json={},
                   headers={"Authorization": f"Basic {env.token}"})
    assert r.status_code == 401
    assert env.sim.positions() != []  # nothing was flattened
    assert [x.status for x in env.sim.requests] == [401, 401, 401]
    assert all(env.token not in repr(x) for x in env.sim.requests)


def test_rate_limit_bucket_and_refill(make):
    clock = FakeClock()
    env = make({**BASIC, "rate_limit": {"per_second": 3, "burst": 20}}, clock)
    bad = {"Authorization": "Bearer nope"}
    for _ in range(5):  # 401s do not consume
        assert env.client.get("/accounts", headers=bad).status_code == 401
    codes = [env.get("/accounts").status_code for _ in range(21)]
    assert codes == [200] * 20 + [429]
    r = env.get("/accounts")
    assert r.status_code == 429 and r.json() == {"error": "Rate limit exceeded"}
    clock.advance(1.0)  # refill 3
    assert [env.get("/accounts").status_code for _ in range(4)] == [200, 200, 200, 429]
    clock.advance(100.0)  # capped at burst
    assert [env.get("/accounts").status_code for _ in range(21)] == [200] * 20 + [429]
    assert env.sim.requests[-1].status == 429
    env.sim.set_rate_limit(None)
    assert env.get("/accounts").status_code == 200


def test_default_rate_limit_and_null(make):
    env = make({"accounts": [{"name": "Sim101"}]})  # default: burst 20, 3/s
    assert [env.get("/accounts").status_code for _ in range(21)][-2:] == [200, 429]
    env2 = make({"rate_limit": None, "accounts": [{"name": "Sim101"}]})
    assert {env2.get("/accounts").status_code for _ in range(30)} == {200}


def test_unknown_path_bad_json_unknown_account(env):
    r = env.get("/accounts/Sim101/positons")
    assert r.status_code == 404
    body = r.json()
    assert body["success"] is False and body["error"] == "not_found" and body["detail"]
    assert body["did_you_mean"] == "/v1/api/accounts/Sim101/positions"
    assert env.get("/acounts/snapshot").json()["did_you_mean"] == "/v1/api/accounts/snapshot"
    r = env.client.post("/accounts/Sim101/positions/close", content=b'{"instrument": ',
                        headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json()["success"] is False and r.json()["error"] == "invalid_json" and r.json()["detail"]
    r = env.get("/accounts/Sim999/positions")
    assert r.status_code == 404
    assert r.json() == {"success": False, "error": "invalid_account", "detail": "Account Sim999 not found"}


def test_request_log_records_everything(env):
    env.get("/accounts/Sim101/position", params={"instrument": "MES 12-26"})
    env.post("/accounts/Sim101/positions/close", {"instrument": "MES 12-26", "percent": 0.5})
    log = env.sim.request_log()
    assert [(r.method, r.path, r.status) for r in log] == [
        ("GET", "/v1/api/accounts/Sim101/position", 200),
        ("POST", "/v1/api/accounts/Sim101/positions/close", 200)]
    assert log[0].query == {"instrument": "MES 12-26"} and log[0].body is None
    assert log[1].body == {"instrument": "MES 12-26", "percent": 0.5} and log[1].fault is None
    assert log[1].t == env.clock.t
    log[1].body["instrument"] = "changed"  # a copy
    assert env.sim.requests[1].body["instrument"] == "MES 12-26"


def test_keep_alive_reuses_one_connection(env):
    for _ in range(5):
        assert env.get("/accounts").status_code == 200
    assert len(env.server._conns) == 1


# ------------------------------------------------------------------ faults


def test_fault_status_defaults_and_retry_after(env):
    env.sim.inject(Fault(kind="status", status=408, match="GET /accounts/snapshot", count=1))
    r = env.get("/accounts/snapshot")
    assert r.status_code == 408
    assert r.json() == {"success": False, "error": "ninjatrader_disconnected", "detail": "NinjaTrader is not connected"}
    assert env.get("/accounts/snapshot").status_code == 200  # count expired
    assert env.get("/accounts").status_code == 200  # never matched

    env.sim.inject(Fault(kind="status", status=429, retry_after=2, count=1))
    r = env.get("/accounts")
    assert r.status_code == 429 and r.json() == {"error": "Rate limit exceeded"} and r.headers["Retry-After"] == "2"
    env.sim.inject(Fault(kind="status", status=500, match="POST */positions/close", count=1))
    r = env.post("/accounts/Sim101/positions/close", {"instrument": "MES 12-26"})
    assert r.status_code == 500 and r.json() == {"error": "Internal Server Error"}
    assert env.sim.positions("Sim101")[0]["quantity"] == 4  # not applied
    env.sim.inject(Fault(kind="status", status=503, body={"oops": True}, count=1))
    assert env.get("/accounts").json() == {"oops": True}
    log = env.sim.requests
    assert [(r.status, r.fault) for r in log] == [
        (408, "status"), (200, None), (200, None), (429, "status"), (500, "status"), (503, "status")]


def test_fault_time_window_uses_sim_clock(make):
    clock = FakeClock()
    env = make({**BASIC, "faults": [
        {"kind": "status", "status": 408, "match": "GET /accounts/snapshot", "start": "10s", "duration": "5s"}]},
        clock)
    assert env.get("/accounts/snapshot").status_code == 200
    clock.advance(10)
    assert env.get("/accounts/snapshot").status_code == 408
    assert env.get("/accounts").status_code == 200
    clock.advance(4.9)
    assert env.get("/accounts/snapshot").status_code == 408
    clock.advance(0.1)
    assert env.get("/accounts/snapshot").status_code == 200


def test_fault_latency_and_timeout(env):
    env.sim.inject(Fault(kind="latency", ms=150, count=1))
    t0 = time.monotonic()
    assert env.get("/accounts").status_code == 200
    assert time.monotonic() - t0 >= 0.14
    env.sim.inject(Fault(kind="timeout", ms=100, match="POST /accounts/*/positions/close", count=1))
    with pytest.raises(httpx.RemoteProtocolError):
        env.post("/accounts/Sim101/positions/close", {"instrument": "MES 12-26"})
    assert env.sim.positions("Sim101")[0]["quantity"] == 4  # not applied
    assert [(r.status, r.fault) for r in env.sim.requests] == [(200, "latency"), (0, "timeout")]
    # a client-side timeout sees it as a timeout
    env.sim.inject(Fault(kind="timeout", ms=2000, count=1))
    with pytest.raises(httpx.ReadTimeout):
        env.get("/accounts", timeout=0.1)


def test_timeout_fault_is_interrupted_by_stop(make):
    env = make()
    env.sim.inject(Fault(kind="timeout"))  # default 30 s
    errors = []

    def call():
        try:
            httpx.get(env.server.base_url + "/accounts", headers={"Authorization": f"Bearer {env.token}"},
                      timeout=10)
        except httpx.HTTPError as exc:
            errors.append(exc)

    th = threading.Thread(target=call)
    th.start()
    deadline = time.monotonic() + 2
    while not env.sim.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.monotonic()
    env.server.stop()
    th.join(5)
    assert not th.is_alive() and time.monotonic() - t0 < 2
    assert len(errors) == 1


def test_fault_malformed_and_reset(env):
    env.sim.inject(Fault(kind="malformed", match="/accounts/snapshot", count=1))
    r = env.get("/accounts/snapshot")
    assert r.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.text)
    env.sim.inject(Fault(kind="reset", match="POST *", count=1))
    with pytest.raises(httpx.TransportError):
        env.post("/accounts/Sim101/positions/close", {"instrument": "MES 12-26"})
    assert env.sim.positions("Sim101")[0]["quantity"] == 4  # not applied
    assert env.get("/accounts").status_code == 200  # server fine afterwards
    assert [(r.status, r.fault) for r in env.sim.requests] == [(200, "malformed"), (0, "reset"), (200, None)]


def test_fault_lost_response_applies_the_close(env):
    env.sim.inject(Fault(kind="lost_response", match="POST */positions/close", count=1))
    with pytest.raises(httpx.RemoteProtocolError):
        env.post("/accounts/Sim101/positions/close", {"instrument": "MES 12-26"})
    assert [p["instrument"] for p in env.sim.positions("Sim101")] == ["ES 12-26"]  # it DID close
    rec = env.sim.requests[-1]
    assert (rec.fault, rec.status, rec.body) == ("lost_response", 200, {"instrument": "MES 12-26"})
    # a retry now sees "already flat"
    r = env.post("/accounts/Sim101/positions/close", {"instrument": "MES 12-26"})
    assert r.status_code == 400 and r.json() == {"error": "No positions found for instrument 'MES 12-26'"}


def test_faults_come_after_auth_and_rate_limit(make):
    env = make({**BASIC, "rate_limit": {"per_second": 1, "burst": 1}})
    env.sim.inject(Fault(kind="status", status=500))
    assert httpx.get(env.server.base_url + "/accounts").status_code == 401
    assert env.get("/accounts").status_code == 500
    assert env.get("/accounts").status_code == 429
    assert [(r.status, r.fault) for r in env.sim.requests] == [(401, None), (500, "status"), (429, None)]
    env.sim.clear_faults()
    env.clock.advance(1)
    assert env.get("/accounts").status_code == 200


def test_refuse_and_resume(env):
    port = env.server.port
    assert env.get("/accounts").status_code == 200
    env.server.refuse()
    with pytest.raises(httpx.ConnectError):
        env.get("/accounts")
    env.server.resume()
    assert env.server.port == port
    assert env.get("/accounts").status_code == 200
    env.server.refuse(0.2)
    with pytest.raises(httpx.ConnectError):
        env.get("/accounts")
    deadline = time.monotonic() + 3
    while not env.server.listening and time.monotonic() < deadline:
        time.sleep(0.02)
    assert env.get("/accounts").status_code == 200


def test_fault_validation():
    with pytest.raises(ValueError, match="kind"):
        Fault(kind="explode")
    with pytest.raises(ValueError, match="count"):
        Fault(kind="reset", count=0)
    with pytest.raises(ValueError, match="match"):
        Fault(kind="reset", match="FETCH /x")
    f = Fault(kind="status", match="post */positions/close", start="1s", duration="500ms")
    assert (f.status, f.start, f.duration) == (500, 1.0, 0.5)
    assert f.matches("POST", "/accounts/Sim101/positions/close") and not f.matches("GET", "/accounts")
    assert f.in_window(1.0) and not f.in_window(1.5) and not f.in_window(0.9)


# ------------------------------------------------------------------ scenarios


def test_load_scenario_file(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("""
rate_limit: null
commission_per_contract: 0.62
point_values: {XYZ: 7}
accounts:
  - name: Acc1
    cash: 1000
    positions:
      - {instrument: "xyz 06-27", side: short, quantity: 2, price: 10}
    orders:
      - {instrument: "XYZ 06-27", action: buy, type: StopMarket, quantity: 2, stop: 12}
path:
  steps:
    - {at: 500ms, instrument: "XYZ 06-27", price: 9}
    - {at: 2m, instrument: "XYZ 06-27", price: 11}
faults:
  - {kind: latency, ms: 5, match: "GET /accounts"}
""")
    sc = load_scenario(p)
    assert sc["rate_limit"] is None and sc["commission_per_contract"] == 0.62
    assert sc["point_values"]["XYZ"] == 7 and sc["point_values"]["MES"] == 5
    assert sc["path"]["steps"][1]["at"] == 120.0
    assert sc["accounts"][0]["orders"][0]["action"] == "Buy"
    assert validate_scenario(sc) == sc  # idempotent
    clock = FakeClock()
    sim = Simulator(sc, token=secrets.token_urlsafe(), clock=clock)
    assert sim.positions()[0]["unrealizedProfitLoss"] == 0.0
    clock.advance(0.5)
    assert sim.positions()[0]["unrealizedProfitLoss"] == pytest.approx(14.0)  # short 2 * 1pt * 7
    clock.advance(120)
    assert sim.positions()[0]["unrealizedProfitLoss"] == pytest.approx(-14.0)
    assert sim.faults()[0].kind == "latency"


@pytest.mark.parametrize("text,needle", [
    ("accounts: [{name: A, positions: [{instrument: 'MES 12-26', side: lng, quantity: 1, price: 1}]}]",
     "accounts[0].positions[0].side"),
    ("acounts: []", "unknown key 'acounts'"),
    ("accounts: [{name: A, positions: [{instrument: 'FOO 12-26', side: long, quantity: 1, price: 1}]}]",
     "no point value known for root 'FOO'"),
    ("accounts: [{name: A, positions: [{instrument: 'MES Dec', side: long, quantity: 1, price: 1}]}]",
     "ROOT MM-YY"),
    ("path: {steps: [{at: soon, instrument: 'MES 12-26', price: 1}]}", "path.steps[0].at"),
    ("faults: [{kind: status, status: 408, colour: red}]", "faults[0]: unknown key 'colour'"),
    ("rate_limit: {per_second: 0}", "rate_limit.per_second"),
    ("accounts: [{name: A}, {name: a}]", "duplicate account"),
    ("accounts: [{name: A\n  bad", "invalid YAML"),
])
def test_bad_scenarios_raise_clear_value_errors(tmp_path, text, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ValueError) as info:
        load_scenario(p)
    assert needle in str(info.value) and str(p) in str(info.value)


def test_missing_scenario_file(tmp_path):
    with pytest.raises(ValueError, match="cannot read scenario file"):
        load_scenario(tmp_path / "nope.yaml")


def test_random_walk_is_deterministic_and_bounded():
    sc = {"rate_limit": None, "prices": {"ES 12-26": 6000.0},
          "path": {"random_walk": {"seed": 3, "every": "1s", "tick": 0.25, "max_ticks": 4, "max_offset": 3,
                                   "instruments": ["ES 12-26"]}}}

    def series(order):
        clock = FakeClock()
        sim = Simulator(sc, token=secrets.token_urlsafe(), clock=clock)
        out = {}
        for t in order:
            clock.t = 1000.0 + t
            out[t] = sim.price("ES 12-26")
        return [out[t] for t in sorted(out)]

    a = series(range(60))
    assert a == series(reversed(range(60)))  # lazy and order-independent
    assert len(set(a)) > 3 and all(abs(p - 6000) <= 3 for p in a)
    assert all(math.isclose((p - 6000) / 0.25, round((p - 6000) / 0.25)) for p in a)
    assert a[0] == 6000.0


def test_demo_scenario_crossing_times():
    clock = FakeClock()
    sim = Simulator(load_scenario(DEMO_SCENARIO), token=secrets.token_urlsafe(), clock=clock)

    def at(t):
        clock.t = 1000.0 + t
        pos = {(p["account"], p["instrument"]): p for p in sim.positions()}
        return pos, sim.account_pnl("Sim101")["total"], sim.account_pnl("Sim102")["total"]

    pos, _, _ = at(0)
    assert {k: (p["marketPosition"], p["quantity"], p["averagePrice"]) for k, p in pos.items()} == {
        ("Sim101", "MES 12-26"): ("Long", 4, 6000.0), ("Sim101", "ES 12-26"): ("Long", 2, 6000.0),
        ("Sim102", "NQ 12-26"): ("Long", 3, 21000.0)}
    assert len(sim.orders("Sim101")) >= 2 and len(sim.orders("Sim102")) >= 1
    mes_cross = next(t / 10 for t in range(0, 400) if at(t / 10)[0][("Sim101", "MES 12-26")]
                     ["unrealizedProfitLoss"] < -500)
    nq_cross = next(t / 10 for t in range(0, 400) if at(t / 10)[2] < -1000)
    assert mes_cross == 8.0 and nq_cross == 15.0
    for t in range(0, 120):
        pos, total101, total102 = at(t / 2)
        assert abs(pos[("Sim101", "ES 12-26")]["unrealizedProfitLoss"]) <= 200  # ES stays near flat
        assert total101 > -1000  # Sim101 never trips the daily loss limit
        if t / 2 >= 8:
            assert pos[("Sim101", "MES 12-26")]["unrealizedProfitLoss"] < -500
        if t / 2 >= 15:
            assert total102 < -1000


# ------------------------------------------------------------------ CLI


def test_serve_requires_token(monkeypatch, capsys):
    monkeypatch.delenv("CROSSTRADE_TOKEN", raising=False)
    assert serve(0, None, "127.0.0.1") == 78
    assert "CROSSTRADE_TOKEN" in capsys.readouterr().err


def test_serve_prints_base_url_and_never_the_token(monkeypatch, capsys):
    token = secrets.token_urlsafe()
    monkeypatch.setenv("CROSSTRADE_TOKEN", token)
    stop = threading.Event()
    stop.set()
    assert serve(0, None, "127.0.0.1", stop_event=stop) == 0
    out = capsys.readouterr()
    assert out.out.startswith("http://127.0.0.1:") and out.out.strip().endswith("/v1/api")
    assert token not in out.out + out.err


def test_serve_bad_scenario(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("CROSSTRADE_TOKEN", secrets.token_urlsafe())
    p = tmp_path / "bad.yaml"
    p.write_text("accounts: 3")
    assert serve(0, p, "127.0.0.1") == 78
    assert "accounts" in capsys.readouterr().err


def test_python_m_riskd_sim_runs_until_sigterm():
    token = secrets.token_urlsafe()
    proc = subprocess.Popen([sys.executable, "-m", "riskd.sim", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "CROSSTRADE_TOKEN": token})
    try:
        base = proc.stdout.readline().strip()
        assert base.startswith("http://127.0.0.1:") and base.endswith("/v1/api")
        r = httpx.get(base + "/accounts/snapshot", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and [a["account"]["name"] for a in r.json()["accounts"]] == ["Sim101", "Sim102"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
        assert token not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_random_walk_stays_deterministic_and_bounded_over_a_long_run():
    from riskd.sim.core import WALK_KEPT, _Prices

    walk = {"seed": 7, "every": 1.0, "tick": 0.25, "max_ticks": 4, "max_offset": None, "instruments": ["ES 12-26"]}
    long_run = _Prices({"ES 12-26": 6000.0}, [], walk)
    offsets = [long_run.walk_ticks("ES 12-26", float(t)) for t in range(0, 200_000, 13)]  # two days of 1 s steps
    fresh = _Prices({"ES 12-26": 6000.0}, [], walk)
    assert fresh.walk_ticks("ES 12-26", 199_992.0) == offsets[-1]  # same seed, same path
    assert len(long_run._walk_cache["ES 12-26"][2]) <= 2 * WALK_KEPT  # memory does not grow with uptime
