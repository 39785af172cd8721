"""The process metrics (riskd/metrics.py `ProcessMetrics`) under the unit's `ProcSubset=pid`."""

from __future__ import annotations

import os
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from riskd.metrics import ProcessMetrics


def test_process_start_time_is_right_without_proc_stat(tmp_path):
    """`ProcSubset=pid` hides /proc/stat (the boot time): the start-time metric must not depend on it."""
    proc = tmp_path / "proc"  # what riskd sees under ProcSubset=pid: /proc/<pid>/... only
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "stat").write_bytes(Path("/proc/self/stat").read_bytes())
    registry = CollectorRegistry()
    ProcessMetrics(proc=str(proc), registry=registry)
    started = registry.get_sample_value("process_start_time_seconds")
    btime = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
    expected = btime + float(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
    assert started is not None and abs(started - expected) < 2.0
    assert abs(started - time.time()) < 24 * 3600  # this test process started today, not at the epoch
    assert registry.get_sample_value("process_resident_memory_bytes") > 0
