"""WebRTC for the participants of live rooms, on aiortc: the only module
that imports aiortc (an optional extra: it brings FFmpeg through PyAV).

One ``PeerMedia`` per participant: its peer connection (v1's single one,
or v0's publisher connection), its data channels (``media_data``), and
the results the signal session waits for, fed back as ``on_answer`` /
``on_data`` / ``on_media_failed``.  aiortc's API is coroutines, so each
participant's negotiations run as one chain of tasks, in the order they
were asked.

Why aiortc: rtc-signaling.md §2 (the SDKs join an aiortc server in both
modes, with data and audio); the private attributes used here are checked
at start-up by ``check_aiortc`` and pinned with the version.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import aioice.ice
import aiortc.codecs
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpHeaderExtensionParameters,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp
from av.packet import Packet

from edgedispatch.config import RtcConfig
from edgedispatch.errors import ConfigError
from edgedispatch.net.media_data import DataChannels
from edgedispatch.net.media_fanout import Fanout, make_fanout
from edgedispatch.net.media_link import AIORTC_VERSION, MediaEvents
from edgedispatch.wire.sdp import Section, offer_sections, sent_tracks

log = logging.getLogger("edgedispatch.media")

#: SignalTarget: which of v0's two connections a trickle is for.
SUBSCRIBER = 1


#: The receiver's jitter buffer, replaced by the tap (name-mangled private).
JITTER_BUFFER = "_RTCRtpReceiver__jitter_buffer"
#: Encoded packets a subscriber's track holds when its sender lags: anything
#: queued before the sender starts would leave as a burst, so few.
FORWARD_QUEUE = 5
#: v1: seconds before a client whose announced track has not arrived is
#: asked for an offer again, and how many times (``PeerMedia._nudge``).
TRACK_NUDGE = 2.0
TRACK_NUDGES = 3


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
        "RTCRtpSender._handle_rtcp_packet (PLI)": (
            RTCRtpSender._handle_rtcp_packet,
            "_send_keyframe",
        ),
    }
    return [
        f"{where} no longer uses {name}"
        for where, (fn, name) in uses.items()
        if name not in fn.__code__.co_names
    ]


def choose_codecs() -> None:
    """Offer Opus in-band FEC (aiortc's SDP carries no fmtp for Opus, so a
    browser would not turn FEC on towards us; media-bridge.md §1.1), and
    VP8 as the only video codec (with its RTX): what is forwarded must be
    what every subscriber was told to expect."""
    codecs = aiortc.codecs.CODECS
    for codec in codecs["audio"]:
        if codec.mimeType.lower() == "audio/opus":
            codec.parameters = {**codec.parameters, "minptime": 10, "useinbandfec": 1}
    vp8 = [c for c in codecs["video"] if c.mimeType.lower() == "video/vp8"]
    apts = {c.payloadType for c in vp8}
    rtx = [c for c in codecs["video"] if c.parameters.get("apt") in apts]
    codecs["video"][:] = vp8 + rtx
    # A simulcast offer must have the RID extensions answered, or Chrome
    # fails its next offer; without a=simulcast in the answer it then sends
    # one layer (its first encoding).  aiortc parses them (rtp.py).
    extensions = aiortc.codecs.HEADER_EXTENSIONS["video"]
    for ext_id, uri in (
        (4, "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"),
        (5, "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"),
    ):
        if all(e.uri != uri for e in extensions):
            extensions.append(RTCRtpHeaderExtensionParameters(id=ext_id, uri=uri))


class ForwardTrack(MediaStreamTrack):
    """A subscriber's copy of a published track: yields the encoded packets
    (Opus) or frames (VP8), which aiortc's sender packs without encoding.
    A video copy starts, and starts again after an overflow, at a keyframe:
    until then frames are refused, and the fan-out asks for one."""

    def __init__(self, fanout: Fanout) -> None:
        super().__init__()
        self.kind = fanout.kind
        self._queue: deque[Packet[Any]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._fanout = fanout
        self._need_key = fanout.kind == "video"
        fanout.tracks.add(self)

    def push(self, packet: Packet[Any], key: bool) -> bool:
        if self._need_key:
            if not key:
                return False
            self._need_key = False
        if len(self._queue) >= FORWARD_QUEUE:
            if self.kind == "video":  # a frame missed breaks the ones after it
                self._queue.clear()
                self._need_key = True
                return False
            self._queue.popleft()
        self._queue.append(packet)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return True

    def keyframe_requested(self) -> None:
        """The subscriber's PLI or FIR (aiortc's sender would force its
        encoder; there is none: the publisher is asked)."""
        self._fanout.request_keyframe()

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


class MediaFactory:
    """Makes each participant's ``PeerMedia`` (``rtc.room.MediaFactory``)."""

    def __init__(self, cfg: RtcConfig) -> None:
        configure(cfg)
        choose_codecs()
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
        #: The ``extra`` of its log lines: its room, identity and tenant.
        self.fields = events.fields()
        self._loop = asyncio.get_running_loop()
        self._registry = registry
        # An explicit (maybe empty) server list: aiortc would otherwise ask
        # Google's STUN server, from a box that may have no internet at all.
        self._pc = RTCPeerConnection(config)
        self._data = DataChannels(events.on_data, self._loop.time)
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
        self._answering = 0  # client offers being answered
        self._tail: asyncio.Future[None] | None = None
        self.closed: asyncio.Task[None] | None = None
        self._pc.on("datachannel", self._on_channel)
        self._pc.on("track", self._on_track)
        self._pc.on("connectionstatechange", self._on_state)

    # The session's commands ------------------------------------------------

    def negotiate(self, sdp: str, offer_id: int, target: int) -> None:
        self._answering += 1
        self._chain(self._answer(sdp, offer_id), offer_id)

    def add_candidate(self, candidate_init: str, target: int) -> None:
        try:
            init = json.loads(candidate_init)
            line = str(init.get("candidate") or "")
        except (ValueError, AttributeError):
            log.info("ignored a trickle candidate that is not JSON", extra=self.fields)
            return
        if not line:
            return  # end of candidates
        try:
            candidate = candidate_from_sdp(line.split(":", 1)[1] if ":" in line else line)
        except (ValueError, IndexError):
            log.info("ignored a malformed trickle candidate", extra=self.fields)
            return
        candidate.sdpMid = init.get("sdpMid")
        candidate.sdpMLineIndex = init.get("sdpMLineIndex")
        pc = self._sub if target == SUBSCRIBER and self._sub is not None else self._pc
        self._chain(pc.addIceCandidate(candidate))

    def send_data(self, packet: bytes, kind: int) -> None:
        self._data.send(packet, kind)

    def expect_track(self, cid: str, track_sid: str, kind: str) -> None:
        """AddTrack: the client's next offer carries track ``cid``."""
        fanout = make_fanout(kind, track_sid, self._loop.time)
        self._expected[cid] = self.fanouts[track_sid] = fanout
        if self._events.single_pc:
            self._loop.call_later(TRACK_NUDGE, self._nudge, cid, TRACK_NUDGES)

    def _nudge(self, cid: str, left: int) -> None:
        """v1: a track announced with AddTrack whose offer has not come.
        The rtc SDK can lose that renegotiation when it crosses one the
        server asked for (its publisher then sends nothing, for good);
        asking for an offer again brings it."""
        if cid not in self._expected or self.closed is not None or left <= 0:
            return
        log.info(
            "an announced track has not arrived: asking the client for an offer",
            extra=self.fields,
        )
        self._events.request_offer(0, 0)
        self._loop.call_later(TRACK_NUDGE, self._nudge, cid, left - 1)

    def _nudge_sending(self, track_sid: str, left: int) -> None:
        """v1: a subscribed track still on no transceiver: the offer asked
        for was lost as in ``_nudge`` (the room never got the track)."""
        wanted = track_sid in self._wanted and track_sid not in self._sending
        if not wanted or self.closed is not None or left <= 0:
            return
        if not self._answering:
            log.info(
                "a subscribed track has no section yet: asking the client for an offer",
                extra=self.fields,
            )
            self._events.request_offer(*self._missing())
        self._loop.call_later(TRACK_NUDGE, self._nudge_sending, track_sid, left - 1)

    def subscribe(self, track_sid: str, publisher: object, stream_id: str) -> None:
        """Send ``publisher``'s track to this participant: on a free
        transceiver at its next offer (which is asked for now)."""
        # Any participant of the worker with fan-outs: a peer, or a phone
        # call (``net.sip_media``), which this module need not know.
        fanouts = getattr(publisher, "fanouts", None)
        if not isinstance(fanouts, dict) or track_sid in self._wanted:
            return
        fanout = fanouts.get(track_sid)
        if fanout is None or self.closed is not None:
            return
        self._wanted[track_sid] = (ForwardTrack(fanout), stream_id)
        if self._events.single_pc:
            # An offer being answered takes it, or asks for sections itself
            # (asking now would make the SDK add sections it may not need).
            if not self._answering:
                self._events.request_offer(*self._missing())
            self._loop.call_later(TRACK_NUDGE, self._nudge_sending, track_sid, TRACK_NUDGES)
        else:
            self._renegotiate()

    def unsubscribe(self, track_sid: str) -> None:
        wanted = self._wanted.pop(track_sid, None)
        if wanted is None:
            return
        wanted[0].stop()
        transceiver = self._retire(track_sid) if self.closed is None else None
        if transceiver is not None:
            if self._events.single_pc:
                transceiver.direction = "recvonly"  # answered as inactive
                self._events.request_offer(0, 0)
            else:
                transceiver.direction = "inactive"
                self._renegotiate()

    def _retire(self, track_sid: str) -> RTCRtpTransceiver | None:
        """Take a forwarded track off its transceiver, which is not used again
        (see ``_retired``)."""
        transceiver = self._sending.pop(track_sid, None)
        if transceiver is not None:
            self._retired.add(id(transceiver))
            transceiver.sender.replaceTrack(None)
        return transceiver

    def set_answer(self, sdp: str) -> None:
        """v0: the client's answer to the subscriber connection's offer."""
        if self._sub is not None and self._sub_offering:
            self._chain(self._answered(sdp))

    def stats(self) -> dict[str, tuple[int, int]]:
        """Track sid -> (packets received, packets lost) of what it publishes."""
        return {sid: (f.received, f.lost) for sid, f in self.fanouts.items()}

    def close(self) -> None:
        if self.closed is None:
            self._data.close()
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
                log.info("negotiation failed: %s", exc, extra=self.fields)
                if self.closed is not None:
                    return
                if offer_id is not None:
                    self._events.on_offer_refused(offer_id, f"{type(exc).__name__}: {exc}")
                else:
                    self._events.on_media_failed(f"negotiation failed: {exc}", self._loop.time())

        self._tail = self._loop.create_task(run())

    async def _answer(self, sdp: str, offer_id: int) -> None:
        try:
            await self._answer_offer(sdp, offer_id)
        finally:
            self._answering -= 1

    async def _answer_offer(self, sdp: str, offer_id: int) -> None:
        sections = offer_sections(sdp)
        self._offer_tracks = sent_tracks(sections)
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
        if self._events.single_pc:
            self._follow_reuse(sections)
        await self._attach()
        await self._pc.setLocalDescription(await self._pc.createAnswer())
        local = self._pc.localDescription
        if self.closed is None and local is not None:
            mids = {t.mid: sid for sid, t in self._sending.items() if t.mid is not None}
            self._events.on_answer(local.sdp, offer_id, mids)
            missing = self._missing()
            if any(missing):  # too few receive sections in this offer: ask for more
                self._events.request_offer(*missing)

    def _follow_reuse(self, sections: dict[str, Section]) -> None:
        """v1: the SDK's addTrack may send a new track on a section it first
        added to receive on (JSEP reuses a transceiver never used to send).
        Receive there too; and a forwarded track whose section the client
        no longer receives on moves to another (asked for if none is free)."""
        for track_sid, transceiver in list(self._sending.items()):
            section = sections.get(transceiver.mid or "")
            if section is not None and section.direction in ("sendonly", "inactive"):
                self._retire(track_sid)
        for transceiver in self._pc.getTransceivers():
            if transceiver.mid in self._offer_tracks:
                sending = transceiver.sender.track is not None
                transceiver.direction = "sendrecv" if sending else "recvonly"

    def _missing(self) -> tuple[int, int]:
        """(audio, video) tracks wanted that have no transceiver yet."""
        waiting = [f.kind for sid, (f, _) in self._wanted.items() if sid not in self._sending]
        return waiting.count("audio"), waiting.count("video")

    async def _attach(self) -> None:
        """Put each wanted track on a free transceiver of its kind in the
        client's offer (the SDKs offer receive-only sections for this), in
        the order they were wanted."""
        busy = {id(t) for t in self._sending.values()} | self._retired
        free = [
            t
            for t in self._pc.getTransceivers()
            if id(t) not in busy and t.receiver.track is None and t.sender.track is None
        ]
        for track_sid, (forward, stream_id) in self._wanted.items():
            transceiver = next((t for t in free if t.kind == forward.kind), None)
            if track_sid in self._sending or transceiver is None:
                continue
            free.remove(transceiver)
            transceiver.direction = "sendonly"
            transceiver.sender.replaceTrack(forward)
            self._sends(transceiver, forward, track_sid, stream_id)

    def _sends(
        self, transceiver: RTCRtpTransceiver, forward: ForwardTrack, track_sid: str, stream_id: str
    ) -> None:
        sender = transceiver.sender
        # a=msid "PA_...|TR_..." "TR_...": how v0 clients find the track
        # (private attributes; rtc-signaling.md §2).
        sender._stream_id = stream_id
        sender._track_id = track_sid
        # A subscriber's PLI or FIR goes to the publisher (checked at start).
        sender._send_keyframe = forward.keyframe_requested  # type: ignore[method-assign]
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
            self._sends(transceiver, forward, track_sid, stream_id)
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
            log.info("a track nobody announced with AddTrack: not forwarded", extra=self.fields)
            return
        assert transceiver is not None
        if track.kind != fanout.kind:
            log.info(
                "a %s track announced as %s: not forwarded",
                track.kind,
                fanout.kind,
                extra=self.fields,
            )
            return
        setattr(transceiver.receiver, JITTER_BUFFER, fanout)
        if mid:
            self._published_mids[fanout.track_sid] = mid
        self._events.on_track_received(fanout.track_sid, mid or "")

    def _on_channel(self, channel: RTCDataChannel) -> None:
        kind = self._data.opened(channel)
        if kind is not None:
            channel.on("message", functools.partial(self._data.received, kind))

    def _on_state(self) -> None:
        if self._pc.connectionState == "failed" and self.closed is None:
            self._events.on_media_failed("peer connection failed", self._loop.time())

    async def _close(self) -> None:
        try:
            if self._sub is not None:
                await self._sub.close()
            await self._pc.close()
        except Exception:
            log.exception("closing a peer connection failed", extra=self.fields)
        finally:
            self._registry.discard(self)
