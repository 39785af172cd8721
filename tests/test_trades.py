"""Round trips and losing streaks: replayed from the account's executions, read only when a snapshot
shows a position shrink or close, and through the simulator over HTTP."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from harness import Rig
from hypothesis import given, settings, strategies as st

from riskd import trades
from riskd.model import Account, Position

T0 = datetime(2026, 12, 1, 15, 0, tzinfo=timezone.utc)
SESSION = "2026-12-01"


def account(*positions: tuple[str, int, float], realized: float = 0.0) -> Account:
    """positions: (instrument, signed size, average price)."""
    return Account("Sim101", realized, 0.0, 0.0, 50000.0 + realized, tuple(
        Position("Sim101", inst, "Long" if q > 0 else "Short", abs(q), avg, avg, 0.0) for inst, q, avg in positions))


def fill(i: int, side: str, qty: int, price: float, at: datetime, inst: str = "MES 12-26") -> dict:
    return {"id": f"f{i}", "epoch": int(at.timestamp() * 1000), "account": "Sim101", "instrument": inst, "marketPosition": side,
            "quantity": qty, "price": price, "name": "Exit"}


def test_partial_exits_add_up_to_one_round_trip_whose_sign_is_its_gross_result():
    previous = account(("MES 12-26", 2, 6000.0))
    fills = [fill(1, "Short", 1, 5998.0, T0 + timedelta(seconds=1)), fill(2, "Short", 1, 6001.0, T0 + timedelta(seconds=2))]
    entry, trips = trades.fold(None, SESSION, previous, account(realized=-5.0), T0, T0 + timedelta(seconds=9), {"executions": fills})
    assert trips == [trades.RoundTrip("MES 12-26", -1.0, True, "executions")]
    assert (entry["count"], entry["streak"]) == (1, 1)


def test_a_round_trip_opened_and_closed_between_two_polls_is_counted_and_a_winner_ends_the_streak():
    entry = {"session": SESSION, "count": 2, "streak": 2, "open": {}, "ids": []}
    fills = [fill(1, "Long", 1, 6000.0, T0 + timedelta(seconds=1)), fill(2, "Short", 1, 6002.0, T0 + timedelta(seconds=2))]
    entry, trips = trades.fold(entry, SESSION, account(), account(realized=10.0), T0, T0 + timedelta(seconds=9), {"executions": fills})
    assert [t.losing for t in trips] == [False] and (entry["count"], entry["streak"]) == (3, 0)


def test_a_fill_listed_by_two_reads_counts_once():
    previous = account(("MES 12-26", 1, 6000.0))
    fills = {"executions": [fill(1, "Short", 1, 5990.0, T0 + timedelta(seconds=1))]}
    entry, _ = trades.fold(None, SESSION, previous, account(realized=-50.0), T0, T0 + timedelta(seconds=9), fills)
    entry, trips = trades.fold(entry, SESSION, account(realized=-50.0), account(realized=-50.0), T0, T0 + timedelta(seconds=9), fills)
    assert trips == [] and entry["count"] == 1


def test_without_readable_executions_each_close_the_snapshots_show_counts_losing_when_realized_fell():
    previous = account(("MES 12-26", 1, 6000.0), ("NQ 12-26", -1, 21000.0), realized=100.0)
    entry, trips = trades.fold(None, SESSION, previous, account(("NQ 12-26", -1, 21000.0), realized=40.0), T0, T0 + timedelta(seconds=9), None)
    assert trips == [trades.RoundTrip("MES 12-26", None, True, "snapshot")] and entry["streak"] == 1
    # fills that do not end at the snapshot's positions (some missing) are not trusted either
    partial = {"executions": [fill(1, "Short", 1, 5990.0, T0 + timedelta(seconds=1))]}
    _, trips = trades.fold(None, SESSION, account(("MES 12-26", 2, 6000.0)), account(), T0, T0 + timedelta(seconds=9), partial)
    assert [t.source for t in trips] == ["snapshot"]


def test_a_new_session_starts_the_count_over():
    entry = {"session": "2026-11-30", "count": 5, "streak": 3, "open": {}, "ids": []}
    entry, _ = trades.fold(entry, SESSION, account(), account(), T0, T0 + timedelta(seconds=9), {"executions": []})
    assert (entry["session"], entry["count"], entry["streak"]) == (SESSION, 0, 0)


steps = st.lists(st.tuples(st.sampled_from([1, -1]), st.integers(1, 3), st.integers(-4, 4), st.booleans()), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(steps, st.integers(0, 3))
def test_property_every_round_trip_counts_exactly_once_whatever_the_polls_and_overlapping_reads(moves, overlap):
    """A random sequence of fills, polled at random points, each read reaching `overlap` fills back:
    the count equals the times the position went back to flat, the streak the trailing losers."""
    q, avg, price, t = 0, 0.0, 6000.0, T0
    history: list[dict] = []
    snapshots = [(t, account())]
    flat_results: list[float] = []
    running = 0.0
    for i, (direction, qty, move, poll) in enumerate(moves):
        price += move
        t += timedelta(seconds=1)
        history.append(fill(i, "Long" if direction > 0 else "Short", qty, price, t))
        if q == 0 or (q > 0) == (direction > 0):
            avg, q = (avg * abs(q) + price * qty) / (abs(q) + qty), q + direction * qty
        else:
            closing = min(abs(q), qty)
            running += (price - avg) * closing * (1 if q > 0 else -1)
            q += direction * closing
            if q == 0:
                flat_results.append(running)
                running = 0.0
                if qty > closing:
                    q, avg = direction * (qty - closing), price
        if poll or i == len(moves) - 1:
            t += timedelta(milliseconds=500)
            snapshots.append((t, account(*([("MES 12-26", q, avg)] if q else []))))
    entry = None
    for (since, before), (until, after) in zip(snapshots, snapshots[1:]):
        start = next((k for k, f in enumerate(history) if f["epoch"] > since.timestamp() * 1000), len(history))
        listed = [f for f in history[max(0, start - overlap):] if f["epoch"] <= until.timestamp() * 1000]  # what a read then lists
        entry, _ = trades.fold(entry, SESSION, before, after, since, until, {"executions": listed})
    streak = 0
    for result in flat_results:
        streak = streak + 1 if round(result, 6) < 0 else 0
    assert entry is not None and entry["count"] == len(flat_results) and entry["streak"] == streak


# -- through the simulator over HTTP ----------------------------------------------------------------


def test_loss_streak_flattens_after_the_third_losing_round_trip_reading_executions_only_when_a_position_closed(tmp_path):
    scenario = {"accounts": [{"name": "Sim101", "positions": []}], "prices": {"MES 12-26": 6000.0},
                "rate_limit": {"per_second": 3, "burst": 20}}
    rules = [{"name": "three-losers", "when": {"loss_streak": {"above": 2}}, "then": {"flatten": True}},
             {"name": "many-trades", "when": {"trades": {"above": 10}}, "then": {"flatten": True}}]
    rig = Rig(tmp_path, "tok-trades-123456", scenario, rules)
    try:
        sim, t = rig.sim, 0.0

        def trip(entry: float, exit_: float) -> None:
            sim.open_position("Sim101", "MES 12-26", "long", 1, price=entry)
            nonlocal t
            t += 1
            rig.tick_at(t)
            sim.open_position("Sim101", "MES 12-26", "short", 1, price=exit_)
            t += 1
            rig.tick_at(t)

        rig.tick_at(t)
        trip(6000, 5999)
        trip(6000, 6001)  # a winner: the streak ends
        trip(6000, 5998)
        trip(6000, 5997)
        assert rig.posts("/positions/flatten") == []
        sim.open_position("Sim101", "MES 12-26", "long", 2, price=6000)
        t += 1
        rig.tick_at(t)
        sim.open_position("Sim101", "MES 12-26", "short", 1, price=5990)  # the third loser closes in two parts
        t += 1
        rig.tick_at(t)
        assert rig.posts("/positions/flatten") == []  # still open: not a round trip yet
        sim.open_position("Sim101", "MES 12-26", "short", 1, price=6005)
        t += 1
        rig.tick_at(t)  # counted after this tick's actions: an executions read never holds back a close
        t += 1
        rig.tick_at(t)
        (flatten,) = rig.posts("/positions/flatten")
        (fired,) = rig.events("fired", rule="three-losers")
        assert fired["inputs"]["loss_streak"] == 3
        trips = rig.events("round_trip")
        assert [(e["losing"], e["trades"], e["loss_streak"], e["source"]) for e in trips] == [
            (True, 1, 1, "executions"), (False, 2, 0, "executions"), (True, 3, 1, "executions"), (True, 4, 2, "executions"),
            (True, 5, 3, "executions")]
        reads = [r for r in sim.request_log() if r.path.endswith("/executions")]
        assert len(reads) == 6  # one per close or shrink, none on the ticks that only opened
        assert all(10 <= int(r.query["lookbackTime"]) <= 900 for r in reads)
        rig.tick_at(t + 1)
        assert len(rig.posts("/positions/flatten")) == 1  # once
    finally:
        rig.close()
