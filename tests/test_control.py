"""Operator commands (riskd.control) through the control socket (riskd.channel): the ticker runs
in-process against the simulator over real HTTP, the commands cross a real Unix socket, all on
the harness's one clock. Each command is carried out by a tick, through the executor."""

from __future__ import annotations

import os
import pwd
import secrets
import socket
import stat
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from riskd import channel, control
from riskd.channel import ControlServer, NotRunning, ask
from riskd.sim import Fault

from harness import Rig, one_position

CAP = [{"name": "cap", "instruments": "MES", "when": {"position_pnl": {"below": -500}}, "then": {"close": "all"}}]


class Controlled:
    """A Rig with the daemon's control socket: a command wakes a tick, like riskd.daemon does."""

    def __init__(self, tmp: Path, token: str, scenario: dict[str, Any], rules: list[dict[str, Any]], **kw: Any):
        self.rig = Rig(tmp, token, scenario, rules, **kw)
        self.path = tmp / "c.sock"
        self.server: ControlServer | None = None
        self.open()

    def open(self) -> None:
        rig = self.rig
        assert rig.ticker is not None and rig.store is not None and rig.audit is not None
        ticker = rig.ticker
        self.server = ControlServer(self.path, rig.store.inbox(), rig.audit, lambda: ticker.tick("control"), ticker.command_progress,
                                    rig.clock.utc).start()

    def crash(self) -> None:
        """kill -9: the socket stops answering, nothing is finished."""
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()
        self.rig.stop_riskd()

    def restart(self) -> None:
        self.rig.start_riskd()
        self.open()

    def ask(self, verb: str, wait_s: float = 10.0, **fields: Any) -> dict[str, Any]:
        request = {"id": fields.pop("id", None) or secrets.token_hex(8), "verb": verb, "reason": fields.pop("reason", "test"), **fields}
        return ask(self.path, request, wait_s=wait_s, retry_s=0.0)

    def close(self) -> None:
        if self.server is not None and self.rig.store is not None:
            self.server.close()
        self.rig.close()


