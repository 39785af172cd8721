"""`riskd audit --summary` and `riskd report` on trails recorded from simulator runs: a whole
trading day driven tick by tick with a fake clock (riskd's real Ticker against the simulator over
HTTP), and a real `riskd run`. The HTML page is rendered in headless Chromium; the screenshot
lands in build/test-artifacts/ (or $RISKD_TEST_ARTIFACTS)."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from conftest import run_cli, write_policy
from riskd import config, engine, rules as rules_mod
from riskd.audit import AuditTrail
from riskd.cli import main as cli_main
from riskd.samples import expand
from riskd.tick import build_ticker
from riskd.state import Store

NY = ZoneInfo("America/New_York")
OPEN = datetime(2026, 3, 10, 13, 30, tzinfo=timezone.utc)  # Tuesday 09:30 New York (EDT)
CLOSE = datetime(2026, 3, 10, 20, 0, tzinfo=timezone.utc)
TICK = timedelta(seconds=30)
ARTIFACTS = Path(os.environ.get("RISKD_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "build" / "test-artifacts"))


def _steps(instrument: str, minutes_prices: list[tuple[int, float]]) -> list[dict[str, Any]]:
    return [{"at": f"{m * 60}s", "instrument": instrument, "price": p} for m, p in minutes_prices]


DAY_SCENARIO = {
    "rate_limit": None,
    "accounts": [
        {"name": "Sim101", "positions": [{"instrument": "MES 12-26", "side": "long", "quantity": 4, "price": 6000.0},
                                         {"instrument": "ES 12-26", "side": "long", "quantity": 2, "price": 6000.0}]},
        {"name": "Sim102", "positions": [{"instrument": "NQ 12-26", "side": "long", "quantity": 3, "price": 21000.0}]},
    ],
    "prices": {"MES 12-26": 6000.0, "ES 12-26": 6000.0, "NQ 12-26": 21000.0},
    "path": {"steps": [
        # MES: 4 lots * $5: -340 at 120 min, -520 at 150 min -> the loss cap closes all 4 then
        *_steps("MES 12-26", [(30, 6004), (60, 5996), (90, 5990), (120, 5983), (150, 5974), (180, 5970)]),
        # ES: 2 lots * $50: +500 from 360 min on -> the 15:55 trim closes 1 of 2 at +500 (P&L at close 250)
        *_steps("ES 12-26", [(60, 6003), (120, 5998), (180, 6002), (240, 6006), (300, 6004), (360, 6005)]),
        # NQ: 3 lots * $20: peak +600 at 90 min, +240 at 180 min: 360 below the peak -> flatten
        *_steps("NQ 12-26", [(45, 21005), (90, 21010), (135, 21008), (180, 21004), (200, 21001)]),
    ]},
}
DAY_RULES = [
    {"name": "mes-loss-cap", "instruments": "MES", "when": {"position_pnl": {"below": -500}}, "then": {"close": "all"}},
    {"name": "sim102-trailing", "accounts": "Sim102", "when": {"account_drawdown": {"limit": 300, "after": 500}},
     "then": {"flatten": True}},
    {"name": "eod-trim", "when": {"at": "15:55", "days": "weekdays"}, "then": {"close": "50%"}},
]
# What a reviewer expects from the scenario alone: (firings, closes, contracts closed, P&L at close)
DAY_EXPECTED = {"mes-loss-cap": (1, 1, 4, -520.0), "sim102-trailing": (1, 1, 3, 240.0), "eod-trim": (1, 1, 1, 250.0)}


class FakeClock:
    def __init__(self, start: datetime):
        self.now = start

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def trading_day(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A whole New York session (09:30-16:00) recorded through riskd's Ticker, one tick every 30 s
    of fake time, against the simulator over HTTP; returns the trail."""
    from riskd.sim import SimServer, Simulator

    base = tmp_path_factory.mktemp("day")
    token = "day-" + os.urandom(12).hex()
    clock = FakeClock(OPEN)
    sim = Simulator(DAY_SCENARIO, token=token, clock=lambda: (clock.now - OPEN).total_seconds())
    with SimServer(sim, host="127.0.0.1", port=0) as server:
        (base / "rules").mkdir()
        (base / "rules" / "policy.yaml").write_text(yaml.safe_dump({"rules": DAY_RULES}, sort_keys=False))
        spec = config.ConfigSpec(crosstrade=config.CrossTradeSpec(base_url=server.base_url, rate_limit=config.RateLimitSpec(per_second=1000, burst=1000)))
        settings = config.from_spec(spec, None, base=base)
        rules, hashes = rules_mod.load(settings.rules, settings.zone)
        audit = AuditTrail(settings.audit_log, secrets=[token], clock=clock, fsync="none")
        store = Store(settings.state_dir)
        ticker = build_ticker(settings, rules, token, audit, dry_run=False, store=store, clock=clock)
        audit.emit("started", version="test", config=None, pid=os.getpid(), dry_run=False)
        audit.emit("rules_loaded", source=[str(p) for p in settings.rules], files=hashes, rule_count=len(rules), reason="start")
        while clock.now <= CLOSE:
            ticker.tick()
            clock.now += TICK
        audit.emit("stopped", reason="end of test day", pid=os.getpid(), ticks=ticker.health.ticks, firings=ticker.health.firings)
        ticker.client.close()
        store.close()
        audit.close()
    assert {p["instrument"]: p["quantity"] for p in sim.positions()} == {"ES 12-26": 1}
    return Path(settings.audit_log)


