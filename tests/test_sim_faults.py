"""Simulator faults scripted from a scenario file: connection refused windows, and `in_progress`."""

from __future__ import annotations

import time

import httpx

from riskd.sim import Fault, SimServer, Simulator, load_scenario

from conftest import wait_until


def test_scenario_refuse_window_refuses_connections_then_listens_again(tmp_path, token):
    path = tmp_path / "refuse.yaml"
    path.write_text("accounts: [{name: Sim101}]\nfaults:\n  - {kind: refuse, start: 300ms, duration: 500ms}\n")
    sim = Simulator(load_scenario(path), token=token)
    headers = {"Authorization": f"Bearer {token}"}
    with SimServer(sim) as server:
        url = server.base_url + "/accounts/snapshot"
        assert httpx.get(url, headers=headers).status_code == 200
        wait_until(lambda: sim.now() > 0.4, timeout=2)
        try:
            httpx.get(url, headers=headers, timeout=0.5)
            raise AssertionError("expected connection refused")
        except httpx.ConnectError:
            pass
        wait_until(lambda: sim.now() > 0.9, timeout=3)
        assert wait_until(lambda: _ok(url, headers), timeout=3)


def _ok(url: str, headers: dict) -> bool:
    try:
        return httpx.get(url, headers=headers, timeout=0.5).status_code == 200
    except httpx.TransportError:
        return False


def test_fault_refuse_needs_a_window():
    import pytest

    from riskd.sim import ScenarioError

    with pytest.raises(ScenarioError, match="needs start and duration"):
        Fault("refuse")


def test_in_progress_counts_requests_held_by_a_latency_fault(token):
    sim = Simulator({"accounts": [{"name": "Sim101"}]}, token=token)
    sim.inject(Fault("latency", ms=300, count=1))
    with SimServer(sim) as server:
        started = time.monotonic()
        try:
            httpx.get(server.base_url + "/accounts/snapshot", headers={"Authorization": f"Bearer {token}"}, timeout=0.1)
        except httpx.ReadTimeout:
            pass
        assert sim.in_progress() == 1  # the caller gave up; the simulator still holds (and will answer) it
        wait_until(lambda: sim.in_progress() == 0, timeout=2)
        assert time.monotonic() - started >= 0.29
