"""Media worker processes, seen from the server: rooms' peer connections
run there, so that SRTP, SCTP and ICE never take the dispatch loop's time.

``MediaPool`` is the rooms' media factory: each participant gets a
``MediaProxy`` whose commands go to the worker that holds its room (a room
lives wholly in one worker, so that audio is forwarded inside it), and
whose events come back to its signal session.  Workers start with the first
room (importing aiortc takes ~0.5 s of CPU, which a server that never hosts
a room should not pay), one per CPU by default, and a room goes to the
worker with the fewest participants.  A worker that dies fails its
participants' media: their SDKs rejoin, on a new worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
from typing import Any, Protocol

import msgspec
from google.protobuf.message import DecodeError
from livekit.protocol import models

from edgedispatch.config import RtcConfig
from edgedispatch.net.media_link import CONFIG_ENV, FD_ENV, LOG_ENV, MediaLink
from edgedispatch.obs import logs

log = logging.getLogger("edgedispatch.media")


class Session(Protocol):
    """The signal session's side (``rtc.session.SignalSession``)."""

    @property
    def single_pc(self) -> bool: ...

    @property
    def room_key(self) -> tuple[str, str]: ...

    def fields(self) -> dict[str, object]: ...

    def on_answer(self, sdp: str, offer_id: int, mid_to_track: dict[str, str]) -> None: ...

    def on_data(self, payload: bytes, kind: int, now: float) -> None: ...

    def on_track_received(self, track_sid: str, mid: str) -> None: ...

    def on_track_unpublished(self, track_sid: str) -> None: ...

    def request_offer(self, num_audios: int, num_videos: int) -> None: ...

    def on_offer(self, sdp: str, offer_id: int) -> None: ...

    def on_media_failed(self, why: str, now: float) -> None: ...

    def on_offer_refused(self, offer_id: int, why: str) -> None: ...


class CallEvents(Protocol):
    """A phone call's side (``calls.bridge``): its media's news."""

    def on_rtp_ready(self, port: int, now: float) -> None: ...

    def on_digit(self, digit: str, now: float) -> None: ...

    def on_media_end(self, why: str, now: float) -> None: ...

    def fields(self) -> dict[str, object]:
        """The ``extra`` of a log line about this call (``obs.logs``)."""
        ...


class WorkerProcess:
    def __init__(self, pool: MediaPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.proxies: dict[int, MediaProxy] = {}
        self.alive = True
        self.pid = 0
        #: Packets received and forwarded since it started, as it last said.
        self.totals = (0, 0)
        self._stats: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.link = MediaLink(self._on_frame, self._on_lost)
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {
            **os.environ,
            FD_ENV: str(child.fileno()),
            CONFIG_ENV: msgspec.json.encode(pool.cfg).decode(),
            LOG_ENV: ",".join(logs.settings()),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgedispatch.net.media_worker"],
            pass_fds=(child.fileno(),),
            env=env,
            stdin=subprocess.DEVNULL,
        )
        child.close()
        loop = asyncio.get_running_loop()
        self._connecting = loop.create_task(loop.connect_accepted_socket(lambda: self.link, parent))

    def _on_frame(self, frame: list[Any]) -> None:
        op, *args = frame
        if op == "ready":
            self.pid = args[0]
            log.info("media worker %d ready (pid %d)", self.index, self.pid)
            return
        if op == "totals":
            self.totals = (int(args[0]), int(args[1]))
            return
        if op == "stats":
            future = self._stats.pop(args[0], None)
            if future is not None and not future.done():
                future.set_result(args[1])
            return
        proxy = self.proxies.get(args[0])
        if proxy is None or proxy.closed:
            return
        if isinstance(proxy, CallProxy) and proxy.on_call_frame(op, args):
            return
        session, now = proxy.session, asyncio.get_running_loop().time()
        if session is None:
            return
        if op == "answer":
            session.on_answer(args[1], args[2], args[3])
        elif op == "data":
            session.on_data(args[1], args[2], now)
        elif op == "track":
            session.on_track_received(args[1], args[2])
        elif op == "gone":
            session.on_track_unpublished(args[1])
        elif op == "need":
            session.request_offer(args[1], args[2])
        elif op == "offer":
            session.on_offer(args[1], args[2])
        elif op == "failed":
            session.on_media_failed(args[1], now)
        elif op == "refused":
            session.on_offer_refused(args[1], args[2])

    def _on_lost(self) -> None:
        if not self.alive:
            return
        self.alive = False
        # Reap it (it exits as its end of the link closes, or was killed).
        asyncio.get_running_loop().run_in_executor(None, self.proc.wait)
        self.pool.lost(self)
        now = asyncio.get_running_loop().time()
        for proxy in list(self.proxies.values()):
            if isinstance(proxy, CallProxy):
                proxy.on_call_frame("sip_end", [proxy.peer, "the media worker exited"])
            elif not proxy.closed and proxy.session is not None:
                proxy.session.on_media_failed("the media worker exited", now)

    async def stats(self, request: int) -> dict[str, Any]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._stats[request] = future
        self.link.send("stats", request)
        return await asyncio.wait_for(future, 5)

    async def stop(self) -> None:
        self.alive = False
        self.link.close()
        try:
            await asyncio.wait_for(asyncio.to_thread(self.proc.wait), 5)
        except TimeoutError:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait)