def _summary(capsys: Any, *args: str) -> dict[str, dict[str, Any]]:
    assert cli_main(["audit", *args, "--summary", "--json"]) == 0
    return {row["rule"]: row for row in map(json.loads, capsys.readouterr().out.splitlines())}


def test_day_summary_has_the_figures_the_scenario_implies(trading_day, capsys):
    rows = _summary(capsys, str(trading_day))
    assert {r["day"] for r in rows.values()} == {"2026-03-10"}
    got = {rule: (r["firings"], r["closes"], r["contracts_closed"], r["pnl_at_close"]) for rule, r in rows.items()}
    assert got == DAY_EXPECTED


def test_day_samples_once_a_minute_per_account_and_at_every_firing(trading_day):
    lines = [json.loads(x) for x in trading_day.read_text().splitlines()]
    samples = [x for x in expand(lines) if x["event"] == "sample"]  # a `samples` line: one `sample` per account
    fired = [x for x in lines if x["event"] == "fired"]
    assert len(fired) == 3
    minutes = {(OPEN + timedelta(minutes=m)).strftime("%H:%M") for m in range(int((CLOSE - OPEN).total_seconds() // 60) + 1)}
    for account in ("Sim101", "Sim102"):
        mine = [s for s in samples if s["account"] == account]
        assert {s["ts"][11:16] for s in mine} == minutes  # every minute of the session
        assert len(mine) <= len(minutes) + sum(f["account"] == account for f in fired)  # and not more often
    for f in fired:  # a sample at each firing shows the P&L the rule saw (written after the close is sent)
        (at,) = [x for x in samples if x["account"] == f["account"] and x["reason"] == "firing" and x["ts"][:19] == f["ts"][:19]]
        assert at["pnl"] == f["inputs"]["account_pnl"] and at["seq"] > f["seq"]
    trim = next(f for f in fired if f["rule"] == "eod-trim")
    assert trim["ts"].startswith("2026-03-10T19:55:00") and trim["local_time"].startswith("2026-03-10T15:55:00.000-04:00")


def test_day_report_is_one_self_contained_page_with_charts_firings_and_closed_positions(trading_day, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert cli_main(["report", str(trading_day), "--date", "2026-03-10", "-o", str(out)]) == 0
    page = out.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page) and "http://" not in page and "https://" not in page
    assert "<script" not in page and page.count("<svg") == 2
    assert "Trail verified" in page
    assert page.count('<g class="firing">') == 3
    for figure in ("-520.00", "240.00", "250.00"):
        assert figure in page
    assert "Long 4 MES 12-26 avg 6000.0 mkt 5974.0" in page and "Long 3 NQ 12-26" in page and "Long 2 ES 12-26" in page
    assert "15:55:00.000" in page  # the exchange-local time of the timed rule


def test_day_report_renders_in_headless_chromium(trading_day, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    assert browser, "no chromium on PATH (apt-get install -y chromium; .ci/run installs it)"
    page = tmp_path / "report.html"
    assert cli_main(["report", str(trading_day), "--date", "2026-03-10", "-o", str(page)]) == 0
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "riskd-report-2026-03-10.png"
    shot.unlink(missing_ok=True)
    shutil.copy(page, ARTIFACTS / "riskd-report-2026-03-10.html")
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'chromium'}", f"--screenshot={shot}", "--window-size=1200,2200",
                    page.as_uri()], capture_output=True, timeout=90)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1200, 2200)
    pixels = zlib.decompress(b"".join(_chunks(data, b"IDAT")))
    assert len(data) > 20_000 and len(set(pixels[::7])) > 20  # not a blank page


