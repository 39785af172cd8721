"""A faithful, stdlib-only stand-in for the CrossTrade REST API (endpoints, bodies, errors and the
3 req/s bucket as CrossTrade documents them).

Usage::

    from riskd.sim import Simulator, SimServer, load_scenario, Fault, DEMO_SCENARIO

    sim = Simulator(load_scenario(DEMO_SCENARIO), token=token, clock=time.monotonic)
    with SimServer(sim, host="127.0.0.1", port=0) as server:   # starts on an ephemeral port
        httpx.get(server.base_url + "/accounts/snapshot", headers={"Authorization": f"Bearer {token}"})

Test/demo controls on :class:`Simulator` (all thread-safe): ``set_price``, ``open_position``,
``add_order``, ``add_account``, ``positions``, ``orders``, ``executions``, ``account_pnl``,
``price``, ``now``, ``end_session`` (the session break: realized P&L settles into the
opening balance; ``weeklyProfitLoss`` spans the week), ``inject(Fault(...))``, ``clear_faults``, ``set_rate_limit``, ``requests`` /
``request_log()`` (every request received, 401/429/faulted ones included), ``clear_requests``,
``handle`` (one request without sockets), ``in_progress``, ``run_due`` / ``next_due``
(``late_apply`` requests still to be applied).

Modules: :mod:`.scenario` (YAML keys, documented there and in ``scenarios/README.md``),
:mod:`.faults` (fault kinds), :mod:`.core` (state machine), :mod:`.server` (HTTP),
:mod:`.cli` (``python -m riskd.sim``; :func:`serve` is what ``riskd sim`` calls).
"""

from ._util import ScenarioError, parse_duration
from .cli import DEMO_SCENARIO, serve
from .core import RequestRecord, SimResponse, Simulator
from .faults import Fault
from .scenario import POINT_VALUES, load_scenario, validate_scenario
from .server import SimServer

__all__ = [
    "Simulator",
    "SimServer",
    "load_scenario",
    "validate_scenario",
    "Fault",
    "RequestRecord",
    "SimResponse",
    "ScenarioError",
    "parse_duration",
    "POINT_VALUES",
    "DEMO_SCENARIO",
    "serve",
]
