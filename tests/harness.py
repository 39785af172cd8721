"""riskd's Ticker in-process against the simulator over real HTTP on 127.0.0.1, on one clock.

`SimClock` is wall time plus jumps: `sleep` and `advance_to` move it forward at once, while
network waits (latency, timeouts) pass in real time. The simulator, the rate bucket, the 429
back-off and the engine all read it, so a test can run many "seconds" of riskd in milliseconds
while every request still crosses a socket.
"""

from __future__ import annotations

import dataclasses
import errno
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable

import yaml

from riskd import config, rules as rules_mod
from riskd.audit import AuditTrail
from riskd.tick import Ticker, build_ticker
from riskd.sim import SimServer, Simulator
from riskd.state import Store

from conftest import read_audit


class FakeClock:
    """A monotonic clock that moves only when told (for the Simulator on its own)."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class SimClock:
    """Monotonic seconds = wall time since creation + every jump; `utc()` = `start` + that + every
    step of the wall clock alone (`step_wall`: an NTP correction, which the monotonic clock never sees)."""

    def __init__(self, start: datetime):
        self.start = start
        self._wall0 = time.monotonic()
        self._offset = 0.0
        self._wall_step = 0.0
        self._lock = threading.Lock()

    def step_wall(self, seconds: float) -> None:
        with self._lock:
            self._wall_step += seconds

    def monotonic(self) -> float:
        with self._lock:
            return time.monotonic() - self._wall0 + self._offset

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self._offset += max(0.0, seconds)

    def advance_to(self, t: float) -> None:
        with self._lock:
            now = time.monotonic() - self._wall0 + self._offset
            if t > now:
                self._offset += t - now

    def advance(self, seconds: float) -> None:
        self.sleep(seconds)

    def utc(self) -> datetime:
        return self.start + timedelta(seconds=self.monotonic() + self._wall_step)


def write_rules(directory: Path, rules: list[dict[str, Any]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "policy.yaml"
    path.write_text(yaml.safe_dump({"rules": rules}, sort_keys=False))
    return path


class Rig:
    """A simulator + SimServer + in-process Ticker sharing one SimClock.

    Defaults: poll interval 1 s, client timeout 0.2 s, stale_after 5 s, misfire_grace 60 s; pass
    `settings` to override any Settings field.
    """

    def __init__(self, tmp: Path, token: str, scenario: dict[str, Any], rules: list[dict[str, Any]], *,
                 start: datetime | None = None, clock: SimClock | None = None, fsync: bool = True,
                 transport: Any = None, **settings: Any):
        self.tmp = tmp
        self.clock = clock or SimClock(start or datetime(2026, 3, 10, 14, 0, tzinfo=timezone.utc))  # a Tuesday, 10:00 New York
        self.sim = Simulator(scenario, token=token, clock=self.clock.monotonic, wall=self.clock.utc)
        self.sim_t0 = self.clock.monotonic()  # request times (`r.t`) minus this: sim seconds
        self.server = SimServer(self.sim, host="127.0.0.1", port=0).start()
        spec = config.ConfigSpec(crosstrade=config.CrossTradeSpec(base_url=self.server.base_url), rules="rules/",
                                 audit_log="audit.jsonl", state_dir="state/")
        base = config.from_spec(spec, None, base=tmp)
        fields = {"timeout": timedelta(seconds=0.2), "poll_interval": timedelta(seconds=1), "stale_after": timedelta(seconds=5)}
        fields.update(settings)
        self.settings = dataclasses.replace(base, **fields)
        self.rules_path = write_rules(tmp / "rules", rules)
        self.rules, _ = rules_mod.load(self.settings.rules, self.settings.zone)
        self.token = token
        self.fsync = fsync
        self.transport = transport
        self.audit_path = Path(self.settings.audit_log)
        self.ticker: Ticker | None = None
        self.store: Store | None = None
        self.audit: AuditTrail | None = None
        self.start_riskd()

    # -- riskd ---------------------------------------------------------------------------------

    def start_riskd(self) -> Ticker:
        self.audit = AuditTrail(str(self.audit_path), secrets=[self.token], fsync="actions" if self.fsync else "none", clock=self.clock.utc)
        self.store = Store(self.settings.state_dir, on_condition=self.audit.emit)  # disk_full & co. go to the trail, as in `riskd run`
        self.ticker = build_ticker(self.settings, self.rules, self.token, self.audit, dry_run=False, store=self.store,
                                   transport=self.transport, clock=self.clock.utc, monotonic=self.clock.monotonic, sleep=self.clock.sleep)
        return self.ticker

    def stop_riskd(self) -> None:
        """Drop riskd like a crash would (nothing finished, nothing flushed beyond what it wrote)."""
        if self.ticker is not None:
            self.ticker.client.close()
        if self.store is not None:
            self.store.close()
        if self.audit is not None:
            self.audit.close()
        self.ticker = self.store = self.audit = None

    def tick(self, reason: str = "poll") -> Any:
        assert self.ticker is not None
        return self.ticker.tick(reason)

    def tick_at(self, t: float, reason: str = "poll") -> Any:
        """Advance the clock to `t` (seconds since start; never back) and tick."""
        self.clock.advance_to(t)
        return self.tick(reason)

    def settle_server(self, timeout: float = 3.0) -> None:
        """Wait (wall time) until the simulator holds no request that could still be applied."""
        deadline = time.monotonic() + timeout
        while self.sim.in_progress() and time.monotonic() < deadline:
            time.sleep(0.002)

    def close(self) -> None:
        self.stop_riskd()
        self.server.stop()

    # -- observations --------------------------------------------------------------------------

    def events(self, event: str | None = None, **match: Any) -> list[dict[str, Any]]:
        return [e for e in read_audit(self.audit_path)
                if (event is None or e.get("event") == event) and all(e.get(k) == v for k, v in match.items())]

    def posts(self, suffix: str = "", applied: bool | None = None) -> list[Any]:
        """POST requests the simulator received (path ending in `suffix`); `applied`: only those it carried out."""
        out = []
        for r in self.sim.request_log():
            if r.method != "POST" or not r.path.endswith(suffix):
                continue
            if applied is not None and (200 in (r.status, r.applied_status)) != applied:
                continue
            out.append(r)
        return out

    def quantities(self) -> dict[tuple[str, str], int]:
        return {(p["account"], p["instrument"]): p["quantity"] for p in self.sim.positions()}


def one_position(account: str = "Sim101", instrument: str = "MES 12-26", quantity: int = 4, price: float = 6000.0,
                 market: float | None = None, side: str = "long", extra: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    return {
        "accounts": [{"name": account, "positions": [{"instrument": instrument, "side": side, "quantity": quantity, "price": price}]}, *extra],
        "prices": {instrument: market if market is not None else price},
        "rate_limit": {"per_second": 3, "burst": 20},
    }


def fill_disk(path: Path) -> None:
    """Write `path` until its filesystem is full (big blocks, then small ones for the last bytes)."""
    chunk = b"\1" * 65536
    with open(path, "ab", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        try:
            while True:
                f.write(b"\1" * 512)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