def _chunks(png: bytes, kind: bytes) -> list[bytes]:
    found, at = [], 8
    while at < len(png):
        length = struct.unpack(">I", png[at:at + 4])[0]
        if png[at + 4:at + 8] == kind:
            found.append(png[at + 8:at + 8 + length])
        at += 12 + length
    return found


def test_run_summary_and_report_from_a_real_riskd_run(tmp_path, sim_factory, riskd_factory, token, capsys):
    scenario = {  # the day's accounts, with a fast price path
        **DAY_SCENARIO,
        "path": {"steps": [{"at": "1s", "instrument": "MES 12-26", "price": 5974.0},      # 4 * $5 * -26 = -520
                           {"at": "1500ms", "instrument": "NQ 12-26", "price": 20983.0}]},  # 3 * $20 * -17 = -1020
    }
    sim, server = sim_factory(scenario)
    rules = [{"name": "mes-loss-cap", "instruments": "MES", "when": {"position_pnl": {"below": -500}}, "then": {"close": "all"}},
             {"name": "daily-loss-limit", "accounts": "Sim102", "when": {"account_pnl": {"below": -1000}}, "then": {"flatten": True}}]
    proc = riskd_factory(write_policy(tmp_path, server.base_url, rules, poll_interval="200ms"), token)
    proc.wait_for("action", timeout=15, count=2)
    assert proc.stop() == 0
    fired = proc.events("fired")
    day = engine.session_of(datetime.fromisoformat(fired[0]["ts"].replace("Z", "+00:00")), engine.EngineSettings(zone=NY))

    rows = _summary(capsys, str(proc.audit_path))
    got = {rule: (r["day"], r["firings"], r["closes"], r["contracts_closed"], r["pnl_at_close"]) for rule, r in rows.items()}
    assert got == {"mes-loss-cap": (day, 1, 1, 4, -520.0), "daily-loss-limit": (day, 1, 1, 3, -1020.0)}

    done = run_cli("report", str(proc.audit_path), "--date", day, "-o", str(tmp_path / "report.html"))
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "report.html").read_text()
    assert "Trail verified" in page and "<h3>Sim101</h3>" in page and "<h3>Sim102</h3>" in page
    assert "-520.00" in page and "-1,020.00" in page and "Long 3 NQ 12-26" in page
    assert token not in page
    assert "http://" not in page and "https://" not in page


