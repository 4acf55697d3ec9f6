"""WebRTC for the participants of live rooms, on aiortc: the only module
that imports aiortc (an optional extra: it brings FFmpeg through PyAV).

One ``PeerMedia`` per participant: its peer connection (v1's single one,
or v0's publisher connection), its data channels, and the results the
signal session waits for, fed back as ``on_answer`` / ``on_data`` /
``on_media_failed``.  aiortc's API is coroutines, so each participant's
negotiations run as one chain of tasks, in the order they were asked.

Why aiortc: rtc-signaling.md §2 (the SDKs join an aiortc server in both
modes, with data and audio); the private attributes used here are checked
at start-up by ``check_aiortc`` and pinned with the version.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import aioice.ice
import aiortc.codecs
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtpPacket
from aiortc.sdp import candidate_from_sdp
from av.packet import Packet

from edgedispatch.config import RtcConfig
from edgedispatch.errors import ConfigError
from edgedispatch.net.media_link import AIORTC_VERSION

log = logging.getLogger("edgedispatch.media")

#: SignalTarget: which of v0's two connections a trickle is for.
SUBSCRIBER = 1
#: DataPacket.Kind by the data channel labels the SDKs open.
CHANNEL_KINDS = {"_reliable": 0, "_lossy": 1}
#: Packets kept for a participant whose data channel is not open yet (its
#: connect() returns once ICE is up, a moment before the channels open);
#: beyond this the oldest go.
EARLY_PACKETS = 256


#: The receiver's jitter buffer, replaced by the tap (name-mangled private).
JITTER_BUFFER = "_RTCRtpReceiver__jitter_buffer"
#: Encoded packets a subscriber's track holds when its sender lags: anything
#: queued before the sender starts would leave as a burst, so few.
FORWARD_QUEUE = 5
OPUS_TIME_BASE = fractions.Fraction(1, 48000)


class MediaEvents(Protocol):
    """What a participant's signal session takes back (``rtc.session``)."""

    def on_answer(self, sdp: str, offer_id: int, mid_to_track: dict[str, str]) -> None: ...

    def on_track_received(self, track_sid: str, mid: str) -> None: ...

    def on_track_unpublished(self, track_sid: str) -> None:
        """The client's offer no longer sends a published track."""
        ...

    def request_offer(self, num_audios: int, num_videos: int) -> None: ...

    def on_offer(self, sdp: str, offer_id: int) -> None:
        """v0: the server's offer for the subscriber connection."""
        ...

    @property
    def single_pc(self) -> bool: ...

    def on_data(self, payload: bytes, kind: int, now: float) -> None: ...

    def on_media_failed(self, why: str, now: float) -> None: ...

    def on_offer_refused(self, offer_id: int, why: str) -> None:
        """The client's offer could not be taken (malformed SDP, say)."""
        ...


_original_host_addresses: Callable[[bool, bool], list[str]] | None = None


def configure(cfg: RtcConfig) -> None:
    """Offer host candidates only on ``cfg.interfaces`` (aioice gathers on
    every interface and leaves loopback out); once per process."""
    global _original_host_addresses
    check_aiortc()
    if _original_host_addresses is None:
        _original_host_addresses = aioice.ice.get_host_addresses
    original = _original_host_addresses
    wanted = list(cfg.interfaces)

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        if wanted:
            return wanted
        found = original(use_ipv4, use_ipv6)
        return found + ["127.0.0.1"] if use_ipv4 and "127.0.0.1" not in found else found

    aioice.ice.get_host_addresses = host_addresses


def check_aiortc() -> None:
    """Refuse to serve rooms on an aiortc whose internals we have not checked."""
    import aiortc

    missing = private_attributes_missing()
    if missing:
        raise ConfigError(
            f"aiortc {aiortc.__version__} lacks what the Opus pass-through relies on: "
            + ", ".join(missing),
            "rtc",
        )
    if aiortc.__version__ != AIORTC_VERSION:
        raise ConfigError(
            f"rooms need aiortc {AIORTC_VERSION} (found {aiortc.__version__}): "
            "install edgedispatch[rtc]",
            "rtc",
        )
    if not callable(getattr(aioice.ice, "get_host_addresses", None)):
        raise ConfigError("aioice has no get_host_addresses to restrict interfaces", "rtc")


