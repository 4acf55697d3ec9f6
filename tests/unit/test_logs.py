"""Both log formats print the ids passed as ``extra``: an agent's lines
name its tenant, the default tenant ("") too; a job's lines name its
room, dispatch, worker, agent and tenant; and log calls about tenants'
things pass their ids, in the media worker processes too."""

from __future__ import annotations

import ast
import json
import logging
from pathlib import Path

from edgedispatch.dispatch.core import AgentKey
from edgedispatch.dispatch.records import JobRec, job_fields
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


def test_a_job_line_names_the_job_its_room_dispatch_worker_agent_and_tenant() -> None:
    rec = JobRec(id="AJ_1", dispatch_id="AD_1", key=AgentKey("", "bot"), room="r\nx")
    line = json.loads(JsonFormatter().format(record(**job_fields(rec, "AW_1"))))
    assert {k: line[k] for k in ("job", "dispatch", "room", "worker", "agent", "tenant")} == {
        "job": "AJ_1", "dispatch": "AD_1", "room": "r\nx", "worker": "AW_1", "agent": "bot",
        "tenant": "",
    }  # fmt: skip
    text = TextFormatter().format(record(**job_fields(rec), participant="p", call="c1"))
    assert "\n" not in text and "worker" not in text  # none yet: not printed
    fields = 'room=r\\nx participant=p call=c1 dispatch=AD_1 job=AJ_1 agent=bot tenant=""'
    assert text.endswith(fields)


#: The packages that handle tenants' rooms, jobs, workers and calls.
PACKAGES = ("dispatch", "worker", "calls", "rtc", "runtime", "api")
#: The modules of net/ that run in the media worker processes (with the
#: pool that starts them): a participant's peer connection, a call's RTP.
MEDIA = ("media.py", "media_data.py", "media_fanout.py", "media_link.py", "media_pool.py",
         "media_worker.py", "sip_media.py")  # fmt: skip

#: Log calls in the packages that handle tenants' rooms, jobs, workers and
#: calls (and in MEDIA) that name no ids, and why: each other one passes
#: ``extra=``.
NO_IDS = {
    ("dispatch/domain.py", "a call after a dispatch step failed"),  # any step's
    ("dispatch/events.py", "a subscriber failed on %s"),  # any event's
    ("runtime/cgroups.py", "cgroup %s still has processes %s; left in place"),  # the path says
    ("runtime/contain.py", "killed %d processes left by an earlier run of this server"),
    ("runtime/listener.py", "%s: connection set-up failed: %s"),  # before any hello
    ("runtime/listener.py", "%s: accept failed: %s"),
    ("runtime/pool_jobs.py", "on_exit of native job %s failed"),  # a bug; the traceback says
    ("api/app.py", "worker refused: %s"),  # an unauthenticated peer: no tenant yet
    ("api/app.py", "twirp %s failed"),  # a bug; the traceback says
    # A worker process and its link, which hold rooms of every tenant.
    ("net/media_link.py", "media link frame is broken (%s): closing the link"),
    ("net/media_pool.py", "media worker %d ready (pid %d)"),
    ("net/media_pool.py", "media worker %d (pid %d) exited"),
}


def test_log_calls_about_tenants_things_pass_their_ids() -> None:
    """A new log line in these packages names what it is about (the
    ``extra`` FIELDS), or says here why it cannot."""
    root = Path(__file__).resolve().parents[2] / "edgedispatch"
    paths = [p for pkg in PACKAGES for p in sorted((root / pkg).glob("*.py"))]
    paths += [root / "net" / name for name in MEDIA]
    bare = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            target = node.func.value
            if not (isinstance(target, ast.Name) and target.id == "log"):
                continue
            if node.func.attr not in ("debug", "info", "warning", "error", "exception", "log"):
                continue
            if any(k.arg == "extra" for k in node.keywords):
                continue
            first = node.args[0] if node.args else None
            message = first.value if isinstance(first, ast.Constant) else ast.dump(node)
            bare.add((str(path.relative_to(root)), message))
    assert bare == NO_IDS
