"""Full ticks of another checkout of riskd on the same inputs: the "before" of a before/after table.

    git worktree add /tmp/before 5ccba18        # riskd before issue 15 (desk scale)
    for tree in /tmp/before . /tmp/before .; do .venv/bin/python tests/bench_tick_pair.py $tree 1000 100; done

Runs the ticker of the tree given (its `riskd` package, imported from it) at ACCOUNTS x 5 positions x
100 rules (tests/bench_riskd.py's policy and desk bodies, from this checkout, one version for both),
a tick a simulated second on an httpx MockTransport, P&L changing each tick, nothing firing, the
allocator and collector set as that tree's daemon sets them; prints one JSON line: wall p50 / p99
per tick and the mean CPU per tick. Alternate the trees: the machine's load then falls on both alike.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    root, accounts, ticks = str(Path(sys.argv[1]).resolve()), int(sys.argv[2]), int(sys.argv[3])
    sys.path.insert(0, root)
    sys.path.insert(1, str(HERE))
    import httpx

    import riskd

    assert riskd.__file__.startswith(root), f"riskd imported from {riskd.__file__}, not {root}"
    import bench_riskd as bench

    try:
        from riskd.memory import settle_gc, settle_malloc

        settle_malloc()
    except ImportError:  # trees before riskd.memory
        try:
            from riskd.daemon import settle_gc  # type: ignore[attr-defined,no-redef]
        except ImportError:
            def settle_gc() -> None:  # trees before settle_gc: the collector's defaults
                pass
    bench.quiet_console()
    bodies = [zlib.decompress(x) for x in bench.desk_bodies(accounts, 10)]
    served = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        served[0] += 1
        return httpx.Response(200, content=bodies[served[0] % len(bodies)], headers={"Content-Type": "application/json"})

    now = [datetime(2026, 3, 10, 15, 0, 30, tzinfo=timezone.utc)]
    _, ticker = bench.desk_ticker(Path(tempfile.mkdtemp()) / "pair", 100, handler, now)
    for _ in range(3):
        now[0] += timedelta(seconds=1)
        ticker.tick()
    settle_gc()
    wall, cpu = [], []
    for _ in range(ticks):
        now[0] += timedelta(seconds=1)
        t, c = time.perf_counter(), time.process_time()
        ticker.tick()
        wall.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)
    print(json.dumps({"tree": root, "accounts": accounts, "rules": 100, "ticks": ticks, "wall_ms_p50": round(bench.pct(wall, 50), 1),
                      "wall_ms_p99": round(bench.pct(wall, 99), 1), "cpu_ms_mean": round(sum(cpu) / len(cpu), 1)}))


if __name__ == "__main__":
    main()
