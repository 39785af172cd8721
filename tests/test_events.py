"""The audit event catalogue: one definition per event, that writers, readers and the README agree on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from riskd import events


def test_a_reader_cannot_read_a_field_the_event_does_not_declare():
    line = {"event": "fired", "inputs": {"account_pnl": -1200.0}}
    assert events.FIRED.of(line) and events.FIRED.get(line, "inputs.account_pnl") == -1200.0
    with pytest.raises(KeyError, match="declares no field 'input.account_pnl'"):
        events.FIRED.get(line, "input.account_pnl")


def test_a_line_missing_a_declared_field_is_named():
    assert events.STALE.missing({"event": "stale", "last_ok": None, "stale_after_s": 10.0}) == ["consecutive", "last_error"]


def test_the_fsync_and_drop_policies_come_from_the_catalogue():
    assert "fired" in events.DURABLE and "action" in events.DURABLE and "sample" not in events.DURABLE
    assert events.DROPPABLE == {"sample", "samples"}


def test_an_unknown_event_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="the events are: started, stopped"):
        events.of("bogus")


def test_the_readme_event_table_lists_exactly_the_catalogue():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme.split("| event | written when | key fields |", 1)[1].split("\n\n", 1)[0]
    listed = {name for row in table.splitlines()[2:] for name in re.findall(r"`([a-z_]+)`", row.split("|")[1])}
    assert listed == set(events.CATALOGUE)