def test_report_without_a_date_takes_the_latest_day_and_refuses_a_bad_one(trading_day, tmp_path, capsys):
    os.chdir(tmp_path)
    assert cli_main(["report", str(trading_day)]) == 0
    assert (tmp_path / "riskd-report-2026-03-10.html").is_file()
    assert cli_main(["report", str(trading_day), "--date", "10/03/2026"]) == 2
    assert cli_main(["report", str(trading_day), "--date", "2026-03-11"]) == 1
    assert "days with data: 2026-03-10" in capsys.readouterr().err


def _hand_trail(path: Path) -> Path:
    """A short New York morning written line by line: rules loaded the evening before, a reload at
    09:45 that changes one rule and adds one, realized P&L that moves twice, a drawdown firing."""
    clock = FakeClock(datetime(2026, 3, 9, 21, 0, tzinfo=timezone.utc))  # Monday 17:00 New York: the day before
    audit = AuditTrail(str(path), clock=clock, fsync="none")
    audit.emit("started", version="test", config="riskd.yaml", pid=1, dry_run=False, timezone="America/New_York",
               session_start="18:00")
    audit.emit("rules_loaded", source=["rules/"], files={"rules/a.yaml": "a" * 64}, rule_count=1, reason="start")
    realized = {0: 0.0, 10: 0.0, 20: -150.0, 30: -150.0, 40: 100.0}
    for minute, value in realized.items():
        clock.now = OPEN + timedelta(minutes=minute)
        audit.emit("sample", account="Sim101", session="2026-03-10", reason="minute", pnl=value + 50.0, realized=value,
                   unrealized=50.0, commission=0.0, net_liquidation=50000.0, positions=[])
        if minute == 10:
            clock.now = OPEN + timedelta(minutes=15)
            audit.emit("rules_loaded", source=["rules/"], files={"rules/a.yaml": "b" * 64, "rules/b.yaml": "c" * 64}, rule_count=2,
                       reason="reload", unchanged=[], changed=["giveback"], added=["trim"], removed=[])
    clock.now = OPEN + timedelta(minutes=41)
    audit.emit("fired", rule="giveback", key="giveback|sim101", account="Sim101", instrument=None, action="flatten",
               dry_run=False, session="2026-03-10", inputs={"account_pnl": 150.0, "peak": 500.0, "floor": 200.0},
               threshold={"account_drawdown": {"limit": ["dollars", 300.0], "after": 500.0}}, local_time=None, reason=None,
               orders=[], covers=[])
    audit.close()
    return path


def test_report_lists_every_rule_set_of_the_day_draws_realized_as_steps_in_the_rules_zone(tmp_path):
    trail = _hand_trail(tmp_path / "audit.jsonl")
    out = tmp_path / "report.html"
    assert cli_main(["report", str(trail), "--date", "2026-03-10", "-o", str(out)]) == 0
    page = out.read_text()
    rule_sets = page.split("<th>rule files (SHA-256)</th></tr>", 1)[1].split("</table>", 1)[0]
    assert rule_sets.count("<tr>") == 2  # the set carried into the day, and the reload's
    assert "<td>before the day</td><td>start</td>" in rule_sets and "<td>2026-03-10 13:45:00</td><td>reload</td>" in rule_sets
    assert "changed: giveback; added: trim" in rule_sets and "rules/b.yaml <code>cccccccccccccccc</code>" in rule_sets
    # realized P&L holds its value until the next sample: a vertical step, never a slope between fills
    realized = re.search(r'<polyline points="([^"]+)" class="realized"/>', page).group(1).split()
    xy = [tuple(map(float, p.split(","))) for p in realized]
    assert len(xy) == 5 + 2  # 5 samples and one step at each of the 2 changes
    for (x0, y0), (x1, y1) in zip(xy, xy[1:]):
        assert x0 == x1 or y0 == y1
    # the axis reads in New York time (the trail's timezone), UTC in a second row
    assert "time (America/New_York; UTC below)" in page
    assert '<text x="' in page and '>09:40</text>' in page and 'class="utc">13:40</text>' in page
    assert "threshold: $300 below the peak after +$500" in page and "dollars" not in page
