"""The exchange calendar end to end: riskd's ticker against the simulator over real HTTP, on a
frozen day (the harness's SimClock): an early close, a full holiday, a news event."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from riskd import calendar

from harness import Rig, one_position

NY = ZoneInfo("America/New_York")
EOD = [
    {"name": "flat-before-close", "when": {"at": "close-5m"}, "then": {"flatten": True}},
    {"name": "trim-1555", "when": {"at": "15:55", "days": "trading_days"}, "then": {"close": "50%"}},
]


def _start(*wall: int) -> datetime:
    return datetime(*wall, tzinfo=NY).astimezone(timezone.utc)  # type: ignore[misc]


@pytest.fixture
def rigs():
    made: list[Rig] = []
    yield made
    for rig in made:
        rig.close()


def test_early_close_day_close_5m_fires_at_the_early_close_minus_5m_and_a_fixed_1555_is_audited_skipped(tmp_path, token, rigs):
    rig = Rig(tmp_path, token, one_position(quantity=4), EOD, start=_start(2026, 11, 27, 13, 9, 0))  # day after Thanksgiving
    rigs.append(rig)
    rig.tick_at(0)
    rig.tick_at(59)
    assert rig.posts() == []
    rig.tick_at(60)  # 13:10 New York = 12:15 CT early close - 5 min
    (flatten,) = rig.posts("/positions/flatten", applied=True)
    assert flatten.path.endswith("accounts/Sim101/positions/flatten") and rig.quantities() == {}
    (fired,) = rig.events("fired", rule="flat-before-close")
    assert fired["inputs"]["scheduled"] == "2026-11-27T13:10:00-05:00"
    rig.sim.open_position("Sim101", "MES 12-26", quantity=2)  # back in after the halt would be impossible; the 15:55 must not act
    at_1555 = 60 + 2 * 3600 + 45 * 60
    for t in (at_1555 - 60, at_1555, at_1555 + 1, at_1555 + 2, at_1555 + 3, at_1555 + 30):  # a poll lost to load is retried
        rig.tick_at(t)
    assert rig.posts("/positions/close") == []
    (skipped,) = rig.events("skipped", rule="trim-1555")
    assert skipped["reason"] == "equity_index closed early at 12:15 CT on 2026-11-27 (Day after Thanksgiving Day); nothing sent"
    assert rig.quantities() == {("Sim101", "MES 12-26"): 2}


def test_on_a_full_holiday_no_timed_rule_fires(tmp_path, token, rigs):
    rig = Rig(tmp_path, token, one_position(quantity=4), EOD, start=_start(2026, 12, 25, 15, 54, 0))  # Christmas Day
    rigs.append(rig)
    for t in (0, 60, 61, 3600, 3601, 3660):  # 15:54 .. 16:55 .. 16:55:01 .. 16:56
        rig.tick_at(t)
    assert rig.posts() == [] and rig.events("fired") == [] and rig.events("skipped") == []
    assert rig.quantities() == {("Sim101", "MES 12-26"): 4}


def test_a_news_event_in_the_file_flattens_before_it_and_keeps_flat_until_after(tmp_path, token, rigs):
    (tmp_path / "events.yaml").write_text("events:\n  - {date: 2026-12-16, time: '14:00', tags: [fomc], name: FOMC statement}\n")
    cal = calendar.build(calendar.CalendarSpec(events="events.yaml"), tmp_path, NY)
    rules = [{"name": "flat-around-fomc", "when": {"near_event": {"before": "2m", "after": "2m", "tags": ["fomc"]}},
              "then": {"flatten": True}}]
    rig = Rig(tmp_path, token, one_position(quantity=3), rules, start=_start(2026, 12, 16, 13, 57, 0), calendar=cal)
    rigs.append(rig)
    rig.tick_at(0)
    rig.tick_at(59)
    assert rig.posts() == []
    rig.tick_at(60)  # 13:58: two minutes before
    assert [p.body for p in rig.posts("/positions/flatten", applied=True)] == [{"instrument": "MES 12-26"}]
    assert rig.quantities() == {}
    rig.tick_at(61)
    rig.tick_at(62)
    rig.sim.open_position("Sim101", "MES 12-26", quantity=1)  # back in at 14:01, inside the window
    rig.tick_at(240)
    assert len(rig.posts("/positions/flatten", applied=True)) == 2 and rig.quantities() == {}
    rig.tick_at(241)
    rig.tick_at(242)
    rig.sim.open_position("Sim101", "MES 12-26", quantity=1)  # 14:02: the window is over
    rig.tick_at(300)
    rig.tick_at(301)
    assert len(rig.posts("/positions/flatten")) == 2 and rig.quantities() == {("Sim101", "MES 12-26"): 1}
    assert [e["inputs"]["event"] for e in rig.events("fired")] == ["FOMC statement", "FOMC statement"]


def test_the_daemon_warns_of_a_calendar_past_its_horizon_and_reads_the_event_file_again_on_reload(tmp_path, token, rigs):
    import dataclasses

    from riskd.daemon import CalendarTrigger, Daemon

    events = tmp_path / "events.yaml"
    events.write_text("events:\n  - {date: 2026-12-16, time: '14:00', tags: [fomc]}\n")
    cal = calendar.build(calendar.CalendarSpec(events="events.yaml"), tmp_path, NY)
    cal.hours = dataclasses.replace(cal.hours, reviewed_through=datetime(2026, 1, 31).date())  # a calendar that ran out
    rig = Rig(tmp_path, token, one_position(), EOD, start=_start(2026, 12, 14, 10, 0, 0), calendar=cal)
    rigs.append(rig)
    daemon = Daemon(rig.settings, rig.ticker, rig.audit, {})
    daemon._calendar_warnings()
    (warning,) = rig.events("calendar_warning")
    assert warning["warning"].startswith("the CME calendar ran out on 2026-01-31")

    trigger = CalendarTrigger(rig.ticker.rules[0], rig.settings.calendar)  # close-5m on Christmas Eve, then Monday
    assert trigger.get_next_fire_time(None, _start(2026, 12, 24, 9, 0, 0)) == _start(2026, 12, 24, 13, 10, 0)
    assert trigger.get_next_fire_time(_start(2026, 12, 24, 13, 10, 0), _start(2026, 12, 24, 13, 10, 0)) == _start(2026, 12, 28, 16, 55, 0)

    events.write_text("events:\n  - {date: 2026-12-14, time: '10:05', tags: [cpi], name: late CPI}\n")
    (rig.rules_path.parent / "news.yaml").write_text(
        "rules:\n  - name: flat-around-news\n    when: {near_event: {before: 1m, after: 1m}}\n    then: {flatten: true}\n")
    assert daemon.reload() is True
    rig.tick_at(4 * 60 + 1)  # 10:04:01: inside the new event's window
    assert [p.body for p in rig.posts("/positions/flatten", applied=True)] == [{"instrument": "MES 12-26"}]


def test_riskd_run_audits_an_event_file_with_nothing_ahead_at_start(tmp_path, sim_factory, riskd_factory, token):
    from conftest import write_policy

    sim, server = sim_factory(one_position())
    (tmp_path / "events.yaml").write_text("events:\n  - {date: 2020-01-10, time: '08:30', tags: [nfp]}\n")
    config = write_policy(tmp_path, server.base_url, EOD, calendar={"events": "events.yaml"})
    proc = riskd_factory(config, token)
    (warning,) = proc.wait_for("calendar_warning", timeout=15)
    assert warning["warning"].startswith("the news event file has no event in the next 30 days")
    assert proc.stop() == 0
