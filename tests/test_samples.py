"""Account samples: one `samples` line a minute for every account (figures only where they changed)
reads back, in the report and `riskd audit`, as the same day the per-account `sample` lines gave;
a firing still gets its own `sample` line at once; at rest a desk's trail stays small."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from conftest import read_audit
from test_report import DAY_RULES, DAY_SCENARIO, OPEN, FakeClock

from riskd import config, events, report, rules as rules_mod
from riskd.audit import AuditTrail
from riskd.cli import main as cli_main
from riskd.model import Snapshot
from riskd.samples import FULL_EVERY, Sampler, expand
from riskd.sim import SimServer, Simulator
from riskd.state import Store
from riskd.tick import build_ticker

DAY = "2026-03-10"


class LegacySamples:
    """The per-account `sample` lines as riskd wrote them before the `samples` line (trails of that
    time must read the same): one line per account a minute and one at every firing."""

    def __init__(self, audit: AuditTrail):
        self.audit = audit
        self.sampled: dict[str, datetime] = {}

    def sample(self, snapshot: Snapshot, now: datetime, session: str, firing: set[str]) -> None:
        minute = now.replace(second=0, microsecond=0)
        for account in snapshot.accounts:
            name = account.name.lower()
            if self.sampled.get(name) == minute and name not in firing:
                continue
            self.sampled[name] = minute
            self.audit.emit("sample", account=account.name, session=session, reason="firing" if name in firing else "minute",
                            pnl=round(account.pnl(), 2), realized=account.realized_pnl, unrealized=account.unrealized_pnl,
                            commission=account.commission, net_liquidation=account.net_liquidation,
                            positions=[{"instrument": p.instrument, "side": p.side, "quantity": p.quantity, "pnl": p.unrealized_pnl}
                                       for p in account.positions])


def _run(base: Path, scenario: dict[str, Any], rules: list[dict[str, Any]], until: datetime, step: timedelta,
         legacy: bool = False) -> tuple[Path, Path | None]:
    """riskd's Ticker against the simulator over HTTP on a fake clock from OPEN to `until`; with `legacy`,
    the same samples also written the old way to a second trail. Returns (the trail, the legacy trail)."""
    token = "samples-" + os.urandom(8).hex()
    clock = FakeClock(OPEN)
    sim = Simulator(scenario, token=token, clock=lambda: (clock.now - OPEN).total_seconds())
    with SimServer(sim, host="127.0.0.1", port=0) as server:
        (base / "rules").mkdir()
        (base / "rules" / "policy.yaml").write_text(yaml.safe_dump({"rules": rules}, sort_keys=False))
        spec = config.ConfigSpec(crosstrade=config.CrossTradeSpec(base_url=server.base_url,
                                                                  rate_limit=config.RateLimitSpec(per_second=1000, burst=1000)))
        settings = config.from_spec(spec, None, base=base)
        loaded, _ = rules_mod.load(settings.rules, settings.zone)
        audit = AuditTrail(settings.audit_log, secrets=[token], clock=clock, fsync="none")
        old_path = base / "legacy.jsonl" if legacy else None
        old = AuditTrail(str(old_path), clock=clock, fsync="none") if old_path else None
        store = Store(settings.state_dir)
        ticker = build_ticker(settings, loaded, token, audit, dry_run=False, store=store, clock=clock,
                              monotonic=lambda: (clock.now - OPEN).total_seconds())
        if old is not None:
            writer, before = LegacySamples(old), ticker.sampler.sample

            def both(snapshot: Snapshot, now: datetime, session: str, firing: set[str]) -> None:
                before(snapshot, now, session, firing)
                writer.sample(snapshot, now, session, firing)

            ticker.sampler.sample = both  # type: ignore[method-assign]
        while clock.now <= until:
            ticker.tick()
            clock.now += step
        ticker.client.close()
        store.close()
        audit.close()
        if old is not None:
            old.close()
    return Path(settings.audit_log), old_path


def _table(capsys: Any, path: Path, *args: str) -> list[str]:
    """`riskd audit` table rows without the seq column (the two trails number their lines apart)."""
    assert cli_main(["audit", str(path), *args]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    return [row[:23] + row[30:] for row in rows if row.startswith(DAY)]  # not riskd's console lines


def test_the_report_and_riskd_audit_give_the_same_day_from_samples_lines_as_from_sample_lines(tmp_path, capsys):
    # 3 h 15 of the test day (30 s ticks): prices step now and then, two rules fire, over FULL_EVERY
    until = OPEN + timedelta(hours=3, minutes=15)
    assert until - OPEN > FULL_EVERY
    new, old = _run(tmp_path, DAY_SCENARIO, DAY_RULES[:2], until, timedelta(seconds=30), legacy=True)
    assert old is not None
    new_lines, old_lines = read_audit(new), read_audit(old)
    assert [x for x in new_lines if x["event"] == "samples"] and not [x for x in old_lines if x["event"] == "samples"]

    assert report.days_in(new_lines) == report.days_in(old_lines) == [DAY]
    got, want = report.collect(new_lines, DAY), report.collect(old_lines, DAY)
    assert list(got.accounts) == list(want.accounts) == ["sim101", "sim102"]
    for key, account in want.accounts.items():
        assert len(account.samples) > 190  # every minute of 3 h 15, and the firings
        assert got.accounts[key].samples == account.samples

    for account in ("Sim101", "Sim102"):  # an account's rows in the same order
        rows = _table(capsys, new, "--event", "sample", "--account", account)
        assert len(rows) > 190 and rows == _table(capsys, old, "--event", "sample", "--account", account)
    for args in (["--event", "sample"], ["--all", "--event", "sample,samples"]):  # within a tick a firing's row comes first
        rows = _table(capsys, new, *args)
        assert rows and sorted(rows) == sorted(_table(capsys, old, *args))

    sizes = {path: sum(len(raw) for raw in path.read_text().splitlines() if json.loads(raw)["event"] in ("sample", "samples"))
             for path in (new, old)}
    assert sizes[new] < sizes[old] / 2  # most minutes repeat most figures


def test_a_firing_gets_its_sample_line_at_once_before_the_minute_line(tmp_path):
    trail, _ = _run(tmp_path, DAY_SCENARIO, DAY_RULES[:2], OPEN + timedelta(hours=3, minutes=15), timedelta(seconds=30))
    lines = read_audit(trail)
    fired = [x for x in lines if events.FIRED.of(x)]
    assert {f["rule"] for f in fired} == {"mes-loss-cap", "sim102-trailing"}
    for f in fired:  # right after the firing's own lines, with the P&L the rule saw
        (at,) = [x for x in lines if events.SAMPLE.of(x) and x["account"] == f["account"] and x["ts"] == f["ts"]]
        assert at["reason"] == "firing" and at["pnl"] == f["inputs"]["account_pnl"] and at["seq"] > f["seq"]
        minute = next(x for x in lines if events.SAMPLES.of(x) and x["ts"] >= f["ts"])
        assert minute["ts"] > f["ts"][:16] or f["account"] not in minute["accounts"]  # not sampled twice that minute


def test_at_rest_a_desk_writes_a_name_and_a_null_per_account_a_minute(tmp_path):
    accounts = 200
    scenario = {"rate_limit": None, "prices": {"MES 12-26": 6001.0, "NQ 12-26": 21002.0},
                "accounts": [{"name": f"Acct{a:04d}", "positions": [
                    {"instrument": "MES 12-26", "side": "long", "quantity": 2, "price": 6000.0},
                    {"instrument": "NQ 12-26", "side": "short", "quantity": 1, "price": 21000.0}]} for a in range(accounts)]}
    rules = [{"name": "cap", "when": {"position_pnl": {"below": -100000}}, "then": {"close": "all"}}]
    trail, _ = _run(tmp_path, scenario, rules, OPEN + timedelta(minutes=10), timedelta(seconds=20))
    raw = [r for r in trail.read_text().splitlines() if json.loads(r)["event"] == "samples"]
    lines = [events.SAMPLES.get(x, "accounts") for x in read_audit(trail) if events.SAMPLES.of(x)]
    assert len(lines) == 11 and all(len(x) == accounts for x in lines)  # every account, every minute
    assert all(v is not None for v in lines[0].values()) and all(v is None for x in lines[1:] for v in x.values())
    per_account_minute = sum(len(r) for r in raw[1:]) / (accounts * (len(raw) - 1))
    assert per_account_minute <= 5 * 1024 * 1024 / 1000 / 60  # the desk target: 5 MB an hour at 1000 accounts
    day = report.collect(read_audit(trail), DAY)
    assert [len(a.samples) for a in day.accounts.values()] == [11] * accounts


def test_a_null_with_no_earlier_figures_in_the_lines_read_is_left_out_never_read_as_flat():
    figs = {"pnl": -120.0, "realized": -100.0, "unrealized": -20.0, "commission": 4.0, "net_liquidation": 49880.0,
            "positions": [{"instrument": "MES 12-26", "side": "long", "quantity": 2, "pnl": -20.0}]}
    lines = [  # a rotated file read from its middle: Sim101's figures were in the file before; another process's Sim102
        {"ts": "2026-03-10T14:01:00.000Z", "seq": 7, "event": "samples", "session": DAY, "pid": 1, "full": False,
         "accounts": {"Sim101": None, "Sim102": figs}},
        {"ts": "2026-03-10T14:02:00.000Z", "seq": 8, "event": "samples", "session": DAY, "pid": 2, "full": False,
         "accounts": {"Sim101": None, "Sim102": None}},
        {"ts": "2026-03-10T14:03:00.000Z", "seq": 9, "event": "samples", "session": DAY, "pid": 1, "full": False,
         "accounts": {"Sim101": None, "Sim102": None}},
    ]
    got = [(x["seq"], x["account"], x["pnl"]) for x in expand(lines)]
    assert got == [(7, "Sim102", -120.0), (9, "Sim102", -120.0)]
    day = report.collect(lines, DAY)
    assert list(day.accounts) == ["sim102"] and [s[1] for s in day.accounts["sim102"].samples] == [-120.0, -120.0]


def test_while_the_trail_cannot_be_written_every_samples_line_carries_every_figure(tmp_path):
    class Failing:
        failing = True

        def __init__(self) -> None:
            self.lines: list[dict[str, Any]] = []

        def emit(self, event: Any, **fields: Any) -> None:
            self.lines.append({"event": str(event), **fields})

    from riskd.model import Account

    audit = Failing()
    sampler = Sampler(audit)  # type: ignore[arg-type]
    snapshot = Snapshot(taken_at=OPEN, accounts=(Account("Sim101", 0.0, 10.0, 0.0, 50000.0),))
    for minute in range(3):  # lines held in memory may be dropped: none may lean on an earlier one
        sampler.sample(snapshot, OPEN + timedelta(minutes=minute), DAY, set())
    assert [x["full"] for x in audit.lines] == [True] * 3 and all(x["accounts"]["Sim101"] for x in audit.lines)
    audit.failing = False  # written again: the first line after is whole too, then the nulls resume
    sampler.sample(snapshot, OPEN + timedelta(minutes=3), DAY, set())
    sampler.sample(snapshot, OPEN + timedelta(minutes=4), DAY, set())
    assert [x["full"] for x in audit.lines[3:]] == [True, False] and audit.lines[-1]["accounts"] == {"Sim101": None}
