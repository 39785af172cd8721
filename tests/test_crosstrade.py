"""The CrossTrade client: outcome of every kind of answer, the token bucket, 429 retries, the
paths it will and will not send, and snapshot parsing under arbitrary JSON (httpx MockTransport)."""

from __future__ import annotations

import inspect
import json
import math
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings, strategies as st

from riskd import crosstrade
from riskd.crosstrade import (AUTH, FLAT, OK, REFUSED, REJECTED, UNKNOWN, UNSENT, CrossTradeClient, TokenBucket,
                              parse_retry_after, parse_snapshot, request_for)
from riskd.errors import ApiError
from riskd.model import Order

NOW = datetime(2026, 3, 10, 14, 0, tzinfo=timezone.utc)
CLOSE = Order("close", "Sim101", "MES 12-26", percent=0.5)


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds


def client_for(handler, token: str, clock: FakeClock | None = None, timeout: float = 1.0, **kw) -> tuple[CrossTradeClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    clock = clock or FakeClock()
    bucket = TokenBucket(3.0, 20, clock=clock, sleep=clock.sleep)
    return CrossTradeClient("http://api.test/v1/api", token, timeout=timeout, bucket=bucket, transport=httpx.MockTransport(record), **kw), seen


def answer(status: int, body=None, text: str | None = None, headers: dict | None = None):
    def handler(request: httpx.Request) -> httpx.Response:
        if text is not None:
            return httpx.Response(status, text=text, headers=headers)
        return httpx.Response(status, json=body, headers=headers)
    return handler


# -- outcomes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status, body, text, outcome", [
    (200, {"closedPositions": [], "success": True}, None, OK),
    (200, {"success": False, "error": "invalid_account", "detail": "Account Sim999 not found"}, None, REJECTED),
    (200, {"closedPositions": []}, None, UNKNOWN),  # a write that does not say success: true may or may not have acted
    (200, ["unexpected"], None, UNKNOWN),
    (200, None, '{"closedPositions": [{"ty', UNKNOWN),  # malformed JSON
    (200, None, "", UNKNOWN),
    (400, {"error": "No positions found for instrument 'MES 12-26'"}, None, FLAT),
    (400, {"success": False, "error": "invalid_argument", "detail": "bad"}, None, REJECTED),
    (401, {"success": False, "error": "unauthorized"}, None, AUTH),
    (403, None, "forbidden", AUTH),
    (404, {"success": False, "error": "not_found", "did_you_mean": "/v1/api/accounts/Sim101"}, None, REJECTED),
    (408, {"success": False, "error": "ninjatrader_disconnected", "detail": "NinjaTrader is not connected"}, None, REJECTED),
    (500, {"error": "Internal Server Error"}, None, UNKNOWN),
    (502, None, "<html>bad gateway</html>", UNKNOWN),
    (503, None, "", UNKNOWN),
])
def test_execute_classifies_every_kind_of_answer(token, status, body, text, outcome):
    client, seen = client_for(answer(status, body, text), token)
    reply = client.execute(CLOSE)
    assert reply.outcome == outcome
    assert len(seen) == 1  # only a 429 is retried in place
    assert reply.ok == (outcome in (OK, FLAT))
    assert reply.transient == (status == 408)
    if text:
        assert reply.response == text  # kept verbatim for the audit trail


@pytest.mark.parametrize("status, body, outcome", [
    (200, {"type": "snapshot", "accounts": []}, OK),  # a read has no `success`: its parser judges the shape
    (200, {"success": False, "error": "x"}, REJECTED),
    (408, {"success": False, "error": "ninjatrader_disconnected"}, REJECTED),
    (429, {"error": "Rate limit exceeded"}, REJECTED),
    (401, {"error": "unauthorized"}, AUTH),
])
def test_get_snapshot_classifies_reads(token, status, body, outcome):
    client, seen = client_for(answer(status, body), token)
    assert client.get_snapshot().outcome == outcome
    assert len(seen) == 1  # a poll is never retried in place: the next tick is the retry


