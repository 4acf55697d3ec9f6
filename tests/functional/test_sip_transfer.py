"""TransferSIPParticipant (``livekit-api``'s ``lkapi.sip.transfer_sip_participant``):
a call from sipp, answered into a room, is transferred by REFER; sipp
checks the REFER's Refer-To and plays the far side (202 and NOTIFYs, or
a refusal)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from livekit import api
from livekit.protocol import sip as pb

from edgedispatch.sip.rtp import decode, parse_rtp

from .conftest import ServerThread
from .test_rooms import run
from .test_sip_calls import ROOM, add_rule, ok, serve, sipp_call, wait_for_phone

pytestmark = [
    pytest.mark.skipif(not shutil.which("sipp"), reason="sipp (sip-tester) missing"),
    pytest.mark.once,
]


def transfer_scenario(tmp: Path, name: str, refer_to: str, think_ms: int = 0) -> str:
    """The scenario with the Refer-To sipp must see (a regexp), as
    ``sipp_call`` names it (an absolute path, without .xml); ``think_ms``:
    the far side takes this long between accepting the REFER and saying
    how it goes."""
    text = (Path(__file__).resolve().parents[1] / "sip" / f"{name}.xml").read_text()
    if think_ms:
        accepted = text.index("<send retrans", text.index("SIP/2.0 202 Accepted"))
        text = f'{text[:accepted]}<pause milliseconds="{think_ms}" />\n  {text[accepted:]}'
    pattern = refer_to.replace("+", "\\+").replace(".", "\\.")
    pattern = pattern.replace("<", "&lt;").replace(">", "&gt;")  # in an XML attribute
    path = tmp / f"{name}_refer.xml"
    path.write_text(text.replace("REFER_TO", pattern))
    return str(path.with_suffix(""))


async def people(lk: api.LiveKitAPI) -> list[api.ParticipantInfo]:
    try:
        listed = await lk.room.list_participants(api.ListParticipantsRequest(room=ROOM))
    except api.TwirpError:
        return []  # the room closed with the call
    return list(listed.participants)


def test_a_call_is_transferred_and_its_participant_leaves(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """The RPC answers once sipp's sipfrag says 200; sipp saw a REFER
    with ``Refer-To: <sip:desk@example.com>``, then hangs up, and the
    participant leaves the room."""
    srv = serve(start_server)
    add_rule(srv)
    scenario = transfer_scenario(tmp_path, "call_transferred", "<sip:desk@example.com>")

    async def main() -> tuple[pb.TransferSIPParticipantResponse, int]:
        call = asyncio.create_task(asyncio.to_thread(sipp_call, srv, tmp_path, scenario))
        async with api.LiveKitAPI(srv.url, "devkey", "secret") as lk:
            try:
                phone = await wait_for_phone(lk)
            except AssertionError:
                ok(await call)
                raise
            answer = await lk.sip.transfer_sip_participant(
                pb.TransferSIPParticipantRequest(
                    room_name=ROOM,
                    participant_identity=phone.identity,
                    transfer_to="sip:desk@example.com",
                )  # fmt: skip
            )
            ok(await call)
            left = -1
            for _ in range(50):
                left = len(await people(lk))
                if not left:
                    break
                await asyncio.sleep(0.1)
        return answer, left

    answer, left = run(main)
    assert answer.status == pb.SIPTransferStatus.STS_TRANSFER_SUCCESSFUL, answer
    assert answer.transfer_id.startswith("STR_") and answer.sip_status.code == 200
    assert left == 0


def test_with_play_dialtone_the_caller_hears_ringing_while_the_transfer_goes(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """``play_dialtone``: between the REFER and its outcome (the far side
    takes 1.5 s), the caller hears the ringing tone (ETSI's 425 Hz) in
    place of the room; the caller's SDP points at a socket of the test."""
    srv = serve(start_server)
    add_rule(srv)
    scenario = transfer_scenario(
        tmp_path, "call_transferred", "<sip:desk@example.com>", think_ms=1500
    )
    phone_rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    phone_rtp.bind(("127.0.0.1", 0))
    phone_rtp.settimeout(0.2)
    heard: list[tuple[float, bytes]] = []
    listening = True

    def receive() -> None:
        while listening:
            try:
                data = phone_rtp.recv(2048)
            except TimeoutError:
                continue
            heard.append((time.monotonic(), parse_rtp(data).payload))

    async def main() -> tuple[pb.TransferSIPParticipantResponse, float, float]:
        nonlocal listening
        receiver = asyncio.create_task(asyncio.to_thread(receive))
        call = asyncio.create_task(
            asyncio.to_thread(
                sipp_call, srv, tmp_path, scenario, rtp_port=phone_rtp.getsockname()[1]
            )
        )
        try:
            async with api.LiveKitAPI(srv.url, "devkey", "secret") as lk:
                phone = await wait_for_phone(lk)
                for _ in range(100):  # the room's silence reaches the phone first
                    if len(heard) >= 5:
                        break
                    await asyncio.sleep(0.05)
                asked = time.monotonic()
                answer = await lk.sip.transfer_sip_participant(
                    pb.TransferSIPParticipantRequest(
                        room_name=ROOM,
                        participant_identity=phone.identity,
                        transfer_to="sip:desk@example.com",
                        play_dialtone=True,
                    )  # fmt: skip
                )
                done = time.monotonic()
            ok(await call)
        finally:
            listening = False
            await receiver
            phone_rtp.close()
        return answer, asked, done

    answer, asked, done = run(main)
    assert answer.status == pb.SIPTransferStatus.STS_TRANSFER_SUCCESSFUL, answer
    during = b"".join(payload for at, payload in heard if asked + 0.2 < at < done)
    assert len(during) >= 8000  # over a second of it, 20 ms at a time
    samples = np.frombuffer(decode("PCMU", during), dtype=np.int16).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples))
    assert abs(np.argmax(spectrum) * 8000 / len(samples) - 425.0) < 5
    before = b"".join(payload for at, payload in heard if at < asked)
    assert before and set(before) == {0xFF}  # the room was silent: PCMU silence