def private_attributes_missing() -> list[str]:
    """The private attributes of aiortc this module relies on that its code
    no longer uses (read from the bytecode, without building anything)."""
    uses = {
        "RTCRtpReceiver.__init__": (RTCRtpReceiver.__init__, JITTER_BUFFER),
        "RTCRtpReceiver._handle_rtp_packet": (RTCRtpReceiver._handle_rtp_packet, JITTER_BUFFER),
        "RTCRtpSender.__init__ (msid)": (RTCRtpSender.__init__, "_stream_id"),
        "RTCRtpSender.replaceTrack (msid)": (RTCRtpSender.replaceTrack, "_track_id"),
    }
    return [
        f"{where} no longer uses {name}"
        for where, (fn, name) in uses.items()
        if name not in fn.__code__.co_names
    ]


def advertise_opus_fec() -> None:
    """Offer Opus in-band FEC (aiortc's SDP carries no fmtp for Opus, so a
    browser would not turn FEC on towards us); media-bridge.md §1.1."""
    for codec in aiortc.codecs.CODECS["audio"]:
        if codec.mimeType.lower() == "audio/opus":
            codec.parameters = {**codec.parameters, "minptime": 10, "useinbandfec": 1}


class Fanout:
    """One published audio track: takes the publisher's RTP packets where
    aiortc's jitter buffer would (so nothing is decoded), and hands the Opus
    payloads to every subscriber's ``ForwardTrack``.  Duplicates and
    packets older than the newest are dropped; gaps are counted."""

    def __init__(self, track_sid: str) -> None:
        self.track_sid = track_sid
        self.tracks: set[ForwardTrack] = set()
        self.received = 0
        self.lost = 0
        self._last_seq: int | None = None
        self._first_ts: int | None = None
        self._ts_base = 0  # adds 2**32 at each wrap of the RTP timestamp
        self._last_ts = 0

    def add(self, packet: RtpPacket) -> tuple[bool, None]:
        """The jitter buffer's ``add``: (no PLI, no frame to decode)."""
        seq = packet.sequence_number
        if self._last_seq is not None:
            ahead = (seq - self._last_seq) & 0xFFFF
            if ahead == 0 or ahead >= 0x8000:
                return False, None  # a duplicate or a late packet
            self.lost += ahead - 1
        self._last_seq = seq
        self.received += 1
        ts = packet.timestamp
        if self._first_ts is None:
            self._first_ts = self._last_ts = ts
        elif ts < self._last_ts and self._last_ts - ts > 0x80000000:
            self._ts_base += 1 << 32
        self._last_ts = ts
        if self.tracks and packet.payload:
            encoded = Packet(packet.payload)
            encoded.pts = self._ts_base + ts - self._first_ts
            encoded.time_base = OPUS_TIME_BASE
            for track in self.tracks:
                track.push(encoded)
        return False, None

    def close(self) -> None:
        for track in list(self.tracks):
            track.stop()
        self.tracks.clear()


class ForwardTrack(MediaStreamTrack):
    """A subscriber's copy of a published audio track: yields the encoded
    packets, which aiortc's sender packs without encoding."""

    kind = "audio"

    def __init__(self, fanout: Fanout) -> None:
        super().__init__()
        self._queue: deque[Packet[Any]] = deque(maxlen=FORWARD_QUEUE)
        self._waiter: asyncio.Future[None] | None = None
        self._fanout = fanout
        fanout.tracks.add(self)

    def push(self, packet: Packet[Any]) -> None:
        self._queue.append(packet)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def recv(self) -> Packet[Any]:
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._queue.popleft()

    def stop(self) -> None:
        self._fanout.tracks.discard(self)
        super().stop()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def offer_track_ids(sdp: str) -> dict[str, str]:
    """mid -> the msid track id of each m-line of an offer that sends a
    track (its msid and its direction, in any order within its section).
    An unpublished track keeps its msid but stops sending."""
    found: dict[str, str] = {}
    for section in sdp.split("\nm=")[1:]:
        mid = track = ""
        sends = True  # sendrecv when no direction is given
        for line in section.splitlines():
            line = line.strip()
            if line.startswith("a=mid:"):
                mid = line[6:]
            elif line.startswith("a=msid:"):
                bits = line[7:].split()
                track = bits[1] if len(bits) == 2 else ""
            elif line in ("a=recvonly", "a=inactive"):
                sends = False
        if mid and track and sends:
            found[mid] = track
    return found