@pytest.mark.parametrize("exc, outcome", [
    (httpx.ConnectError("refused"), UNSENT),
    (httpx.ConnectTimeout("slow connect"), UNSENT),
    (httpx.PoolTimeout("no connection free"), UNSENT),
    (httpx.ReadTimeout("no answer"), UNKNOWN),
    (httpx.WriteTimeout("half sent"), UNKNOWN),
    (httpx.RemoteProtocolError("server disconnected"), UNKNOWN),
    (httpx.ReadError("connection reset"), UNKNOWN),
])
def test_execute_transport_errors_say_whether_the_request_may_have_acted(token, exc, outcome):
    def handler(request):
        raise exc

    client, _ = client_for(handler, token)
    reply = client.execute(CLOSE)
    assert reply.outcome == outcome and reply.status is None and reply.error.split(" ")[0] == exc.__class__.__name__
    if outcome == UNSENT:
        assert reply.error == (f"{exc.__class__.__name__} (http://api.test:80/v1/api/): not reached; "  # where it could not get to
                               "check crosstrade.base_url in riskd.yaml")


# -- 429 -----------------------------------------------------------------------------------------


def test_execute_two_429s_then_success_sends_three_requests_and_returns_the_success(token):
    answers = iter([answer(429, {"error": "Rate limit exceeded"}), answer(429, {"error": "Rate limit exceeded"}),
                    answer(200, {"closedPositions": [{"instrument": "MES 12-26"}], "success": True})])
    clock = FakeClock()
    client, seen = client_for(lambda r: next(answers)(r), token, clock=clock)
    reply = client.execute(CLOSE)
    assert reply.outcome == OK and len(seen) == 3
    assert [a["status"] for a in reply.earlier] == [429, 429]
    assert all(0 <= s <= 2.0 for s in clock.slept) and len(clock.slept) == 2  # jittered exponential back-off, bounded


def test_execute_honours_retry_after_seconds_and_http_dates(token):
    clock = FakeClock()
    answers = iter([answer(429, {"error": "Rate limit exceeded"}, headers={"Retry-After": "1.5"}),
                    answer(200, {"success": True})])
    client, seen = client_for(lambda r: next(answers)(r), token, clock=clock, timeout=2.0)
    assert client.execute(CLOSE).outcome == OK
    assert clock.slept == [1.5]
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=4), usegmt=True)
    assert 2.5 <= parse_retry_after(later) <= 4
    much_later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(much_later) == crosstrade.RETRY_AFTER_CAP_S
    assert parse_retry_after("soon") is None and parse_retry_after("nan") is None and parse_retry_after("-3") == 0.0


def test_execute_retry_after_beyond_the_budget_gives_up_and_holds_every_request_until_then(token):
    clock = FakeClock()
    client, seen = client_for(answer(429, {"error": "Rate limit exceeded"}, headers={"Retry-After": "30"}), token, clock=clock, timeout=0.5)
    reply = client.execute(CLOSE)  # the hint (30 s, capped at 5 s) is beyond a 0.5 s client's whole budget
    assert reply.outcome == REJECTED and reply.status == 429 and len(seen) == 1 and clock.slept == []
    assert client.get_snapshot().outcome == UNSENT
    assert len(seen) == 1  # no poll is sent while the server asked us to wait
    clock.t += crosstrade.RETRY_AFTER_CAP_S
    client.get_snapshot()
    assert len(seen) == 2


@pytest.mark.parametrize("retry_after", ["99999", "120", format_datetime(datetime(2099, 1, 1, tzinfo=timezone.utc), usegmt=True)])
def test_a_polls_retry_after_never_holds_back_a_close_and_is_capped(token, retry_after):
    clock = FakeClock()
    answers = iter([answer(429, {"error": "Rate limit exceeded"}, headers={"Retry-After": retry_after}),
                    answer(200, {"success": True})])
    client, seen = client_for(lambda r: next(answers, answer(200, {"accounts": []}))(r), token, clock=clock)
    assert client.get_snapshot().status == 429
    clock.t += 2  # a breach two seconds later
    assert client.execute(CLOSE).outcome == OK and len(seen) == 2  # the close went out
    poll = client.get_snapshot()
    assert poll.outcome == UNSENT and 0 < poll.retry_after <= crosstrade.RETRY_AFTER_CAP_S
    assert parse_retry_after(retry_after) == crosstrade.RETRY_AFTER_CAP_S
    clock.t += crosstrade.RETRY_AFTER_CAP_S  # the poll after the cap is sent
    assert client.get_snapshot().outcome == OK and len(seen) == 3