def test_a_refused_refer_fails_the_rpc_and_the_call_stays_up(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """sipp answers the REFER (``Refer-To: tel:+15550142``) 403: the RPC
    fails with LiveKit's mapping (permission_denied, the SIP status in the
    meta); the participant is still in the room, its call active, until
    the room is deleted (BYE to sipp)."""
    srv = serve(start_server)
    add_rule(srv)
    scenario = transfer_scenario(tmp_path, "call_refer_refused", "tel:+15550142")

    async def main() -> tuple[api.TwirpError, list[str]]:
        call = asyncio.create_task(asyncio.to_thread(sipp_call, srv, tmp_path, scenario))
        async with api.LiveKitAPI(srv.url, "devkey", "secret") as lk:
            phone = await wait_for_phone(lk)
            with pytest.raises(api.TwirpError) as failed:
                await lk.sip.transfer_sip_participant(
                    pb.TransferSIPParticipantRequest(
                        room_name=ROOM,
                        participant_identity=phone.identity,
                        transfer_to="tel:+15550142",
                    )  # fmt: skip
                )
            statuses = [p.attributes["sip.callStatus"] for p in await people(lk)]
            await lk.room.delete_room(api.DeleteRoomRequest(room=ROOM))
            ok(await call)  # our BYE came after all
        return failed.value, statuses

    error, statuses = run(main)
    assert error.code == "permission_denied", error
    assert error.metadata["sip_status_code"] == "403", error.metadata
    assert error.metadata["sip_transfer_reason"] == "STR_REJECTED"
    assert statuses == ["active"]


def test_bad_transfers_get_clear_twirp_errors(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """No room, no such participant, a bare number or no target: each its
    Twirp error at once, and the call goes on (deleting the room hangs it
    up)."""
    srv = serve(start_server)
    add_rule(srv)

    async def main() -> list[str]:
        call = asyncio.create_task(
            asyncio.to_thread(sipp_call, srv, tmp_path, "call_server_hangs_up")
        )
        codes = []
        async with api.LiveKitAPI(srv.url, "devkey", "secret") as lk:
            phone = await wait_for_phone(lk)
            cases = [
                ("no-such-room", phone.identity, "tel:+15550142"),
                (ROOM, "nobody", "tel:+15550142"),
                (ROOM, phone.identity, "+15550142"),  # LiveKit refuses a bare number too
                (ROOM, phone.identity, ""),
            ]
            for room, who, to in cases:
                request = pb.TransferSIPParticipantRequest(
                    room_name=room, participant_identity=who, transfer_to=to
                )
                try:
                    await lk.sip.transfer_sip_participant(request)
                    codes.append("ok")
                except api.TwirpError as exc:
                    codes.append(exc.code)
            await lk.room.delete_room(api.DeleteRoomRequest(room=ROOM))
        ok(await call)
        return codes

    assert run(main) == ["not_found", "not_found", "invalid_argument", "invalid_argument"]
