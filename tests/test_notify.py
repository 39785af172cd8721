"""Webhook notifications: message formats, background delivery with retries, secrets, and — end to
end against the simulator — a fired notification that arrives while a dead target delays nothing."""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import structlog

from conftest import wait_until, write_policy
from riskd import config
from riskd.config import NotifyTarget
from riskd.errors import ConfigError
from riskd.notify import Message, Notifier, Webhook, message_for, render, resolve_url


class WebhookServer:
    """A local webhook target on 127.0.0.1 that records every POST and answers with scripted statuses."""

    def __init__(self, statuses: list[int] | None = None):
        self.received: list[dict[str, Any]] = []
        self.statuses = list(statuses or [])
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = outer.statuses.pop(0) if outer.statuses else 200
                outer.received.append({"path": self.path, "headers": dict(self.headers), "body": body, "status": status})
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook/{time.monotonic_ns()}"

    def json_bodies(self) -> list[Any]:
        return [json.loads(r["body"]) for r in self.received if r["status"] == 200]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook_server():
    servers: list[WebhookServer] = []

    def make(statuses: list[int] | None = None) -> WebhookServer:
        servers.append(WebhookServer(statuses))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


@pytest.fixture
def silent_port():
    """A port that accepts connections (kernel backlog) but never answers: the worst dead target."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock.getsockname()[1]
    sock.close()


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def target(name: str = "t", fmt: str = "json", events=("fired", "failed", "stale", "rules_rejected"), timeout: float = 2.0) -> NotifyTarget:  # seconds
    return NotifyTarget(name, fmt, ("url", "unused"), frozenset(events), timedelta(seconds=timeout))


FIRED = {"event": "fired", "ts": "2026-03-10T14:00:00.000Z", "rule": "mes-loss-cap", "key": "k1", "account": "Sim101", "instrument": "MES 12-26",
         "action": "close all", "dry_run": False, "inputs": {"position_pnl": -600.0, "position": {"quantity": 2}},
         "threshold": {"position_pnl": {"below": -500.0}}}
FAILED = {"event": "action", "rule": "mes-loss-cap", "key": "k1", "account": "Sim101", "instrument": "MES 12-26", "ok": False, "status": 408,
          "outcome": "rejected", "error": "ninjatrader_disconnected", "request": {"method": "POST", "path": "accounts/Sim101/positions/close"}}


# ---------------------------------------------------------------------------------------------
# Messages and formats.


def test_message_for_maps_audit_events_to_classes():
    assert message_for(FIRED).kind == "fired"
    assert "mes-loss-cap fired on Sim101 MES 12-26: close all" in message_for(FIRED).text
    assert "position_pnl=-600.00" in message_for(FIRED).text
    assert message_for(FAILED).kind == "failed" and "408" in message_for(FAILED).text
    assert message_for({**FAILED, "ok": True}).kind == "outcome"  # a close the API acknowledged: what it did
    assert message_for({**FAILED, "ok": True, "request": {"method": "POST", "path": "accounts/Sim101/orders/cancel"}}) is None
    stale = message_for({"event": "stale", "last_ok": "2026-03-10T14:00:00+00:00", "last_error": "408 ninjatrader_disconnected"})
    assert stale.kind == "stale" and "since 2026-03-10T14:00:00+00:00 (last error: 408 ninjatrader_disconnected)" in stale.text
    recovered = message_for({"event": "recovered", "stale_for_s": 42.4})
    assert recovered.kind == "stale" and recovered.text.endswith("arriving again after 42s") and not recovered.urgent
    rejected = message_for({"event": "rules_rejected", "errors": ["a.yaml:1:1: bad", "b"], "kept_rules": 4})
    assert rejected.kind == "rules_rejected" and "4 old rules keep running: a.yaml:1:1: bad (+1 more)" in rejected.text
    assert message_for({"event": "started"}) is None and message_for({"event": "api_error"}) is None


def test_render_slack_discord_ntfy_and_generic_json():
    msgs = [message_for(FIRED), message_for(FAILED)]
    _, slack = render("slack", msgs, "vps1")
    assert json.loads(slack)["text"].count("\n") == 1
    _, discord = render("discord", msgs, "vps1")
    assert json.loads(discord)["allowed_mentions"] == {"parse": []} and "mes-loss-cap" in json.loads(discord)["content"]
    headers, ntfy = render("ntfy", msgs, "vps1")
    assert headers["Priority"] == "high" and headers["Title"] == "riskd on vps1: failed, fired" and b"mes-loss-cap" in ntfy
    _, generic = render("json", msgs, "vps1")
    doc = json.loads(generic)
    assert doc["source"] == "riskd" and doc["host"] == "vps1"
    assert [e["class"] for e in doc["events"]] == ["fired", "failed"] and doc["events"][0]["audit"]["rule"] == "mes-loss-cap"
    long = Message("fired", "fired", "x" * 5000, {})
    assert len(json.loads(render("discord", [long], "h")[1])["content"]) <= 2000


# ---------------------------------------------------------------------------------------------
# Delivery.


def test_webhook_retries_a_5xx_then_delivers_once(webhook_server):
    server = webhook_server([500])
    outcomes: list[str] = []
    hook = Webhook(target(), server.url, "h", on_outcome=lambda t, o: outcomes.append(o))
    try:
        hook.put(message_for(FIRED))
        wait_until(lambda: hook.sent == 1, timeout=10)
        assert [r["status"] for r in server.received] == [500, 200]
        assert outcomes == ["retried", "sent"]
    finally:
        hook.close(1)


def test_webhook_drops_a_4xx_without_retrying(webhook_server):
    server = webhook_server([404])
    outcomes: list[str] = []
    hook = Webhook(target(), server.url, "h", on_outcome=lambda t, o: outcomes.append(o))
    try:
        hook.put(message_for(FIRED))
        wait_until(lambda: outcomes, timeout=10)
        assert outcomes == ["dropped"] and len(server.received) == 1
    finally:
        hook.close(1)


def test_put_never_blocks_on_a_dead_target_and_the_queue_is_bounded(silent_port):
    hook = Webhook(target(timeout=5.0), f"http://127.0.0.1:{silent_port}/x", "h")
    try:
        started = time.perf_counter()
        for _ in range(1500):
            hook.put(message_for(FIRED))
        assert time.perf_counter() - started < 1.0  # 1500 puts while the sender hangs on the first POST
        assert hook.pending() <= 1000 and hook.dropped + hook.pending() + hook.in_flight == 1500  # bounded, every message counted
    finally:
        hook.close(0.1)


def test_notifier_routes_by_event_class_and_mutes_repeated_failures(webhook_server):
    fired_only, everything = webhook_server(), webhook_server()
    now = [0.0]
    notifier = Notifier([Webhook(target("a", events=("fired",)), fired_only.url, "h"), Webhook(target("b"), everything.url, "h")],
                        clock=lambda: now[0])
    try:
        notifier.on_audit(FIRED)
        for _ in range(5):
            notifier.on_audit(FAILED)  # a failing close is retried every tick: notified once
        now[0] += 16 * 60
        notifier.on_audit(FAILED)  # ...and again after the mute period
        wait_until(lambda: sum(len(b["events"]) for b in everything.json_bodies()) == 3, timeout=10)
        wait_until(lambda: fired_only.json_bodies(), timeout=10)
        assert [e["class"] for b in fired_only.json_bodies() for e in b["events"]] == ["fired"]
    finally:
        notifier.close(1)


def test_daemon_counts_each_delivered_notification_in_the_metrics(tmp_path, token, webhook_server):
    from harness import Rig, one_position
    from riskd.daemon import Daemon

    server = webhook_server([500])
    rig = Rig(tmp_path, token, one_position(), [])
    notifier = Notifier([Webhook(target("hook"), server.url, "h")])
    try:
        daemon = Daemon(rig.settings, rig.ticker, rig.audit, {}, notifier=notifier)
        notifier.on_audit(FIRED)
        wait_until(lambda: notifier.webhooks[0].sent == 1, timeout=10)
        metric = daemon.telemetry.registry.get_sample_value
        assert metric("riskd_notifications_total", {"target": "hook", "outcome": "retried"}) == 1
        assert metric("riskd_notifications_total", {"target": "hook", "outcome": "sent"}) == 1
    finally:
        notifier.close(1)
        rig.close()


def test_urls_are_never_logged(silent_port):
    url = f"http://127.0.0.1:{closed_port()}/secret-path-{time.monotonic_ns()}"
    with structlog.testing.capture_logs() as logs:
        hook = Webhook(target(timeout=0.5), url, "h")
        hook.put(message_for(FIRED))
        wait_until(lambda: any(e["event"] == "notify_failed" for e in logs), timeout=10)
        hook.close(0.1)
    assert url not in repr(logs) and "secret-path" not in repr(logs)
    assert "secret-path" not in repr(hook.target)


# ---------------------------------------------------------------------------------------------
# Configuration.


def test_config_notify_targets_resolve_from_credential_env_or_url(tmp_path):
    (tmp_path / "riskd.yaml").write_text(
        "notify:\n"
        "  - {name: slack, format: slack, url_credential: slack-webhook, events: [fired]}\n"
        "  - {name: phone, format: ntfy, url_env: NTFY_URL}\n"
        "  - {name: plain, url: 'https://example.invalid/hook'}\n"
    )
    settings = config.load(tmp_path / "riskd.yaml")
    slack, phone, plain = settings.notify
    assert slack.events == frozenset({"fired"}) and phone.events == frozenset({"fired", "outcome", "failed", "stale", "rules_rejected", "summary", "control"})
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "slack-webhook").write_text("https://hooks.invalid/T0/B0/x\n")
    env = {"CREDENTIALS_DIRECTORY": str(creds), "NTFY_URL": "https://ntfy.invalid/topic"}
    assert resolve_url(slack, settings, env) == "https://hooks.invalid/T0/B0/x"
    assert resolve_url(phone, settings, env) == "https://ntfy.invalid/topic"
    assert resolve_url(plain, settings, env) == "https://example.invalid/hook"
    with pytest.raises(ConfigError, match=r"notify.phone: no URL: \$NTFY_URL is not set"):
        resolve_url(phone, settings, {})
    with pytest.raises(ConfigError, match="systemd credential 'slack-webhook'"):
        resolve_url(slack, settings, {})


@pytest.mark.parametrize("text, expected", [
    ("notify:\n  - {name: a}\n", "notify.0: give exactly one of 'url_credential', 'url_env' or 'url'"),
    ("notify:\n  - {name: a, url_env: X, url: 'https://h/x'}\n", "(found url, url_env)"),
    ("notify:\n  - {name: a, url: 'ftp://secret-value'}\n", "url must start with http:// or https://"),
    ("notify:\n  - {name: a, url_env: X, events: [fird]}\n", "notify.0.events.0: invalid value 'fird'; write fired, outcome, failed, stale, rules_rejected, summary or control"),
    ("notify:\n  - {name: a, url_env: X, format: teams}\n", "notify.0.format: invalid value 'teams'; write json, slack, discord, ntfy or telegram"),
    ("notify:\n  - {name: a, url_env: X}\n  - {name: a, url_env: Y}\n", "duplicate notify target name(s): a"),
])
def test_config_rejects_bad_notify_targets(tmp_path, text, expected):
    (tmp_path / "riskd.yaml").write_text(text)
    with pytest.raises(ConfigError) as exc:
        config.load(tmp_path / "riskd.yaml")
    assert expected in str(exc.value)
    assert "secret-value" not in str(exc.value)


# ---------------------------------------------------------------------------------------------
# End to end: the real riskd, the simulator, a live target and two dead ones.


def test_run_notifies_fired_and_a_dead_target_does_not_delay_the_close(tmp_path, sim_factory, riskd_factory, webhook_server, silent_port, token):
    live = webhook_server()
    sim, server = sim_factory({"accounts": [{"name": "Sim101", "positions": [{"instrument": "MES 12-26", "side": "long", "quantity": 2, "price": 6000.0}]}],
                               "prices": {"MES 12-26": 6000.0}})
    rules = [{"name": "mes-loss-cap", "instruments": "MES", "when": {"position_pnl": {"below": -500}}, "then": {"close": "all"}}]
    notify = [  # the dead targets first: they must not hold up the close, nor the live target
        {"name": "silent", "url_env": "HOOK_SILENT", "timeout": "10s"},
        {"name": "refused", "format": "slack", "url_env": "HOOK_REFUSED"},
        {"name": "live", "url_env": "HOOK_LIVE"},
    ]
    env = {"HOOK_SILENT": f"http://127.0.0.1:{silent_port}/never", "HOOK_REFUSED": f"http://127.0.0.1:{closed_port()}/x", "HOOK_LIVE": live.url}
    config_path = write_policy(tmp_path, server.base_url, rules, poll_interval="250ms", notify=notify)
    proc = riskd_factory(config_path, token, env=env)
    proc.wait_for("started")
    wait_until(lambda: len(sim.request_log()) >= 2, timeout=10)

    breach = time.time()
    sim.set_price("MES 12-26", 5940.0)  # 2 lots x $5 x -60 = -$600
    proc.wait_for("action", timeout=5)
    close = [r for r in sim.request_log() if r.method == "POST"][0]
    assert close.path.endswith("/positions/close") and close.status == 200
    assert close.t - breach <= 0.25 + 0.5, f"close reached the simulator {close.t - breach:.3f}s after the breach (poll 0.25s)"

    bodies = wait_until(live.json_bodies, timeout=10)
    event = bodies[0]["events"][0]
    assert event["class"] == "fired" and event["audit"]["rule"] == "mes-loss-cap" and event["audit"]["account"] == "Sim101"
    assert "mes-loss-cap fired on Sim101 MES 12-26: close all" in event["text"]
    outcome = wait_until(lambda: [e for b in live.json_bodies() for e in b["events"] if e["class"] == "outcome"], timeout=10)
    assert [e["text"] for e in outcome] == ["riskd: mes-loss-cap on Sim101 MES 12-26: closed 2 of Long 2 MES 12-26 at -600.00"]

    # a broken rule edit + SIGHUP: the old rules keep running and the live target hears about it
    (tmp_path / "rules" / "policy.yaml").write_text("rules:\n  - name: x\n    when: {position_pnl: {belw: 1}}\n    then: {close: all}\n")
    import signal

    proc.signal(signal.SIGHUP)
    wait_until(lambda: any(e["class"] == "rules_rejected" for b in live.json_bodies() for e in b["events"]), timeout=10)
    assert proc.stop() == 0
    for path in tmp_path.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert live.url not in text and str(silent_port) + "/never" not in text, f"a webhook URL leaked into {path}"
            assert token not in text


# ---------------------------------------------------------------------------------------------
# What a trader acts on: outcomes, the session's summary, Telegram, storms.

CLOSED = {**FAILED, "ok": True, "status": 200, "outcome": "ok", "error": None,
          "request": {"method": "POST", "path": "accounts/Sim101/positions/close", "json": {"instrument": "MES 12-26"}},
          "response": {"success": True, "closedPositions": [{"account": "Sim101", "instrument": "MES 12-26", "marketPosition": "Long",
                                                             "quantity": 4, "averagePrice": 6000.0, "marketPrice": 5974.0,
                                                             "unrealizedProfitLoss": -520.0}]}}


def test_an_outcome_says_what_the_close_closed_and_a_failure_why():
    done = message_for(CLOSED)
    assert done.kind == "outcome" and done.text == "riskd: mes-loss-cap on Sim101 MES 12-26: closed 4 of Long 4 MES 12-26 at -520.00"
    half = message_for({**CLOSED, "request": {**CLOSED["request"], "json": {"instrument": "MES 12-26", "quantity": 1}}})
    assert half.text.endswith("closed 1 of Long 4 MES 12-26 at -130.00")
    dry = message_for({**CLOSED, "dry_run": True})
    assert dry.text.endswith("[dry run: nothing was sent]")
    failed = message_for(FAILED)
    assert failed.kind == "failed" and "408" in failed.text and "ninjatrader_disconnected" in failed.text


def test_telegram_posts_the_chat_and_text_and_needs_a_chat_id(webhook_server, tmp_path):
    server = webhook_server()
    hook = Webhook(NotifyTarget("tg", "telegram", ("url", "unused"), frozenset({"outcome"}), timedelta(seconds=2), "-100123"), server.url, "h")
    try:
        hook.put(message_for(CLOSED))
        wait_until(lambda: hook.sent == 1, timeout=10)
    finally:
        hook.close(1)
    body = server.json_bodies()[0]
    assert body == {"chat_id": "-100123", "text": message_for(CLOSED).text, "disable_web_page_preview": True}
    path = tmp_path / "riskd.yaml"
    path.write_text("crosstrade: {base_url: sim}\nnotify:\n  - {name: tg, format: telegram, url_env: TG}\n")
    with pytest.raises(ConfigError, match="chat_id"):
        config.load(path)
    path.write_text("crosstrade: {base_url: sim}\nnotify:\n  - {name: tg, format: telegram, url_env: TG, chat_id: -100123}\n")
    assert config.load(path).notify[0].chat_id == "-100123"


def test_telegrams_retry_after_in_the_body_is_honoured():
    import httpx

    answers = [httpx.Response(429, json={"ok": False, "error_code": 429, "parameters": {"retry_after": 7}}), httpx.Response(200, json={"ok": True})]
    hook = Webhook(NotifyTarget("tg", "telegram", ("url", "unused"), frozenset({"outcome"}), timedelta(seconds=2), "1"), "https://api.telegram.invalid/botX/sendMessage",
                   "h", transport=httpx.MockTransport(lambda request: answers.pop(0)))
    try:
        assert hook._post({}, b"{}") == ("retry", 7.0) and hook._post({}, b"{}") == ("sent", None)
    finally:
        hook.close(0.1)


def test_a_storm_of_closes_reaches_a_phone_as_a_few_messages(webhook_server):
    server = webhook_server()
    hook = Webhook(NotifyTarget("phone", "json", ("url", "unused"), frozenset({"outcome"}), timedelta(seconds=2), None, 6.0), server.url, "h")
    try:
        for i in range(300):  # 300 accounts flattened at 16:58
            hook.put(message_for({**CLOSED, "account": f"Sim{i}"}))
        wait_until(lambda: sum(len(b["events"]) for b in server.json_bodies()) == 300, timeout=10)
        assert len(server.received) <= 3  # the burst; the next call could go 10 s later (6 a minute)
    finally:
        hook.close(0.1)
    texts = [message_for({**CLOSED, "account": f"Sim{i}"}) for i in range(300)]
    for fmt, limit in (("slack", 3500), ("discord", 1900), ("telegram", 4000)):
        text = json.loads(render(fmt, texts, "h", "1")[1]).get("text") or json.loads(render(fmt, texts, "h", "1")[1])["content"]
        shown = text.count("riskd: mes-loss-cap")
        assert len(text) <= limit and text.endswith(f"… and {300 - shown} more (riskd audit has them all)") and shown > 10


def test_the_session_end_is_summed_up_in_the_trail_and_a_message(tmp_path, token):
    from datetime import datetime, timezone
    from zoneinfo import ZoneInfo

    from harness import Rig, one_position
    from riskd.daemon import Daemon, session_end_trigger

    rules = [{"name": "mes-loss-cap", "instruments": "MES", "when": {"position_pnl": {"below": -500}}, "then": {"close": "all"}},
             {"name": "daily-loss-limit", "when": {"account_pnl": {"below": -400}}, "then": {"flatten": True, "lock": True}}]
    extra = [{"name": "Sim102", "positions": []}]
    rig = Rig(tmp_path, token, one_position(extra=extra), rules, start=datetime(2026, 3, 10, 21, 59, 50, tzinfo=timezone.utc))  # 17:59:50 NY
    try:
        daemon = Daemon(rig.settings, rig.ticker, rig.audit, {})
        rig.tick_at(0.0)
        rig.sim.set_price("MES 12-26", 5974.0)  # -520: the loss cap and the daily limit fire; the flatten wins
        rig.tick_at(1.0)
        rig.settle_server()
        rig.tick_at(2.0)
        line = daemon.session_summary(now=datetime(2026, 3, 10, 22, 0, 0, tzinfo=timezone.utc))  # 18:00 New York
    finally:
        rig.close()
    assert line["session"] == "2026-03-10"
    assert [(a["account"], a["pnl"], a["locked"]) for a in line["accounts"]] == [("Sim101", -520.0, True), ("Sim102", 0.0, False)]
    rows = {r["rule"]: (r["firings"], r["closes"], r["contracts_closed"], r["pnl_at_close"], r["superseded"]) for r in line["rules"]}
    assert rows == {"daily-loss-limit": (1, 1, 4, -520.0, 0), "mes-loss-cap": (0, 0, 0, 0.0, 1)}  # the flatten covered the close
    assert [e for e in rig.events("session_summary")] and rig.events("session_summary")[0]["rules"] == line["rules"]
    text = message_for(line).text
    assert message_for(line).kind == "summary"
    assert text.splitlines() == ["riskd: session 2026-03-10 ended", "Sim101: P&L -520.00 (locked)", "Sim102: P&L 0.00",
                                 "daily-loss-limit: 1 firing(s), 1 close(s), 4 contract(s) at -520.00"]
    nxt = session_end_trigger(rig.settings).get_next_fire_time(None, datetime(2026, 3, 10, 12, 0, tzinfo=timezone.utc))
    assert nxt == datetime(2026, 3, 10, 18, 0, tzinfo=ZoneInfo("America/New_York"))


def test_an_evening_that_opens_no_new_session_sums_up_nothing(tmp_path, token):
    from datetime import datetime, timezone

    from harness import Rig, one_position
    from riskd.daemon import Daemon

    rig = Rig(tmp_path, token, one_position(), [], start=datetime(2026, 3, 13, 21, 59, 50, tzinfo=timezone.utc))  # Friday 17:59:50 NY
    try:
        daemon = Daemon(rig.settings, rig.ticker, rig.audit, {})
        rig.tick_at(0.0)
        friday = daemon.session_summary(now=datetime(2026, 3, 13, 22, 0, 0, tzinfo=timezone.utc))  # Friday 18:00: Friday's session ends
        saturday = daemon.session_summary(now=datetime(2026, 3, 14, 22, 0, 0, tzinfo=timezone.utc))  # Saturday 18:00: still Monday's
    finally:
        rig.close()
    assert friday is not None and friday["session"] == "2026-03-13"
    assert saturday is None and [e["session"] for e in rig.events("session_summary")] == ["2026-03-13"]


def test_an_operator_command_is_notified_with_who_asked_and_its_outcome():
    from riskd import events

    line = {"event": "control_result", "id": "c1", "verb": "lock", "status": "done", "user": "alice", "account": "Sim101", "rule": None,
            "reason": "tilt", "message": "Sim101 locked until 2026-03-10T18:00:00-04:00; 1 open position(s) are flattened now"}
    assert events.CONTROL_RESULT.missing(line) == []  # the fields tick.py writes
    message = message_for(line)
    assert message.kind == "control" and message.text == (
        "riskd: alice asked lock Sim101 (reason: tilt): done, Sim101 locked until 2026-03-10T18:00:00-04:00; "
        "1 open position(s) are flattened now")
    refused = message_for({**line, "verb": "unlock", "status": "refused", "reason": None, "message": "rule daily-loss-limit says undo: never"})
    assert refused.text == "riskd: alice asked unlock Sim101: refused, rule daily-loss-limit says undo: never"