def test_execute_429s_stop_after_max_attempts(token):
    clock = FakeClock()
    client, seen = client_for(answer(429, {"error": "Rate limit exceeded"}), token, clock=clock)
    reply = client.execute(CLOSE)
    assert reply.status == 429 and len(seen) == client.max_attempts == 4
    assert clock.t <= client.budget_s


def test_execute_stops_retrying_429s_once_stopping(token):
    client, seen = client_for(answer(429, {"error": "Rate limit exceeded"}), token)
    client.stopping.set()
    assert client.execute(CLOSE).status == 429 and len(seen) == 1


# -- the token bucket ----------------------------------------------------------------------------


def test_token_bucket_polls_leave_the_reserve_to_actions_and_actions_wait_for_a_token():
    clock = FakeClock()
    bucket = TokenBucket(3.0, 20, clock=clock, sleep=clock.sleep, jitter_s=0)
    polls = sum(bucket.take(reserve=3) for _ in range(30))
    assert polls == 17  # 20 - 3 kept for actions
    assert sum(bucket.wait(timeout=0) for _ in range(3)) == 3  # actions take the reserve
    assert not bucket.take(reserve=3)
    assert bucket.wait(timeout=1.0) and clock.slept and math.isclose(clock.t, 1 / 3)
    assert not bucket.wait(timeout=0.1)  # a token is 1/3 s away: the action gives up inside its timeout


def test_client_never_sends_faster_than_its_bucket(token):
    clock = FakeClock()
    client, seen = client_for(answer(200, {"success": True}), token, clock=clock)
    stamps = []
    for _ in range(60):
        client.execute(CLOSE)
        stamps.append(clock.t)
    # nearly 20 at once (a 0.3-token margin for arrival jitter), then 3 per second
    assert stamps[18] == 0.0 and stamps[19] <= 0.11 and math.isclose(stamps[-1] - stamps[19], 40 / 3, rel_tol=1e-6)
    for i, t in enumerate(stamps):
        assert i + 1 <= 20 + 3 * t + 1e-6


@pytest.mark.parametrize("jitter_s, refused", [(0.0, True), (0.1, False)])
def test_token_bucket_margin_keeps_the_server_bucket_whole_despite_arrival_jitter(token, jitter_s, refused):
    """The server counts a request when it arrives. When one request takes 60 ms longer than the
    next, a client spending its last token exactly on time is 0.18 token short at the server."""
    from riskd.sim import Simulator

    clock = FakeClock()
    arrival = {"t": 0.0}
    sim = Simulator({"rate_limit": {"per_second": 3, "burst": 20}}, token=token, clock=lambda: arrival["t"])
    bucket = TokenBucket(3.0, 20, clock=clock, sleep=clock.sleep, jitter_s=jitter_s)
    statuses = []
    for i in range(80):
        assert bucket.wait(timeout=5)
        arrival["t"] = clock.t + (0.06 if i % 2 == 0 else 0.0)  # every other request is delayed on the way
        statuses.append(sim.handle("GET", "/v1/api/accounts/snapshot", {"Authorization": f"Bearer {token}"}).status)
        clock.t = arrival["t"]  # the next request leaves after this one's answer
    assert (429 in statuses) == refused


# -- what is and is not sent ---------------------------------------------------------------------


@pytest.mark.parametrize("account", ["..", ".", " .. "])
def test_request_for_refuses_account_names_that_change_the_path(account):
    with pytest.raises(ValueError, match="would change the request path"):
        request_for(Order("flatten", account))


def test_request_for_refuses_orders_without_account_or_close_without_instrument():
    with pytest.raises(ValueError):
        request_for(Order("flatten", ""))
    with pytest.raises(ValueError):
        request_for(Order("close", "Sim101"))
    with pytest.raises(ValueError):
        request_for(Order("flatten_everything", "Sim101"))


@pytest.mark.parametrize("account", ["..", ".", "../..", "a/../..", "Sim 101", "%2e%2e", "x?y#z", "ü"])
def test_execute_never_posts_to_the_flatten_everything_path(token, account):
    client, seen = client_for(answer(200, {"closedPositions": [], "success": True}), token)
    reply = client.execute(Order("flatten", account))
    for request in seen:
        assert request.url.path != "/v1/api/positions/flatten"
        assert request.url.raw_path.startswith(b"/v1/api/accounts/") and request.url.raw_path.endswith(b"/positions/flatten")
        assert json.loads(request.content) == {}
    if account.strip() in (".", ".."):
        assert reply.outcome == REFUSED and seen == []


