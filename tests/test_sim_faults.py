"""Simulator faults scripted from a scenario file: connection refused windows, and `in_progress`."""

from __future__ import annotations

import time

import httpx

from riskd.sim import Fault, SimServer, Simulator, load_scenario

from harness import FakeClock

from conftest import wait_until


def test_scenario_refuse_window_refuses_connections_then_listens_again(tmp_path, token):
    path = tmp_path / "refuse.yaml"
    path.write_text("accounts: [{name: Sim101}]\nfaults:\n  - {kind: refuse, start: 300ms, duration: 500ms}\n")
    sim = Simulator(load_scenario(path), token=token)
    headers = {"Authorization": f"Bearer {token}"}
    with SimServer(sim) as server:
        url = server.base_url + "/accounts/snapshot"
        assert httpx.get(url, headers=headers).status_code == 200
        wait_until(lambda: sim.now() > 0.4, timeout=2)
        try:
            httpx.get(url, headers=headers, timeout=0.5)
            raise AssertionError("expected connection refused")
        except httpx.ConnectError:
            pass
        wait_until(lambda: sim.now() > 0.9, timeout=3)
        assert wait_until(lambda: _ok(url, headers), timeout=3)


def _ok(url: str, headers: dict) -> bool:
    try:
        return httpx.get(url, headers=headers, timeout=0.5).status_code == 200
    except httpx.TransportError:
        return False


def test_fault_refuse_needs_a_window():
    import pytest

    from riskd.sim import ScenarioError

    with pytest.raises(ScenarioError, match="needs start and duration"):
        Fault("refuse")


def test_in_progress_counts_requests_held_by_a_latency_fault(token):
    sim = Simulator({"accounts": [{"name": "Sim101"}]}, token=token)
    sim.inject(Fault("latency", ms=300, count=1))
    with SimServer(sim) as server:
        started = time.monotonic()
        try:
            httpx.get(server.base_url + "/accounts/snapshot", headers={"Authorization": f"Bearer {token}"}, timeout=0.1)
        except httpx.ReadTimeout:
            pass
        assert sim.in_progress() == 1  # the caller gave up; the simulator still holds (and will answer) it
        wait_until(lambda: sim.in_progress() == 0, timeout=2)
        assert time.monotonic() - started >= 0.29


# ------------------------------------------------------------------ misbehaving like real systems

import json
import threading

import pytest

from riskd.sim import ScenarioError

SCENARIO = {
    "rate_limit": None,
    "accounts": [
        {"name": "Sim101", "positions": [
            {"instrument": "MES 12-26", "side": "long", "quantity": 4, "price": 6000.0},
            {"instrument": "ES 12-26", "side": "short", "quantity": 3, "price": 6010.0}]},
        {"name": "Sim102", "positions": [{"instrument": "NQ 12-26", "side": "long", "quantity": 1, "price": 21000.0}]},
    ],
    "prices": {"MES 12-26": 5990.0, "ES 12-26": 6000.0, "NQ 12-26": 21010.0},
}


@pytest.fixture
def rig(token):
    """(sim, server, client) on 127.0.0.1; pass clock= through rig.make."""
    made = []

    class Rig:
        def make(self, scenario=SCENARIO, clock=time.monotonic):
            sim = Simulator(scenario, token=token, clock=clock)
            server = SimServer(sim).start()
            client = httpx.Client(base_url=server.base_url, timeout=5.0, headers={"Authorization": f"Bearer {token}"})
            made.append((server, client))
            return sim, server, client

    yield Rig()
    for server, client in made:
        client.close()
        server.stop()


