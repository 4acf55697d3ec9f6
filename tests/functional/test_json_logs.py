"""JSON logs as an operator reads them: a server process with
``--log-format json``, a tenant's worker taking a dispatched job, a client
joining a room, another whose offer is not SDP, and a phone call; every line
about that job, room or call names its ids, and the tenant's, the media
worker's as well as the server's."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from livekit import api, rtc
from livekit.protocol import agent
from livekit.protocol import rtc as lk_rtc
from livekit.protocol import sip as pb
from websockets.sync.client import connect as ws_connect

from edgedispatch._testbase.fake_worker import FakeWorker
from edgedispatch.cli.bench.common import free_port

from .test_serve import ServeProcess

SCENARIOS = Path(__file__).resolve().parents[1] / "sip"
KEY, SECRET = "acme-key", "acme-secret"
NUMBER = "+15550100"
#: The fields that name what a line is about; a line with one names its tenant.
IDS = ("room", "participant", "call", "dispatch", "job", "worker")


@pytest.fixture
def served() -> Iterator[list[ServeProcess]]:
    started: list[ServeProcess] = []
    yield started
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
        s.proc.communicate()


def config(tmp: Path, sip_port: int) -> Path:
    path = tmp / "edgedispatch.toml"
    path.write_text(
        f"[sip]\nenabled = true\nport = {sip_port}\n"
        "rtp_port_min = 30000\nrtp_port_max = 39999\n"
        "[rtc]\nmedia_workers = 1\n"
        f'[[tenants]]\nname = "acme"\nkeys = {{ {KEY} = "{SECRET}" }}\n'
    )
    return path


def jwt(identity: str) -> str:
    grants = api.VideoGrants(room_join=True, room="support-42")
    return api.AccessToken(KEY, SECRET).with_identity(identity).with_grants(grants).to_jwt()


def bad_offer(url: str, identity: str) -> None:
    """A raw client joins the room and offers what is not SDP: the media
    worker that holds the room fails to negotiate (and logs it); returns
    once the client is told."""
    address = f"{url.replace('http', 'ws')}/rtc?access_token={jwt(identity)}"
    with ws_connect(address, open_timeout=5) as ws:
        offer = lk_rtc.SessionDescription(type="offer", sdp="v=0 this is not SDP", id=7)
        ws.send(lk_rtc.SignalRequest(offer=offer).SerializeToString())
        while True:
            msg = lk_rtc.SignalResponse.FromString(ws.recv(timeout=10))
            if msg.WhichOneof("message") == "request_response":
                assert msg.request_response.request_id == 7
                return


async def drive(srv: ServeProcess, sip_port: int, tmp: Path) -> tuple[str, str, str]:
    """A job for the tenant's worker, a client in a room, another whose
    offer is refused, and (with sipp) a call: their job id, the client's
    identity and the call's SIP Call-ID."""
    worker = FakeWorker(srv.url, KEY, SECRET, agent_name="bot")
    await worker.connect()
    async with api.LiveKitAPI(srv.url, KEY, SECRET) as lk:
        await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(agent_name="bot", room="support-42")
        )
        await worker.wait_for(lambda: len(worker.assigned) == 1)
        (job_id,) = worker.assigned
        room = rtc.Room()
        await room.connect(srv.url.replace("http", "ws"), jwt("alice"))
        await room.disconnect()
        await asyncio.to_thread(bad_offer, srv.url, "mallory")
        call_id = ""
        if shutil.which("sipp"):
            trunk = await lk.sip.create_inbound_trunk(
                pb.CreateSIPInboundTrunkRequest(
                    trunk=pb.SIPInboundTrunkInfo(name="line", numbers=[NUMBER])
                )
            )
            await lk.sip.create_dispatch_rule(
                pb.CreateSIPDispatchRuleRequest(
                    dispatch_rule=pb.SIPDispatchRuleInfo(
                        rule=pb.SIPDispatchRule(
                            dispatch_rule_direct=pb.SIPDispatchRuleDirect(room_name="phone-room")
                        ),
                        trunk_ids=[trunk.sip_trunk_id],
                    )
                )
            )
            call_id = await asyncio.to_thread(sipp_call, sip_port, tmp)
        await worker.job_status(job_id, agent.JS_SUCCESS)  # nothing left to drain
        await until(lambda: done(lk, job_id), "the job to end")
    await worker.close()
    return job_id, "alice", call_id