def test_client_has_no_way_to_call_flatten_everything():
    names = [n for n, _ in inspect.getmembers(CrossTradeClient) if not n.startswith("__")]
    assert not [n for n in names if "flatten" in n.lower()]
    source = Path(crosstrade.__file__).read_text()
    paths = {line.split('"')[1] for line in source.splitlines() if '"accounts/{}/' in line or '"positions/' in line}
    assert "positions/flatten" not in paths
    assert set(crosstrade._PATHS.values()) == {"accounts/{}/positions/close", "accounts/{}/positions/flatten", "accounts/{}/orders/cancel"}


def test_token_is_sent_as_bearer_and_never_appears_in_a_reply(token):
    client, seen = client_for(answer(401, {"error": "unauthorized", "detail": "bad key"}), token)
    reply = client.get_snapshot()
    assert seen[0].headers["Authorization"] == f"Bearer {token}"
    assert token not in repr(reply)


# -- parsing -------------------------------------------------------------------------------------


def _snapshot(**position) -> dict:
    pos = {"account": "Sim101", "instrument": "MES 12-26", "marketPosition": "Long", "quantity": 2,
           "averagePrice": 6000.0, "marketPrice": 5990.0, "unrealizedProfitLoss": -100.0, **position}
    return {"type": "snapshot", "accounts": [{"account": {"name": "Sim101", "item": {"realizedProfitLoss": 0.0}}, "positions": [pos]}]}


@pytest.mark.parametrize("weekly, read", [(-1250.5, -1250.5), (0, 0.0), (None, None), ("n/a", None), (True, None), (float("nan"), None)])
def test_parse_snapshot_reads_weekly_profit_loss_only_when_it_is_a_number(weekly, read):
    data = _snapshot()
    data["accounts"][0]["account"]["item"]["weeklyProfitLoss"] = weekly
    assert parse_snapshot(data, NOW).accounts[0].weekly_pnl == read  # a null or missing one is not a zero week


def test_parse_snapshot_reads_positions_and_drops_flat_ones():
    snap = parse_snapshot(_snapshot(), NOW)
    assert snap.position("sim101", "mes 12-26").quantity == 2
    assert parse_snapshot(_snapshot(marketPosition="Flat", quantity=0), NOW).accounts[0].positions == ()


@pytest.mark.parametrize("position", [
    {"quantity": float("nan")}, {"quantity": float("inf")}, {"quantity": 1.5}, {"quantity": "2"}, {"quantity": True},
    {"unrealizedProfitLoss": float("nan")}, {"marketPrice": float("-inf")}, {"instrument": None},
])
def test_parse_snapshot_numbers_it_cannot_trust_make_the_account_unknown_not_flat(position):
    snap = parse_snapshot(_snapshot(**position), NOW)
    assert snap.accounts == () and snap.unknown == {"sim101"}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(
        ["accounts", "account", "positions", "name", "item", "instrument", "quantity", "marketPosition",
         "unrealizedProfitLoss", "realizedProfitLoss", "success", "displayName"]) | st.text(max_size=4), inner, max_size=5),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_parse_snapshot_raises_only_api_error_whatever_the_json(data):
    try:
        snap = parse_snapshot(data, NOW)
    except ApiError:
        return
    for account in snap.accounts:
        assert isinstance(account.name, str) and math.isfinite(account.pnl())
        for p in account.positions:
            assert isinstance(p.quantity, int) and p.quantity > 0


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_get_snapshot_and_execute_never_raise_whatever_the_body(data):
    body = json.dumps(data, allow_nan=True)
    client, _ = client_for(answer(200, text=body), "t" * 20)
    assert client.get_snapshot().outcome in (OK, REJECTED, UNKNOWN)
    assert client.execute(CLOSE).outcome in (OK, REJECTED, UNKNOWN)


def test_snapshot_nested_100000_deep_is_a_failed_poll_not_an_exception(token):
    client, _ = client_for(answer(200, text="[" * 100_000 + "]" * 100_000), token)
    reply = client.get_snapshot()
    assert not reply.ok and reply.error