def test_trickle_sends_the_body_slowly_without_tripping_a_read_timeout(rig):
    sim, server, client = rig.make()
    normal = client.get("/accounts/Sim101/orders").content
    sim.inject(Fault("trickle", bytes=4, ms=100, match="GET */orders", count=1))
    t0 = time.monotonic()
    r = client.get("/accounts/Sim101/orders", timeout=httpx.Timeout(5.0, read=0.4))  # no read waits 0.4 s
    took = time.monotonic() - t0
    assert r.status_code == 200 and r.content == normal
    assert took >= (len(normal) - 1) // 4 * 0.1 - 0.05
    assert (sim.requests[-1].status, sim.requests[-1].fault) == (200, "trickle")
    assert Fault("trickle").bytes == 1 and Fault("trickle").ms == 1500.0  # defaults


def test_trickle_is_cut_short_by_stop_and_was_applied(rig, token):
    sim, server, client = rig.make()
    sim.inject(Fault("trickle", match="POST */positions/close"))  # 1 byte per 1.5 s: minutes for the body
    errors = []

    def call():
        try:
            client.post("/accounts/Sim101/positions/close", json={"instrument": "MES 12-26"}, timeout=10)
        except httpx.HTTPError as exc:
            errors.append(exc)

    th = threading.Thread(target=call)
    th.start()
    wait_until(lambda: sim.requests and sim.requests[-1].status == 200, timeout=2)
    assert [p["instrument"] for p in sim.positions("Sim101")] == ["ES 12-26"]  # applied before sending
    t0 = time.monotonic()
    server.stop()
    th.join(5)
    assert not th.is_alive() and time.monotonic() - t0 < 2
    assert len(errors) == 1 and isinstance(errors[0], httpx.RemoteProtocolError)  # body incomplete


def test_late_apply_over_http_applies_after_the_caller_gave_up(rig):
    sim, server, client = rig.make()
    sim.inject(Fault("late_apply", ms=300, apply_ms=700, match="POST */positions/close", count=1))
    t0 = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        client.post("/accounts/Sim101/positions/close", json={"instrument": "MES 12-26"}, timeout=0.2)
    assert sim.in_progress() == 1 and len(sim.positions("Sim101")) == 2  # not yet
    wait_until(lambda: not sim._pending, timeout=3, interval=0.02)  # the server's timer, no call into sim
    assert time.monotonic() - t0 >= 0.69
    assert [p["instrument"] for p in sim.positions("Sim101")] == ["ES 12-26"]
    assert sim.in_progress() == 0
    rec = sim.requests[-1]
    assert (rec.fault, rec.status) == ("late_apply", 200)
    assert client.get("/accounts").status_code == 200


def test_late_apply_happens_on_the_sim_clock_even_with_the_server_gone(rig):
    clock = FakeClock()
    scenario = {**SCENARIO, "path": {"steps": [{"at": "12050ms", "instrument": "MES 12-26", "price": 7000.0}]}}
    sim, server, client = rig.make(scenario, clock)
    sim.inject(Fault("late_apply", ms=100, match="POST */positions/close", count=1))  # apply_ms default 12000
    with pytest.raises(httpx.RemoteProtocolError):  # held 100 ms, closed without a response
        client.post("/accounts/Sim101/positions/close", json={"instrument": "MES 12-26"})
    server.stop()
    assert sim.requests[-1].status == 0 and sim.in_progress() == 1
    clock.advance(11.9)
    assert len(sim.positions("Sim101")) == 2
    clock.advance(1.0)  # past due (12 s) and past the 7000 price step (12.05 s)
    assert [p["instrument"] for p in sim.positions("Sim101")] == ["ES 12-26"]
    assert sim.in_progress() == 0 and sim.requests[-1].status == 200
    # computed as of the due time: the fill price is the one before the 12.05 s step
    (ex,) = sim.executions("Sim101")
    assert (ex["name"], ex["price"], ex["quantity"]) == ("Exit", 5990.0, 4)
    assert sim.account_pnl("Sim101")["realized"] == pytest.approx((5990.0 - 6000.0) * 4 * 5)


