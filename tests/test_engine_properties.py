"""Properties of the engine over random inputs (hypothesis):

- over any sequence of snapshots, a rule never fires twice for one target without re-arming (its
  conditions seen false, or a new position), fires only when its conditions hold, and does fire
  (or is superseded) whenever they hold and it is armed;
- arbitration always lets the most severe action win, and every superseded decision is covered by
  a winner at least as severe;
- timed rules fire at the local wall time, also on the DST-change days 2026-03-08 and 2026-11-01,
  in the New York and Chicago zones.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from rulekit import Harness, acct, fires, ny, pos, rule
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from riskd import engine

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ACCOUNTS = ("Sim101", "Sim102")
INSTRUMENTS = ("MES 12-26", "ES 12-26")
EDGE_RULES = (
    rule("cap", "position_pnl: {below: -500}", "close: 50%")
    + rule("size", "position_size: {above: 3}", "reduce_to: 3")
    + rule("dll", "account_pnl: {below: -1000}", "flatten: true")
    + rule("slow", "position_pnl: {below: -200}, for: 2s", "close: all", instruments="MES")
)

# one tick: per account, realized P&L and per instrument either nothing or (quantity, unrealized P&L)
position_state = st.one_of(st.none(), st.tuples(st.integers(1, 6), st.sampled_from([-900.0, -600.0, -300.0, -100.0, 200.0])))
account_state = st.tuples(st.sampled_from([-1200.0, -500.0, 0.0]), st.tuples(*[position_state for _ in INSTRUMENTS]))
tick_state = st.tuples(st.tuples(*[account_state for _ in ACCOUNTS]), st.booleans())  # (accounts, does the API acknowledge?)


def _truth(rule_name: str, realized: float, positions: dict[str, tuple[int, float]], instrument: str | None) -> bool:
    """The conditions of EDGE_RULES, computed independently of the engine."""
    if rule_name == "dll":
        return realized + sum(p for _, p in positions.values()) < -1000
    qty, pnl = positions[instrument]  # type: ignore[index]
    return {"cap": pnl < -500, "size": qty > 3, "slow": instrument.startswith("MES") and pnl < -200}[rule_name]  # type: ignore[union-attr]


@PROPERTY
@given(st.lists(tick_state, min_size=1, max_size=25))
def test_property_rule_never_fires_twice_for_a_target_without_rearming(ticks):
    h = Harness(EDGE_RULES)
    epoch: dict[tuple[str, str], int] = {}  # position identity: bumped when a position (re)appears
    absent: dict[tuple[str, str], int] = {}  # consecutive snapshots without it
    last_qty: dict[tuple[str, str], int] = {}
    armed: dict[tuple, bool] = {}  # target -> may fire (no acknowledged firing since it was last seen false)
    now = ny(2026, 11, 27, 11, 0)
    for accounts, api_ok in ticks:
        snapshot = []
        present: dict[str, dict[str, tuple[int, float]]] = {}
        for name, (realized, positions) in zip(ACCOUNTS, accounts):
            open_ = {inst: p for inst, p in zip(INSTRUMENTS, positions) if p is not None}
            present[name] = open_
            snapshot.append(acct(name, *(pos(i, q, p) for i, (q, p) in open_.items()), realized=realized))
        for name in ACCOUNTS:  # identity: odd epoch = open; a closed position's next opening is a new one
            for inst in INSTRUMENTS:
                is_open = inst in present[name]
                e = epoch.get((name, inst), 0)
                gone = absent.get((name, inst), 2) >= 2  # gone once two well-formed snapshots agree
                if is_open and (e % 2 == 0 or gone):
                    epoch[(name, inst)] = e + (1 if e % 2 == 0 else 2)
                absent[(name, inst)] = 0 if is_open else absent.get((name, inst), 2) + 1
        decisions = h.tick(now, *snapshot, ack=api_ok)
        decided = {(d.rule, d.account, d.instrument): d for d in decisions if d.kind in ("fire", "superseded")}
        for rule_name in ("cap", "size", "dll", "slow"):
            for name, (realized, _) in zip(ACCOUNTS, accounts):
                targets = [None] if rule_name == "dll" else list(present[name])
                for inst in targets:
                    target = (rule_name, name, inst, epoch.get((name, inst)) if inst else None)
                    holds = _truth(rule_name, realized, present[name], inst)
                    d = decided.get((rule_name, name, inst))
                    if d is not None and d.kind == "fire":
                        assert holds, f"{rule_name} fired on {name} {inst} while its conditions were false"
                        assert armed.get(target, True), f"{rule_name} fired twice on {name} {inst} without re-arming"
                    if not holds:
                        armed[target] = True
                    elif d is not None and api_ok and (d.kind == "fire" or "covers" in (d.reason or "")):
                        armed[target] = False
                    elif holds and armed.get(target, True) and rule_name != "slow" and not (
                            inst and present[name][inst][0] > 2 * last_qty.get((name, inst), present[name][inst][0])):
                        assert d is not None, f"{rule_name} held on {name} {inst}, armed, but decided nothing"
        for n in ACCOUNTS:  # the quantity last seen, kept across a one-snapshot absence (the engine's confirmation)
            for i in INSTRUMENTS:
                if i in present[n]:
                    last_qty[(n, i)] = present[n][i][0]
                elif absent[(n, i)] >= 2:
                    last_qty.pop((n, i), None)
        now += timedelta(seconds=1)


# ---------------------------------------------------------------------------------------------

ACTIONS = ("flatten: true", "close: all", "close: 50%", "close: 1", "reduce_to: 1")
rule_specs = st.lists(
    st.tuples(st.sampled_from(ACTIONS), st.sampled_from(["*", "MES", "ES"]), st.booleans()),  # action, instruments, per-position condition?
    min_size=1, max_size=6,
)


@PROPERTY
@given(rule_specs, st.lists(st.sampled_from(INSTRUMENTS + ("NQ 12-26",)), min_size=1, max_size=3, unique=True))
def test_property_arbitration_always_lets_the_most_severe_action_win(specs, held):
    text = ""
    for i, (action, instruments, per_position) in enumerate(specs):
        when = "position_size: {above: 0}" if per_position else "account_pnl: {above: -1000000}"
        text += rule(f"r{i}", when, action, instruments=f'"{instruments}"')
    h = Harness(text)
    decisions = h.tick(ny(2026, 11, 27, 11, 0), acct("Sim101", *(pos(i, 5) for i in held)))
    winners = [d for d in decisions if d.kind == "fire"]
    losers = [d for d in decisions if d.kind == "superseded"]
    filters = {f"r{i}": instruments for i, (_, instruments, _) in enumerate(specs)}

    def scope(d) -> set[str]:
        """What a decision acts on: its position, or the instruments its rule's filter matches ("*": the account)."""
        if d.instrument is not None:
            return {d.instrument}
        wanted = filters[d.rule]
        return {"*"} if wanted == "*" else {i for i in held if i.split(" ")[0] == wanted}

    def overlaps(a: set[str], b: set[str]) -> bool:
        return bool(a and b) and ("*" in a or "*" in b or bool(a & b))

    order = {r.name: r.index for r in h.rules}
    for loser in losers:
        cover = [w for w in winners if overlaps(scope(w), scope(loser))]
        assert cover, f"{loser.rule} superseded without a winner on its target"
        assert any(w.severity > loser.severity or (w.severity == loser.severity and order[w.rule] < order[loser.rule]) for w in cover)
    for w in winners:
        for other in losers:
            if overlaps(scope(w), scope(other)):
                assert other.severity <= w.severity, f"{other.rule} ({other.action}) lost to the less severe {w.rule} ({w.action})"