class MediaProxy:
    """A participant's media, in a worker (``rtc.session.Media``)."""

    def __init__(
        self, worker: WorkerProcess, peer: int, session: Session | None, room: tuple[str, str]
    ) -> None:
        self.worker = worker
        self.peer = peer
        self.session = session
        self.room = room
        self.closed = False
        worker.proxies[peer] = self
        if session is not None:
            worker.link.send("open", peer, session.single_pc, session.fields())

    def _send(self, *frame: Any) -> None:
        if not self.closed and self.worker.alive:
            self.worker.link.send(*frame)

    def negotiate(self, sdp: str, offer_id: int, target: int) -> None:
        self._send("negotiate", self.peer, sdp, offer_id, target)

    def add_candidate(self, candidate_init: str, target: int) -> None:
        self._send("candidate", self.peer, candidate_init, target)

    def send_data(self, packet: bytes, kind: int) -> None:
        self._send("data", self.peer, packet, kind)

    def expect_track(self, cid: str, track_sid: str, kind: str) -> None:
        self._send("expect", self.peer, cid, track_sid, kind)

    def subscribe(self, track_sid: str, publisher: object, stream_id: str) -> None:
        if isinstance(publisher, MediaProxy) and publisher.worker is self.worker:
            self._send("subscribe", self.peer, track_sid, publisher.peer, stream_id)

    def unsubscribe(self, track_sid: str) -> None:
        self._send("unsubscribe", self.peer, track_sid)

    def set_answer(self, sdp: str) -> None:
        self._send("answer", self.peer, sdp)

    def close(self) -> None:
        if not self.closed:
            self._send("close", self.peer)
            self.closed = True
            self.worker.proxies.pop(self.peer, None)
            self.worker.pool.released(self)


class CallProxy(MediaProxy):
    """A phone call's media, in the worker of its room (``net.sip_media``):
    its RTP socket opens at once; its participant (``attach``) once the
    call joins the room."""

    def __init__(
        self,
        worker: WorkerProcess,
        peer: int,
        room: tuple[str, str],
        spec: dict[str, Any],
        bind: str,
        events: CallEvents,
    ) -> None:
        super().__init__(worker, peer, None, room)
        self.events = events
        worker.link.send("sip_open", peer, spec, bind, events.fields())

    def attach(self, session: Session) -> MediaProxy:
        """The media of the call's participant (``rtc.room`` MediaFactory)."""
        self.session = session
        return self

    def set_remote(self, spec: dict[str, Any]) -> None:
        """A placed call's answer: where the callee wants its audio, and in
        which codec (``remote``, ``codec``, ``pt``, ``dtmf_pt``)."""
        self._send("sip_remote", self.peer, spec)

    def ring_caller(self, on: bool) -> None:
        """The ringing tone to the caller in place of the room (a transfer)."""
        self._send("sip_ring", self.peer, on)

    def confirm(self) -> None:
        """The caller's ACK: its audio may go out (``CallMedia.confirm``)."""
        self._send("sip_confirm", self.peer)

    def on_call_frame(self, op: str, args: list[Any]) -> bool:
        """A call's own event; False for a participant's (``track``...)."""
        now = asyncio.get_running_loop().time()
        if op == "sip_ready":
            self.events.on_rtp_ready(int(args[1]), now)
        elif op == "sip_digit":
            self.events.on_digit(str(args[1]), now)
        elif op == "sip_end":
            self.events.on_media_end(str(args[1]), now)
        else:
            return False
        return True

    def send_data(self, packet: bytes, kind: int) -> None:
        """A participant's SipDTMF packet is played to the caller as
        RFC 4733 events; other data has nowhere to go on a phone line."""
        try:
            data = models.DataPacket.FromString(packet)
        except DecodeError:
            return
        if data.HasField("sip_dtmf"):
            digit = data.sip_dtmf.digit or DTMF_CODES.get(data.sip_dtmf.code, "")
            for key in digit:
                self._send("sip_digit", self.peer, key)


