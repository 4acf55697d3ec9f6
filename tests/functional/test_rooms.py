"""Rooms with the unmodified ``livekit`` rtc SDK (the version livekit-agents
1.8.9 pins), in both signalling modes: /rtc/v1 (one peer connection, the
SDK's default) and /rtc (two)."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from livekit import api, rtc
from livekit.protocol import agent_dispatch
from livekit.protocol import room as room_pb
from livekit.protocol import rtc as lk_rtc
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from edgedispatch import sched
from edgedispatch.net.media_pool import MediaPool

from .clients import WorkerProcess, node_worker, py_worker
from .conftest import ServerThread
from .test_local_agents import AGENTS, writable
from .test_metrics_page import scrape
from .test_real_clients import needs_node, wait_until
from .tones import AMPLITUDE, listen, publish_tone

pytestmark = [pytest.mark.slow, pytest.mark.media]
MODES = {"v1": True, "v0": False}


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.close()


def token(
    identity: str,
    room: str = "r1",
    *,
    key: str = "devkey",
    secret: str = "secret",
    config: room_pb.RoomConfiguration | None = None,
    kind: str = "standard",
    **grants: Any,
) -> str:
    grants.setdefault("can_update_own_metadata", True)
    t = (
        api.AccessToken(key, secret)
        .with_identity(identity)
        .with_kind(kind)  # type: ignore[arg-type]
        .with_grants(api.VideoGrants(room_join=True, room=room, **grants))
    )
    if config is not None:
        t = t.with_room_config(config)
    return t.to_jwt()


async def joined(
    srv: ServerThread, jwt: str, single_pc: bool, **attrs: str
) -> tuple[rtc.Room, float]:
    room = rtc.Room()
    start = time.perf_counter()
    await room.connect(srv.ws_url, jwt, rtc.RoomOptions(single_peer_connection=single_pc))
    return room, time.perf_counter() - start


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(main(), 60))


def record_data(room: rtc.Room) -> list[tuple[str | None, bytes, str]]:
    """What ``room`` receives over data, as (sender identity, payload, topic)."""
    got: list[tuple[str | None, bytes, str]] = []
    room.on(
        "data_received",
        lambda p: got.append((p.participant.identity if p.participant else None, p.data, p.topic)),
    )
    return got


async def until(predicate: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.mark.all_loops
@pytest.mark.parametrize("mode", MODES)
def test_two_clients_see_each_other_and_exchange_data(
    start_server: Callable[..., ServerThread], mode: str
) -> None:
    srv = start_server()
    single = MODES[mode]

    async def main() -> None:
        alice_jwt = (
            api.AccessToken("devkey", "secret")
            .with_identity("alice")
            .with_name("Alice")
            .with_metadata('{"plan":"gold"}')
            .with_attributes({"lang": "fr"})
            .with_grants(api.VideoGrants(room_join=True, room="r1", can_update_own_metadata=True))
            .to_jwt()
        )
        alice, took = await joined(srv, alice_jwt, single)
        assert took < 5
        bob, _ = await joined(srv, token("bob"), single)
        carol, _ = await joined(srv, token("carol"), single)
        try:
            assert (await alice.sid).startswith("RM_")
            # Presence, with what the token said.
            seen = bob.remote_participants["alice"]
            assert (seen.name, seen.metadata, dict(seen.attributes)) == (
                "Alice",
                '{"plan":"gold"}',
                {"lang": "fr"},
            )
            assert seen.sid.startswith("PA_")
            await until(
                lambda: set(alice.remote_participants) == {"bob", "carol"}, "alice sees both"
            )

            got = {"bob": record_data(bob), "carol": record_data(carol)}
            await alice.local_participant.publish_data(b"to all", topic="chat")
            await alice.local_participant.publish_data(
                b"to carol", topic="dm", destination_identities=["carol"]
            )
            await alice.local_participant.publish_data(b"lossy", reliable=False, topic="t")
            await until(lambda: len(got["carol"]) >= 2 and len(got["bob"]) >= 1, f"the data {got}")
            await asyncio.sleep(0.3)
            assert ("alice", b"to all", "chat") in got["bob"]
            assert ("alice", b"to carol", "dm") in got["carol"]
            assert all(data != b"to carol" for _, data, _ in got["bob"])

            # Attributes and metadata, as livekit-agents sets them.
            await alice.local_participant.set_attributes({"lk.agent.state": "listening"})
            await alice.local_participant.set_metadata("updated")
            await until(
                lambda: (
                    bob.remote_participants["alice"].metadata == "updated"
                    and bob.remote_participants["alice"].attributes.get("lk.agent.state")
                    == "listening"
                ),
                "the update to reach bob",
            )
            # Leaving is seen by the others.
            await carol.disconnect()
            await until(lambda: "carol" not in alice.remote_participants, "carol's leave")
        finally:
            for room in (alice, bob, carol):
                await room.disconnect()

    run(main)
    assert srv.call(lambda: srv.domain.rooms.find("", "r1")) is not None  # departure timeout


def upgrade_status(url: str) -> int:
    """The HTTP status a WebSocket upgrade to ``url`` gets."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=5)
    try:
        conn.request(
            "GET",
            f"{parts.path}?{parts.query}" if parts.query else parts.path,
            headers={
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
        )
        return conn.getresponse().status
    finally:
        conn.close()


def test_bad_tokens_are_refused_at_the_upgrade(start_server: Callable[..., ServerThread]) -> None:
    srv = start_server()
    base = srv.ws_url
    bad = token("eve", secret="not-the-secret")
    no_join = api.AccessToken("devkey", "secret").with_identity("eve").to_jwt()
    cases = [
        (f"{base}/rtc?access_token={bad}", 401),
        (f"{base}/rtc?access_token=garbage", 401),
        (f"{base}/rtc", 401),
        (f"{base}/rtc?access_token={no_join}", 403),
        (f"{base}/rtc?access_token={token('eve', room='r1')}&room=other", 403),
    ]
    for url, status in cases:
        assert upgrade_status(url) == status, url

    # The SDK reports it as a failed connect, not a hang.
    async def connect_bad() -> None:
        await rtc.Room().connect(srv.ws_url, bad)

    with pytest.raises(rtc.ConnectError):
        run(connect_bad)
    # And the validate endpoints say why.
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{srv.url}/rtc/v1/validate?access_token={bad}", timeout=5)
    assert err.value.code == 401
    err.value.close()
    with urllib.request.urlopen(f"{srv.url}/rtc/validate?access_token={token('eve')}") as ok:
        assert ok.status == 200


def test_a_duplicate_identity_takes_over(start_server: Callable[..., ServerThread]) -> None:
    srv = start_server()

    async def main() -> None:
        first, _ = await joined(srv, token("alice"), True)
        gone = asyncio.get_running_loop().create_future()
        first.on("disconnected", lambda reason: gone.done() or gone.set_result(reason))
        second, _ = await joined(srv, token("alice"), True)
        try:
            reason = await asyncio.wait_for(gone, 10)
            assert reason == rtc.DisconnectReason.DUPLICATE_IDENTITY
            assert second.connection_state == rtc.ConnectionState.CONN_CONNECTED
        finally:
            await first.disconnect()
            await second.disconnect()

    run(main)


def test_the_room_closes_after_the_last_person_leaves(
    start_server: Callable[..., ServerThread],
) -> None:
    srv = start_server(room={"departure_timeout": 1})

    async def main() -> None:
        watcher, _ = await joined(srv, token("agent-x", kind="agent"), True)
        user, _ = await joined(srv, token("user"), True)
        closed = asyncio.get_running_loop().create_future()
        watcher.on("disconnected", lambda reason: closed.done() or closed.set_result(reason))
        await user.disconnect()
        # Agents never keep a room open.
        reason = await asyncio.wait_for(closed, 10)
        assert reason == rtc.DisconnectReason.ROOM_CLOSED
        await watcher.disconnect()

    run(main)
    assert srv.call(lambda: srv.domain.rooms.find("", "r1")) is None


def test_a_token_s_agents_are_dispatched_into_new_and_existing_rooms(
    start_server: Callable[..., ServerThread],
) -> None:
    srv = start_server()
    support = room_pb.RoomConfiguration(
        agents=[agent_dispatch.RoomAgentDispatch(agent_name="support", metadata="vip")]
    )

    async def main() -> None:
        first, _ = await joined(srv, token("first"), True)
        second, _ = await joined(srv, token("second", config=support), True)
        await first.disconnect()
        await second.disconnect()

    run(main)
    dispatches = srv.call(lambda: srv.domain.rooms.list_dispatch("", "r1"))
    assert [(d.agent_name, d.metadata) for d in dispatches] == [("support", "vip")]


@pytest.mark.all_loops
@pytest.mark.parametrize("mode", MODES)
def test_a_tone_is_forwarded_untouched(
    start_server: Callable[..., ServerThread], mode: str
) -> None:
    """One participant publishes a 440 Hz tone; another hears it with its
    level and pitch intact, and the server lost no packet on the way (it
    forwards the Opus packets it gets: it never decodes or re-encodes)."""
    srv = start_server()

    def server_stats() -> list[tuple[int, int]]:
        """(received, lost) per published track, from the media workers."""
        media = srv.server._media
        assert media is not None
        return asyncio.run_coroutine_threadsafe(media.stats(), srv.loop).result(10)

    async def main() -> tuple[float, float, int, list[tuple[int, int]]]:
        listener, _ = await joined(srv, token("listener"), MODES[mode])
        speaker, _ = await joined(srv, token("speaker"), MODES[mode])
        heard: asyncio.Future[rtc.Track] = asyncio.get_running_loop().create_future()
        listener.on("track_subscribed", lambda t, pub, who: heard.done() or heard.set_result(t))
        player = await publish_tone(speaker, 440.0)
        try:
            track = await asyncio.wait_for(heard, 10)
            rms, peak, frames = await listen(track, seconds=2.0)
            return rms, peak, frames, server_stats()
        finally:
            player.cancel()
            await speaker.disconnect()
            await listener.disconnect()

    rms, peak, frames, stats = run(main)
    assert frames >= 190  # 10 ms frames over 2 s
    assert abs(rms - AMPLITUDE / 2**0.5) / (AMPLITUDE / 2**0.5) < 0.05, rms
    assert abs(peak - 440.0) < 5, peak
    ((received, lost),) = stats  # the one published track
    assert received >= 100 and lost == 0, stats  # 20 ms packets over 2 s and more
    # An operator reads the same on /metrics (the workers report each second;
    # the listener's copy of each packet counts once as forwarded).
    deadline = time.monotonic() + 10
    while True:
        got = scrape(srv.url)
        forwarded = got.get(("edgedispatch_media_packets_forwarded_total", ()), 0)
        if forwarded >= 100 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert got["edgedispatch_media_packets_received_total", ()] >= received
    assert received * 0.9 <= forwarded <= got["edgedispatch_media_packets_received_total", ()]


@pytest.mark.parametrize("dispatch", ["token", "automatic"])
def test_a_livekit_agents_worker_joins_the_room_and_talks_with_the_user(
    start_server: Callable[..., ServerThread],
    tmp_path: Path,
    workers: list[WorkerProcess],
    dispatch: str,
) -> None:
    """The user story: a user joins, the agent is dispatched (by the user's
    token, or automatically to a worker without an agent name), joins with
    ``ctx.connect()``, greets, answers, and its job ends when the room
    closes after the user left."""
    srv = start_server(room={"departure_timeout": 1})
    agent_name = "test-agent" if dispatch == "token" else ""
    worker = py_worker(srv, tmp_path, agent_name, EDT_MODE="connect")
    workers.append(worker)
    worker.wait_registered()
    config = (
        room_pb.RoomConfiguration(agents=[agent_dispatch.RoomAgentDispatch(agent_name=agent_name)])
        if dispatch == "token"
        else None
    )

    async def main() -> None:
        user = rtc.Room()
        heard = record_data(user)
        await user.connect(srv.ws_url, token("user", config=config))
        await until(lambda: any(t == "greeting" for _, _, t in heard), "the agent's greeting", 60)
        (agent,) = user.remote_participants.values()
        assert agent.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        assert heard[0] == (agent.identity, b"hello", "greeting")  # its sender known
        await user.local_participant.publish_data(b"?", topic="ping")
        await until(lambda: any(t == "pong" for _, _, t in heard), "the agent's answer")
        assert (agent.identity, b"pong user", "pong") in heard
        # The agent hears the user's tone, and says what it heard.
        player = await publish_tone(user, 440.0)
        try:
            await until(lambda: any(t == "heard" for _, _, t in heard), "what the agent heard", 30)
        finally:
            player.cancel()
        (said,) = [json.loads(d) for _, d, t in heard if t == "heard"]
        assert abs(said["peak"] - 440.0) < 5, said
        assert abs(said["rms"] - AMPLITUDE / 2**0.5) / (AMPLITUDE / 2**0.5) < 0.05, said
        await user.disconnect()

    try:
        run(main)
    except Exception:
        print(worker.tail())
        raise
    (record,) = worker.records()
    left = worker.wait_for_file(f"{record['job_id']}.left")
    assert "ROOM_CLOSED" in left.read_text() or left.read_text()
    wait_until(
        lambda: srv.call(lambda: srv.domain.rooms.find("", "r1")) is None, what="the room to close"
    )


def test_room_service_acts_on_the_people_in_the_room(
    start_server: Callable[..., ServerThread],
) -> None:
    """ListParticipants, GetParticipant, UpdateParticipant, SendData,
    MutePublishedTrack and RemoveParticipant through livekit-api, seen by
    the rtc SDK's participants."""
    srv = start_server()

    async def main() -> None:
        alice, _ = await joined(srv, token("alice"), True)
        bob, _ = await joined(srv, token("bob"), True)
        got = record_data(bob)
        removed = asyncio.get_running_loop().create_future()
        bob.on("disconnected", lambda reason: removed.done() or removed.set_result(reason))
        player = await publish_tone(alice, 440.0)
        async with api.LiveKitAPI(srv.url, "devkey", "secret") as lk:
            listed = await lk.room.list_participants(api.ListParticipantsRequest(room="r1"))
            assert sorted(p.identity for p in listed.participants) == ["alice", "bob"]
            await until(
                lambda: bool(bob.remote_participants["alice"].track_publications), "the track"
            )
            info = await lk.room.get_participant(
                api.RoomParticipantIdentity(room="r1", identity="alice")
            )
            (track,) = info.tracks
            assert info.sid.startswith("PA_") and track.sid.startswith("TR_")

            await lk.room.update_participant(
                api.UpdateParticipantRequest(
                    room="r1", identity="alice", metadata="vip", attributes={"tier": "1"}
                )
            )
            # The SDK applies metadata and attributes as two events: wait for both.
            await until(
                lambda: (
                    bob.remote_participants["alice"].metadata == "vip"
                    and bob.remote_participants["alice"].attributes.get("tier") == "1"
                    and alice.local_participant.metadata == "vip"
                ),  # its own view too
                "the update",
            )

            await lk.room.send_data(
                api.SendDataRequest(room="r1", data=b"from the server", kind=0, topic="ops")
            )
            await until(lambda: bool(got), "the server's data")
            assert got[0] == (None, b"from the server", "ops")  # no sender, as LiveKit

            await lk.room.mute_published_track(
                api.MuteRoomTrackRequest(
                    room="r1", identity="alice", track_sid=track.sid, muted=True
                )
            )
            await until(
                lambda: bob.remote_participants["alice"].track_publications[track.sid].muted,
                "the mute",
            )

            await lk.room.remove_participant(api.RoomParticipantIdentity(room="r1", identity="bob"))
            reason = await asyncio.wait_for(removed, 10)
            assert reason == rtc.DisconnectReason.PARTICIPANT_REMOVED
            await until(lambda: "bob" not in alice.remote_participants, "bob's removal")
            with pytest.raises(api.TwirpError) as err:
                await lk.room.get_participant(
                    api.RoomParticipantIdentity(room="r1", identity="bob")
                )
            assert err.value.code == "not_found"
        player.cancel()
        await alice.disconnect()
        await bob.disconnect()

    run(main)


def test_a_native_agent_joins_its_room_with_ctx_connect(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    """edgedispatch's own native agent: ``await ctx.connect()`` joins the
    job's room through the rtc SDK, from its contained pool process."""
    definition = {
        "name": "native",
        "entrypoint": "native_agent:entrypoint",
        "env": {"EDT_OUT": str(tmp_path), "EDT_MODE": "connect", "PYTHONPATH": str(AGENTS)},
        "binds": [f"{writable(tmp_path)}:rw"],
    }
    srv = start_server(agents=[definition], room={"departure_timeout": 1})
    config = room_pb.RoomConfiguration(
        agents=[agent_dispatch.RoomAgentDispatch(agent_name="native")]
    )

    async def main() -> None:
        user = rtc.Room()
        heard = record_data(user)
        await user.connect(srv.ws_url, token("user", config=config))
        await until(lambda: bool(heard), "the native agent's greeting", 30)
        (agent,) = user.remote_participants.values()
        assert agent.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        assert heard[0][0] == agent.identity and heard[0][1].startswith(b"native AJ_")
        await user.disconnect()

    run(main)
    wait_until(lambda: bool(list(tmp_path.glob("*.left"))), what="the agent to see the room close")
    assert srv.call(lambda: srv.domain.rooms.find("", "r1")) is None


def test_a_listener_hears_a_speaker_who_left_and_came_back(
    start_server: Callable[..., ServerThread],
) -> None:
    """The listener's connection carried the first track; the second one
    must reach it too (on a fresh m-line: a reused one stays silent)."""
    srv = start_server()

    async def main() -> list[tuple[float, float, int]]:
        listener, _ = await joined(srv, token("listener"), True)
        heard: asyncio.Queue[rtc.Track] = asyncio.Queue()
        listener.on("track_subscribed", lambda t, pub, who: heard.put_nowait(t))
        results = []
        for freq in (440.0, 660.0):
            speaker, _ = await joined(srv, token("speaker"), True)
            player = await publish_tone(speaker, freq)
            track = await asyncio.wait_for(heard.get(), 10)
            results.append(await listen(track, seconds=1.0))
            player.cancel()
            await speaker.disconnect()
            await until(lambda: "speaker" not in listener.remote_participants, "the leave")
        await listener.disconnect()
        return results

    first, second = run(main)
    for (rms, peak, _), freq in ((first, 440.0), (second, 660.0)):
        assert abs(peak - freq) < 5 and rms > 0.9 * AMPLITUDE / 2**0.5, (rms, peak)


def test_bad_signal_input_ends_only_the_sender_s_session(
    start_server: Callable[..., ServerThread],
) -> None:
    """A malformed offer is answered with an error; garbage and oversize
    frames close that connection with a reason; the other participant goes
    on undisturbed."""
    srv = start_server(server={"max_message_size": 64 * 1024})

    def raw(identity: str) -> Any:
        return ws_connect(f"{srv.ws_url}/rtc?access_token={token(identity)}", open_timeout=5)

    def joined_raw(ws: Any) -> None:
        first = lk_rtc.SignalResponse.FromString(ws.recv(timeout=5))
        assert first.WhichOneof("message") == "join"

    def close_code(ws: Any) -> int:
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=5)
        assert closed.value.rcvd is not None
        return closed.value.rcvd.code

    async def main() -> None:
        bob, _ = await joined(srv, token("bob"), True)
        with raw("mallory") as ws:
            joined_raw(ws)
            offer = lk_rtc.SessionDescription(type="offer", sdp="v=0 this is not SDP", id=7)
            ws.send(lk_rtc.SignalRequest(offer=offer).SerializeToString())
            while True:
                msg = lk_rtc.SignalResponse.FromString(ws.recv(timeout=5))
                if msg.WhichOneof("message") == "request_response":
                    break
            assert msg.request_response.request_id == 7
            assert msg.request_response.reason == lk_rtc.RequestResponse.INVALID_REQUEST
            ws.send(b"\xff\x00 not protobuf")
            assert close_code(ws) == 1007
        with raw("mallory") as ws:
            joined_raw(ws)
            ws.send(b"\x00" * (65 * 1024))
            assert close_code(ws) == 1009
        # Bob was never disturbed: his connection works.
        await bob.local_participant.set_attributes({"still": "here"})
        assert bob.connection_state == rtc.ConnectionState.CONN_CONNECTED
        await bob.disconnect()

    run(main)


def test_media_runs_in_worker_processes_and_survives_one_dying(
    start_server: Callable[..., ServerThread],
) -> None:
    """A room's peer connections live in one media worker process, not in
    the server's; if that worker dies, its participants are told to rejoin,
    the SDKs do, and the room works again on a new worker."""
    srv = start_server()

    async def main() -> None:
        alice, _ = await joined(srv, token("alice"), True)
        bob, _ = await joined(srv, token("bob"), True)
        pool = srv.server._media
        assert isinstance(pool, MediaPool)
        worker = pool._rooms["", "r1"]
        assert worker.proc.pid != os.getpid() and len(worker.proxies) == 2
        got: list[bytes] = []
        bob.on("data_received", lambda p: got.append(p.data))
        await alice.local_participant.publish_data(b"before")
        await until(lambda: got == [b"before"], "data before")
        worker.proc.kill()
        await until(lambda: not worker.alive, "the worker's death to be seen")
        # The SDKs rejoin on their own (the server said RECONNECT).
        await until(
            lambda: (
                srv.call(lambda: pool._rooms.get(("", "r1")) not in (None, worker))
                and srv.call(lambda: len(pool._rooms["", "r1"].proxies)) == 2
            ),
            "both to rejoin on a new worker",
            30,
        )
        await until(lambda: "alice" in bob.remote_participants, "bob to see alice again", 30)
        for _ in range(100):  # the data channels reopen a moment after the join
            await alice.local_participant.publish_data(b"after")
            await asyncio.sleep(0.1)
            if b"after" in got:
                break
        assert b"after" in got
        await alice.disconnect()
        await bob.disconnect()

    run(main)


@pytest.mark.skipif(not sched.supported(), reason="no custom slices before Linux 6.12")
def test_media_workers_ask_for_the_servers_scheduler_slice(
    start_server: Callable[..., ServerThread],
) -> None:
    """Their 20 ms send clocks wake to short work, as the server's loop
    does: ``server.sched_slice`` (``edgedispatch.sched``)."""
    srv = start_server()

    async def main() -> None:
        alice, _ = await joined(srv, token("alice"), True)
        pool = srv.server._media
        assert isinstance(pool, MediaPool)
        assert sched.slice_of(pool._rooms["", "r1"].proc.pid) == 500_000
        await alice.disconnect()

    run(main)


def test_unpublishing_a_track_is_seen_by_the_others(
    start_server: Callable[..., ServerThread],
) -> None:
    srv = start_server()

    async def main() -> None:
        listener, _ = await joined(srv, token("listener"), True)
        speaker, _ = await joined(srv, token("speaker"), True)
        unpublished: list[str] = []
        subscribed: list[str] = []
        listener.on("track_unpublished", lambda pub, who: unpublished.append(pub.sid))
        listener.on("track_subscribed", lambda track, pub, who: subscribed.append(pub.sid))
        player = await publish_tone(speaker, 440.0)
        await until(lambda: bool(subscribed), "the listener to receive the track")
        (sid,) = subscribed
        await speaker.local_participant.unpublish_track(sid)
        player.cancel()
        await until(lambda: unpublished == [sid], "the unpublish")
        assert not listener.remote_participants["speaker"].track_publications
        await speaker.disconnect()
        await listener.disconnect()

    run(main)


def _udp_ports(pid: int) -> set[int]:
    """The local ports of the UDP sockets process ``pid`` holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("udp", "udp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_media_uses_the_configured_udp_ports(start_server: Callable[..., ServerThread]) -> None:
    srv = start_server(rtc={"udp_ports": [41000, 41019]})

    async def main() -> set[int]:
        alice, _ = await joined(srv, token("alice"), True)
        bob, _ = await joined(srv, token("bob"), False)  # two connections
        pool = srv.server._media
        assert isinstance(pool, MediaPool)
        ports = _udp_ports(pool._rooms["", "r1"].proc.pid)
        await alice.disconnect()
        await bob.disconnect()
        return ports

    ports = run(main)
    assert ports and all(41000 <= p <= 41019 for p in ports), ports


@needs_node
def test_a_node_agents_worker_joins_the_room_and_greets_the_user(
    start_server: Callable[..., ServerThread], tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    """@livekit/agents (Node) with ctx.connect(): token dispatch on join."""
    srv = start_server(room={"departure_timeout": 1})
    worker = node_worker(srv, tmp_path, "node-agent", EDT_MODE="connect")
    workers.append(worker)
    worker.wait_registered()
    config = room_pb.RoomConfiguration(
        agents=[agent_dispatch.RoomAgentDispatch(agent_name="node-agent")]
    )

    async def main() -> None:
        user = rtc.Room()
        heard = record_data(user)
        await user.connect(srv.ws_url, token("user", config=config))
        await until(lambda: bool(heard), "the node agent's greeting", 60)
        (agent,) = user.remote_participants.values()
        assert agent.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        assert heard[0][0] == agent.identity and heard[0][1].startswith(b"hello from node AJ_")
        await user.disconnect()

    try:
        run(main)
    except Exception:
        print(worker.tail())
        raise
    wait_until(
        lambda: srv.call(lambda: srv.domain.rooms.find("", "r1")) is None, what="the room to close"
    )