# ---------------------------------------------------------------------------------------------

DST_DAYS = (date(2026, 3, 8), date(2026, 11, 1))
ZONES = (ZoneInfo("America/New_York"), ZoneInfo("America/Chicago"))
times = st.builds(time, st.integers(0, 23), st.integers(0, 59), st.integers(0, 59))
days = st.one_of(st.sampled_from(DST_DAYS), st.dates(date(2026, 1, 1), date(2026, 12, 31)))


def _oracle(day: date, at: time, zone: ZoneInfo) -> datetime:
    """The first UTC second at which the zone's clock shows `day` and `at` or later: a plain scan."""
    start = datetime.combine(day, at, tzinfo=timezone.utc) + timedelta(hours=3)  # US zones are UTC-4..-6
    step = timedelta(minutes=1)
    t = start
    while not (t.astimezone(zone).date() == day and t.astimezone(zone).time() >= at):
        t += step
    t -= step
    while not (t.astimezone(zone).date() == day and t.astimezone(zone).time() >= at):
        t += timedelta(seconds=1)
    return t


@settings(max_examples=200, deadline=None)
@given(days, times, st.sampled_from(ZONES))
def test_property_timed_rule_fires_at_local_wall_time_including_dst_days(day, at, zone):
    expected = _oracle(day, at, zone)
    h = Harness(rule("t", f'at: "{at.isoformat()}", days: daily, timezone: {zone.key}', "flatten: true"))
    assert engine.next_occurrence(h.rules[0], expected - timedelta(seconds=1)).timestamp() == expected.timestamp()  # (PEP 495: an ambiguous local time never == a UTC one)
    h.tick(expected - timedelta(hours=30), acct("Sim101", pos()))
    assert fires(h.tick(expected - timedelta(seconds=1), acct("Sim101", pos()))) == []
    assert fires(h.tick(expected, acct("Sim101", pos()))) == [("t", "Sim101", None)]
    assert fires(h.tick(expected + timedelta(hours=1), acct("Sim101", pos()))) == []  # once, also in a repeated hour
    local = expected.astimezone(zone)
    assert local.date() == day and (local.time() == at or local.time() > at and zone.dst(local) != zone.dst(local - timedelta(hours=1)))
