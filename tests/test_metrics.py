"""Telemetry: the summary window, Prometheus metrics, the `metrics:` config key, and the endpoint
served by the real `riskd run` during a firing against the simulator."""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest
from prometheus_client import generate_latest

from conftest import wait_until, write_policy
from riskd import config
from riskd.crosstrade import OK, UNKNOWN, Reply
from riskd.errors import ConfigError
from riskd.metrics import Telemetry, endpoint_of, percentile


def test_endpoint_of_replaces_the_account_name():
    assert endpoint_of("accounts/snapshot") == "accounts/snapshot"
    assert endpoint_of("accounts/Sim101/positions/close") == "accounts/{account}/positions/close"
    assert endpoint_of("/accounts/Sim%20101/orders/cancel") == "accounts/{account}/orders/cancel"


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 99) == 99.0 and percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0 and percentile([], 50) is None


def test_telemetry_counts_replies_and_audit_lines_and_resets_its_window():
    now = [100.0]
    t = Telemetry(bucket_level=lambda: 17.25, clock=lambda: now[0])
    for ms in (2.0, 4.0, 6.0):
        t.on_reply(Reply("GET", "accounts/snapshot", None, 200, ms, OK, response={}))
    t.on_reply(Reply("POST", "accounts/Sim101/positions/close", {"instrument": "MES 12-26"}, None, 5000.0, UNKNOWN, error="ReadTimeout"))
    t.on_audit({"event": "fired", "rule": "cap"})
    t.on_audit({"event": "action", "rule": "cap", "ok": False, "outcome": "unknown"})
    t.on_audit({"event": "api_error"})
    t.on_audit({"event": "stale"})
    now[0] += 60
    window = t.window()
    assert window["window_s"] == 60.0 and window["polls_ok"] == 3 and window["api_calls"] == 3
    assert window["api_p50_ms"] == 4.0 and window["api_p99_ms"] == 6.0 and window["bucket"] == 17.2
    assert (window["firings"], window["failures"], window["errors"], window["polls_failed"], window["stale"]) == (1, 1, 1, 1, True)
    assert t.window()["firings"] == 0 and t.window()["api_p50_ms"] is None  # a fresh window

    text = generate_latest(t.registry).decode()
    assert 'riskd_api_request_duration_seconds_count{endpoint="accounts/snapshot",status="200"} 3.0' in text
    assert 'riskd_api_request_duration_seconds_count{endpoint="accounts/{account}/positions/close",status="unknown"} 1.0' in text
    assert 'riskd_firings_total{rule="cap"} 1.0' in text and 'riskd_action_failures_total{outcome="unknown",rule="cap"} 1.0' in text
    assert "riskd_rate_bucket_tokens 17.25" in text and "riskd_stale 1.0" in text


@pytest.mark.parametrize("value, expected", [
    ("9465", ("127.0.0.1", 9465)), (9465, ("127.0.0.1", 9465)), ("127.0.0.1:9465", ("127.0.0.1", 9465)),
    ("[::1]:9465", ("::1", 9465)), ("0.0.0.0:9100", ("0.0.0.0", 9100)),
])
def test_config_metrics_address_defaults_to_loopback(tmp_path, value, expected):
    (tmp_path / "riskd.yaml").write_text(f"metrics: {json.dumps(value)}\n")
    assert config.load(tmp_path / "riskd.yaml").metrics == expected
    (tmp_path / "riskd.yaml").write_text("poll_interval: 1s\n")
    assert config.load(tmp_path / "riskd.yaml").metrics is None  # off unless asked for


@pytest.mark.parametrize("value", ["127.0.0.1", "localhost:http", "70000", "true"])
def test_config_metrics_rejects_a_bad_address(tmp_path, value):
    (tmp_path / "riskd.yaml").write_text(f"metrics: {value}\n")
    with pytest.raises(ConfigError, match="1:10: metrics: invalid metrics address"):
        config.load(tmp_path / "riskd.yaml")


def test_run_serves_prometheus_metrics_on_loopback(tmp_path, sim_factory, riskd_factory, token):
    sim, server = sim_factory({"accounts": [{"name": "Sim101", "positions": [{"instrument": "MES 12-26", "side": "long", "quantity": 2, "price": 6000.0}]}],
                               "prices": {"MES 12-26": 5900.0}})
    rules = [{"name": "mes-loss-cap", "instruments": "MES", "when": {"position_pnl": {"below": -500}}, "then": {"close": "all"}}]
    proc = riskd_factory(write_policy(tmp_path, server.base_url, rules, poll_interval="200ms", metrics=0), token)
    proc.wait_for("action", ok=True, timeout=10)
    url = wait_until(lambda: re.search(r'"url": "(http://127\.0\.0\.1:\d+/metrics)"', proc.output()), timeout=10).group(1)

    def scrape() -> str | None:
        text = httpx.get(url, timeout=5).text
        return text if 'riskd_firings_total{rule="mes-loss-cap"}' in text and 'riskd_tick_duration_seconds_count{reason="poll"}' in text else None

    text = wait_until(scrape, timeout=10)
    assert re.search(r'riskd_tick_duration_seconds_count\{reason="poll"\} [1-9]', text)
    assert re.search(r'riskd_api_request_duration_seconds_count\{endpoint="accounts/snapshot",status="200"\} [1-9]', text)
    assert 'riskd_api_request_duration_seconds_count{endpoint="accounts/{account}/positions/close",status="200"} 1.0' in text
    assert 'riskd_firings_total{rule="mes-loss-cap"} 1.0' in text
    last_poll = float(re.search(r"^riskd_last_successful_poll_timestamp_seconds (\S+)$", text, re.M).group(1))
    assert abs(last_poll - time.time()) < 10
    assert re.search(r"riskd_rate_bucket_tokens \d", text) and "riskd_accounts_watched 1.0" in text
    assert "process_resident_memory_bytes" in text
    assert token not in text
    assert proc.stop() == 0