def test_late_apply_is_applied_before_a_later_request_is_handled(rig):
    clock = FakeClock()
    sim, server, client = rig.make(SCENARIO, clock)
    sim.inject(Fault("late_apply", ms=50, apply_ms=5000, match="POST */positions/close", count=1))
    with pytest.raises(httpx.RemoteProtocolError):
        client.post("/accounts/Sim101/positions/close", json={"instrument": "MES 12-26"})
    clock.advance(5)
    r = client.post("/accounts/Sim101/positions/close", json={"instrument": "MES 12-26"})  # the retry
    assert r.status_code == 400 and r.json() == {"error": "No positions found for instrument 'MES 12-26'"}


def test_applied_refused_applies_then_says_it_failed(rig):
    sim, server, client = rig.make()
    sim.inject(Fault("applied_refused", match="POST */positions/close", count=1))
    r = client.post("/accounts/Sim101/positions/close", json={"instrument": "MES 12-26"})
    assert r.status_code == 408
    assert r.json() == {"success": False, "error": "ninjatrader_disconnected", "detail": "NinjaTrader is not connected"}
    assert [p["instrument"] for p in sim.positions("Sim101")] == ["ES 12-26"]  # it DID close
    sim.inject(Fault("applied_refused", status=200, body={"success": False}, match="POST */flatten", count=1))
    r = client.post("/accounts/Sim101/positions/flatten", json={})
    assert (r.status_code, r.json()) == (200, {"success": False})
    assert sim.positions("Sim101") == []
    sim.inject(Fault("applied_refused", status=429, retry_after=3, count=1))
    r = client.post("/accounts/Sim102/positions/flatten", json={})
    assert (r.status_code, r.json(), r.headers["Retry-After"]) == (429, {"error": "Rate limit exceeded"}, "3")
    assert sim.positions("Sim102") == []
    assert [(q.status, q.fault) for q in sim.requests[-3:]] == [(408, "applied_refused"), (200, "applied_refused"),
                                                                 (429, "applied_refused")]


@pytest.mark.parametrize("form, status, body", [
    ("error", 401, lambda t: {"error": f"invalid token {t}"}),
    ("detail", 500, lambda t: {"error": "Internal Server Error", "detail": f"{{'Authorization': 'Bearer {t}'}}"}),
    ("key", 200, lambda t: {"success": True, t: {"status": "active"}}),
])
def test_echo_token_puts_the_callers_token_in_the_body(rig, token, form, status, body):
    sim, server, client = rig.make()
    sim.inject(Fault("echo_token", form=form, match="POST */positions/close", count=1))
    r = client.post("/accounts/Sim101/positions/close", json={"instrument": "MES 12-26"})
    assert (r.status_code, r.json()) == (status, body(token))
    assert token in r.text
    assert len(sim.positions("Sim101")) == 2  # not applied
    assert (sim.requests[-1].status, sim.requests[-1].fault) == (status, "echo_token")
    assert token not in repr(sim.requests)
    sim.inject(Fault("echo_token", form=form, status=403, count=1))
    assert client.get("/accounts").status_code == 403


def _snap(client):
    r = client.get("/accounts/snapshot")
    assert r.status_code == 200
    return r.json()


def _positions(snap):
    return [p for e in snap["accounts"] for p in e["positions"]]


def test_mutate_changes_the_snapshot_and_only_the_snapshot(rig):
    sim, server, client = rig.make()
    sim.inject(Fault("mutate", mutation="side_flip"))  # match "*": still only the snapshot
    assert [p["marketPosition"] for p in client.get("/positions").json()["positions"]] == ["Long", "Short", "Long"]
    assert [p["marketPosition"] for p in _positions(_snap(client))] == ["Short", "Long", "Short"]
    assert sim.positions()[0]["marketPosition"] == "Long"  # the state is untouched
    assert [(q.path.rsplit("/", 1)[-1], q.fault) for q in sim.requests] == [("positions", None), ("snapshot", "mutate")]


