"""``python -m riskd.sim`` / ``riskd sim``: the simulator as a standalone HTTP server."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

from ._util import ScenarioError
from .core import Simulator
from .scenario import load_scenario
from .server import SimServer

__all__ = ["serve", "main", "DEMO_SCENARIO", "TOKEN_ENV"]

DEMO_SCENARIO = Path(__file__).resolve().parent / "scenarios" / "demo.yaml"
TOKEN_ENV = "CROSSTRADE_TOKEN"

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_CONFIG = 78


def serve(port: int = 0, scenario_path: str | os.PathLike | None = None, host: str = "127.0.0.1",
          *, stop_event: threading.Event | None = None) -> int:
    """Run the simulator until SIGINT/SIGTERM (or ``stop_event``); returns an exit code.

    The bearer token is read from ``$CROSSTRADE_TOKEN`` (never printed). Prints the base URL
    on stdout (one line, for scripts) and a short summary on stderr. 78 = config error
    (no token, bad scenario), 1 = cannot listen.
    """
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        print(f"riskd sim: error: set ${TOKEN_ENV} to the bearer token clients must send "
              f"(any value you like for the simulator)", file=sys.stderr)
        return EXIT_CONFIG
    path = Path(scenario_path) if scenario_path else DEMO_SCENARIO
    try:
        scenario = load_scenario(path)
    except ScenarioError as exc:
        print(f"riskd sim: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    sim = Simulator(scenario, token=token, clock=time.monotonic)
    server = SimServer(sim, host=host, port=port)
    try:
        server.start()
    except OSError as exc:
        print(f"riskd sim: error: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    stop = stop_event or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        print(server.base_url, flush=True)
        accounts = ", ".join(sim.accounts()) or "none"
        print(f"riskd sim: scenario {path} (accounts: {accounts}); token from ${TOKEN_ENV}; "
              f"Ctrl-C to stop", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m riskd.sim",
                                     description="CrossTrade REST API simulator (token from $CROSSTRADE_TOKEN)")
    parser.add_argument("--port", type=int, default=0, help="TCP port (default 0: an ephemeral port)")
    parser.add_argument("--scenario", default=None, help=f"scenario YAML (default: bundled {DEMO_SCENARIO.name})")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error("--port must be 0..65535")
    return serve(args.port, args.scenario, args.host)
