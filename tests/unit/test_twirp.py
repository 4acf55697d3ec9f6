"""The Twirp codec."""

from __future__ import annotations

import json

import pytest
from livekit.protocol import agent, agent_dispatch

from edgedispatch.errors import InvalidEvent
from edgedispatch.wire import twirp


def test_round_trip_in_both_encodings() -> None:
    req = agent_dispatch.CreateAgentDispatchRequest(agent_name="a", room="r", attributes={"k": "v"})
    for enc in (twirp.PROTOBUF, twirp.JSON):
        body = twirp.encode(req, enc)
        assert twirp.decode(body, enc, agent_dispatch.CreateAgentDispatchRequest) == req


def test_json_uses_camel_case_and_numbers_for_statuses_old_clients_lack() -> None:
    d = agent_dispatch.AgentDispatch(id="AD_1", agent_name="a", metadata="JS_CANCELLED")
    job = d.state.jobs.add(id="AJ_1")
    job.state.status = agent.JS_CANCELLED
    job2 = d.state.jobs.add(id="AJ_2")
    job2.state.status = agent.JS_RUNNING
    out = json.loads(twirp.encode(d, twirp.JSON))
    assert out["agentName"] == "a" and out["metadata"] == "JS_CANCELLED"
    assert [j["state"]["status"] for j in out["state"]["jobs"]] == [4, "JS_RUNNING"]
    back = twirp.decode(json.dumps(out).encode(), twirp.JSON, agent_dispatch.AgentDispatch)
    assert back.state.jobs[0].state.status == agent.JS_CANCELLED


@pytest.mark.parametrize(
    "ctype, expected",
    [
        ("application/protobuf", twirp.PROTOBUF),
        ("application/json; charset=UTF-8", twirp.JSON),
        ("application/x-protobuf", twirp.PROTOBUF),
    ],
)
def test_content_types(ctype: str, expected: str) -> None:
    assert twirp.encoding_of(ctype) == expected


def test_unknown_content_type_is_bad_route() -> None:
    with pytest.raises(twirp.TwirpError) as info:
        twirp.encoding_of("text/html")
    assert info.value.twirp_code == "bad_route"


def test_errors_are_twirp_json() -> None:
    status, body = twirp.error_body(twirp.TwirpError("not_found", "nope", id="AD_x"))
    assert status == 404 and json.loads(body) == {
        "code": "not_found",
        "msg": "nope",
        "meta": {"id": "AD_x"},
    }
    status, body = twirp.error_body(InvalidEvent("bad load"))
    assert status == 400 and json.loads(body)["code"] == "invalid_argument"