@pytest.mark.parametrize("fault, check", [
    (dict(mutation="positions_null"), lambda s: [e["positions"] for e in s["accounts"]] == [None, None]),
    (dict(mutation="positions_null", account="sim102"),
     lambda s: [e["positions"] is None for e in s["accounts"]] == [False, True]),
    (dict(mutation="positions_missing"), lambda s: all("positions" not in e for e in s["accounts"])),
    (dict(mutation="side_flat"), lambda s: [(p["marketPosition"], p["quantity"]) for p in _positions(s)]
     == [("Flat", 4), ("Flat", 3), ("Flat", 1)]),
    (dict(mutation="quantity_missing", instrument="MES"),
     lambda s: ["quantity" in p for p in _positions(s)] == [False, True, True]),
    (dict(mutation="side_missing", account="Sim101", instrument="ES 12-26"),
     lambda s: ["marketPosition" in p for p in _positions(s)] == [True, False, True]),
    (dict(mutation="side_lowercase"), lambda s: [p["marketPosition"] for p in _positions(s)] == ["long", "short", "long"]),
    (dict(mutation="account_case", account="Sim101"),
     lambda s: [(e["account"]["name"], e["account"]["displayName"], [p["account"] for p in e["positions"]])
                for e in s["accounts"]] == [("SIM101", "SIM101", ["SIM101", "SIM101"]), ("Sim102", "Sim102", ["Sim102"])]),
    (dict(mutation="instrument_case"), lambda s: [p["instrument"] for p in _positions(s)]
     == ["mes 12-26", "es 12-26", "nq 12-26"]),
    (dict(mutation="quantity_absurd"), lambda s: [p["quantity"] for p in _positions(s)] == [10**30] * 3),
    (dict(mutation="quantity_absurd", value=-1, instrument="NQ"),
     lambda s: [p["quantity"] for p in _positions(s)] == [4, 3, -1]),
    (dict(mutation="account_missing"), lambda s: s["accounts"] == []),
    (dict(mutation="account_missing", account="SIM101"), lambda s: [e["account"]["name"] for e in s["accounts"]] == ["Sim102"]),
])
def test_mutate_kinds(rig, fault, check):
    sim, server, client = rig.make()
    sim.inject(Fault("mutate", match="GET /accounts/snapshot", count=1, **fault))
    snap = _snap(client)
    assert snap["type"] == "snapshot" and check(snap)
    clean = _snap(client)  # count used up
    assert [p["quantity"] for p in _positions(clean)] == [4, 3, 1]


def test_mutate_deep_nesting(rig):
    sim, server, client = rig.make()
    sim.inject(Fault("mutate", mutation="deep_nesting", count=1))
    r = client.get("/accounts/snapshot")
    assert r.status_code == 200 and len(r.content) == 200_000 and r.content.startswith(b"[[[[")
    with pytest.raises(RecursionError):
        json.loads(r.content)


def test_status_retry_after_may_be_an_http_date(rig):
    sim, server, client = rig.make()
    date = "Fri, 31 Dec 2099 23:59:59 GMT"
    sim.inject(Fault("status", status=503, retry_after=date, count=1))
    r = client.get("/accounts")
    assert r.status_code == 503 and r.headers["Retry-After"] == date
    sim.inject(Fault.from_dict({"kind": "status", "status": 429, "retry_after": "1500ms", "count": 1}))
    assert client.get("/accounts").headers["Retry-After"] == "1.5"