def test_refused_action_is_reported_with_its_real_path(token):
    client, seen = client_for(answer(200, {"success": True}), token)
    reply = client.execute(Order("close", "Sim101"))
    assert reply.outcome == REFUSED and not seen
    assert reply.path == "accounts/Sim101/positions/close"


# -- the total deadline of a request ---------------------------------------------------------------


def test_a_body_trickled_under_the_read_timeout_ends_at_the_requests_deadline(token):
    """Headers at once, then one byte every 0.3 s: each read is well within the 1 s timeout, the body never."""
    import time

    from trickle import TrickleServer

    with TrickleServer(interval=0.3) as server:
        client = CrossTradeClient(server.base_url, token, timeout=1.0)
        try:
            started = time.monotonic()
            reply = client.get_snapshot()
            poll_s = time.monotonic() - started
            started = time.monotonic()
            action = client.execute(Order("flatten", "Sim101"))
            action_s = time.monotonic() - started
        finally:
            client.close()
    assert poll_s < 2.5 and action_s < 2.5, (poll_s, action_s)
    assert not reply.ok and reply.outcome == UNKNOWN and reply.status == 200
    assert reply.error == "deadline: response body not complete after 1.0 s"
    assert action.outcome == UNKNOWN and action.error.startswith("deadline:")  # it may have been applied


def test_a_body_over_the_size_cap_is_cut(token, monkeypatch):
    monkeypatch.setattr(crosstrade, "MAX_BODY_BYTES", 1000)
    client, _ = client_for(answer(200, text=json.dumps({"accounts": [], "pad": "x" * 5000})), token)
    reply = client.get_snapshot()
    assert not reply.ok and reply.outcome == UNKNOWN and reply.error == "response body over 1000 bytes: cut"
    small, _ = client_for(answer(200, {"accounts": []}), token)
    assert small.get_snapshot().ok


def test_connect_errors_name_the_host_and_port_never_the_token(token):
    with socket_closed_port() as port:
        client = CrossTradeClient(f"http://127.0.0.1:{port}/v1/api", token, timeout=1.0)
        try:
            reply = client.get_snapshot()
        finally:
            client.close()
    assert reply.outcome == UNSENT and reply.error == (f"ConnectError (http://127.0.0.1:{port}/v1/api/): not reached; "
                                                   "check crosstrade.base_url in riskd.yaml")
    assert token not in repr(reply)


def socket_closed_port():
    import contextlib
    import socket

    @contextlib.contextmanager
    def closed():
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()  # nothing listens there now
        yield port

    return closed()


@pytest.mark.parametrize("absurd", ["NaN", "Infinity", "1e400", '"\\ud800"'])
def test_one_accounts_figure_that_is_not_json_a_fast_decoder_reads_leaves_the_other_accounts_read(token, absurd):
    """The fast decoder refuses NaN, 1e400 and lone surrogates; the standard library reads them, and
    the snapshot is read as it reads it: that account unknown (never flat), the other evaluated."""
    text = ('{"accounts": [{"account": {"name": "Bad", "item": {"realizedProfitLoss": ABSURD}}, "positions": []},'
            ' {"account": {"name": "Good", "item": {"realizedProfitLoss": -10.0}}, "positions": []}]}').replace("ABSURD", absurd)
    client, _ = client_for(answer(200, text=text), token)
    reply = client.get_snapshot()
    assert reply.ok
    snapshot = crosstrade.parse_snapshot(reply.response, datetime(2026, 3, 10, tzinfo=timezone.utc))
    assert [a.name for a in snapshot.accounts] == ["Good"] and snapshot.unknown == {"bad"}


# A snapshot as CrossTrade sends it, and as glitchy bridges do: any field missing, null, of another type,
# NaN, beyond 64 bits; an object replaced by another value; fields riskd does not read around them.
_glitch = st.sampled_from([None, "x", True, [], {}, float("nan"), 10**30, -0.0, 1e308])
_value = lambda good: st.one_of(good, good, good, _glitch)  # noqa: E731
_position = st.fixed_dictionaries({}, optional={
    "type": st.just("NinjaTrader.Cbi.Position"), "account": _value(st.sampled_from(["Sim101", "sim101", "Apex-1"])),
    "instrument": _value(st.sampled_from(["MES 12-26", "MNQ 12-26", " ", ""])),
    "marketPosition": _value(st.sampled_from(["Long", "Short", "Flat", "long", "SHORT"])),
    "quantity": _value(st.integers(-3, 3) | st.sampled_from([2.0, 2.5, 100_001])),
    "averagePrice": _value(st.floats(-1e4, 1e4) | st.integers(0, 10)), "marketPrice": _value(st.floats(-1e4, 1e4)),
    "unrealizedProfitLoss": _value(st.floats(-1e4, 1e4) | st.integers(-10, 10)), "instrumentType": st.just("Future")})
