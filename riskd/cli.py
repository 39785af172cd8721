"""The `riskd` command: run, check, once, status, sim, audit, report, schema, and the operator
commands flatten, lock, unlock, pause, resume (through the running daemon: riskd.channel).

Exit codes: 0 ok, 1 runtime failure, 2 usage error, 78 config error (systemd will not restart on it).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

# SIGHUP (systemctl reload) and SIGUSR1 (logrotate) may arrive while `riskd run` is still starting: by
# default either kills the process. They are queued from the first moment (here, before riskd's slower
# imports) and the daemon replays them once it is up.
EARLY_SIGNALS: list[int] = []


def hold_signals() -> None:
    """Queue SIGHUP and SIGUSR1 in EARLY_SIGNALS until the daemon installs its own handlers."""
    for sig in (signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, lambda signum, _frame: EARLY_SIGNALS.append(signum))


if sys.argv[1:2] == ["run"]:
    hold_signals()

from riskd import __version__, config, engine, rules as rules_mod  # noqa: E402
from riskd.audit import AuditTrail  # noqa: E402
from riskd.console import configure_console  # noqa: E402
from riskd.errors import ConfigError, RiskdError, StateError, StateLocked  # noqa: E402
from riskd.redact import RedactingStream, Redactor  # noqa: E402

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_CONFIG = 0, 1, 2, 78
EXAMPLES = Path(__file__).parent / "examples"
# The demo runs the examples that make sense at any hour (the trading-window example would
# flatten every account outside New York trading hours).
DEMO_RULES = ("eod-trim.yaml", "loss-cap.yaml", "daily-loss-limit.yaml", "trailing-drawdown.yaml", "size-cap.yaml")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="riskd", description="Risk daemon for NinjaTrader 8 accounts through the CrossTrade API.")
    parser.add_argument("--version", action="version", version=f"riskd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("-c", "--config", help="riskd.yaml (default: $RISKD_CONFIG, ./riskd.yaml, /etc/riskd/riskd.yaml)")
    run.add_argument("--dry-run", action="store_true", help="decide and audit everything, send no order-changing request")
    run.add_argument("--sim", action="store_true", help="start the embedded CrossTrade simulator and trade against it")
    run.add_argument("--dashboard", metavar="[HOST:]PORT", type=_dashboard_address,
                     help="serve the live dashboard here (a bare port binds to 127.0.0.1); overrides `dashboard:` in riskd.yaml")

    check = sub.add_parser("check", help="validate the config and every rule file")
    check.add_argument("-c", "--config", help="riskd.yaml (default: $RISKD_CONFIG, ./riskd.yaml, /etc/riskd/riskd.yaml)")
    check.add_argument("--strict", action="store_true", help="warnings (valid rules that likely mean something else) fail: exit 78")

    once = sub.add_parser("once", help="one evaluation now; print the decisions and the next firings")
    once.add_argument("-c", "--config", help="riskd.yaml (default: $RISKD_CONFIG, ./riskd.yaml, /etc/riskd/riskd.yaml)")
    once.add_argument("--dry-run", action="store_true", help="decide and print, send no order-changing request")
    once.add_argument("--sim", action="store_true", help=argparse.SUPPRESS)

    sim = sub.add_parser("sim", help="the CrossTrade simulator as a standalone HTTP server")
    sim.add_argument("--port", type=int, default=8765, help="TCP port to listen on (default: 8765)")
    sim.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    sim.add_argument("--scenario", help="scenario YAML (default: the bundled demo)")

    audit = sub.add_parser("audit", help="read audit trails: filter, summarise, follow, verify",
                           description="Read the audit trail. FILEs (any order; rotated and compressed ones too) default to the "
                                       "config's audit_log and the files logrotate made of it.")
    audit.add_argument("files", nargs="*", metavar="FILE", help="trail files (default: the config's audit_log, else ./audit.jsonl)")
    audit.add_argument("-c", "--config", help="riskd.yaml (default: $RISKD_CONFIG, ./riskd.yaml, /etc/riskd/riskd.yaml)")
    audit.add_argument("--rule", help="rule name (glob)")
    audit.add_argument("--account", help="account name (glob, case-insensitive)")
    audit.add_argument("--instrument", help="root (MES), contract (\"MES 12-26\") or glob")
    audit.add_argument("--event", help="comma-separated events (fired,action,...); per-minute `sample` lines show only when named")
    audit.add_argument("--all", action="store_true", help="show sample lines too")
    audit.add_argument("--since", help="ISO time or date (UTC unless an offset is given), today, yesterday, or 90m/2h/3d ago")
    audit.add_argument("--until", help="same forms; a date includes that whole day")
    audit.add_argument("--date", help="one trading day (YYYY-MM-DD, the session's trade date)")
    audit.add_argument("--json", action="store_true", help="JSON Lines instead of a table")
    audit.add_argument("--summary", action="store_true", help="per trading day and rule: firings, closes, contracts closed, P&L at close")
    audit.add_argument("--verify", action="store_true", help="check seq and the hash chain; exit 1 naming the first bad line")
    audit.add_argument("--follow", "-f", action="store_true", help="keep printing new lines (across rotations)")

    report = sub.add_parser("report", help="one self-contained HTML page for a trading day",
                            description="Write one HTML page for a trading day: P&L charts with firings, actions and closedPositions.")
    report.add_argument("files", nargs="*", metavar="FILE", help="trail files (default: the config's audit_log and its rotated files)")
    report.add_argument("-c", "--config", help="riskd.yaml (default: $RISKD_CONFIG, ./riskd.yaml, /etc/riskd/riskd.yaml)")
    report.add_argument("--date", help="the trading day, YYYY-MM-DD (default: the latest in the trail)")
    report.add_argument("-o", "--output", help="output file (default: riskd-report-DATE.html; - for stdout)")

    sub.add_parser("schema", help="print the JSON Schema of rule files")

    status = sub.add_parser("status", help="what the running daemon sees: accounts, rules, distances, locks, health",
                            description="Read the running daemon's state store (never the API): per account the session figures, "
                                        "positions, locks and each rule's state and distance to firing; paused rules, the next "
                                        "timed firings, recent operator commands and health.")
    status.add_argument("-c", "--config", help="riskd.yaml (default: $RISKD_CONFIG, ./riskd.yaml, /etc/riskd/riskd.yaml)")
    status.add_argument("--json", action="store_true", help="the view as one JSON document")

    for verb, text in (("flatten", "flatten an account now (or every account: --all --yes)"),
                       ("lock", "keep an account flat: flatten it now and any position that opens, until the lock ends"),
                       ("unlock", "lift the locks of an account (refused for a rule with lock: {undo: never})"),
                       ("pause", "stop evaluating a rule until the pause ends"),
                       ("resume", "evaluate a paused rule again")):
        cmd = sub.add_parser(verb, help=text, description=text + ". Sent to the running daemon over its control socket; "
                                                                 "audited with your Unix user. See docs/operating.md.")
        if verb in ("pause", "resume"):
            cmd.add_argument("rule", metavar="RULE", help="the rule's name")
        else:
            cmd.add_argument("account", metavar="ACCOUNT", nargs="?" if verb == "flatten" else None, help="the account")
        if verb == "flatten":
            cmd.add_argument("--instrument", help='only this instrument ("MES 12-26")')
            cmd.add_argument("--all", action="store_true", help="every account the daemon sees, one flatten per account")
            cmd.add_argument("--yes", action="store_true", help="confirm --all")
        if verb in ("lock", "pause"):
            until = cmd.add_mutually_exclusive_group()
            until.add_argument("--for", dest="for_", metavar="DURATION", help="30m, 2h, ... (default: until the session ends)")
            until.add_argument("--until", metavar="TIME", help="HH:MM in riskd.yaml's timezone (the next one), or an ISO time")
        cmd.add_argument("--reason", required=True, help="why (goes into the audit trail)")
        cmd.add_argument("--wait", type=float, default=30.0, metavar="SECONDS", help="how long to wait for the outcome (default 30)")
        cmd.add_argument("-c", "--config", help="riskd.yaml (default: $RISKD_CONFIG, ./riskd.yaml, /etc/riskd/riskd.yaml)")
    init = sub.add_parser("init", help="start your own policy: DIR/riskd.yaml (against the simulator) and DIR/rules/")
    init.add_argument("directory", metavar="DIR", help="where to write riskd.yaml and rules/ (created if missing; nothing is overwritten)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code not in (0, None) else EXIT_OK
    handler = {"run": cmd_run, "check": cmd_check, "once": cmd_once, "sim": cmd_sim, "audit": cmd_audit, "report": cmd_report,
               "schema": cmd_schema, "status": cmd_status, "flatten": cmd_control, "lock": cmd_control, "unlock": cmd_control,
               "pause": cmd_control, "resume": cmd_control, "init": cmd_init}[args.command]
    try:
        return handler(args)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        print(f"riskd: {len(exc.problems)} problem(s); nothing was started", file=sys.stderr)
        return EXIT_CONFIG
    except StateError as exc:
        print(f"riskd: state: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except RiskdError as exc:
        print(f"riskd: {exc}", file=sys.stderr)
        return EXIT_FAILURE


# ---------------------------------------------------------------------------------------------


def _settings(args: argparse.Namespace, *, demo_ok: bool = False) -> config.Settings:
    path = config.find(args.config)
    if path is None:
        if demo_ok:
            return demo_settings()
        raise ConfigError([config.Problem("riskd.yaml", 1, 1, "",
                                          "no config file: pass -c FILE, set RISKD_CONFIG, or create ./riskd.yaml")])
    return config.load(path)


def _dashboard_address(value: str) -> tuple[str, int] | None:
    try:
        return config.listen_address(value, "dashboard", config.DASHBOARD_PORT)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# What the demo scenario (riskd/sim/scenarios/demo.yaml) does to the demo rules, in its own time.
DEMO_TIMELINE = (
    "~8 s   mes-loss-cap closes Sim101's 4 MES 12-26 (its open loss passes $500)",
    "~15 s  daily-loss-limit flattens Sim102 (session P&L past -$1,000) and locks it flat for the session",
    "after  samples once a minute; nothing else fires (trim-half-before-close waits for 15:55 New York)",
)


def demo_settings() -> config.Settings:
    """The demo: embedded simulator, the shipped examples, audit.jsonl and state/ in the current directory."""
    spec = config.ConfigSpec(rules=[str(EXAMPLES / name) for name in DEMO_RULES], crosstrade=config.CrossTradeSpec(base_url=config.SIM))
    return config.from_spec(spec, None, base=Path.cwd())


def load_rules(settings: config.Settings) -> tuple[list[Any], dict[str, str]]:
    """The rules riskd.yaml names; a ConfigError, located, for a path that names nothing or a policy that protects nothing."""
    config.check_rules_exist(settings)
    return rules_mod.load(settings.rules, settings.zone, allow_empty=settings.allow_empty_policy)


def cmd_check(args: argparse.Namespace) -> int:
    from riskd import lint

    settings = _settings(args)
    loaded, hashes = load_rules(settings)
    warnings = lint.warnings(loaded, settings)
    for warning in warnings:
        print(warning, file=sys.stderr)
    if warnings and args.strict:
        print(f"riskd: {len(warnings)} warning(s), refused by --strict", file=sys.stderr)
        return EXIT_CONFIG
    print(f"ok: {len(loaded)} rules in {len(hashes)} files" + (f", {len(warnings)} warning(s)" if warnings else ""))
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(rules_mod.schema(), indent=2))
    return EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    from riskd.scaffold import init

    written, commands = init(Path(args.directory))
    for path in written:
        print(f"wrote {path}")
    print("riskd.yaml points at the embedded simulator (base_url: sim); the policy has one rule. Next:")
    width = max(len(c) for c in commands)
    for command, what in zip(commands, ("validate the config and the policy",
                                        "one evaluation now: what would fire, how far each rule is",
                                        "the daemon against the simulator; Ctrl-C stops it")):
        print(f"  {command:{width}}   # {what}")
    return EXIT_OK


def sim_intro(settings: config.Settings, rules: list[Any], demo: bool) -> str:
    """What a run against the embedded simulator is about to do: its accounts, the rules, what to
    expect (the demo), where the trail is, how to stop."""
    from riskd.sim import DEMO_SCENARIO, load_scenario

    scenario = load_scenario(settings.scenario or DEMO_SCENARIO)
    out = [f"riskd against the embedded CrossTrade simulator at {settings.base_url} "
           f"({(settings.scenario or DEMO_SCENARIO).name}); accounts:"]
    for account in scenario.get("accounts") or []:
        held = ", ".join(f"{p['side']} {p['quantity']} {p['instrument']} @ {p['price']}" for p in account.get("positions") or [])
        out.append(f"  {account['name']:8} {held or 'flat'}")
    where = "the shipped examples" if demo else ", ".join(str(p) for p in settings.rules)
    out.append(f"rules ({where}): {', '.join(r.name for r in rules)}")
    if demo:
        out.append("what to expect:")
        out.extend(f"  {line}" for line in DEMO_TIMELINE)
        out.append(f"state: {settings.state_dir}, emptied at each start, like the simulator (a previous run's locks do not carry over); "
                   f"audit trail: {settings.audit_log}")
    else:
        out.append(f"state: {settings.state_dir} (carries over between runs); audit trail: {settings.audit_log}")
    read = "riskd audit [--summary]" + (f" -c {settings.path}" if settings.path else " (in this directory)")
    out.append(f"read it: {read}. Ctrl-C stops riskd.")
    return "\n".join(out)


def _start_sim(settings: config.Settings, stack: ExitStack) -> tuple[config.Settings, str]:
    """Start the embedded simulator; return settings pointed at it and its (random) token."""

    from riskd.sim import DEMO_SCENARIO, SimServer, Simulator, load_scenario

    token = secrets.token_urlsafe(24)
    scenario = load_scenario(settings.scenario or DEMO_SCENARIO)
    server = stack.enter_context(SimServer(Simulator(scenario, token=token), host="127.0.0.1", port=0))
    return replace(settings, base_url=server.base_url), token


def _endpoint(args: argparse.Namespace, settings: config.Settings, stack: ExitStack) -> tuple[config.Settings, str]:
    """The API to talk to: the embedded simulator (--sim, or base_url: sim), else CrossTrade with the configured token."""
    if args.sim or settings.simulated:
        return _start_sim(settings, stack)
    return settings, _token(settings)


def _token(settings: config.Settings) -> str:
    token = config.read_token(settings)
    if not token:
        raise ConfigError([config.Problem(str(settings.path or "riskd.yaml"), 1, 1, "crosstrade.token_env",
                                          f"no API token: set ${settings.token_env} or provide the systemd credential 'crosstrade-token'")])
    return token


@dataclass
class Wired:
    """What `run` and `once` share: the settings pointed at the endpoint, the loaded rules, the token and the ticker."""

    settings: config.Settings
    rules: list[Any]
    hashes: dict[str, str]
    token: str
    audit: AuditTrail
    store: Any
    ticker: Any
    dry_run: bool
    notifier: Any = None
    redactor: Any = None
    dashboard_token: str | None = None


def _wire(args: argparse.Namespace, settings: config.Settings, stack: ExitStack, *, console: Any, daemon: bool,
          fresh: bool = False) -> Wired:
    """Load settings and rules (a bad policy stops here: no API call), find the endpoint, and wire the
    audit trail, state store and ticker, each closed by `stack`. `daemon`: also the notifier, and the
    daemon's own state directory; otherwise (`once`) a dry look works on a copy of the daemon's state.
    `fresh`: the daemon starts with empty state (the demo)."""
    from riskd.notify import Notifier
    from riskd.state import Store
    from riskd.tick import build_ticker, state_dir_for, utc_now

    configure_console(stream=console)
    loaded, hashes = load_rules(settings)
    dry_run = args.dry_run or settings.dry_run
    settings, token = _endpoint(args, settings, stack)
    notifier = None
    secrets: list[str] = [token]
    if daemon:
        notifier = Notifier.from_settings(settings)  # a missing webhook URL is a config error (78)
        stack.callback(notifier.close, 0.0)
        secrets += notifier.secrets
    dashboard_token = config.read_dashboard_token() if daemon and settings.dashboard else None
    if dashboard_token:
        secrets.append(dashboard_token)
    redactor = Redactor(secrets)  # one Redactor for every writer: console, trail, state, STATUS, notifications, metrics
    if notifier is not None:
        notifier.redactor = redactor
    console = _redact_streams(redactor, console, stack)
    configure_console(secrets=redactor, stream=console)
    audit = _audit_trail(settings, redactor)
    stack.callback(audit.close)
    if daemon:
        store = Store(state_dir_for(settings, dry_run), on_condition=audit.emit,
                      redactor=redactor)  # disk_full / disk_recovered in the trail
        if fresh:
            store.forget_everything()
    elif dry_run:  # a dry look must not take the running daemon's state lock, nor change its state
        store = Store(Path(stack.enter_context(tempfile.TemporaryDirectory())), redactor=redactor)
        store.save(Store.peek(state_dir_for(settings, False)), utc_now())
    else:
        try:
            store = Store(settings.state_dir, redactor=redactor)
        except StateLocked:
            raise StateLocked(f"a riskd daemon is running with state_dir {settings.state_dir} and acting on these accounts; "
                              "nothing was sent. For a look that sends nothing: riskd once --dry-run (or riskd status)") from None
    stack.callback(store.close)
    ticker = build_ticker(settings, loaded, token, audit, dry_run=dry_run, store=store)
    stack.callback(ticker.client.close)
    return Wired(settings, loaded, hashes, token, audit, store, ticker, dry_run, notifier, redactor, dashboard_token)


def _redact_streams(redactor: Any, console: Any, stack: ExitStack) -> Any:
    """From here on every byte riskd prints (console log, `once` output, a traceback) is scrubbed:
    stdout and stderr are wrapped until `stack` closes. Return the wrapped `console`."""
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RedactingStream(out, redactor), RedactingStream(err, redactor)

    def restore() -> None:
        sys.stdout, sys.stderr = out, err

    stack.callback(restore)
    return sys.stdout if console is out else sys.stderr if console is err else RedactingStream(console, redactor)


def private_files() -> None:
    """Whatever the umask riskd was started with, every file it creates is owner-only: the state
    store, the audit trail and anything a library creates for them (SQLite's journals)."""
    os.umask(0o077)


def cmd_run(args: argparse.Namespace) -> int:
    hold_signals()  # first: a reload or reopen requested while starting waits for the daemon
    private_files()
    from riskd import lint
    from riskd.daemon import Daemon
    from riskd.state import ignore_sigxfsz

    ignore_sigxfsz()  # a file-size limit makes a write fail (EFBIG, handled), never kills riskd mid-close
    with ExitStack() as stack:
        settings = _settings(args, demo_ok=args.sim)
        if args.dashboard is not None:
            settings = replace(settings, dashboard=args.dashboard)
        # the demo's simulator starts over each run: so does its state (a lock from the last run would flatten at once)
        demo = settings.path is None
        console = sys.stderr if settings.audit_log == "-" else sys.stdout  # stdout is journald's, unless the trail is there
        wired = _wire(args, settings, stack, console=console, daemon=True, fresh=demo)
        if args.sim or settings.simulated:
            print(sim_intro(wired.settings, wired.rules, demo), file=console, flush=True)
        lint.log_warnings(wired.rules)
        daemon = Daemon(wired.settings, wired.ticker, wired.audit, wired.hashes, notifier=wired.notifier, redactor=wired.redactor,
                        dashboard_token=wired.dashboard_token)
        daemon.install_signals(pending=EARLY_SIGNALS)
        code = daemon.run()
        if daemon.abandoned:
            _exit_now(code, wired)
        return code


def _exit_now(code: int, wired: Wired) -> None:
    """End the process at once: the stop abandoned a tick stuck in a request (riskd/daemon.py `_stop`).

    A normal exit would wait for that thread: concurrent.futures joins its worker threads at
    interpreter exit, so SIGTERM would take as long as the request's deadline. There is no way to
    end a thread blocked in a socket read, so the process ends with os._exit, after what must not be
    lost is on disk: the audit trail is already closed (`stopped` written and fsync'd, later lines
    refused), the console streams are flushed here. The state store is deliberately not closed under
    the abandoned thread's feet (the connection is shared, serialized by the ticker lock that thread
    holds): every committed transaction is durable (WAL, synchronous=FULL), an uncommitted one is
    rolled back by SQLite at the next open, exactly as after a kill -9, and the kernel releases the
    state_dir lock and the sockets. The intent of a close in flight is durable as `sending` and is
    settled at the next start (Executor.resolve)."""
    import os

    wired.audit.close()  # a no-op after close_with; here in case the trail was not closed
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _audit_trail(settings: config.Settings, redactor: Redactor) -> AuditTrail:
    """The audit trail; write failures go to the console (journald) and never stop riskd."""
    import structlog

    return AuditTrail(settings.audit_log, secrets=redactor, console=structlog.get_logger("riskd.audit"), fsync=settings.audit_fsync)


def cmd_once(args: argparse.Namespace) -> int:
    from riskd.state import Store
    from riskd.tick import state_dir_for, utc_now

    private_files()
    with ExitStack() as stack:
        configure_console(stream=sys.stderr)  # stdout carries the decisions
        wired = _wire(args, _settings(args, demo_ok=args.sim), stack, console=sys.stderr, daemon=False)
        ticker, settings, loaded = wired.ticker, wired.settings, wired.rules
        state_before = ticker.state
        _print_daemon_health(Store.peek_health(state_dir_for(settings, False)), utc_now())
        decisions = ticker.tick("once")
        if decisions is None:
            print(f"riskd: no usable snapshot from the API: {ticker.health.last_error or 'not polled'} "
                  "(see the audit trail's api_error)", file=sys.stderr)
            return EXIT_FAILURE
        now = utc_now()
        _print_once(decisions, engine.explain(loaded, state_before, ticker.last_snapshot, now, settings.engine), loaded, now,
                    wired.dry_run)
        return EXIT_OK


def _print_daemon_health(health: dict[str, Any] | None, now: Any) -> None:
    """One line on the running (or last) daemon: its last successful poll, and STALE when it has none lately."""
    if not health:
        return
    from datetime import datetime

    last_ok = health.get("last_ok")
    ago = f" ({(now - datetime.fromisoformat(last_ok)).total_seconds():.0f}s ago)" if last_ok else ""
    line = f"daemon: last successful poll {last_ok or 'never'}{ago}"
    if health.get("stale"):
        line += f"; STALE since {health.get('stale_since')} (last error: {health.get('last_error')})"
    print(line)


def _print_once(decisions: list[Any], rows: list[dict[str, Any]], loaded: list[Any], now: Any, dry_run: bool) -> None:
    print(f"decisions{' (dry run: nothing sent)' if dry_run else ''}:")
    if not decisions:
        print("  none")
    for d in decisions:
        target = d.account + (f" {d.instrument}" if d.instrument else "")
        print(f"  {d.kind:10} {d.rule:28} {target:24} {d.action}" + (f"  ({d.reason})" if d.reason else ""))
    print("rules (per target: value seen, threshold, distance to firing):")
    for row in rows:
        print(f"  {row['rule']:28} {row['target']:24} {row['status']}")
        for c in row["conditions"]:
            print(f"      {c['name']}={_fmt(c['seen'])}  ({c['threshold']})  {c['distance']}")
    print("next scheduled firings:")
    timed = sorted(((engine.next_occurrence(r, now), r.name) for r in loaded if r.at is not None and r.enabled),
                   key=lambda x: (x[0] is None, x[0] or now))  # an `at` rule with no next occurrence: last, as never
    for when, name in timed:
        print(f"  {when.isoformat()}  {name}  (in {engine.format_span(when - now)})" if when else f"  never  {name}")
    if not timed:
        print("  none")


def _fmt(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def cmd_sim(args: argparse.Namespace) -> int:
    from riskd.sim import serve

    return serve(args.port, args.scenario, args.host)


def _trail_files(args: argparse.Namespace) -> list[Path]:
    """The FILEs given, else the config's audit_log (or ./audit.jsonl) with its rotated files."""
    from riskd import trail

    if args.files:
        return [Path(f) for f in args.files]
    found = config.find(args.config)
    live = Path(config.load(found).audit_log if found else "audit.jsonl")
    if live == Path("-"):
        raise RiskdError("audit_log is stdout (-): give the trail file to read")
    try:
        return trail.default_files(live)
    except trail.TrailError as exc:
        raise RiskdError(str(exc)) from None


def cmd_audit(args: argparse.Namespace) -> int:
    from riskd import trail

    files = _trail_files(args)
    if args.follow and not args.files:
        files = files[-1:]  # like tail -f: the live file, then what is appended to it
    if args.verify:
        return trail.main(files, trail.Query(task="verify"))
    try:
        keep = trail.parse_filter(rule=args.rule, account=args.account, instrument=args.instrument, events=args.event,
                                  since=args.since, until=args.until, day=args.date, show_all=args.all)
    except trail.FilterError as exc:
        print(f"riskd audit: {exc}", file=sys.stderr)
        return 2
    return trail.main(files, trail.Query(keep, "summary" if args.summary else "list", json=args.json, follow=args.follow))


def cmd_report(args: argparse.Namespace) -> int:
    from riskd import report

    return report.main(_trail_files(args), day=args.date, output=args.output)


# ---------------------------------------------------------------------------------------------
# Operating the running daemon.


def cmd_status(args: argparse.Namespace) -> int:
    from riskd import status
    from riskd.state import Store
    from riskd.tick import utc_now

    settings = _settings(args, demo_ok=True)
    loaded, _ = rules_mod.load(settings.rules, settings.zone)
    live, dry = Store.peek_view(settings.state_dir), Store.peek_view(settings.state_dir / "dry-run")

    def heard(view: dict[str, Any] | None) -> str:
        return ((view or {}).get("health") or {}).get("updated") or ""

    dry_run = bool(dry) and heard(dry) > heard(live)  # the daemon that wrote last
    seen = dry if dry_run else live
    if seen is None:
        print(f"riskd: no state in {settings.state_dir}: riskd has not run with this config", file=sys.stderr)
        return EXIT_FAILURE
    view = status.build(loaded, seen["state"], seen["snapshot"], seen["health"], utc_now(), settings.engine,
                        snapshot_at=seen["snapshot_at"], dry_run=dry_run, commands=seen["commands"])
    print(json.dumps(view, indent=2) if args.json else status.render(view))
    return EXIT_OK


def _until(args: argparse.Namespace, settings: config.Settings) -> str | None:
    """--for / --until as an absolute UTC time (ISO), None for the default (the session end)."""
    from datetime import datetime, timedelta, timezone

    from riskd.fields import parse_duration

    now = datetime.now(timezone.utc)
    if getattr(args, "for_", None):
        try:
            return (now + parse_duration(args.for_)).isoformat()
        except ValueError as exc:
            raise UsageError(f"--for: {exc}") from None
    text = getattr(args, "until", None)
    if not text:
        return None
    try:
        hour, minute = (int(x) for x in text.split(":"))
        local = now.astimezone(settings.zone)
        at = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
        if at <= local:
            at += timedelta(days=1)
        return at.astimezone(timezone.utc).isoformat()
    except ValueError:
        pass
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--until: {text!r} is neither HH:MM nor an ISO time") from None
    return (at if at.tzinfo else at.replace(tzinfo=settings.zone)).astimezone(timezone.utc).isoformat()


class UsageError(RiskdError):
    pass


def cmd_control(args: argparse.Namespace) -> int:
    from riskd.channel import ask, socket_path

    settings = _settings(args, demo_ok=True)
    verb = args.command
    if verb == "flatten" and args.all and args.account:
        print("riskd: flatten takes an ACCOUNT or --all, not both", file=sys.stderr)
        return EXIT_USAGE
    if verb == "flatten" and not args.all and not args.account:
        print("riskd: flatten needs an ACCOUNT (or --all --yes)", file=sys.stderr)
        return EXIT_USAGE
    if verb == "flatten" and args.all and not args.yes:
        print("riskd: flatten --all flattens every account (one flatten per account): add --yes to confirm", file=sys.stderr)
        return EXIT_USAGE
    try:
        until = _until(args, settings)
    except UsageError as exc:
        print(f"riskd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    request = {"id": secrets.token_hex(8), "verb": verb, "reason": args.reason, "until": until,
               "account": getattr(args, "account", None), "rule": getattr(args, "rule", None),
               "instrument": getattr(args, "instrument", None), "all": bool(getattr(args, "all", False)),
               "yes": bool(getattr(args, "yes", False)),
               "claimed_user": os.environ.get("SUDO_USER") or os.environ.get("LOGNAME") or os.environ.get("USER")}
    answer = ask(socket_path(settings), request, wait_s=args.wait)
    print(f"{answer.get('status')}: {answer.get('message', '')}")
    return EXIT_OK if answer.get("status") == "done" else EXIT_FAILURE
