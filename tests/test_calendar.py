"""The exchange calendar: known CME days pinned over several years, sessions and the maintenance
halt, the trader's corrections and event file (located errors), and rules that follow it through
the pure engine (trading_days, close-relative times, a fixed time on an early close, near_event)."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from pathlib import Path

import pytest
from rulekit import CHICAGO, NY, Harness, acct, bodies, fires, ny, pos

from riskd import calendar, config, engine
from riskd.errors import ConfigError

CAL = calendar.builtin()


def chicago(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=CHICAGO)


# ---------------------------------------------------------------------------------------------
# Known days.

FULL_HOLIDAYS = [
    (date(2024, 3, 29), "Good Friday"), (date(2024, 12, 25), "Christmas Day"), (date(2025, 1, 1), "New Year's Day"),
    (date(2025, 4, 18), "Good Friday"), (date(2025, 7, 4), "Independence Day"), (date(2025, 11, 27), "Thanksgiving Day"),
    (date(2026, 4, 3), "Good Friday"), (date(2026, 12, 25), "Christmas Day"), (date(2027, 3, 26), "Good Friday"),
    (date(2027, 7, 5), "Independence Day"), (date(2027, 12, 24), "Christmas Day"),  # Christmas on a Saturday: observed Friday
]
EARLY_EQUITY = [
    (date(2024, 11, 29), time(12, 15)), (date(2024, 12, 24), time(12, 15)), (date(2025, 7, 3), time(12, 15)),
    (date(2025, 1, 20), time(12, 0)), (date(2025, 6, 19), time(12, 0)), (date(2026, 11, 27), time(12, 15)),
    (date(2026, 12, 24), time(12, 15)), (date(2026, 9, 7), time(12, 0)), (date(2027, 11, 26), time(12, 15)),
]


@pytest.mark.parametrize("day, name", FULL_HOLIDAYS, ids=str)
def test_known_full_holidays_have_no_session_in_any_market(day, name):
    for market in calendar.MARKETS:
        assert CAL.status(market, day)[:2] == ("closed", name)
        assert CAL.session(market, day) is None and not CAL.trading_day(market, day)


@pytest.mark.parametrize("day, close", EARLY_EQUITY, ids=str)
def test_known_early_closes_close_equity_index_at_midday_chicago(day, close):
    session = CAL.session("equity_index", day)
    assert session is not None and session.early
    assert session.close == datetime.combine(day, close, CHICAGO)
    assert session.open == datetime.combine(day - timedelta(days=1), time(17), CHICAGO)  # the evening before


def test_early_close_times_differ_per_market_on_the_day_after_thanksgiving():
    closes = {m: CAL.session(m, date(2026, 11, 27)).close.time() for m in calendar.MARKETS}
    assert closes == {"equity_index": time(12, 15), "interest_rate": time(12, 15), "energy": time(12, 45), "metals": time(12, 45)}


def test_a_one_off_date_of_the_data_file_overrides_the_package_per_market():
    day = date(2025, 1, 9)  # National Day of Mourning: the package says closed; CME closed equities at 08:30 only
    assert CAL.session("equity_index", day).close == chicago(2025, 1, 9, 8, 30)
    assert CAL.session("interest_rate", day).close == chicago(2025, 1, 9, 12, 15)
    assert CAL.session("energy", day).early is None and CAL.session("energy", day).close == chicago(2025, 1, 9, 16)


def test_a_regular_day_runs_17_00_to_16_00_chicago_with_the_maintenance_halt_between():
    s = CAL.session("equity_index", date(2026, 3, 10))
    assert (s.open, s.close, s.early) == (chicago(2026, 3, 9, 17), chicago(2026, 3, 10, 16), None)
    assert CAL.session_at("equity_index", chicago(2026, 3, 10, 15, 59)) == s
    assert CAL.session_at("equity_index", chicago(2026, 3, 10, 16, 30)) is None
    assert "maintenance halt" in CAL.closed_reason("equity_index", chicago(2026, 3, 10, 16, 30))
    assert CAL.session_at("equity_index", chicago(2026, 3, 10, 17)).day == date(2026, 3, 11)
    assert CAL.closed_reason("equity_index", chicago(2026, 3, 14, 12)).endswith("weekend")
    assert CAL.closed_reason("equity_index", chicago(2026, 3, 13, 17, 30)) == "equity_index is closed at 2026-03-13 17:30 CT: weekend"
    assert CAL.closed_reason("metals", chicago(2026, 11, 25, 18)) == "metals is closed at 2026-11-25 18:00 CT: Thanksgiving Day"


def test_the_horizon_is_checked_loudly():
    assert CAL.horizon == date(2027, 12, 31)
    assert CAL.horizon_warning(date(2026, 12, 4)) is None
    assert "runs out on 2027-12-31 (30 days)" in CAL.horizon_warning(date(2027, 12, 1))
    assert "ran out on 2027-12-31" in CAL.horizon_warning(date(2028, 1, 3))


def test_the_holidays_package_is_a_runtime_dependency_with_its_reason():
    text = (Path(__file__).parent.parent / "pyproject.toml").read_text()
    assert '"holidays' in text.split("[project.optional-dependencies]")[0]


# ---------------------------------------------------------------------------------------------
# Corrections and the event file.


def _config(tmp_path: Path, calendar_yaml: str) -> Path:
    path = tmp_path / "riskd.yaml"
    path.write_text("rules: rules/\ncalendar:\n" + calendar_yaml)
    return path


def test_corrections_in_riskd_yaml_and_in_a_file_it_names_change_the_calendar(tmp_path):
    (tmp_path / "more.yaml").write_text("early_closes:\n  - {date: 2026-12-31, close: '12:15', markets: [equity_index]}\n")
    path = _config(tmp_path, "  file: more.yaml\n  holidays:\n    - {date: 2026-12-30, name: Exchange outage}\n"
                             "  regular_days:\n    - {date: 2026-12-24, markets: [energy]}\n")
    cal = config.load(path).calendar
    assert cal.status("metals", date(2026, 12, 30)) == ("closed", "Exchange outage", None)
    assert cal.session("equity_index", date(2026, 12, 31)).close == chicago(2026, 12, 31, 12, 15)
    assert cal.session("interest_rate", date(2026, 12, 31)).early is None
    assert cal.session("energy", date(2026, 12, 24)).close == chicago(2026, 12, 24, 16)  # corrected back to regular
    assert cal.session("equity_index", date(2026, 12, 24)).early == "Christmas Eve"


def test_a_bad_correction_is_a_located_error(tmp_path):
    path = _config(tmp_path, "  early_closes:\n    - {date: 2026-12-31, close: '25:00', markets: [equities]}\n")
    with pytest.raises(ConfigError) as err:
        config.load(path)
    text = str(err.value)
    assert f"{path}:4:" in text and "calendar.early_closes.0.close" in text and "24-hour" in text
    assert "calendar.early_closes.0.markets.0" in text and "equity_index" in text


def test_a_bad_correction_file_and_a_bad_event_file_are_located_errors(tmp_path):
    (tmp_path / "more.yaml").write_text("holidays:\n  - date: 2026-13-01\n")
    (tmp_path / "events.yaml").write_text("events:\n  - {date: 2026-12-16, time: '14:00', zone: America/NewYork, tags: [fomc]}\n")
    with pytest.raises(ConfigError) as err:
        config.load(_config(tmp_path, "  file: more.yaml\n  events: events.yaml\n"))
    assert [f"{p.file}:{p.line}" for p in err.value.problems] == [f"{tmp_path / 'more.yaml'}:2", f"{tmp_path / 'events.yaml'}:2"]
    assert "invalid date '2026-13-01'" in str(err.value) and "did you mean 'America/New_York'" in str(err.value)


def test_the_event_file_is_read_in_each_event_zone_and_warns_when_it_runs_dry(tmp_path):
    (tmp_path / "events.yaml").write_text(
        "events:\n"
        "  - {date: 2026-12-16, time: '14:00', tags: [FOMC], name: FOMC statement}\n"
        "  - {date: 2026-12-11, time: '07:30', zone: America/Chicago, tags: [cpi]}\n")
    cal = config.load(_config(tmp_path, "  events: events.yaml\n")).calendar
    assert [(e.at, e.tags) for e in cal.events] == [(ny(2026, 12, 11, 8, 30), frozenset({"cpi"})),
                                                    (ny(2026, 12, 16, 14), frozenset({"fomc"}))]
    assert cal.events_warning(ny(2026, 12, 1)) is None
    assert "no event in the next 30 days" in cal.events_warning(ny(2026, 12, 17))


# ---------------------------------------------------------------------------------------------
# Rules that follow the calendar, through the pure engine.

EOD = """\
  - name: flat-before-close
    when: {at: close-5m}
    then: {flatten: true}
  - name: trim-1555
    when: {at: "15:55", days: trading_days}
    then: {close: 50%}