@pytest.mark.parametrize("kwargs, needle", [
    (dict(kind="trickle", bytes=0), "bytes: expected an integer >= 1"),
    (dict(kind="trickle", bytes=True), "bytes: expected an integer >= 1"),
    (dict(kind="latency", bytes=2), "bytes: only meaningful for kind 'trickle'"),
    (dict(kind="trickle", ms=-1), "ms: expected milliseconds"),
    (dict(kind="late_apply", apply_ms="soon"), "apply_ms: expected a duration"),
    (dict(kind="timeout", apply_ms=5), "apply_ms: only meaningful for kind 'late_apply'"),
    (dict(kind="applied_refused", status=99), "status: expected an HTTP status code"),
    (dict(kind="reset", status=500), "status: only meaningful for kinds"),
    (dict(kind="echo_token", form="header"), "form: expected one of error, detail, key"),
    (dict(kind="echo_token", body={"x": 1}), "body: only meaningful for kinds status, applied_refused"),
    (dict(kind="status", form="error"), "form: only meaningful for kind 'echo_token'"),
    (dict(kind="mutate"), "mutation: expected one of"),
    (dict(kind="mutate", mutation="side_sideways"), "mutation: expected one of"),
    (dict(kind="mutate", mutation="side_flip", match="GET /positions"), "only applies to GET /accounts/snapshot"),
    (dict(kind="mutate", mutation="side_flip", value=3), "value: only meaningful for mutation quantity_absurd"),
    (dict(kind="mutate", mutation="quantity_absurd", value=True), "value: expected a finite number"),
    (dict(kind="mutate", mutation="deep_nesting", account="Sim101"), "account: cannot narrow mutation 'deep_nesting'"),
    (dict(kind="mutate", mutation="account_missing", instrument="MES"), "instrument: cannot narrow"),
    (dict(kind="mutate", mutation="side_flip", account=""), "account: expected a non-empty string"),
    (dict(kind="status", mutation="side_flip"), "mutation: only meaningful for kind 'mutate'"),
    (dict(kind="status", retry_after="next tuesday"), "retry_after: expected seconds, a duration or an HTTP date"),
    (dict(kind="status", retry_after="Fri, 31 Dec 2099 23:59:59 GMT\r\nX-Evil: 1"), "retry_after"),
    (dict(kind="timeout", retry_after=1), "retry_after: only meaningful for kinds status, applied_refused"),
])
def test_new_fault_fields_are_validated(kwargs, needle):
    with pytest.raises(ScenarioError, match=needle.replace("(", r"\(")):
        Fault.from_dict(kwargs)


def test_new_fault_defaults():
    assert (Fault("late_apply").ms, Fault("late_apply").apply_ms) == (30000.0, 12000.0)
    assert Fault("late_apply", ms="2s", apply_ms="12s").apply_ms == 12000.0
    assert Fault("applied_refused").status == 408
    assert [Fault("echo_token", form=f).status for f in ("error", "detail", "key")] == [401, 500, 200]
    assert Fault("echo_token").form == "error"
    assert Fault("mutate", mutation="quantity_absurd").value == 10**30
    assert Fault("mutate", mutation="side_flip", match="/accounts/snap*").matches("GET", "/accounts/snapshot")


def test_scenario_file_takes_the_new_fault_keys(tmp_path, token):
    path = tmp_path / "s.yaml"
    path.write_text("accounts: [{name: Sim101}]\nfaults:\n"
                    "  - {kind: late_apply, ms: 2s, apply_ms: 12s, match: 'POST */positions/close'}\n"
                    "  - {kind: mutate, mutation: quantity_absurd, value: 99, instrument: MES}\n"
                    "  - {kind: echo_token, form: key}\n"
                    "  - {kind: trickle, bytes: 8, ms: 200}\n")
    sim = Simulator(load_scenario(path), token=token)
    assert [f.kind for f in sim.faults()] == ["late_apply", "mutate", "echo_token", "trickle"]
    path.write_text("accounts: [{name: Sim101}]\nfaults:\n  - {kind: trickle, bytes: 8, colour: red}\n")
    with pytest.raises(ScenarioError, match="faults\\[0\\]: unknown key 'colour'"):
        load_scenario(path)


@pytest.mark.parametrize("text", ["500ms", "5s", "2m", "1h", "1.5s", " 3s ", "5", ".5s", "5 s", "1d", "-1s", "5S"])
def test_a_scenario_duration_reads_as_the_same_duration_a_rule_file_would(text):
    from riskd.fields import parse_duration as rule_duration
    from riskd.sim import parse_duration as sim_duration

    try:
        expected: float | None = rule_duration(text).total_seconds()
    except ValueError:
        expected = None
    if expected is None:
        with pytest.raises(ScenarioError):
            sim_duration(text)
    else:
        assert sim_duration(text) == expected
