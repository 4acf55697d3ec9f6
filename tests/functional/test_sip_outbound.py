"""Calls placed with CreateSIPParticipant (``livekit-api``'s
``lkapi.sip.create_sip_participant``), to a sipp UAS playing the callee,
and heard by the rtc SDK as an agent in the room would hear them."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration
from livekit import api, rtc
from livekit.protocol import sip as pb

from edgedispatch.cli.bench.common import free_media_port, free_port

from .clients import NODE_DIR
from .conftest import ServerThread
from .test_metrics_page import scrape
from .test_rooms import joined, run, token, until
from .test_sip_calls import SCENARIOS, ok, serve, tone_file
from .tones import listen

CALLEE = "+15550123"
OUR_NUMBER = "+15550100"
ROOM = "outbound-room"
pytestmark = pytest.mark.skipif(not shutil.which("sipp"), reason="sipp (sip-tester) missing")


class Callee:
    """A sipp UAS on a port of its own: the trunk's far end."""

    def __init__(
        self, tmp: Path, scenario: str, media: str = "", ring_ms: int = 200, tcp: bool = False
    ) -> None:
        self.port = free_port(udp_too=True)
        path = tmp / f"{scenario}.xml"
        text = (SCENARIOS / f"{scenario}.xml").read_text()
        path.write_text(text.replace("MEDIA", media).replace("RING_MS", str(ring_ms)))
        self.proc = subprocess.Popen(
            ["sipp", "-sf", str(path), "-i", "127.0.0.1", "-p", str(self.port), "-m", "1",
             "-mi", "127.0.0.1", "-mp", str(free_media_port()), "-nostdin",
             "-timeout", "25s", "-timeout_error", *(["-t", "t1"] if tcp else [])],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    async def done(self) -> subprocess.CompletedProcess[str]:
        out, err = await asyncio.to_thread(self.proc.communicate, timeout=30)
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, out, err)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


async def add_trunk(srv: ServerThread, port: int, host: str = "127.0.0.1", **fields: Any) -> str:
    """An outbound trunk to ``host``:``port`` calling from OUR_NUMBER, with
    ``fields`` (credentials, transport, media...)."""
    async with api.LiveKitAPI(srv.url, "devkey", "secret") as lk:
        trunk = await lk.sip.create_outbound_trunk(
            pb.CreateSIPOutboundTrunkRequest(
                trunk=pb.SIPOutboundTrunkInfo(
                    name="carrier", address=f"{host}:{port}", numbers=[OUR_NUMBER], **fields
                )
            )
        )
        return trunk.sip_trunk_id


def dial_request(trunk_id: str, **kw: Any) -> pb.CreateSIPParticipantRequest:
    kw.setdefault("room_name", ROOM)
    return pb.CreateSIPParticipantRequest(sip_trunk_id=trunk_id, sip_call_to=CALLEE, **kw)


def statuses(room: rtc.Room) -> list[str]:
    """Every ``sip.callStatus`` the room sees the phone's participant take."""
    seen: list[str] = []

    def note(who: rtc.RemoteParticipant) -> None:
        status = who.attributes.get("sip.callStatus")
        if status and (not seen or seen[-1] != status):
            seen.append(status)

    room.on("participant_connected", note)
    room.on("participant_attributes_changed", lambda changed, who: note(who))
    return seen