"""


def test_close_relative_at_fires_at_the_early_close_and_a_fixed_time_on_it_is_skipped_with_the_reason():
    h = Harness(EOD)
    book = acct("Sim101", pos("MES 12-26", 2))
    assert h.tick(ny(2026, 11, 27, 13, 9, 59), book) == []
    at = h.tick(ny(2026, 11, 27, 13, 10), book)  # 12:15 CT early close - 5 min = 13:10 New York
    assert fires(at) == [("flat-before-close", "Sim101", None)] and at[0].inputs["scheduled"] == "2026-11-27T13:10:00-05:00"
    skipped = h.tick(ny(2026, 11, 27, 15, 55), book)
    assert [(d.kind, d.rule, d.orders) for d in skipped] == [("skipped", "trim-1555", ())]
    assert skipped[0].reason == "equity_index closed early at 12:15 CT on 2026-11-27 (Day after Thanksgiving Day); nothing sent"
    assert h.tick(ny(2026, 11, 27, 16, 55), book) == []  # no second close-5m, no 16:55 firing


def test_on_a_full_holiday_no_timed_rule_fires_and_the_next_trading_day_does():
    h = Harness(EOD)
    book = acct("Sim101", pos("MES 12-26", 2))
    for t in (ny(2026, 12, 25, 15, 55), ny(2026, 12, 25, 16, 55)):
        assert h.tick(t, book) == []
    assert engine.next_occurrence(h.rules[0], ny(2026, 12, 24, 14)) == ny(2026, 12, 28, 16, 55)  # Christmas, then the weekend
    assert engine.next_occurrence(h.rules[1], ny(2026, 12, 24, 16)) == ny(2026, 12, 28, 15, 55)
    assert bodies(h.tick(ny(2026, 12, 28, 15, 55), book)) == [("close", {"instrument": "MES 12-26", "percent": 0.5})]
    assert bodies(h.tick(ny(2026, 12, 28, 16, 55), book)) == [("flatten", {})]


def test_the_market_comes_from_the_instruments_or_is_named_and_mixed_markets_must_name_one():
    h = Harness("""\
  - name: crude-flat
    instruments: CL
    when: {at: close-5m}
    then: {flatten: true}