@pytest.fixture
def controlled(tmp_path, token):
    made: list[Controlled] = []

    def make(scenario, rules=(), **kw) -> Controlled:
        c = Controlled(tmp_path / f"r{len(made)}", token, scenario, list(rules), **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def two_accounts() -> dict[str, Any]:
    return one_position(extra=[{"name": "Sim102", "positions": [{"instrument": "NQ 12-26", "side": "short", "quantity": 2,
                                                                 "price": 21000.0}]}])


# -- lock / unlock -------------------------------------------------------------------------------


def test_lock_flattens_the_account_now_and_every_position_opened_until_it_ends(controlled):
    c = controlled(one_position(), CAP)
    c.rig.tick_at(1)
    until = c.rig.clock.utc() + timedelta(minutes=30)
    answer = c.ask("lock", account="sim101", until=until.isoformat())
    assert answer["status"] == "done", answer
    assert "locked until" in answer["message"] and "1 open position(s) are flattened now" in answer["message"]
    assert c.rig.quantities() == {}
    assert [r.body for r in c.rig.posts("/positions/flatten")] == [{"instrument": "MES 12-26"}]

    c.rig.sim.open_position("Sim101", "ES 12-26", quantity=1, price=6000.0)
    c.rig.tick_at(3)
    assert c.rig.quantities() == {}  # flattened on the next tick
    assert len(c.rig.posts("/positions/flatten")) == 2

    c.rig.clock.advance(31 * 60)  # the lock ended
    c.rig.sim.open_position("Sim101", "ES 12-26", quantity=1, price=6000.0)
    c.rig.tick()
    c.rig.tick_at(c.rig.clock.monotonic() + 1)
    assert c.rig.quantities() == {("Sim101", "ES 12-26"): 1}


def test_unlock_refuses_a_rule_lock_that_says_undo_never_and_names_the_rule(controlled):
    rules = [{"name": "lockout", "when": {"account_pnl": {"below": -100}}, "then": {"flatten": True, "lock": {"undo": "never"}}}]
    c = controlled(one_position(market=5990.0), rules)  # 4 MES * $5 * -10 = -$200
    c.rig.tick_at(1)
    assert c.rig.quantities() == {}
    answer = c.ask("unlock", account="Sim101")
    assert answer["status"] == "refused"
    assert "rule lockout" in answer["message"] and "cannot be undone" in answer["message"]
    c.rig.sim.open_position("Sim101", "ES 12-26", quantity=1, price=6000.0)
    c.rig.tick_at(2)
    assert c.rig.quantities() == {}  # the lock still holds
    result = c.rig.events("control_result")[-1]
    assert (result["verb"], result["status"], result["locked_by"]) == ("unlock", "refused", "lockout")


def test_unlock_lifts_the_operator_lock_and_a_liftable_rule_lock(controlled):
    rules = [{"name": "stop", "when": {"account_pnl": {"below": -100}}, "then": {"flatten": True, "lock": True}}]
    c = controlled(one_position(market=5990.0), rules)
    c.rig.tick_at(1)
    assert c.ask("lock", account="Sim101")["status"] == "done"
    answer = c.ask("unlock", account="Sim101")
    assert answer["status"] == "done" and answer["lifted"] == ["operator:lock", "stop"]
    c.rig.sim.open_position("Sim101", "ES 12-26", quantity=1, price=6000.0)
    c.rig.tick_at(2)
    c.rig.tick_at(3)
    assert c.rig.quantities() == {("Sim101", "ES 12-26"): 1}
    assert c.ask("unlock", account="Sim101")["status"] == "refused"  # nothing left to lift


# -- pause / resume ------------------------------------------------------------------------------


def test_pause_keeps_a_rule_from_firing_until_resume(controlled):
    c = controlled(one_position(), CAP)
    c.rig.tick_at(1)
    assert c.ask("pause", rule="cap")["status"] == "done"
    c.rig.sim.set_price("MES 12-26", 5970.0)  # -$600
    c.rig.tick_at(2)
    c.rig.tick_at(3)
    assert c.rig.posts("/positions/close") == []
    assert c.ask("resume", rule="cap")["status"] == "done"
    c.rig.tick_at(4)
    assert [r.body for r in c.rig.posts("/positions/close")] == [{"instrument": "MES 12-26"}]
    assert c.ask("pause", rule="nope")["status"] == "refused"


def test_pause_for_a_while_ends_by_itself(controlled):
    c = controlled(one_position(), CAP)
    c.rig.tick_at(1)
    until = c.rig.clock.utc() + timedelta(minutes=60)
    assert c.ask("pause", rule="cap", until=until.isoformat())["status"] == "done"
    c.rig.sim.set_price("MES 12-26", 5970.0)
    c.rig.tick_at(2)
    assert c.rig.posts("/positions/close") == []
    c.rig.tick_at(3601 + 2)
    assert len(c.rig.posts("/positions/close")) == 1


# -- flatten -------------------------------------------------------------------------------------


def test_flatten_all_sends_one_flatten_per_account_never_the_empty_body(controlled):
    c = controlled(two_accounts())
    c.rig.tick_at(1)
    refused = c.ask("flatten", all=True)
    assert refused["status"] == "refused" and "--yes" in refused["message"]
    answer = c.ask("flatten", all=True, yes=True)
    assert answer["status"] == "done" and answer["message"] == "flattened Sim101, Sim102"
    paths = sorted(r.path for r in c.rig.posts("flatten"))
    assert paths == ["/v1/api/accounts/Sim101/positions/flatten", "/v1/api/accounts/Sim102/positions/flatten"]
    assert c.rig.quantities() == {}
    assert len(c.rig.events("fired")) == 2 and {e["rule"] for e in c.rig.events("fired")} == {f"operator:{answer['id']}"}


def test_flatten_of_an_account_not_in_the_snapshot_is_refused_and_names_the_accounts(controlled):
    c = controlled(one_position())
    c.rig.tick_at(1)
    answer = c.ask("flatten", account="Sim999")
    assert answer["status"] == "refused" and "Sim999" in answer["message"] and "Sim101" in answer["message"]
    assert c.rig.posts() == []


def test_flatten_refused_by_the_api_answers_failed_with_the_reason(controlled):
    c = controlled(one_position())
    c.rig.tick_at(1)
    c.rig.sim.inject(Fault("status", match="POST */positions/flatten", status=400, count=1))
    answer = c.ask("flatten", account="Sim101", instrument="MES 12-26")
    assert answer["status"] == "failed" and "400" in answer["message"]
    assert c.rig.quantities() == {("Sim101", "MES 12-26"): 4}


# -- the channel ---------------------------------------------------------------------------------


def test_control_is_audited_with_the_unix_user_of_the_peer_and_the_socket_is_owner_group_only(controlled):
    c = controlled(one_position())
    c.rig.tick_at(1)
    c.ask("pause", rule="x", reason="lunch", claimed_user="someone-else")
    line = c.rig.events("control")[-1]
    assert (line["uid"], line["user"]) == (os.getuid(), pwd.getpwuid(os.getuid()).pw_name)
    assert line["claimed_user"] == "someone-else" and line["reason"] == "lunch"
    assert stat.S_IMODE(c.path.stat().st_mode) == 0o660


def test_ask_refuses_clearly_when_no_daemon_listens(tmp_path):
    with pytest.raises(NotRunning, match="no daemon is running .*nothing was done"):
        ask(tmp_path / "none.sock", {"id": "ab" * 8, "verb": "pause"}, retry_s=0)
    stale = tmp_path / "stale.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(stale))
    sock.close()  # a socket file nothing listens on (a killed riskd)
    with pytest.raises(NotRunning, match="nothing listens"):
        ask(stale, {"id": "ab" * 8, "verb": "pause"}, retry_s=0)


def test_a_silent_client_holds_up_neither_the_tick_nor_other_commands(controlled):
    c = controlled(one_position(), CAP)
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(str(c.path))  # connects and never sends a byte
    try:
        c.rig.sim.set_price("MES 12-26", 5970.0)
        c.rig.tick_at(1)
        assert len(c.rig.posts("/positions/close")) == 1
        assert c.ask("pause", rule="cap")["status"] == "done"
    finally:
        silent.close()


def test_a_bad_request_is_refused_with_the_reason(controlled):
    c = controlled(one_position())
    assert "--reason" in c.ask("lock", account="Sim101", reason="  ")["message"]
    assert "unknown command" in c.ask("explode")["message"]
    with pytest.raises(control.ControlError, match="id"):
        control.parse({"verb": "lock", "account": "a", "reason": "r", "id": "x"}, user="u", uid=1, now=c.rig.clock.utc())


# -- crashes: nothing lost, nothing doubled ------------------------------------------------------


def test_a_command_recorded_before_a_crash_is_carried_out_once_at_the_next_start(controlled):
    c = controlled(one_position())
    c.rig.tick_at(1)
    cid = secrets.token_hex(8)
    command = control.parse({"id": cid, "verb": "flatten", "account": "Sim101", "reason": "out"}, user="op", uid=0, now=c.rig.clock.utc())
    assert c.rig.store is not None
    c.rig.store.inbox().submit(cid, "flatten", command.as_json(), c.rig.clock.utc())  # recorded; killed before any tick
    c.crash()
    c.rig.clock.advance(5)
    c.restart()
    c.rig.tick()
    assert c.rig.quantities() == {}
    assert len(c.rig.posts("/positions/flatten")) == 1
    again = c.ask("flatten", id=cid, account="Sim101")  # the client asking again with its id
    assert again["status"] == "done" and again["message"] == "flattened Sim101"
    c.rig.tick_at(c.rig.clock.monotonic() + 1)
    assert len(c.rig.posts("/positions/flatten")) == 1
    assert [e["status"] for e in c.rig.events("control_result")] == ["done"]


def test_a_flatten_in_flight_at_a_crash_is_settled_from_the_snapshot_not_sent_twice(controlled):
    c = controlled(one_position())
    c.rig.tick_at(1)
    c.rig.sim.inject(Fault("lost_response", match="POST */positions/flatten", count=1))  # applied, never answered
    pending = c.ask("flatten", account="Sim101", wait_s=0.5)
    assert pending["status"] == "pending"
    c.crash()
    c.restart()
    c.rig.tick_at(c.rig.clock.monotonic() + 1)
    answer = c.ask("flatten", id=pending["id"], account="Sim101")
    assert answer["status"] == "done"
    assert len(c.rig.posts("/positions/flatten")) == 1
    assert c.rig.events("action_resolved")[-1]["verdict"].startswith("done")


def test_a_command_queued_longer_than_its_ttl_expires_instead_of_acting(controlled):
    c = controlled(one_position())
    c.rig.tick_at(1)
    cid = secrets.token_hex(8)
    command = control.parse({"id": cid, "verb": "flatten", "account": "Sim101", "reason": "out"}, user="op", uid=0, now=c.rig.clock.utc())
    assert c.rig.store is not None
    c.rig.store.inbox().submit(cid, "flatten", command.as_json(), c.rig.clock.utc())
    c.crash()
    c.rig.clock.advance(control.COMMAND_TTL.total_seconds() + 60)  # riskd stayed down
    c.restart()
    c.rig.tick()
    assert c.rig.posts("/positions/flatten") == []
    assert c.rig.events("control_result")[-1]["status"] == "expired"


def test_socket_path_defaults_to_the_state_dir(tmp_path):
    class S:
        control_socket = None
        state_dir = tmp_path

    assert channel.socket_path(S()) == tmp_path / "control.sock"


def test_cli_refuses_flatten_all_without_yes_a_missing_reason_and_a_bad_duration(tmp_path, monkeypatch, capsys):
    from riskd.cli import main

    monkeypatch.chdir(tmp_path)  # the demo's ./state: no daemon runs there
    assert main(["flatten", "--all", "--reason", "x"]) == 2
    assert "--yes" in capsys.readouterr().err
    assert main(["lock", "Sim101"]) == 2  # --reason is required
    assert main(["lock", "Sim101", "--for", "soon", "--reason", "x"]) == 2
    assert "--for" in capsys.readouterr().err
    assert main(["pause", "cap", "--reason", "x"]) == 1
    assert "no daemon is running" in capsys.readouterr().err


# -- the pure part: control.apply and the engine's controls ---------------------------------------


def _command(verb: str, now, **fields) -> control.Command:
    return control.parse({"id": secrets.token_hex(8), "verb": verb, "reason": "r", **fields}, user="op", uid=0, now=now)


def test_engine_pause_and_operator_lock_outlive_the_session_boundary_until_they_end():
    from dataclasses import replace as with_

    from rulekit import MORNING, Harness, acct, fires, pos, rule

    h = Harness(rule("cap", "position_pnl: {below: -500}"))
    until = (MORNING + timedelta(days=1)).isoformat()
    h.state = with_(h.state, session=engine_session(MORNING, h), paused={"cap": until}, account_locks={"sim101": until})
    evening = MORNING + timedelta(hours=9)  # 19:00 New York: a new session
    decisions = h.tick(evening, acct("Sim101", pos(pnl=-900)))
    assert fires(decisions) == [("operator:lock", "Sim101", "MES 12-26")]  # the lock, not the paused rule
    assert h.state.paused == {"cap": until} and h.state.account_locks == {"sim101": until}
    later = MORNING + timedelta(days=1, seconds=1)
    assert fires(h.tick(later, acct("Sim101", pos(pnl=-900)))) == [("cap", "Sim101", "MES 12-26")]
    assert h.state.paused == {} and h.state.account_locks == {}


def engine_session(now, h) -> str:
    from riskd.engine import session_of

    return session_of(now, h.settings)


def test_apply_lock_defaults_to_the_session_end_and_keeps_a_longer_lock():
    from rulekit import MORNING, SETTINGS, acct, pos

    from riskd.engine import State
    from riskd.schedule import session_end
    from riskd.model import Snapshot

    snapshot = Snapshot(MORNING, (acct("Sim101", pos()),))
    done = control.apply(_command("lock", MORNING, account="SIM101"), State(), [], snapshot, MORNING, SETTINGS)
    end = session_end(MORNING, SETTINGS.zone, SETTINGS.session_start).astimezone(timezone.utc)
    assert done.status == "done" and done.state.account_locks == {"sim101": end.isoformat()}
    assert end.isoformat() == "2026-11-27T23:00:00+00:00"  # 18:00 New York
    shorter = control.apply(_command("lock", MORNING, account="Sim101", until=(MORNING + timedelta(minutes=5)).isoformat()),
                            done.state, [], snapshot, MORNING, SETTINGS)
    assert shorter.state.account_locks == {"sim101": end.isoformat()}