@pytest.mark.media
def test_a_call_is_placed_with_auth_answered_heard_and_hung_up_by_deleting_the_room(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """wait_until_answered: the RPC answers after the 200 (the trunk's
    challenge answered with its credentials); the callee's participant
    went dialing -> ringing -> active, and its track carries the ringing
    tone while the callee rings (``play_dialtone``: ETSI's 425 Hz), then
    the callee's tone; deleting the room sends the callee a BYE."""
    srv = serve(start_server)
    tone = tone_file(tmp_path, 440.0, 4.0)
    callee = Callee(tmp_path, "uas_answer", media=f'<exec rtp_stream="{tone},1,0" />', ring_ms=2500)

    async def main() -> tuple[
        pb.SIPParticipantInfo, list[str], rtc.RemoteParticipant, float, float, float
    ]:
        trunk_id = await add_trunk(
            srv, callee.port, auth_username="trunk-user", auth_password="trunk-pass"
        )
        room, _ = await joined(srv, token("agent-like", ROOM), True)
        seen = statuses(room)
        heard: asyncio.Queue[tuple[rtc.Track, rtc.RemoteParticipant]] = asyncio.Queue()
        room.on("track_subscribed", lambda t, pub, who: heard.put_nowait((t, who)))
        try:
            async with api.LiveKitAPI(srv.url, "devkey", "secret") as lk:
                placing = asyncio.create_task(
                    lk.sip.create_sip_participant(
                        dial_request(
                            trunk_id,
                            wait_until_answered=True,
                            participant_name="Bob",
                            play_dialtone=True,
                        )  # fmt: skip
                    )
                )
                track, who = await asyncio.wait_for(heard.get(), 10)
                _, ringing, _ = await listen(track, seconds=0.6)  # within the 1 s of tone
                info = await placing
                rms, pitch, _ = await listen(track, seconds=1.0)
                await lk.room.delete_room(api.DeleteRoomRequest(room=ROOM))
            ok(await callee.done())  # it got our BYE
            return info, seen, who, ringing, rms, pitch
        finally:
            callee.kill()
            await room.disconnect()

    info, seen, who, ringing, rms, pitch = run(main)
    assert abs(ringing - 425.0) < 5, ringing  # before the answer
    assert info.participant_identity == f"sip_{CALLEE}" and info.room_name == ROOM
    assert info.participant_id.startswith("PA_") and info.sip_call_id
    assert seen[:3] == ["dialing", "ringing", "active"], seen
    assert who.kind == rtc.ParticipantKind.PARTICIPANT_KIND_SIP and who.name == "Bob"
    assert who.attributes["sip.phoneNumber"] == CALLEE
    assert who.attributes["sip.callID"] == info.sip_call_id and who.attributes["sip.trunkID"]
    assert abs(pitch - 440.0) < 5, pitch
    assert rms > 3000, rms


@pytest.mark.media
def test_a_trunk_whose_transport_is_tcp_carries_the_call_over_tcp(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """A carrier that takes SIP over TCP only (sipp ``-t t1`` listens on
    no UDP port): the call is challenged, answered, and hung up by the
    server when its ``max_call_duration`` (1 s) has passed, over one
    connection that the server opened; an unreachable TCP trunk fails the
    call as ``unavailable``, saying why."""
    srv = serve(start_server)
    callee = Callee(tmp_path, "uas_answer", tcp=True)
    closed = free_port()  # nothing listens there

    async def main() -> tuple[pb.SIPParticipantInfo, list[str], float, api.TwirpError]:
        tcp = pb.SIP_TRANSPORT_TCP
        trunk_id = await add_trunk(
            srv, callee.port, auth_username="trunk-user", auth_password="trunk-pass", transport=tcp
        )
        nowhere = await add_trunk(srv, closed, transport=tcp)
        room, _ = await joined(srv, token("agent-like", ROOM), True)
        seen = statuses(room)
        try:
            async with api.LiveKitAPI(srv.url, "devkey", "secret") as lk:
                info = await lk.sip.create_sip_participant(
                    dial_request(
                        trunk_id, wait_until_answered=True, max_call_duration=Duration(seconds=1)
                    )
                )
                answered = time.monotonic()
                ok(await callee.done())  # it got our BYE, over TCP
                lasted = time.monotonic() - answered
                with pytest.raises(api.TwirpError) as unreachable:
                    await lk.sip.create_sip_participant(
                        dial_request(nowhere, wait_until_answered=True, room_name="other")
                    )
            return info, seen, lasted, unreachable.value
        finally:
            callee.kill()
            await room.disconnect()

    info, seen, lasted, error = run(main)
    assert info.participant_identity == f"sip_{CALLEE}" and info.sip_call_id
    assert seen[:3] == ["dialing", "ringing", "active"], seen
    assert 0.8 < lasted < 4.0, lasted  # the call's own limit, not the server's (3 h)
    assert error.code == "unavailable" and "cannot reach the trunk over TCP" in error.message


@pytest.mark.media
def test_a_busy_callee_fails_wait_until_answered_with_its_sip_status(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    srv = serve(start_server)
    callee = Callee(tmp_path, "uas_busy")

    async def main() -> tuple[api.TwirpError, list[api.ParticipantInfo]]:
        trunk_id = await add_trunk(srv, callee.port)
        try:
            async with api.LiveKitAPI(srv.url, "devkey", "secret") as lk:
                with pytest.raises(api.TwirpError) as failed:
                    await lk.sip.create_sip_participant(
                        dial_request(trunk_id, wait_until_answered=True)
                    )
                ok(await callee.done())
                try:
                    people = await lk.room.list_participants(api.ListParticipantsRequest(room=ROOM))
                except api.TwirpError:
                    people = api.ListParticipantsResponse()
                return failed.value, list(people.participants)
        finally:
            callee.kill()

    error, people = run(main)
    assert error.code == "resource_exhausted", error  # LiveKit's mapping of 486
    assert error.metadata["sip_status_code"] == "486", error.metadata
    assert people == []  # the callee's participant left with the call
    got = scrape(srv.url)
    assert got["edgedispatch_sip_calls_total", (("code", "486"), ("direction", "outbound"))] == 1


@pytest.mark.media
def test_deleting_the_room_of_a_ringing_call_cancels_it(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """Without wait_until_answered the RPC answers at once; the participant
    rings; deleting its room sends CANCEL (sipp answers 200 and 487)."""
    srv = serve(start_server)
    callee = Callee(tmp_path, "uas_ring_cancel")

    async def main() -> str:
        trunk_id = await add_trunk(srv, callee.port)
        try:
            async with api.LiveKitAPI(srv.url, "devkey", "secret") as lk:
                await lk.sip.create_sip_participant(dial_request(trunk_id))
                status = ""
                for _ in range(50):
                    people = await lk.room.list_participants(api.ListParticipantsRequest(room=ROOM))
                    status = people.participants[0].attributes["sip.callStatus"]
                    if status == "ringing":
                        break
                    await asyncio.sleep(0.1)
                await lk.room.delete_room(api.DeleteRoomRequest(room=ROOM))
            ok(await callee.done())  # it got our CANCEL, and our ACK of its 487
            return status
        finally:
            callee.kill()

    assert run(main) == "ringing"


def _twirp(srv: ServerThread, body: dict[str, Any], **sip: bool) -> tuple[int, dict[str, Any]]:
    jwt = api.AccessToken("devkey", "secret").with_sip_grants(api.SIPGrants(**sip)).to_jwt()
    req = urllib.request.Request(
        f"{srv.url}/twirp/livekit.SIP/CreateSIPParticipant",
        data=json.dumps(body).encode(),
        headers={"authorization": f"Bearer {jwt}", "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_bad_requests_get_clear_twirp_errors(
    start_server: Callable[..., ServerThread],
) -> None:
    srv = serve(start_server)
    trunk_id = asyncio.run(add_trunk(srv, 5999))
    good = {"sip_trunk_id": trunk_id, "sip_call_to": CALLEE, "room_name": ROOM}
    cases = [
        ({**good}, {"admin": True}, "permission_denied"),  # sip.admin is not sip.call
        ({**good, "sip_trunk_id": "ST_nope"}, {"call": True}, "not_found"),
        ({**good, "sip_call_to": "+1 555 <0100>"}, {"call": True}, "invalid_argument"),
        ({**good, "sip_call_to": "bob@example.com"}, {"call": True}, "invalid_argument"),
        ({**good, "sip_call_to": ""}, {"call": True}, "invalid_argument"),
        ({**good, "room_name": ""}, {"call": True}, "invalid_argument"),
        (
            {k: v for k, v in good.items() if k != "sip_trunk_id"},
            {"call": True},
            "invalid_argument",
        ),
    ]
    for body, grants, code in cases:
        status, answer = _twirp(srv, body, **grants)
        assert answer["code"] == code, (body, answer)
        assert status in (400, 403, 404), (body, status)
    # The server is fine: the next call is placed (answered at once).
    status, answer = _twirp(srv, good, call=True)
    assert status == 200 and answer["participantIdentity"] == f"sip_{CALLEE}", answer


@pytest.mark.media
def test_the_callee_hangs_up_and_its_participant_leaves(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """The callee answers (PCMA) and sends BYE: we answer 200, and the
    participant leaves the room."""
    srv = serve(start_server)
    callee = Callee(tmp_path, "uas_hangs_up")

    async def main() -> tuple[str, int]:
        trunk_id = await add_trunk(srv, callee.port)
        try:
            async with api.LiveKitAPI(srv.url, "devkey", "secret") as lk:
                info = await lk.sip.create_sip_participant(
                    dial_request(trunk_id, wait_until_answered=True)
                )
                ok(await callee.done())  # our 200 to its BYE
                left = -1
                for _ in range(50):
                    try:
                        req = api.ListParticipantsRequest(room=ROOM)
                        left = len((await lk.room.list_participants(req)).participants)
                    except api.TwirpError:
                        left = 0  # the room closed with it
                    if not left:
                        break
                    await asyncio.sleep(0.1)
                return info.participant_identity, left
        finally:
            callee.kill()

    assert run(main) == (f"sip_{CALLEE}", 0)


@pytest.mark.media
@pytest.mark.skipif(
    not (NODE_DIR / "node_modules" / "livekit-server-sdk").exists(),
    reason="the Node SDK is not installed (cd tests/node && npm ci)",
)
def test_the_node_sdk_places_a_call_and_hears_busy(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """livekit-server-sdk's SipClient: the call goes out with the custom
    header it asked for (sipp checks it), and the callee's 486 comes back
    as LiveKit's error, with the SIP status in its metadata."""
    srv = serve(start_server)
    callee = Callee(tmp_path, "uas_busy_headers")
    env = {
        "LIVEKIT_URL": srv.url, "LIVEKIT_API_KEY": "devkey", "LIVEKIT_API_SECRET": "secret",
        "CALLEE_PORT": str(callee.port),
    }  # fmt: skip
    try:
        result = subprocess.run(
            ["node", "sip_call.mjs"], cwd=NODE_DIR, env={**os.environ, **env},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        ok(run(callee.done))
    finally:
        callee.kill()
    assert result.returncode == 0, result.stderr
    error = json.loads(result.stdout)["error"]
    assert (error["code"], error["status"]) == ("resource_exhausted", 429), error
    assert error["metadata"]["sip_status_code"] == "486", error


@pytest.mark.media
def test_a_placed_calls_custom_headers_go_out_and_its_answers_come_back_as_attributes(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """The INVITE carries the trunk's headers, the request's replacing
    one of them; the callee's 200 gives the participant its mapped
    attribute and, with ``include_headers``, ``sip.h.*``; the BYE carries
    the participant's attribute mapped to a header (sipp checks what it
    received)."""
    srv = serve(start_server)
    callee = Callee(tmp_path, "uas_headers")

    async def main() -> dict[str, str]:
        async with api.LiveKitAPI(srv.url, "devkey", "secret") as lk:
            trunk = await lk.sip.create_outbound_trunk(
                pb.CreateSIPOutboundTrunkRequest(
                    trunk=pb.SIPOutboundTrunkInfo(
                        name="carrier", address=f"127.0.0.1:{callee.port}",
                        numbers=[OUR_NUMBER], headers={"X-Site": "paris"},
                        headers_to_attributes={"X-Account": "account"},
                        attributes_to_headers={"case": "X-Case"},
                    )
                )
            )  # fmt: skip
            room, _ = await joined(srv, token("agent-like", ROOM), True)
            try:
                await lk.sip.create_sip_participant(
                    dial_request(
                        trunk.sip_trunk_id,
                        wait_until_answered=True,
                        headers={"X-Site": "lyon", "X-Campaign": "spring"},
                        include_headers=pb.SIP_X_HEADERS,
                        participant_attributes={"case": "4711"},
                    )  # fmt: skip
                )
                await until(lambda: bool(room.remote_participants), "the phone's participant")
                who = next(iter(room.remote_participants.values()))
                await until(lambda: "account" in who.attributes, "the answer's attributes")
                attrs = dict(who.attributes)
                await lk.room.delete_room(api.DeleteRoomRequest(room=ROOM))
                ok(await callee.done())  # its checks of the INVITE and the BYE held
                return attrs
            finally:
                callee.kill()
                await room.disconnect()

    attrs = run(main)
    assert attrs["account"] == "A1" and attrs["sip.h.x-account"] == "A1"
    assert attrs["sip.callIDFull"] == attrs["sip.callID"]


def test_custom_headers_that_would_forge_sip_are_refused(
    start_server: Callable[..., ServerThread],
) -> None:
    """A request's header with a CR LF in its value, or one naming a
    header the stack owns, gets invalid_argument before anything is sent."""
    srv = serve(start_server)

    async def main() -> list[api.TwirpError]:
        errors = []
        async with api.LiveKitAPI(srv.url, "devkey", "secret") as lk:
            trunk_id = await add_trunk(srv, free_port())
            for headers in ({"X-Evil": "a\r\nVia: forged"}, {"Call-ID": "mine"}):
                with pytest.raises(api.TwirpError) as refused:
                    await lk.sip.create_sip_participant(dial_request(trunk_id, headers=headers))
                errors.append(refused.value)
        return errors

    errors = run(main)
    assert [e.code for e in errors] == ["invalid_argument", "invalid_argument"]
    assert "char 13 not allowed" in errors[0].message and "not supported" in errors[1].message