""")
    assert h.rules[0].market == "energy"
    assert bodies(h.tick(ny(2026, 11, 27, 13, 40), acct("Sim101", pos("CL 01-27")))) == [("flatten", {"instrument": "CL 01-27"})]
    with pytest.raises(ConfigError) as err:
        Harness("  - name: mixed\n    instruments: [MES, CL]\n    when: {at: close-5m}\n    then: {flatten: true}\n")
    assert "rule mixed: when: the instruments trade in different markets (energy, equity_index)" in str(err.value)
    assert "add market:" in str(err.value)


def test_a_session_window_holds_from_the_open_until_15_minutes_before_the_close():
    h = Harness("""\
  - name: session-only
    instruments: MES
    when: {outside: [open, close-15m], for: 2s}
    then: {close: all}
""")
    book = acct("Sim101", pos("MES 12-26", 1))
    assert h.tick(ny(2026, 11, 27, 12, 59, 59), book) == []  # inside: until 12:15 CT - 15 min
    h.tick(ny(2026, 11, 27, 13, 0), book)
    assert fires(h.tick(ny(2026, 11, 27, 13, 0, 2), book)) == [("session-only", "Sim101", "MES 12-26")]
    row = next(r for r in Harness(h.rules).explain(ny(2026, 11, 30, 12), book) if r["rule"] == "session-only")
    assert row["conditions"][0]["distance"].startswith("holds from 2026-11-30T15:45:00-06:00")


def test_trading_days_windows_are_quiet_on_a_holiday():
    h = Harness("""\
  - name: after-hours
    instruments: MES
    when: {outside: ["09:30", "16:00"], days: trading_days}
    then: {close: all}
