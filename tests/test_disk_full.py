"""A full disk (or a file-size limit) must never kill riskd or stop a close."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_file_size_limit_gives_efbig_instead_of_killing_the_daemon(tmp_path):
    # With RLIMIT_FSIZE the kernel sends SIGXFSZ, whose default action kills the process: a trader
    # would lose the daemon mid-breach. After ignore_sigxfsz() the write fails with EFBIG and riskd lives.
    code = textwrap.dedent(f"""
        import errno, resource
        from riskd.state import ignore_sigxfsz
        ignore_sigxfsz()
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            with open({str(tmp_path / "big")!r}, "wb", buffering=0) as f:
                f.write(b"x" * 4096)
                f.write(b"x")
        except OSError as e:
            print("EFBIG" if e.errno == errno.EFBIG else "other")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "EFBIG"
