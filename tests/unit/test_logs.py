"""Both log formats print the ids passed as ``extra``: an agent's lines
name its tenant, the default tenant ("") too."""

from __future__ import annotations

import json
import logging

from edgedispatch.obs.logs import JsonFormatter, TextFormatter


def record(**extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("edgedispatch.agents", logging.INFO, "", 0, "hello", None, None)
    rec.__dict__.update(extra)
    return rec


def test_json_lines_carry_tenant_agent_and_instance() -> None:
    line = json.loads(JsonFormatter().format(record(tenant="acme", agent="voice", instance=2)))
    assert line["tenant"] == "acme" and line["agent"] == "voice" and line["instance"] == 2
    assert json.loads(JsonFormatter().format(record(tenant="", agent="x")))["tenant"] == ""


def test_text_lines_carry_tenant_agent_and_instance() -> None:
    line = TextFormatter().format(record(tenant="acme", agent="voice", instance=2))
    assert line.endswith("hello  agent=voice instance=2 tenant=acme")
    assert TextFormatter().format(record(tenant="", agent="x")).endswith('agent=x tenant=""')


def test_text_lines_cannot_be_forged_by_names() -> None:
    """A room name is the client's: newlines, other line breaks and fields
    of its own stay inside its field (the issue's hostile probe)."""
    evil = "r1\n12:00:00.000 ERROR   forged line  tenant=globex"
    rec = logging.LogRecord(
        "edgedispatch.rooms", logging.INFO, "", 0, "room %s opened", (evil,), None
    )
    rec.__dict__.update(room=evil, tenant="acme\u2028x")
    line = TextFormatter().format(rec)
    assert "\n" not in line and "\u2028" not in line
    assert line.endswith("tenant=acme\\u2028x")
    assert 'room="r1\\n12:00:00.000 ERROR   forged line  tenant=globex"' in line
    assert "room r1\\n12:00:00.000 ERROR" in line  # the message is escaped too
