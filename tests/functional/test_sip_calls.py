"""Phone calls answered and bridged into rooms, driven by sipp (Debian's
sip-tester) as a trunk would place them, and heard by the rtc SDK as an
agent would hear them."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from google.protobuf.duration_pb2 import Duration
from livekit import api, rtc
from livekit.protocol import sip as pb

from edgedispatch._testbase.fake_worker import FakeWorker
from edgedispatch.cli.bench.common import free_media_port, free_port
from edgedispatch.net.media_pool import MediaPool
from edgedispatch.sip.rtp import RtpPacket, decode, encode, parse_rtp

from .clients import WorkerProcess, py_worker
from .conftest import ServerThread
from .test_metrics_page import scrape
from .test_rooms import joined, record_data, run, token, until
from .tones import listen, publish_tone

SCENARIOS = Path(__file__).resolve().parents[1] / "sip"
NUMBER = "+15550100"
CALLER = "+15550199"
ROOM = "phone-room"
T = TypeVar("T")
pytestmark = [
    pytest.mark.skipif(not shutil.which("sipp"), reason="sipp (sip-tester) missing"),
    pytest.mark.media,
]


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.close()


def serve(start_server: Callable[..., ServerThread], **sip: object) -> ServerThread:
    return start_server(
        sip={"enabled": True, "port": 0, "rtp_port_min": 30000, "rtp_port_max": 39999, **sip},
        rtc={"media_workers": 1},
    )


def add_rule(srv: ServerThread, *, pin: str = "", agent: str = "", **trunk_kw: Any) -> None:
    """A trunk for NUMBER (with ``trunk_kw``) and a direct rule into ROOM
    (with ``pin``, dispatching ``agent``)."""

    async def setup() -> None:
        async with api.LiveKitAPI(srv.url, "devkey", "secret") as lk:
            trunk = await lk.sip.create_inbound_trunk(
                pb.CreateSIPInboundTrunkRequest(
                    trunk=pb.SIPInboundTrunkInfo(name="line", numbers=[NUMBER], **trunk_kw)
                )
            )
            config = api.RoomConfiguration(
                agents=[api.RoomAgentDispatch(agent_name=agent)] if agent else []
            )
            await lk.sip.create_dispatch_rule(
                pb.CreateSIPDispatchRuleRequest(
                    dispatch_rule=pb.SIPDispatchRuleInfo(
                        rule=pb.SIPDispatchRule(
                            dispatch_rule_direct=pb.SIPDispatchRuleDirect(room_name=ROOM, pin=pin)
                        ),
                        trunk_ids=[trunk.sip_trunk_id],
                        metadata="from the rule",
                        attributes={"team": "support"},
                        room_config=config,
                    )
                )
            )

    asyncio.run(setup())


def sipp_call(
    srv: ServerThread,
    tmp: Path,
    scenario: str,
    *args: str,
    media: str = "",
    hold_ms: int = 1000,
    rtp_port: int = 0,
    number: str = NUMBER,
    ack_after_ms: int = 0,
) -> subprocess.CompletedProcess[str]:
    """One call to ``number`` from CALLER; ``media``: sipp actions after the
    ACK; ``rtp_port``: the caller's SDP names this port, not sipp's;
    ``ack_after_ms``: the caller waits this long after the 200 to ACK it."""
    path = tmp / f"{scenario}_{hold_ms}.xml"
    text = (SCENARIOS / f"{scenario}.xml").read_text()
    if ack_after_ms:
        ack = "  <send>\n    <![CDATA[\n      ACK "
        assert text.count(ack) == 1
        text = text.replace(ack, f'  <pause milliseconds="{ack_after_ms}" />\n{ack}')
    if rtp_port:
        text = text.replace("m=audio [media_port]", f"m=audio {rtp_port}")
    path.write_text(text.replace("MEDIA", media).replace("HOLD_MS", str(hold_ms)))
    return subprocess.run(
        ["sipp", f"127.0.0.1:{srv.server.sip_port}", "-sf", str(path), *args, "-s", number,
         "-m", "1", "-i", "127.0.0.1", "-p", str(free_port(udp_too=True)),
         "-mi", "127.0.0.1", "-mp", str(free_media_port()), "-nostdin",
         "-timeout", "40s", "-timeout_error", "-max_recv_loops", "1000"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def tone_file(tmp: Path, freq: float, seconds: float) -> Path:
    """Headerless μ-law (sipp's rtp_stream plays the bytes as they are)."""
    n = np.arange(int(8000 * seconds))
    samples = (12000 * np.sin(2 * np.pi * freq * n / 8000)).astype(np.int16)
    path = tmp / f"tone{int(freq)}.ulaw"
    path.write_bytes(encode("PCMU", array("h", samples.tobytes())))
    return path


def debug_state(srv: ServerThread) -> dict[str, Any]:
    """/debug/state as an operator sees it."""
    jwt = (
        api.AccessToken("devkey", "secret")
        .with_identity("operator")
        .with_grants(api.VideoGrants(room_list=True))
        .to_jwt()
    )
    req = urllib.request.Request(
        f"{srv.url}/debug/state", headers={"authorization": f"Bearer {jwt}"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        state: dict[str, Any] = json.loads(resp.read())
    return state


async def wait_for_phone(lk: api.LiveKitAPI) -> api.ParticipantInfo:
    """The call's participant, once it is in ROOM and the call is up."""
    for _ in range(100):
        try:
            people = await lk.room.list_participants(api.ListParticipantsRequest(room=ROOM))
        except (api.TwirpError, api.ServerError):
            people = api.ListParticipantsResponse()  # no room yet
        up = [p for p in people.participants if p.attributes["sip.callStatus"] == "active"]
        if up:
            return up[0]
        await asyncio.sleep(0.1)
    raise AssertionError("the call never joined its room")


async def heard_during(heard: asyncio.Queue[T], call: asyncio.Task[Any]) -> T:
    """The first track the room gets while ``call`` (sipp) is up; a call
    that ends first fails with sipp's output."""
    got = asyncio.ensure_future(heard.get())
    await asyncio.wait([got, call], timeout=15, return_when=asyncio.FIRST_COMPLETED)
    if got.done():
        return got.result()
    got.cancel()
    if call.done():
        ok(call.result())
        raise AssertionError("the call ended before the room got its track")
    raise AssertionError("no track from the call within 15 s")


def ok(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


@pytest.mark.all_loops
def test_a_call_is_answered_and_the_caller_hangs_up(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    srv = serve(start_server)
    add_rule(srv)
    ok(sipp_call(srv, tmp_path, "call_caller_hangs_up", hold_ms=500))
    # The caller's BYE ended it: no call, no participant left.
    endpoint = srv.server.sip_endpoint
    assert endpoint is not None and endpoint.uas is not None
    assert srv.call(lambda: len(endpoint.uas.calls)) == 0  # type: ignore[union-attr]


def test_a_call_cancelled_before_its_answer_gets_487_and_leaves_nothing_behind(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """The caller cancels while the call rings: 200 to the CANCEL, 487 to
    the INVITE (sent once: the ACK ends it).  The answer waits for the
    call's RTP port from the media worker; that worker is stopped here
    until the call is cancelled, so the CANCEL always wins, and the port
    it opens afterwards, for a call that is gone, is closed again."""
    srv = serve(start_server)
    add_rule(srv)
    ok(sipp_call(srv, tmp_path, "call_caller_hangs_up", hold_ms=100))  # starts the worker
    pool = srv.server._media
    assert isinstance(pool, MediaPool)
    (worker,) = [w for w in pool.workers if w is not None]
    os.kill(worker.proc.pid, signal.SIGSTOP)
    try:
        cancelled = sipp_call(srv, tmp_path, "call_cancelled")
    finally:
        os.kill(worker.proc.pid, signal.SIGCONT)
    ok(cancelled)
    endpoint = srv.server.sip_endpoint
    assert endpoint is not None and endpoint.uas is not None
    assert srv.call(lambda: len(endpoint.uas.calls)) == 0  # type: ignore[union-attr]
    got = scrape(srv.url)
    assert got["edgedispatch_sip_calls_total", (("code", "487"), ("direction", "inbound"))] == 1
    assert not [key for key in got if key[0] == "edgedispatch_sip_calls_active"]
    # The worker, resumed, opened the call's port and then closed it: it
    # holds no media for it.
    held = asyncio.run_coroutine_threadsafe(worker.stats(1), srv.loop).result(10)
    assert held == {} and srv.call(lambda: len(worker.proxies)) == 0

    async def left_behind() -> list[str]:
        async with api.LiveKitAPI(srv.url, "devkey", "secret") as lk:
            try:
                people = await lk.room.list_participants(api.ListParticipantsRequest(room=ROOM))
            except api.TwirpError:
                return []  # no room at all
            return [p.identity for p in people.participants]

    assert run(left_behind) == []  # the ringing caller left the room
    # The next call is answered as usual.
    ok(sipp_call(srv, tmp_path, "call_caller_hangs_up", hold_ms=100))
    got = scrape(srv.url)
    assert got["edgedispatch_sip_calls_total", (("code", "200"), ("direction", "inbound"))] == 2


@pytest.mark.all_loops
def test_deleting_the_room_hangs_the_call_up(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    srv = serve(start_server)
    add_rule(srv)

    async def main() -> subprocess.CompletedProcess[str]:
        call = asyncio.create_task(
            asyncio.to_thread(sipp_call, srv, tmp_path, "call_server_hangs_up")
        )
        async with api.LiveKitAPI(srv.url, "devkey", "secret") as lk:
            phone = await wait_for_phone(lk)
            assert phone.kind == api.ParticipantInfo.Kind.SIP  # type: ignore[attr-defined]
            # The status page's state lists the call.
            (listed,) = (await asyncio.to_thread(debug_state, srv))["sip_calls"]
            assert (listed["from"], listed["to"], listed["room"], listed["state"]) == (
                CALLER, NUMBER, ROOM, "active",
            )  # fmt: skip
            # And /metrics counts it.
            got = await asyncio.to_thread(scrape, srv.url)
            assert got["edgedispatch_sip_calls_active", (("state", "active"), ("tenant", ""))] == 1
            await lk.room.delete_room(api.DeleteRoomRequest(room=ROOM))
        return await call

    ok(run(main))
    got = scrape(srv.url)
    assert got["edgedispatch_sip_calls_total", (("code", "200"), ("direction", "inbound"))] == 1
    assert not [key for key in got if key[0] == "edgedispatch_sip_calls_active"]


@pytest.mark.once  # the trunk's limit, not the loop
def test_a_trunks_max_call_duration_hangs_its_calls_up(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """The inbound trunk's ``max_call_duration`` (1 s): the server sends
    the caller BYE a second after the answer (its own limit is 3 h)."""
    srv = serve(start_server)
    add_rule(srv, max_call_duration=Duration(seconds=1))
    started = time.monotonic()
    ok(sipp_call(srv, tmp_path, "call_server_hangs_up"))
    assert time.monotonic() - started < 5.0


def test_the_room_hears_the_caller_and_sees_its_participant(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """The SIP participant joins as LiveKit's (identity, name, kind,
    attributes), and its track carries the caller's 440 Hz tone."""
    srv = serve(start_server)
    add_rule(srv)
    tone = tone_file(tmp_path, 440.0, 4.0)

    async def main() -> tuple[rtc.RemoteParticipant, dict[str, str], float, float]:
        room, _ = await joined(srv, token("agent-like", ROOM), True)
        heard: asyncio.Queue[tuple[rtc.Track, rtc.RemoteParticipant]] = asyncio.Queue()
        room.on("track_subscribed", lambda t, pub, who: heard.put_nowait((t, who)))
        media = f'<exec rtp_stream="{tone},1,0" />'
        call = asyncio.create_task(
            asyncio.to_thread(
                sipp_call, srv, tmp_path, "call_caller_hangs_up", media=media, hold_ms=4000
            )
        )
        try:
            track, who = await heard_during(heard, call)
            rms, pitch, _ = await listen(track, seconds=1.5)
            during = dict(who.attributes)
            ok(await call)
            return who, during, rms, pitch
        finally:
            await room.disconnect()

    who, attrs, rms, pitch = run(main)
    assert abs(pitch - 440.0) < 5, pitch
    assert rms > 3000, rms
    assert who.identity == f"sip_{CALLER}" and who.name == f"Phone {CALLER}"
    assert who.kind == rtc.ParticipantKind.PARTICIPANT_KIND_SIP
    assert who.metadata == "from the rule"
    assert attrs["team"] == "support" and attrs["sip.phoneNumber"] == CALLER
    assert attrs["sip.callStatus"] == "active"
    assert who.attributes["sip.callStatus"] == "hangup"  # as it left
    assert attrs["sip.callID"] and attrs["sip.trunkID"] and attrs["sip.ruleID"]


def test_the_caller_hears_the_room(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """A participant's 660 Hz goes to the caller as G.711 on the shared
    clock; sipp echoes it back (-rtp_echo), and it returns into the room."""
    srv = serve(start_server)
    add_rule(srv)

    async def main() -> tuple[float, float]:
        room, _ = await joined(srv, token("speaker", ROOM), True)
        heard: asyncio.Queue[rtc.Track] = asyncio.Queue()
        room.on("track_subscribed", lambda t, pub, who: heard.put_nowait(t))
        player = await publish_tone(room, 660.0)
        call = asyncio.create_task(
            asyncio.to_thread(
                sipp_call, srv, tmp_path, "call_caller_hangs_up", "-rtp_echo", hold_ms=4000
            )
        )
        try:
            track = await heard_during(heard, call)
            rms, pitch, _ = await listen(track, seconds=1.5)
            ok(await call)
            return rms, pitch
        finally:
            player.cancel()
            await room.disconnect()

    rms, pitch = run(main)
    assert abs(pitch - 660.0) < 5, pitch
    assert rms > 2000, rms


def test_the_caller_receives_the_rooms_audio_as_g711(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """The caller's SDP points at a socket of the test: what arrives there
    is PCMU every 20 ms carrying a participant's 660 Hz."""
    srv = serve(start_server)
    add_rule(srv)
    phone, port = phone_socket(5)

    def receive(seconds: float) -> list[RtpPacket]:
        got: list[RtpPacket] = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            got.append(parse_rtp(phone.recv(2048)))
        return got

    async def main() -> list[RtpPacket]:
        room, _ = await joined(srv, token("speaker", ROOM), True)
        player = await publish_tone(room, 660.0)
        call = asyncio.create_task(
            asyncio.to_thread(
                sipp_call, srv, tmp_path, "call_caller_hangs_up", hold_ms=4000, rtp_port=port
            )
        )
        try:
            packets = await asyncio.to_thread(receive, 3.5)
            ok(await call)
            return packets
        finally:
            player.cancel()
            await room.disconnect()
            phone.close()

    packets = run(main)
    assert {p.payload_type for p in packets} == {0}
    assert all(len(p.payload) == 160 for p in packets)
    assert len(packets) >= 150  # 3.5 s at 50 a second, from the answer on
    last = packets[-50:]  # the last second
    assert [p.sequence - last[0].sequence for p in last] == list(range(50))
    samples = np.frombuffer(decode("PCMU", b"".join(p.payload for p in last)), dtype=np.int16)
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    assert abs(np.argmax(spectrum) * 8000 / len(samples) - 660.0) < 5
    assert np.sqrt(np.mean(samples.astype(np.float64) ** 2)) > 3000


def test_no_audio_goes_to_the_caller_before_its_ack(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """The caller ACKs the 200 only 1.5 s after it: nothing reaches the
    address its SDP gave until then (a forged INVITE, never ACKed, cannot
    turn our RTP on another host), and the audio flows once it has."""
    srv = serve(start_server)
    add_rule(srv)
    phone, port = phone_socket(0.2)
    started = time.monotonic()
    call = threading_call(
        lambda: sipp_call(
            srv, tmp_path, "call_caller_hangs_up", hold_ms=2000, rtp_port=port, ack_after_ms=1500
        )
    )
    arrivals: list[float] = []
    end = started + 3.5
    try:
        while time.monotonic() < end:
            try:
                phone.recv(2048)
            except TimeoutError:
                continue
            arrivals.append(time.monotonic() - started)
    finally:
        phone.close()
    ok(call())
    assert arrivals, "no audio even after the ACK"
    assert arrivals[0] >= 1.5, arrivals[0]  # not before the ACK
    assert len(arrivals) >= 40  # 50 a second from then on


def phone_socket(timeout: float) -> tuple[socket.socket, int]:
    """A UDP socket of the test for a caller's SDP to name, and its port."""
    phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    phone.bind(("127.0.0.1", 0))
    phone.settimeout(timeout)
    return phone, phone.getsockname()[1]


def threading_call(fn: Callable[[], T]) -> Callable[[], T]:
    """``fn`` run in a thread now; the returned function waits for its result."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(fn)
    pool.shutdown(wait=False)
    return lambda: future.result(timeout=60)


def test_a_digit_pressed_reaches_the_room_as_sip_dtmf(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    srv = serve(start_server)
    add_rule(srv)

    async def main() -> list[tuple[int, str, str]]:
        room, _ = await joined(srv, token("listener", ROOM), True)
        got: list[tuple[int, str, str]] = []
        room.on(
            "sip_dtmf_received",
            lambda d: got.append((d.code, d.digit, d.participant.identity)),
        )
        try:
            ok(
                await asyncio.to_thread(
                    sipp_call,
                    srv,
                    tmp_path,
                    "call_caller_hangs_up",
                    media='<exec play_dtmf="5" />',
                    hold_ms=1500,
                )  # fmt: skip
            )
            await asyncio.sleep(0.3)
            return got
        finally:
            await room.disconnect()

    assert run(main) == [(5, "5", f"sip_{CALLER}")]


def test_a_digit_sent_by_sip_info_reaches_the_room(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    srv = serve(start_server)
    add_rule(srv)

    async def main() -> list[tuple[int, str]]:
        room, _ = await joined(srv, token("listener", ROOM), True)
        got: list[tuple[int, str]] = []
        room.on("sip_dtmf_received", lambda d: got.append((d.code, d.digit)))
        try:
            ok(await asyncio.to_thread(sipp_call, srv, tmp_path, "call_info_dtmf", hold_ms=500))
            await asyncio.sleep(0.3)
            return got
        finally:
            await room.disconnect()

    assert run(main) == [(9, "9")]


def test_the_rules_agent_is_dispatched_into_the_calls_room(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    srv = serve(start_server)
    add_rule(srv, agent="phone-bot")

    async def main() -> str:
        worker = FakeWorker(srv.url, "devkey", "secret", agent_name="phone-bot")
        await worker.connect()
        try:
            call = asyncio.create_task(
                asyncio.to_thread(sipp_call, srv, tmp_path, "call_caller_hangs_up", hold_ms=1500)
            )
            await worker.wait_for(lambda: bool(worker.assigned), timeout=10)
            ok(await call)
            (assignment,) = worker.assigned.values()
            return str(assignment.job.room.name)
        finally:
            await FakeWorker.close_all()

    assert run(main) == ROOM


def test_a_pin_rule_lets_the_right_pin_in_and_hangs_up_on_a_wrong_one(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    srv = serve(start_server)
    add_rule(srv, pin="4321")
    # A wrong PIN: the call was answered, and is hung up (BYE from us).
    ok(sipp_call(srv, tmp_path, "call_server_hangs_up", media='<exec play_dtmf="1234#" />'))

    async def main() -> api.ParticipantInfo:
        call = asyncio.create_task(
            asyncio.to_thread(
                sipp_call,
                srv,
                tmp_path,
                "call_caller_hangs_up",
                media='<exec play_dtmf="4321#" />',
                hold_ms=4000,
            )  # fmt: skip
        )
        async with api.LiveKitAPI(srv.url, "devkey", "secret") as lk:
            phone = await wait_for_phone(lk)
        ok(await call)
        return phone

    phone = run(main)
    assert phone.identity == f"sip_{CALLER}"


def test_a_participants_dtmf_is_played_to_the_caller(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """SipDTMF from a participant goes to the caller as RFC 4733 events;
    sipp echoes them (-rtp_echo) and they come back as sip_dtmf."""
    srv = serve(start_server)
    add_rule(srv)

    async def main() -> list[tuple[int, str]]:
        room, _ = await joined(srv, token("keypad", ROOM), True)
        got: list[tuple[int, str]] = []
        room.on("sip_dtmf_received", lambda d: got.append((d.code, d.digit)))
        call = asyncio.create_task(
            asyncio.to_thread(
                sipp_call, srv, tmp_path, "call_caller_hangs_up", "-rtp_echo", hold_ms=3000
            )
        )
        try:
            async with api.LiveKitAPI(srv.url, "devkey", "secret") as lk:
                await wait_for_phone(lk)
            await room.local_participant.publish_dtmf(code=7, digit="7")
            ok(await call)
            return got
        finally:
            await room.disconnect()

    assert run(main) == [(7, "7")]


def test_a_silent_call_and_a_long_call_are_hung_up(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    silent = serve(start_server, media_timeout=1.0)
    add_rule(silent)
    ok(sipp_call(silent, tmp_path, "call_server_hangs_up"))  # sipp sends no RTP
    long = serve(start_server, max_call_duration=1.5)
    add_rule(long)
    # Media flows (sipp echoes what we send), and the call still ends.
    ok(sipp_call(long, tmp_path, "call_server_hangs_up", "-rtp_echo"))


@pytest.mark.slow
def test_a_livekit_agents_agent_dispatched_by_the_rule_hears_the_caller(
    start_server: Callable[..., ServerThread], tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    """The user story: a phone call to the number reaches the rule's agent
    (an unmodified livekit-agents worker), which joins the call's room and
    hears the caller's 440 Hz tone (and says what it heard, over data)."""
    srv = serve(start_server)
    worker = py_worker(srv, tmp_path, "phone-agent", EDT_MODE="connect")
    workers.append(worker)
    worker.wait_registered()
    add_rule(srv, agent="phone-agent")
    tone = tone_file(tmp_path, 440.0, 12.0)

    async def main() -> dict[str, float]:
        watcher, _ = await joined(srv, token("watcher", ROOM), True)
        heard = record_data(watcher)
        media = f'<exec rtp_stream="{tone},1,0" />'
        call = asyncio.create_task(
            asyncio.to_thread(
                sipp_call, srv, tmp_path, "call_caller_hangs_up", media=media, hold_ms=12000
            )
        )
        try:
            await until(lambda: any(t == "heard" for _, _, t in heard), "the agent heard", 30)
            ok(await call)
        finally:
            await watcher.disconnect()
        (said,) = [json.loads(d) for _, d, t in heard if t == "heard"]
        return dict(said)

    try:
        said = run(main)
    except Exception:
        print(worker.tail())
        raise
    assert abs(said["peak"] - 440.0) < 5, said
    assert said["rms"] > 5000, said
    (record,) = worker.records()
    assert record["room"] == ROOM and record["agent_name"] == "phone-agent"


def test_a_call_to_a_full_room_is_refused_busy_and_leaves_nothing_behind(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    srv = serve(start_server)
    add_rule(srv)
    refused = tmp_path / "busy.xml"
    text = (SCENARIOS / "invite_refused.xml").read_text()
    refused.write_text(
        text.replace('<recv response="404" />', '<recv response="180" optional="true" />\n'
                     '  <recv response="486" />')
    )  # fmt: skip

    async def main() -> subprocess.CompletedProcess[str]:
        async with api.LiveKitAPI(srv.url, "devkey", "secret") as lk:
            await lk.room.create_room(api.CreateRoomRequest(name=ROOM, max_participants=1))
        room, _ = await joined(srv, token("only-one", ROOM), True)
        try:
            return await asyncio.to_thread(
                subprocess.run,
                ["sipp", f"127.0.0.1:{srv.server.sip_port}", "-sf", str(refused), "-s", NUMBER,
                 "-m", "1", "-i", "127.0.0.1", "-p", str(free_port(udp_too=True)), "-nostdin",
                 "-timeout", "15s", "-timeout_error"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
        finally:
            await room.disconnect()

    ok(run(main))
    endpoint = srv.server.sip_endpoint
    assert endpoint is not None and endpoint.uas is not None
    assert srv.call(lambda: len(endpoint.uas.calls)) == 0  # type: ignore[union-attr]


def test_a_trunks_custom_headers_become_attributes_and_go_back_in_the_answer(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """The inbound trunk maps the caller's X-Customer-Id to an attribute
    and passes X- headers on (``include_headers``); its answer carries its
    own header and the participant's "team" attribute as X-Team (sipp
    checks both in the 200)."""
    srv = serve(start_server)
    add_rule(
        srv, headers={"X-Site": "paris"}, headers_to_attributes={"X-Customer-Id": "customer"},
        attributes_to_headers={"team": "X-Team"}, include_headers=pb.SIP_X_HEADERS,
    )  # fmt: skip

    async def main() -> dict[str, str]:
        room, _ = await joined(srv, token("agent-like", ROOM), True)
        seen: asyncio.Queue[rtc.RemoteParticipant] = asyncio.Queue()
        room.on("participant_connected", seen.put_nowait)
        call = asyncio.create_task(
            asyncio.to_thread(sipp_call, srv, tmp_path, "call_custom_headers", hold_ms=1500)
        )
        try:
            who = await asyncio.wait_for(seen.get(), 20)
            attrs = dict(who.attributes)
            ok(await call)
            return attrs
        finally:
            await room.disconnect()

    attrs = run(main)
    assert attrs["customer"] == "42" and attrs["sip.h.x-customer-id"] == "42"
    assert not any(k.startswith("sip.h.") and not k.startswith("sip.h.x-") for k in attrs)
    assert attrs["sip.callIDFull"] == attrs["sip.callID"] and attrs["sip.callTag"]
