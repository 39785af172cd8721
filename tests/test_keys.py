"""Identity keys: one string form and one parse per kind, case-insensitive names by construction."""

from __future__ import annotations

from datetime import timezone

from hypothesis import given
from hypothesis import strategies as st

from riskd.engine import STATE_VERSION, State
from riskd.keys import FiringKey, LockKey, OccurrenceKey, PositionKey, TargetKey, rule_of

rules = st.from_regex(r"[a-z0-9_-]{1,12}", fullmatch=True)
names = st.text(st.characters(blacklist_characters="|?", blacklist_categories=("Cs",)), min_size=1, max_size=16)
instants = st.datetimes(timezones=st.just(timezone.utc)).map(lambda d: d.isoformat())
targets = st.one_of(
    st.builds(TargetKey, names),
    st.builds(TargetKey, names, names, instants),
    st.builds(lambda a: TargetKey(a, waiting=True), names),
)
firings = st.one_of(
    st.builds(FiringKey, rules, targets),
    st.builds(lambda r, t, i: FiringKey(r, t, occurrence=i), rules, targets, instants),
    st.builds(lambda r, t: FiringKey(r, t, lock=True), rules, targets),
)


@given(firings)
def test_every_firing_key_reads_back_as_itself_and_names_its_rule(key):
    assert FiringKey.parse(str(key)) == key
    assert rule_of(str(key)) == key.rule


@given(rules, names, names, instants)
def test_position_occurrence_and_lock_keys_read_back_as_themselves(rule, account, instrument, instant):
    for key in (PositionKey(account, instrument, "Long"), OccurrenceKey(rule, instant), LockKey(rule, account)):
        assert type(key).parse(str(key)) == key
    assert rule_of(str(OccurrenceKey(rule, instant))) == rule_of(str(LockKey(rule, account))) == rule


def test_account_and_instrument_compare_as_the_api_matches_them():
    assert PositionKey("SIM101", "mes 12-26", "Long") == PositionKey("Sim101", "MES 12-26", "Long")
    assert str(FiringKey("cap", TargetKey("SIM101", "mes 12-26", "t"))) == "cap|sim101|MES 12-26|t"
    assert LockKey("dll", "SIM101") == LockKey.parse("dll|sim101")
    assert PositionKey("Sim101", "MES 12-26", "Long").rival() == PositionKey("sim101", "MES 12-26", "Short")


def test_state_documents_carry_their_version_and_old_ones_move_forward():
    assert State().to_json()["version"] == STATE_VERSION == 3
    old = {"session": "2026-11-27", "fired": {"cap|Sim101": "t1", "half@2026-11-27T20:55:00+00:00|Sim101|mes 12-26|t0": "t2"},
           "locks": {"dll|SIM101": "t3"}, "first_seen": {"Sim101|mes 12-26|Long": "t0", "sim101|MES 12-26": "t0"},
           "occurrences": {"half@2026-11-27T20:55:00+00:00": {"Sim101|mes 12-26|t0": "done", "?SIM102": "waiting"}}}
    state = State.from_json(old)
    assert state.fired == {"cap|sim101": "t1", "half@2026-11-27T20:55:00+00:00|sim101|MES 12-26|t0": "t2"}
    assert state.locks == {"dll|sim101": "t3"}
    assert state.first_seen == {"sim101|MES 12-26|Long": "t0"}  # a side-less identity (older still) starts over
    assert state.tracked == {"sim101|MES 12-26|Long": [0, 0, 1]}
    assert state.occurrences == {"half@2026-11-27T20:55:00+00:00": {"sim101|MES 12-26|t0": "done", "?sim102": "waiting"}}
    current = State.from_json({**old, "version": 2, "tracked": {}})
    assert current.fired == old["fired"]  # a current document is read as written