""")
    assert h.tick(ny(2026, 12, 25, 17, 0), acct("Sim101", pos())) == []
    assert fires(h.tick(ny(2026, 12, 28, 17, 0), acct("Sim101", pos()))) == [("after-hours", "Sim101", "MES 12-26")]


def _with_events(*events: calendar.NewsEvent) -> engine.EngineSettings:
    return engine.EngineSettings(zone=NY, calendar=calendar.Calendar(events=events))


FOMC = calendar.NewsEvent(ny(2026, 12, 16, 14, 0), "FOMC statement", frozenset({"fomc"}), "events.yaml:2")
CPI = calendar.NewsEvent(ny(2026, 12, 10, 8, 30), "CPI", frozenset({"cpi"}), "events.yaml:3")


def test_near_event_closes_before_the_event_and_keeps_the_scope_flat_until_after():
    h = Harness("""\
  - name: flat-around-fomc
    when: {near_event: {before: 2m, after: 2m, tags: [fomc]}}
    then: {flatten: true}
""", settings=_with_events(FOMC, CPI))
    assert h.tick(ny(2026, 12, 10, 8, 30), acct("Sim101", pos())) == []  # CPI: not tagged fomc
    assert h.tick(ny(2026, 12, 16, 13, 57, 59), acct("Sim101", pos())) == []
    first = h.tick(ny(2026, 12, 16, 13, 58), acct("Sim101", pos("MES 12-26"), pos("NQ 12-26")))
    assert bodies(first) == [("flatten", {"instrument": "MES 12-26"}), ("flatten", {"instrument": "NQ 12-26"})]
    assert first[0].inputs["event"] == "FOMC statement"
    assert h.tick(ny(2026, 12, 16, 13, 58, 1), acct("Sim101")) == []
    h.tick(ny(2026, 12, 16, 13, 58, 2), acct("Sim101"))  # flat in two snapshots: the position is gone
    again = h.tick(ny(2026, 12, 16, 14, 1, 30), acct("Sim101", pos("MES 12-26")))  # re-entered inside the window
    assert bodies(again) == [("flatten", {"instrument": "MES 12-26"})]
    h.tick(ny(2026, 12, 16, 14, 1, 31), acct("Sim101"))
    h.tick(ny(2026, 12, 16, 14, 1, 32), acct("Sim101"))
    assert h.tick(ny(2026, 12, 16, 14, 2), acct("Sim101", pos("MES 12-26"))) == []  # after: free to trade
    row = h.explain(ny(2026, 12, 16, 15), acct("Sim101", pos()))[0]["conditions"][0]
    assert row["distance"] == "never (no event in the event file)"


def test_near_event_needs_a_window_and_well_formed_tags():
    from riskd import rules

    with pytest.raises(ConfigError) as err:
        rules.parse("rules:\n  - name: n\n    when: {near_event: {tags: [fomc!]}}\n    then: {flatten: true}\n", NY)
    text = str(err.value)
    assert "give 'before', 'after' or both" in text and "invalid tags" in text


def test_next_firings_of_calendar_rules_are_shown_in_the_rule_zone():
    h = Harness(EOD)
    rows = h.explain(ny(2026, 11, 27, 9), acct("Sim101", pos()))
    assert rows[0]["next"] == "2026-11-27T13:10:00-05:00"  # in the rule's zone
    assert rows[1]["next"] == "2026-11-27T15:55:00-05:00"  # an occurrence on a trading day (audited skipped when it comes)
    assert rows[0]["conditions"][0]["threshold"] == "close-5m"


# ---------------------------------------------------------------------------------------------
# Sessions follow the calendar.

WITH_CALENDAR = engine.EngineSettings(zone=NY, calendar=CAL)


def test_a_holiday_has_no_session_of_its_own_and_an_early_close_ends_at_the_next_globex_open():
    session = lambda t: engine.session_of(t, WITH_CALENDAR)  # noqa: E731
    assert session(ny(2026, 11, 25, 17, 59)) == "2026-11-25"
    assert session(ny(2026, 11, 25, 18, 0)) == session(ny(2026, 11, 26, 18, 0)) == "2026-11-27"  # Thanksgiving: no reset
    assert session(ny(2026, 11, 27, 13, 30)) == "2026-11-27"  # after the 12:15 CT early close: the same session
    assert session(ny(2026, 11, 27, 18, 0)) == session(ny(2026, 11, 29, 18, 0)) == "2026-11-30"  # one reset over the weekend
    assert engine.session_of(ny(2026, 11, 26, 18, 0), engine.EngineSettings(zone=NY)) == "2026-11-27"  # the plain clock


def test_a_lock_set_the_evening_before_a_holiday_still_holds_on_the_holiday_evening():
    rule = "  - name: loss-limit\n    when: {account_pnl: {below: -1000}}\n    then: {flatten: true, lock: true}\n"
    h = Harness(rule, settings=WITH_CALENDAR)
    assert bodies(h.tick(ny(2026, 11, 25, 20, 0), acct("Sim101", pos(pnl=-1200)))) == [("flatten", {})]
    h.tick(ny(2026, 11, 25, 20, 1), acct("Sim101", realized=-1200))
    again = h.tick(ny(2026, 11, 26, 18, 30), acct("Sim101", pos("MES 12-26"), realized=-1200))  # Thanksgiving evening
    assert bodies(again) == [("flatten", {"instrument": "MES 12-26"})]
    free = h.tick(ny(2026, 11, 27, 18, 30), acct("Sim101", pos("MES 12-26")))  # the next session: free to trade
    assert [d.kind for d in free] == ["lock_ended"] and not free[0].orders


# ---------------------------------------------------------------------------------------------
# The commands.


def test_riskd_calendar_prints_sessions_early_closes_holidays_events_and_next_firings(tmp_path, capsys):
    from riskd import cli

    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "eod.yaml").write_text("rules:\n" + EOD + "  - name: flat-around-cpi\n"
                                                  "    when: {near_event: {before: 2m, after: 1m, tags: [cpi]}}\n    then: {flatten: true}\n")
    (tmp_path / "events.yaml").write_text("events:\n  - {date: 2026-12-23, time: '08:30', tags: [cpi], name: CPI}\n")
    config_path = _config(tmp_path, "  events: events.yaml\n")
    assert cli.main(["calendar", "-c", str(config_path), "--from", "2026-12-21", "--days", "7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "  Thu 2026-12-24  17:00-12:15    17:00-12:15    17:00-12:45    17:00-12:45    early close: Christmas Eve" in lines
    assert "  Fri 2026-12-25  closed         closed         closed         closed         holiday: Christmas Day" in lines
    assert "  Wed 2026-12-23 07:30 CST  13:30 UTC  CPI [cpi]" in lines
    assert "      Thu 2026-12-24 13:10:00 EST  18:10:00 UTC" in lines  # close-5m on Christmas Eve
    assert ("      Thu 2026-12-24 15:55:00 EST  20:55:00 UTC  skipped: equity_index closed early at 12:15 CT on 2026-12-24 "
            "(Christmas Eve)") in lines
    assert not any("2026-12-25" in line and "EST" in line for line in lines)  # nothing fires on Christmas
    assert "      Wed 2026-12-23 08:28:00-08:31:00 EST  13:28:00-13:31:00 UTC  CPI" in lines
    assert cli.main(["calendar", "-c", str(config_path), "--from", "24/12"]) == 2


def test_riskd_check_warns_when_the_event_file_has_nothing_ahead(tmp_path, capsys):
    from riskd import cli

    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "eod.yaml").write_text("rules:\n" + EOD)
    (tmp_path / "events.yaml").write_text("events:\n  - {date: 2020-01-10, time: '08:30', tags: [nfp]}\n")
    assert cli.main(["check", "-c", str(_config(tmp_path, "  events: events.yaml\n"))]) == 0
    out = capsys.readouterr()
    assert "ok: 2 rules" in out.out and "riskd: warning: the news event file has no event in the next 30 days" in out.err


def test_the_pure_core_imports_no_io_library_for_the_calendar():
    import subprocess
    import sys

    probe = "import sys, riskd.engine; print(sorted(m for m in ('yaml', 'holidays', 'httpx', 'structlog', 'sqlite3') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