async def done(lk: api.LiveKitAPI, job_id: str) -> bool:
    (d,) = await lk.agent_dispatch.list_dispatch("support-42")
    return any(j.id == job_id and j.state.status == agent.JS_SUCCESS for j in d.state.jobs)


async def until(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(100):
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def sipp_call(sip_port: int, tmp: Path) -> str:
    """One call that the caller hangs up after 300 ms; its Call-ID."""
    scenario = tmp / "call.xml"
    text = (SCENARIOS / "call_caller_hangs_up.xml").read_text()
    scenario.write_text(text.replace("MEDIA", "").replace("HOLD_MS", "300"))
    call_id = "json-logs-call-1"
    done = subprocess.run(
        ["sipp", f"127.0.0.1:{sip_port}", "-sf", str(scenario), "-s", NUMBER, "-m", "1",
         "-i", "127.0.0.1", "-p", str(free_port(udp_too=True)), "-mi", "127.0.0.1",
         "-mp", str(free_port(udp_too=True)), "-nostdin", "-timeout", "20s",
         "-timeout_error", "-cid_str", call_id],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    return call_id


def about(line: dict[str, Any], value: str) -> bool:
    return value in line["msg"] or value in (str(line.get(f)) for f in IDS)


@pytest.mark.media  # a real client and a phone call: once (conftest)
def test_every_line_about_a_job_a_room_or_a_call_names_its_ids_and_tenant(
    served: list[ServeProcess], loop_kind: str, tmp_path: Path
) -> None:
    sip_port = free_port(udp_too=True)
    cfg = config(tmp_path, sip_port)
    srv = ServeProcess(loop_kind, "--log-format", "json", "--config", str(cfg))
    served.append(srv)
    job_id, identity, call_id = asyncio.run(asyncio.wait_for(drive(srv, sip_port, tmp_path), 30))
    err = srv.stop()
    lines = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    assert len(lines) == len(err.splitlines()), err  # JSON only, one object a line

    # Whatever a line is about, it names its tenant too.
    for line in lines:
        if any(f in line for f in IDS):
            assert line.get("tenant") == "acme", line

    job = [x for x in lines if about(x, job_id)]
    assert any(x["msg"] == "assigned job" for x in job), job
    for line in job:
        assert line["job"] == job_id and line["room"] == "support-42", line
        assert line["dispatch"].startswith("AD_") and line["worker"].startswith("AW_"), line
        assert line["agent"] == "bot", line

    joined = [x for x in lines if x.get("participant") == identity]
    assert {x["msg"] for x in joined} >= {"participant joined", "participant left"}, joined
    assert all(x["room"] == "support-42" for x in joined), joined
    room = [x for x in lines if "support-42" in x["msg"] or x.get("room") == "support-42"]
    assert any(x["msg"] == "room created" for x in room), room
    assert all(x.get("room") == "support-42" for x in room), room
    # The media worker's line, in the server's format, about whom it is.
    (failed,) = [x for x in lines if x["msg"].startswith("negotiation failed")]
    assert (failed["logger"], failed["room"], failed["participant"]) == (
        "edgedispatch.media", "support-42", "mallory"
    ), failed  # fmt: skip

    if not call_id:
        pytest.skip("sipp (sip-tester) missing: the call's lines are not checked")
    call = [x for x in lines if about(x, call_id)]
    assert any(x["msg"].startswith("call routed") for x in call), call
    for line in call:
        assert line["call"] == call_id, line
    # From its routing on, a call's lines name its room (a refusal before
    # routing names the caller's address instead).
    routed = call[[x["msg"].startswith("call routed") for x in call].index(True) :]
    assert all(x["room"] == "phone-room" for x in routed), routed
