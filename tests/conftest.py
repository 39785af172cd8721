"""Shared fixtures: a simulator on 127.0.0.1, policy files, and the real `riskd` as a subprocess."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from riskd.sim import SimServer, Simulator

RISKD = Path(sys.executable).parent / "riskd"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the figures a test measured (`record_property("figures", text)`) at the end of the run,
    passed or failed, also when the tests ran in pytest-xdist workers."""
    for report in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", []):
        for name, value in getattr(report, "user_properties", ()):
            if name == "figures" and report.when == "call":
                terminalreporter.write_line(str(value))


@pytest.fixture
def token() -> str:
    """A fresh random API token per test: no secret ever lives in a fixture file."""
    return secrets.token_urlsafe(24)


@pytest.fixture
def sim_factory(token: str) -> Iterator[Callable[..., tuple[Simulator, SimServer]]]:
    servers: list[SimServer] = []

    def make(scenario: dict[str, Any], clock: Callable[[], float] = time.time) -> tuple[Simulator, SimServer]:
        sim = Simulator(scenario, token=token, clock=clock)
        server = SimServer(sim, host="127.0.0.1", port=0)
        server.start()
        servers.append(server)
        return sim, server

    yield make
    for server in servers:
        server.stop()


def write_policy(directory: Path, base_url: str, rules: list[dict[str, Any]] | str, **settings: Any) -> Path:
    """Write riskd.yaml and rules/policy.yaml under `directory`; return the config path."""
    (directory / "rules").mkdir(parents=True, exist_ok=True)
    text = rules if isinstance(rules, str) else yaml.safe_dump({"rules": rules}, sort_keys=False)
    (directory / "rules" / "policy.yaml").write_text(text)
    cfg: dict[str, Any] = {
        "crosstrade": {"base_url": base_url, "timeout": "2s", **settings.pop("crosstrade", {})},
        "poll_interval": "500ms",
        "rules": "rules/",
        "audit_log": "audit.jsonl",
        "state_dir": "state/",
        **settings,
    }
    path = directory / "riskd.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def read_audit(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = []
    for raw in path.read_text().splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            pass
    return lines


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy or `timeout` passes (then fail)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


class RiskdProcess:
    """The real `riskd` console script running in a subprocess."""

    def __init__(self, config: Path, token: str | None, args: tuple[str, ...] = (), env: dict[str, str] | None = None):
        self.config = config
        self.dir = config.parent
        self.audit_path = self.dir / "audit.jsonl"
        self.stdout_path = self.dir / "stdout.log"
        self.stderr_path = self.dir / "stderr.log"
        full_env = {k: v for k, v in os.environ.items() if k not in ("CROSSTRADE_TOKEN", "CREDENTIALS_DIRECTORY", "RISKD_CONFIG")}
        if token is not None:
            full_env["CROSSTRADE_TOKEN"] = token
        full_env.update(env or {})
        self._out = self.stdout_path.open("w")
        self._err = self.stderr_path.open("w")
        self.proc = subprocess.Popen([str(RISKD), "run", "-c", str(config), *args], cwd=self.dir, env=full_env,
                                     stdout=self._out, stderr=self._err)

    def events(self, event: str | None = None, **match: Any) -> list[dict[str, Any]]:
        return [e for e in read_audit(self.audit_path)
                if (event is None or e.get("event") == event) and all(e.get(k) == v for k, v in match.items())]

    def wait_for(self, event: str, timeout: float = 10.0, count: int = 1, **match: Any) -> list[dict[str, Any]]:
        def found() -> list[dict[str, Any]] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"riskd exited with {self.proc.returncode}: {self.stderr_path.read_text()[-2000:]}")
            hits = self.events(event, **match)
            return hits if len(hits) >= count else None

        return wait_until(found, timeout)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._out.close()
            self._err.close()
        return code

    def output(self) -> str:
        return self.stdout_path.read_text() + self.stderr_path.read_text()


@pytest.fixture
def riskd_factory() -> Iterator[Callable[..., RiskdProcess]]:
    procs: list[RiskdProcess] = []

    def start(config: Path, token: str | None, *args: str, env: dict[str, str] | None = None) -> RiskdProcess:
        proc = RiskdProcess(config, token, args, env)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("CROSSTRADE_TOKEN", "RISKD_CONFIG")}
    full_env.update(env or {})
    return subprocess.run([str(RISKD), *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