class MediaFactory:
    """Makes each participant's ``PeerMedia`` (``rtc.room.MediaFactory``)."""

    def __init__(self, cfg: RtcConfig) -> None:
        configure(cfg)
        advertise_opus_fec()
        self._servers = [
            RTCIceServer(urls=s.urls, username=s.username or None, credential=s.credential or None)
            for s in cfg.ice_servers
        ]
        self.peers: set[PeerMedia] = set()

    def __call__(self, events: MediaEvents) -> PeerMedia:
        peer = PeerMedia(events, RTCConfiguration(iceServers=list(self._servers)), self.peers)
        self.peers.add(peer)
        return peer

    async def stats(self) -> list[tuple[int, int]]:
        """(packets received, packets lost) of every published track."""
        return [s for peer in self.peers for s in peer.stats().values()]

    async def close(self) -> None:
        for peer in list(self.peers):
            peer.close()
        tasks = [p.closed for p in list(self.peers) if p.closed is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=5)


class PeerMedia:
    def __init__(
        self, events: MediaEvents, config: RTCConfiguration, registry: set[PeerMedia]
    ) -> None:
        self._events = events
        self._loop = asyncio.get_running_loop()
        self._registry = registry
        # An explicit (maybe empty) server list: aiortc would otherwise ask
        # Google's STUN server, from a box that may have no internet at all.
        self._pc = RTCPeerConnection(config)
        self._channels: dict[int, RTCDataChannel] = {}
        self._early: deque[tuple[bytes, int]] = deque(maxlen=EARLY_PACKETS)
        #: What this participant publishes: its AddTrack cid -> fan-out.
        self._expected: dict[str, Fanout] = {}
        self.fanouts: dict[str, Fanout] = {}  # track sid -> fan-out
        #: What it receives: track sid -> (its forwarding track, stream id),
        #: and the transceiver carrying it once one is free.
        self._wanted: dict[str, tuple[ForwardTrack, str]] = {}
        self._sending: dict[str, RTCRtpTransceiver] = {}
        # Transceivers that carried a track are not used again: a client's
        # libwebrtc may not announce a new track on a reused m-line, and the
        # subscriber would hear nothing.  (Its m-lines grow with churn.)
        self._retired: set[int] = set()
        self._offer_tracks: dict[str, str] = {}  # mid -> msid track id
        self._published_mids: dict[str, str] = {}  # track sid -> its m-line
        # v0: the second connection, offered by the server, that carries
        # what this participant receives (made at its first subscription).
        self._config = config
        self._sub: RTCPeerConnection | None = None
        self._sub_offering = False  # an offer waits for its answer
        self._sub_dirty = False  # subscriptions changed meanwhile
        self._sub_offers = 0
        self._tail: asyncio.Future[None] | None = None
        self.closed: asyncio.Task[None] | None = None
        self._pc.on("datachannel", self._on_channel)
        self._pc.on("track", self._on_track)
        self._pc.on("connectionstatechange", self._on_state)

    # The session's commands ------------------------------------------------

    def negotiate(self, sdp: str, offer_id: int, target: int) -> None:
        self._chain(self._answer(sdp, offer_id), offer_id)

    def add_candidate(self, candidate_init: str, target: int) -> None:
        try:
            init = json.loads(candidate_init)
            line = str(init.get("candidate") or "")
        except (ValueError, AttributeError):
            log.info("ignored a trickle candidate that is not JSON")
            return
        if not line:
            return  # end of candidates
        try:
            candidate = candidate_from_sdp(line.split(":", 1)[1] if ":" in line else line)
        except (ValueError, IndexError):
            log.info("ignored a malformed trickle candidate")
            return
        candidate.sdpMid = init.get("sdpMid")
        candidate.sdpMLineIndex = init.get("sdpMLineIndex")
        pc = self._sub if target == SUBSCRIBER and self._sub is not None else self._pc
        self._chain(pc.addIceCandidate(candidate))

    def send_data(self, packet: bytes, kind: int) -> None:
        channel = self._channels.get(kind) or self._channels.get(0)
        if channel is not None and channel.readyState == "open":
            channel.send(packet)
        elif self.closed is None:
            self._early.append((packet, kind))

    def expect_track(self, cid: str, track_sid: str) -> None:
        """AddTrack: the client's next offer carries track ``cid``."""
        fanout = Fanout(track_sid)
        self._expected[cid] = self.fanouts[track_sid] = fanout

    def subscribe(self, track_sid: str, publisher: object, stream_id: str) -> None:
        """Send ``publisher``'s track to this participant: on a free
        transceiver at its next offer (which is asked for now)."""
        if not isinstance(publisher, PeerMedia) or track_sid in self._wanted:
            return
        fanout = publisher.fanouts.get(track_sid)
        if fanout is None or self.closed is not None:
            return
        self._wanted[track_sid] = (ForwardTrack(fanout), stream_id)
        if self._events.single_pc:
            self._events.request_offer(self._missing(), 0)
        else:
            self._renegotiate()

    def unsubscribe(self, track_sid: str) -> None:
        wanted = self._wanted.pop(track_sid, None)
        if wanted is None:
            return
        wanted[0].stop()
        transceiver = self._sending.pop(track_sid, None)
        if transceiver is not None and self.closed is None:
            self._retired.add(id(transceiver))
            transceiver.sender.replaceTrack(None)
            if self._events.single_pc:
                transceiver.direction = "recvonly"  # answered as inactive
                self._events.request_offer(0, 0)
            else:
                transceiver.direction = "inactive"
                self._renegotiate()

    def set_answer(self, sdp: str) -> None:
        """v0: the client's answer to the subscriber connection's offer."""
        if self._sub is not None and self._sub_offering:
            self._chain(self._answered(sdp))

    def stats(self) -> dict[str, tuple[int, int]]:
        """Track sid -> (packets received, packets lost) of what it publishes."""
        return {sid: (f.received, f.lost) for sid, f in self.fanouts.items()}

    def close(self) -> None:
        if self.closed is None:
            for forward, _ in self._wanted.values():
                forward.stop()
            self._wanted.clear()
            for fanout in self.fanouts.values():
                fanout.close()
            self.closed = self._loop.create_task(self._close())

    # ------------------------------------------------------------------

    def _chain(self, work: Coroutine[Any, Any, Any], offer_id: int | None = None) -> None:
        """Run ``work`` after everything asked before it.  A client's offer
        that fails (``offer_id``) is refused to it; anything else failing
        fails the participant's media."""
        if self.closed is not None:
            work.close()
            return
        previous = self._tail

        async def run() -> None:
            if previous is not None:
                await asyncio.wait([previous])
            try:
                await work
            except Exception as exc:  # aiortc raises plain errors on bad SDP
                log.info("negotiation failed: %s", exc)
                if self.closed is not None:
                    return
                if offer_id is not None:
                    self._events.on_offer_refused(offer_id, f"{type(exc).__name__}: {exc}")
                else:
                    self._events.on_media_failed(f"negotiation failed: {exc}", self._loop.time())

        self._tail = self._loop.create_task(run())

    async def _answer(self, sdp: str, offer_id: int) -> None:
        self._offer_tracks = offer_track_ids(sdp)
        # A published track whose m-line lost its msid was unpublished: the
        # SDKs remove the sender and re-offer (LiveKit has no request for it).
        for track_sid, mid in list(self._published_mids.items()):
            if mid not in self._offer_tracks:
                del self._published_mids[track_sid]
                fanout = self.fanouts.pop(track_sid, None)
                if fanout is not None:
                    fanout.close()
                self._events.on_track_unpublished(track_sid)
        await self._pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await self._attach()
        await self._pc.setLocalDescription(await self._pc.createAnswer())
        local = self._pc.localDescription
        if self.closed is None and local is not None:
            mids = {t.mid: sid for sid, t in self._sending.items() if t.mid is not None}
            self._events.on_answer(local.sdp, offer_id, mids)
            missing = self._missing()
            if missing:  # too few receive sections in this offer: ask for more
                self._events.request_offer(missing, 0)

    def _missing(self) -> int:
        return len(self._wanted) - len(self._sending)

    async def _attach(self) -> None:
        """Put each wanted track on a free audio transceiver of the client's
        offer (the SDKs offer receive-only sections for this), in the order
        they were wanted."""
        busy = {id(t) for t in self._sending.values()} | self._retired
        free = [
            t
            for t in self._pc.getTransceivers()
            if t.kind == "audio"
            and id(t) not in busy
            and t.receiver.track is None
            and t.sender.track is None
        ]
        for track_sid, (forward, stream_id) in self._wanted.items():
            if track_sid in self._sending:
                continue
            if not free:
                break
            transceiver = free.pop(0)
            transceiver.direction = "sendonly"
            transceiver.sender.replaceTrack(forward)
            # a=msid "PA_...|TR_..." "TR_...": how v0 clients find the track
            # (private attributes; rtc-signaling.md §2).
            transceiver.sender._stream_id = stream_id
            transceiver.sender._track_id = track_sid
            self._sending[track_sid] = transceiver

    # v0's subscriber connection -------------------------------------------

    def _renegotiate(self) -> None:
        if self.closed is not None:
            return
        if self._sub_offering:
            self._sub_dirty = True
        else:
            self._sub_offering = True
            self._chain(self._offer_subscriber())

    async def _offer_subscriber(self) -> None:
        """Offer the subscriber connection with every wanted track on a
        send-only transceiver of its own (msid "PA_...|TR_..." names it)."""
        if self._sub is None:
            self._sub = RTCPeerConnection(self._config)
            self._sub.on("connectionstatechange", self._on_sub_state)
        for track_sid, (forward, stream_id) in self._wanted.items():
            if track_sid in self._sending:
                continue
            transceiver = self._sub.addTransceiver(forward, direction="sendonly")
            transceiver.sender._stream_id = stream_id
            transceiver.sender._track_id = track_sid
            self._sending[track_sid] = transceiver
        await self._sub.setLocalDescription(await self._sub.createOffer())
        local = self._sub.localDescription
        if self.closed is None and local is not None:
            self._sub_offers += 1
            self._events.on_offer(local.sdp, self._sub_offers)

    async def _answered(self, sdp: str) -> None:
        assert self._sub is not None
        await self._sub.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        self._sub_offering = False
        if self._sub_dirty:
            self._sub_dirty = False
            self._renegotiate()

    def _on_sub_state(self) -> None:
        if self._sub is not None and self._sub.connectionState == "failed":
            if self.closed is None:
                self._events.on_media_failed("subscriber connection failed", self._loop.time())

    def _on_track(self, track: MediaStreamTrack) -> None:
        """A published track arrived in an offer: tap its receiver."""
        transceiver = next(
            (t for t in self._pc.getTransceivers() if t.receiver.track is track), None
        )
        mid = transceiver.mid if transceiver is not None else None
        # By the msid track id of its m-line, which is the AddTrack cid
        # (aiortc's own track.id ignores msids outside a WMS list).
        cid = self._offer_tracks.get(mid or "", "")
        fanout = self._expected.pop(cid, None)
        if fanout is None:
            log.info("a track nobody announced with AddTrack: not forwarded")
            return
        assert transceiver is not None
        if track.kind == "audio":
            setattr(transceiver.receiver, JITTER_BUFFER, fanout)
        if mid:
            self._published_mids[fanout.track_sid] = mid
        self._events.on_track_received(fanout.track_sid, mid or "")

    def _on_channel(self, channel: RTCDataChannel) -> None:
        kind = CHANNEL_KINDS.get(channel.label)
        if kind is None:
            return  # _data_track and anything newer: not forwarded
        self._channels[kind] = channel
        events, loop = self._events, self._loop
        early, self._early = self._early, deque(maxlen=EARLY_PACKETS)
        for packet, packet_kind in early:
            self.send_data(packet, packet_kind)

        @channel.on("message")
        def on_message(message: bytes | str) -> None:
            if isinstance(message, bytes):
                events.on_data(message, kind, loop.time())

    def _on_state(self) -> None:
        if self._pc.connectionState == "failed" and self.closed is None:
            self._events.on_media_failed("peer connection failed", self._loop.time())

    async def _close(self) -> None:
        try:
            if self._sub is not None:
                await self._sub.close()
            await self._pc.close()
        except Exception:
            log.exception("closing a peer connection failed")
        finally:
            self._registry.discard(self)
