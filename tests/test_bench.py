"""The benchmark script works (tiny sizes; its real figures come from running it by hand, not from a test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parent / "bench_riskd.py"


def test_bench_quick_prints_every_section_as_json():
    result = subprocess.run([sys.executable, str(BENCH), "--quick", "--only", "tick,reaction,memory"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    doc = json.loads(result.stdout)
    assert {"tick", "reaction_300ms", "api_budget", "memory"} <= doc.keys()
    assert doc["tick"]["runs"][0]["evaluate_ms"]["n"] > 0 and "growth_rules_x2" in doc["tick"]
    assert doc["reaction_300ms"]["breaches"] == 4 and doc["reaction_300ms"]["latency_ms"]["p99"] > 0
    assert doc["api_budget"]["other_reads_per_min"] == 0
    assert doc["memory"]["ticks"] == 300 and doc["memory"]["rss_mb_end"] > 0


def test_bench_quick_prints_the_audit_bytes_per_hour_at_rest_with_target_and_ratio():
    result = subprocess.run([sys.executable, str(BENCH), "--quick", "--only", "audit_rest"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    rest = json.loads(result.stdout)["audit_rest"]
    assert rest["firings"] == 0 and rest["bytes_per_hour"] > 0 and rest["target_bytes_per_hour"] == 5 * 1024 * 1024
    assert rest["ratio_to_target"] == round(rest["bytes_per_hour"] / rest["target_bytes_per_hour"], 3) and rest["ok"]


def test_bench_quick_prints_the_desk_daemon_cpu_parse_and_desk_memory_with_targets_and_ratios():
    result = subprocess.run([sys.executable, str(BENCH), "--quick", "--only", "daemon_cpu,parse,memory_desk"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    doc = json.loads(result.stdout)
    assert {"daemon_cpu", "parse", "memory_desk"} <= doc.keys()
    small, large = doc["daemon_cpu"]["runs"]
    assert (small["server"], large["server"]) == ("simulator", "precomputed body")
    for run in (small, large):  # the real riskd polled once a second, nothing fired, its CPU and RSS were read
        assert run["snapshots"] > 0 and run["poll_gap_ms"]["n"] > 0 and run["firings"] == 0 and run["other_requests"] == 0
        assert run["cpu_s"] > 0 and run["rss_mb_end"] > 0 and run["rss_mb_peak"] >= run["rss_mb_end"]
        assert run["ratio_to_target"] == round(run["cpu_percent_of_one_core"] / 8, 2)
        assert run["holds_1s_polling"] == (run["snapshots_per_s"] >= 0.95)
    assert large["rss_ratio_to_target"] == round(large["rss_mb_peak"] / 120, 2)
    assert {(r["accounts"], r["body"]) for r in doc["parse"]["runs"]} == {(40, "api"), (40, "lean")}
    for run in doc["parse"]["runs"]:
        assert run["riskd_ms"]["n"] == run["floor_ms"]["n"] == run["client_ms"]["n"] == 5
        assert run["ratio"] == round(run["riskd_ms"]["p50"] / run["floor_ms"]["p50"], 2)
        assert run["ok"] == (run["ratio"] <= 1.5)
    desk = doc["memory_desk"]
    assert desk["ticks"] == 40 and desk["tick_wall_ms"]["n"] == 40 and desk["rss_mb_peak"] > 0
    assert desk["ratio_to_target"] == round(desk["rss_mb_peak"] / 120, 2)


def test_the_paired_tick_benchmark_times_the_ticker_of_the_tree_it_is_given():
    pair = Path(__file__).parent / "bench_tick_pair.py"
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(pair), str(root), "20", "3"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert line["tree"] == str(root) and line["accounts"] == 20 and line["ticks"] == 3
    assert 0 < line["wall_ms_p50"] <= line["wall_ms_p99"] and line["cpu_ms_mean"] > 0
