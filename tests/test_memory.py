"""The daemon's allocator settings (riskd.memory): memory a snapshot's body took goes back to the system."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

_PROBE = textwrap.dedent("""
    import sys
    from riskd.memory import settle_malloc

    def rss_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    if sys.argv[1] == "settled":
        assert settle_malloc()
    base = rss_mb()
    for size in (7, 6, 7, 5, 7, 6):  # a desk's bodies, one tick after another, each freed before the next
        body = bytearray(size * 1024 * 1024)
        body[::4096] = b"x" * len(body[::4096])  # touched: resident
        keep = bytes(1000)  # a small block made after it, as a parse leaves the snapshot behind
        del body
    print(round(rss_mb() - base, 1))
""")


def _left_mb(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, timeout=60, check=True)
    return float(out.stdout.strip())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt (elsewhere settle_malloc changes nothing)")
def test_the_memory_of_a_freed_snapshot_body_goes_back_to_the_system():
    """With glibc's defaults the first freed 7 MB block raises the mapping threshold, the next bodies come
    from the heap and stay resident after they are freed; settled, each is mapped alone and given back."""
    assert _left_mb("default") >= 5
    assert _left_mb("settled") < 2