#: SipDTMF.code -> its key (RFC 4733 §3.2), for a packet without ``digit``.
DTMF_CODES = dict(enumerate("0123456789*#ABCD"))


class MediaPool:
    """:param workers: processes to run; 0 or less: one per CPU."""

    def __init__(self, cfg: RtcConfig, workers: int) -> None:
        self.cfg = cfg
        self.size = workers if workers > 0 else max(1, len(os.sched_getaffinity(0)))
        self.workers: list[WorkerProcess | None] = [None] * self.size
        self._rooms: dict[tuple[str, str], WorkerProcess] = {}
        self._room_peers: dict[tuple[str, str], int] = {}
        self._next_peer = 0
        self._requests = 0
        #: The packet totals of workers that exited (their last report).
        self._retired = (0, 0)

    def packet_totals(self) -> tuple[int, int]:
        """Packets received from publishers, and forwarded to subscribers,
        by every worker so far, as of their last reports (``/metrics``)."""
        received, forwarded = self._retired
        for worker in self.workers:
            if worker is not None:
                received, forwarded = received + worker.totals[0], forwarded + worker.totals[1]
        return received, forwarded

    def __call__(self, session: Session) -> MediaProxy:
        key = session.room_key
        worker = self._rooms.get(key)
        if worker is None or not worker.alive:
            worker = self._rooms[key] = self._least_busy()
        self._room_peers[key] = self._room_peers.get(key, 0) + 1
        self._next_peer += 1
        return MediaProxy(worker, self._next_peer, session, key)

    def open_call(
        self, room: tuple[str, str], spec: dict[str, Any], bind: str, events: CallEvents
    ) -> CallProxy:
        """A phone call's media, in the worker that holds ``room`` (or will)."""
        worker = self._rooms.get(room)
        if worker is None or not worker.alive:
            worker = self._rooms[room] = self._least_busy()
        self._room_peers[room] = self._room_peers.get(room, 0) + 1
        self._next_peer += 1
        return CallProxy(worker, self._next_peer, room, spec, bind, events)

    def _least_busy(self) -> WorkerProcess:
        for i, worker in enumerate(self.workers):
            if worker is None or not worker.alive:
                self.workers[i] = WorkerProcess(self, i)
        alive = [w for w in self.workers if w is not None]
        return min(alive, key=lambda w: len(w.proxies))

    def released(self, proxy: MediaProxy) -> None:
        key = proxy.room
        left = self._room_peers.get(key, 1) - 1
        if left > 0:
            self._room_peers[key] = left
        else:
            self._room_peers.pop(key, None)
            self._rooms.pop(key, None)

    def lost(self, worker: WorkerProcess) -> None:
        log.error("media worker %d (pid %d) exited", worker.index, worker.proc.pid)
        self._retired = (
            self._retired[0] + worker.totals[0], self._retired[1] + worker.totals[1]
        )  # fmt: skip
        worker.totals = (0, 0)  # counted once, though it stays in the list until replaced
        for key in [k for k, w in self._rooms.items() if w is worker]:
            del self._rooms[key]

    async def stats(self) -> list[tuple[int, int]]:
        """(packets received, packets lost) of every published track."""
        found: list[tuple[int, int]] = []
        for worker in self.workers:
            if worker is not None and worker.alive:
                self._requests += 1
                per_peer = await worker.stats(self._requests)
                for tracks in per_peer.values():
                    found += [(int(v[0]), int(v[1])) for v in tracks.values()]
        return found

    async def close(self) -> None:
        for worker in self.workers:
            if worker is not None:
                await worker.stop()
