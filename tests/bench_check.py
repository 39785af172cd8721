#!/usr/bin/env python3
"""Peak memory and time of the real `riskd check` on big rule files; prints one JSON document.

    .venv/bin/python tests/bench_check.py            # a tiny file, a 1 MiB one, a 50 MB one
    .venv/bin/python tests/bench_check.py --big 200  # the big one at 200 MB

Each case writes riskd.yaml and one rule file in a temporary directory and runs `riskd check -c`
as a subprocess; its peak RSS comes from the kernel's accounting of that child (RUSAGE_CHILDREN of a fresh wrapper process),
its time (including the interpreter's start) from the parent's clock. The cases:

- tiny: one rule (the floor: Python, pydantic and riskd imported);
- 1mib: exactly 1 MiB (the largest file riskd reads): as many valid rules as the rule set's node
  limit allows, padded with comments to the byte;
- big: a 50 MB file of rules, refused before it is read (file size over the 1 MiB limit, exit 78).

Target (the systemd unit's MemoryMax=512M; ExecStartPre runs `riskd check`): every case stays near
the tiny one's RSS, none over 150 MB, and the big file costs no more than the 1 MiB one: it is never
parsed, so memory and time stay flat however big the file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RISKD = Path(sys.executable).parent / "riskd"
MIB = 1024 * 1024
RULES_IN_1MIB = 5000  # ~75,000 YAML nodes: under the rule set's 100,000-node limit
TARGET_MB = 150


def rule(n: int) -> str:
    return (f"  - name: cap-{n:06d}\n    instruments: MES\n    when: {{position_pnl: {{below: -{500 + n}}}}}\n"
            f"    then: {{close: all}}\n")


def write_rules(path: Path, size: int, rules: int) -> int:
    """Write a rule file of exactly `size` bytes: `rules` rules (as many as fit), then comment lines."""
    with path.open("w") as f:
        f.write("rules:\n")
        written, count = len("rules:\n"), 0
        while count < rules:
            text = rule(count)
            if written + len(text) > size:
                break
            f.write(text)
            written += len(text)
            count += 1
        pad = "# " + "x" * 77 + "\n"
        while written + len(pad) <= size:
            f.write(pad)
            written += len(pad)
        if size - written > 0:
            f.write("#" * (size - written - 1) + "\n" if size - written > 1 else "\n")
    assert path.stat().st_size == size, (path.stat().st_size, size)
    return count


# Runs one command and prints its exit code and peak RSS (KiB): a fresh process has only that child,
# so RUSAGE_CHILDREN is that child's own peak.
_MEASURE = ("import resource, subprocess, sys\n"
            "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
            "said = (done.stderr.strip() or done.stdout.strip()).splitlines()\n"
            "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, said[0][:160] if said else '')\n")


def run_check(directory: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("CROSSTRADE_TOKEN", "RISKD_CONFIG")}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(RISKD), "check", "-c", str(directory / "riskd.yaml")],
                          cwd=directory, env=env, capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - started
    code, kib, said = (done.stdout.strip().split(" ", 2) + [""])[:3]
    return {"exit": int(code), "seconds": round(elapsed, 3), "peak_rss_mb": round(int(kib) / 1024, 1), "said": said}


def case(base: Path, name: str, size: int | None, rules: int) -> dict[str, Any]:
    directory = base / name
    (directory / "rules").mkdir(parents=True)
    (directory / "riskd.yaml").write_text("crosstrade: {base_url: 'http://127.0.0.1:9/v1/api'}\nrules: rules/\n"
                                          "audit_log: audit.jsonl\nstate_dir: state/\n")
    path = directory / "rules" / "policy.yaml"
    if size is None:
        path.write_text("rules:\n" + rule(0))
        count = 1
    else:
        count = write_rules(path, size, rules)
    return {"file_bytes": path.stat().st_size, "rules": count, **run_check(directory)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", type=int, default=50, help="size of the big rule file in MB (default 50)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="riskd-bench-check-") as tmp:
        base = Path(tmp)
        results = {
            "tiny": case(base, "tiny", None, 1),
            "1mib": case(base, "1mib", MIB, RULES_IN_1MIB),
            f"{args.big}mb": case(base, "big", args.big * 1000 * 1000, 10 ** 9),
        }
    peaks = [r["peak_rss_mb"] for r in results.values()]
    big = results[f"{args.big}mb"]
    results["target"] = {"peak_rss_mb_max": TARGET_MB, "big_refused_with_78": big["exit"] == 78,
                         "ok": bool(peaks) and max(peaks) <= TARGET_MB and big["exit"] == 78
                         and big["peak_rss_mb"] <= results["1mib"]["peak_rss_mb"] + 5}
    print(json.dumps(results, indent=2))
    return 0 if results["target"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
