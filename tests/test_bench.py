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