_item = st.fixed_dictionaries({}, optional={k: _value(st.floats(-1e5, 1e5) | st.integers(-10, 10)) for k in (
    "realizedProfitLoss", "unrealizedProfitLoss", "commission", "netLiquidation", "weeklyProfitLoss", "cashValue", "buyingPower")})
_account = st.fixed_dictionaries({}, optional={"name": _value(st.sampled_from(["Sim101", "SIM101", "Apex-1", ""])),
                                               "displayName": _value(st.sampled_from(["Apex-2", ""])), "item": _value(_item),
                                               "status": st.just("Enabled")})
_entry = st.fixed_dictionaries({}, optional={"account": _value(_account), "positions": _value(st.lists(_value(_position), max_size=3))})
_body = st.fixed_dictionaries({}, optional={"type": st.just("snapshot"), "accounts": _value(st.lists(_value(_entry), max_size=4)),
                                            "success": st.sampled_from([True, False, None]), "error": st.just("bridge down")})


def _outcome(parse):
    try:
        return parse()
    except ApiError as exc:
        return str(exc)


@settings(max_examples=500, deadline=None)
@given(_body)
def test_a_snapshot_read_through_its_typed_decoder_is_judged_as_the_json_tree_is(body):
    """The client reads a snapshot body straight into riskd.wire's Structs (or, when msgspec refuses the
    text, as any JSON); either way the Snapshot, its unknown accounts and its problems are exactly what
    parsing the whole JSON tree gives."""
    text = json.dumps(body)
    typed = crosstrade.decode_snapshot(text)
    via_client = typed if typed is not None else crosstrade.decode_json(text)
    assert _outcome(lambda: parse_snapshot(via_client, NOW)) == _outcome(lambda: parse_snapshot(json.loads(text), NOW))


def test_a_snapshot_the_parser_refuses_is_audited_whole_though_only_its_read_fields_were_decoded(tmp_path):
    """The audit records the API's answer verbatim: every field, not only those the typed decoder kept."""
    from riskd.audit import AuditTrail
    from riskd.poll import PollHealth

    body = {"accounts": [{"account": "Sim101", "positions": []}], "bridge": {"version": "8.1.4", "latencyMs": 12}}
    client, _ = client_for(lambda request: httpx.Response(200, json=body), "tok-123456789")
    reply = client.get_snapshot()
    with pytest.raises(ApiError, match="entry without an 'account' object"):
        parse_snapshot(reply.response, NOW)
    trail = AuditTrail(str(tmp_path / "audit.jsonl"))
    for event in PollHealth(timedelta(seconds=1), timedelta(seconds=10)).on_failure(reply, "unexpected snapshot", NOW, 0.0):
        trail.emit(event.name, **event.fields)
    trail.close()
    line = json.loads((tmp_path / "audit.jsonl").read_text().splitlines()[0])
    assert line["event"] == "api_error" and line["response"] == body


def test_a_bridge_inventing_instrument_names_never_grows_the_parser_s_name_table():
    """Instrument names are shared between positions; a stream of new names (a garbled bridge) keeps the table bounded."""
    for k in range(3):
        body = {"accounts": [{"account": {"name": f"A{a}", "item": {}},
                              "positions": [{"instrument": f"X{k}-{a}-{p} 12-26", "marketPosition": "Long", "quantity": 1,
                                             "averagePrice": 1.0, "marketPrice": 1.0, "unrealizedProfitLoss": 0.0} for p in range(5)]}
                             for a in range(1000)]}
        snap = parse_snapshot(body, NOW)
        assert len(snap.accounts) == 1000 and not snap.unknown
    assert len(crosstrade._INSTRUMENTS) <= 4096
    a, b = (parse_snapshot(json.loads(json.dumps(_snapshot())), NOW).accounts[0].positions[0] for _ in range(2))
    assert a.instrument == b.instrument and a.instrument is b.instrument  # one string, from two bodies
