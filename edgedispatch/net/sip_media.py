"""Phone calls' media in a media worker process: each call's RTP socket,
and its bridge into the room's forwarding (``sip.bridge`` decides,
``sip.transcode`` converts; this module owns the sockets and the clock).

A call is a participant of its room like a WebRTC one, seen from the
worker: it publishes one audio track (``fanouts``, the same fan-out as a
published WebRTC track, fed with the Opus we encode), and subscribes to
the others' audio (a ``RoomListener`` in their fan-outs decodes what they
send).  Symmetric RTP: we send to the address the SDP gave until the
caller's first packet, then to where its packets come from.

One ``CallClock`` per process sends every call's 20 ms frame on the same
tick, and checks each call's limits (media timeout, maximum duration).

A call whose SDP took SRTP (``sip.sdp``: SDES keys) has a libsrtp session
each way (pylibsrtp, which aiortc brings): what comes in is checked and
decrypted before anything reads it, and a packet that fails (a forged or
replayed one, or plain RTP) is dropped as noise; what goes out is
encrypted last.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import ipaddress
import logging
import secrets
import socket
from collections.abc import Callable
from typing import Any

import pylibsrtp
from av.packet import Packet

from edgedispatch.net.media_fanout import Fanout, make_fanout
from edgedispatch.sip.bridge import (
    FRAME,
    CallLimits,
    Playout,
    RingTone,
    RtpSender,
    SendClock,
    Uplink,
)
from edgedispatch.sip.rtp import parse_rtp
from edgedispatch.sip.transcode import CallerEncoder, RoomDecoder

log = logging.getLogger("edgedispatch.sip")

#: Opus timestamps run at 48 kHz: six per 8 kHz sample.
OPUS_PER_SAMPLE = 6

Send = Callable[..., None]  #: the link's send: an op and its arguments

#: The SDES suites (``sip.sdp.SUITES``) as libsrtp's profiles.
SRTP_PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
}


def srtp_sessions(spec: list[str] | None) -> tuple[pylibsrtp.Session, pylibsrtp.Session] | None:
    """(inbound, outbound) sessions for a spec's ``srtp``: [suite, the far
    end's master key, ours] (hex); None for plain RTP."""
    if not spec:
        return None
    suite, theirs, ours = spec
    profile = SRTP_PROFILES[suite]
    inbound = pylibsrtp.Policy(
        key=bytes.fromhex(theirs), ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
        srtp_profile=profile,
    )  # fmt: skip
    outbound = pylibsrtp.Policy(
        key=bytes.fromhex(ours), ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
        srtp_profile=profile,
    )  # fmt: skip
    return pylibsrtp.Session(inbound), pylibsrtp.Session(outbound)


class _OpusPacket:
    """What a fan-out reads of an RTP packet (``media_fanout.RtpLike``)."""

    __slots__ = ("sequence_number", "timestamp", "marker", "payload")

    def __init__(self, sequence_number: int, timestamp: int, payload: bytes) -> None:
        self.sequence_number = sequence_number
        self.timestamp = timestamp
        self.marker = 0
        self.payload = payload


class RoomListener:
    """A subscriber in another participant's fan-out: its Opus, decoded,
    into the call's playout FIFO (``media_fanout.Subscriber``)."""

    def __init__(self, call: CallMedia, fanout: Fanout) -> None:
        self._call = call
        self._fanout = fanout
        self._decoder = RoomDecoder(call.codec)
        fanout.tracks.add(self)

    def recode(self, codec: str) -> None:
        self._decoder.close()
        self._decoder = RoomDecoder(codec)

    def push(self, packet: Packet[Any], key: bool) -> bool:
        self._call.playout.push(self._decoder.decode(bytes(packet)))
        return True

    def stop(self) -> None:
        self._fanout.tracks.discard(self)
        self._decoder.close()


class CallMedia(asyncio.DatagramProtocol):
    """One call's RTP socket and bridge.

    :param fields: from the server: the call's ids, for its log lines.
    :param spec: from the server: ``remote`` [host, port], ``codec``,
        ``pt``, ``dtmf_pt`` (or None), ``media_timeout``, ``max_duration``.
        A call we place has no ``remote`` (None) until the callee answers
        (``set_remote``): until then nothing is sent and its limits wait;
        with ``ring_room`` the room hears the ringing tone meanwhile, on
        the call's track, whose timeline the callee's audio then continues.
    """

    def __init__(
        self,
        peer: int,
        spec: dict[str, Any],
        send: Send,
        clock: CallClock,
        fields: dict[str, object],
    ) -> None:
        # Made at once, its socket opened after (``bind_call``): the
        # commands that follow the open (its track, subscriptions) find it.
        self.peer = peer
        #: The ``extra`` of its log lines: its Call-ID, room and tenant.
        self.fields = fields
        self._send = send
        self._clock = clock
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.fanouts: dict[str, Fanout] = {}
        self._track: Fanout | None = None
        self._seq = 0
        self._listening: dict[str, RoomListener] = {}
        self.remote: tuple[str, int] | None = None
        self._limits = (float(spec["media_timeout"]), float(spec["max_duration"]))
        #: The ringing tone for the room while the callee rings, and for
        #: the caller during a transfer (in place of the room's audio).
        self._room_ring = RingTone("PCMU") if spec.get("ring_room") else None
        self._caller_ring: RingTone | None = None
        #: Where the caller's timeline starts on the track's (after the ringing).
        self._ts_base = 0
        self._set_codec(spec)
        self._transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self._ports: RtpPorts | None = None
        #: Whether the caller gets audio: not until its ACK (``confirm``) or
        #: its first RTP.  An INVITE with a forged source and another's
        #: address in its SDP would otherwise have us stream RTP at that
        #: address until the unanswered 200 gave up (32 s), and calls whose
        #: caller has gone would take the send clock's time.
        self.flowing = False
        self.closed = False

    def _set_codec(self, spec: dict[str, Any]) -> None:
        self.codec = str(spec["codec"])
        dtmf = spec.get("dtmf_pt")
        remote = spec.get("remote")
        if remote is not None:
            self.remote = (str(remote[0]), int(remote[1]))
        self.latched = False
        self.uplink = Uplink(self.codec, int(spec["pt"]), dtmf)
        self.playout = Playout(self.codec)
        self.sender = RtpSender(int(spec["pt"]), dtmf, secrets.randbits(32))
        # Counted from the answer: a call still ringing hears nothing.
        self.limits = CallLimits(self._loop.time(), *self._limits)
        self._encoder = CallerEncoder(self.codec)
        self._srtp = srtp_sessions(spec.get("srtp"))
        for listener in self._listening.values():
            listener.recode(self.codec)

    def set_remote(self, spec: dict[str, Any]) -> None:
        """The callee's answer: its address, and the codec it took (its
        200, which we ACK: the audio may go out)."""
        self.flowing = True
        self._room_ring = None
        self._encoder.close()  # the callee's codec gets one of its own
        self._set_codec(spec)

    def confirm(self) -> None:
        """The caller's ACK: the call is up, and its audio goes out."""
        self.flowing = True

    def ring_caller(self, on: bool) -> None:
        """Play the ringing tone to the caller instead of the room (a
        transfer under way), or stop."""
        self._caller_ring = RingTone(self.codec) if on else None

    # -- the socket ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self.port = int(transport.get_extra_info("sockname")[1])

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if self._srtp is not None:
            try:
                data = self._srtp[0].unprotect(data)
            except pylibsrtp.Error:
                return  # not from the holder of the key (or a replay): noise
        try:
            packet = parse_rtp(data)
        except Exception:  # noqa: BLE001 - anything at a media port: not ours to crash on
            return
        if self.remote is None:
            return  # not answered yet: nobody to hear
        if not self.latched:
            self.latched = True
            self.flowing = True
            self.remote = (str(addr[0]), int(addr[1]))
        elif (str(addr[0]), int(addr[1])) != self.remote:
            return  # not the caller we latched on
        self.limits.heard(self._loop.time())
        got = self.uplink.receive(packet)
        if got.digit:
            self._send("sip_digit", self.peer, got.digit)
        track = self._track
        for at, samples in got.frames:
            for opus in self._encoder.encode(samples):
                if track is not None:
                    self._seq += 1
                    ts = self._ts_base + at * OPUS_PER_SAMPLE
                    track.add(_OpusPacket(self._seq, ts & 0xFFFFFFFF, opus))

    def error_received(self, exc: Exception) -> None:
        log.debug("RTP socket error: %s", exc, extra=self.fields)

    def tick(self, now: float) -> None:
        """The clock's 20 ms: one packet to the caller, and the limits."""
        transport = self._transport
        if self.remote is None and self._room_ring is not None and not self.closed:
            self._ring_the_room(self._room_ring)
        if transport is None or self.closed or self.remote is None:
            return  # not bound, or not answered, yet
        if self.flowing:
            frame = self.playout.take()
            if self._caller_ring is not None:
                frame = self._caller_ring.next_frame()  # the room's audio waits
            packet = self.sender.next_packet(frame)
            if self._srtp is not None:
                packet = self._srtp[1].protect(packet)
            transport.sendto(packet, self.remote)
        why = self.limits.expired(now)
        if why:
            self._send("sip_end", self.peer, why)
            self.limits.max_duration = self.limits.media_timeout = 0  # said once

    def _ring_the_room(self, ring: RingTone) -> None:
        track = self._track
        if track is None:
            return  # not in the room yet
        for opus in self._encoder.encode(ring.next_frame()):
            self._seq += 1
            track.add(_OpusPacket(self._seq, self._ts_base & 0xFFFFFFFF, opus))
            self._ts_base += FRAME * OPUS_PER_SAMPLE

    # -- as a participant (the commands ``media_worker`` routes) ----------

    def expect_track(self, cid: str, track_sid: str, kind: str) -> None:
        """The call's own audio track: announced by the server, live at once."""
        self._track = self.fanouts[track_sid] = make_fanout("audio", track_sid, self._loop.time)
        self._send("track", self.peer, track_sid, "")

    def subscribe(self, track_sid: str, publisher: object, stream_id: str) -> None:
        fanouts = getattr(publisher, "fanouts", None)
        fanout = fanouts.get(track_sid) if isinstance(fanouts, dict) else None
        if fanout is None or fanout.kind != "audio" or track_sid in self._listening:
            return
        self._listening[track_sid] = RoomListener(self, fanout)

    def unsubscribe(self, track_sid: str) -> None:
        listener = self._listening.pop(track_sid, None)
        if listener is not None:
            listener.stop()

    def send_digit(self, digit: str) -> None:
        if not self.sender.queue_digit(digit):
            log.info("DTMF %r not sent: not a key, or no telephone-event", digit, extra=self.fields)

    def send_data(self, packet: bytes, kind: int) -> None:
        """Data packets for a phone have nowhere to go (DTMF comes as ``digit``)."""

    def stats(self) -> dict[str, tuple[int, int]]:
        return {sid: (f.received, f.lost) for sid, f in self.fanouts.items()}

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._clock.calls.discard(self)
        for listener in self._listening.values():
            listener.stop()
        self._listening.clear()
        for fanout in self.fanouts.values():
            fanout.close()
        self._encoder.close()
        self.close_socket()

    def holds(self, ports: RtpPorts, port: int) -> None:
        """Its socket is on ``port`` of ``ports``, to give back as it closes."""
        self._ports = ports
        self.port = port

    def close_socket(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self._ports is not None:
            self._ports.free.append(self.port)  # at the back: its socket closes first
            self._ports = None


class CallClock:
    """The process's shared 20 ms send clock (``sip.bridge.SendClock``)."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.calls: set[CallMedia] = set()
        self.schedule = SendClock(self._loop.time())
        self._handle: asyncio.TimerHandle | None = None

    def add(self, call: CallMedia) -> None:
        self.calls.add(call)
        if self._handle is None:
            self.schedule = SendClock(self._loop.time())
            self._handle = self._loop.call_at(self.schedule.next_at, self._tick)

    def _tick(self) -> None:
        now = self._loop.time()
        if self.schedule.tick(now):
            for call in list(self.calls):
                try:
                    call.tick(now)
                except Exception:
                    log.exception("a call's media tick failed", extra=call.fields)
        self._handle = self._loop.call_at(self.schedule.next_at, self._tick) if self.calls else None


class RtpPorts:
    """The RTP port range as a worker sees it: the ports it does not hold,
    in a random order.  A call takes the first that binds and gives it
    back as it ends; one that does not bind (another worker or process
    holds it) goes to the back.  At most ``ATTEMPTS`` are tried for a
    call, so that a range used up fails the call at once: a scan of the
    whole range for each new call, with thousands of calls up, took all
    of a worker's time."""

    #: Ports tried for one call (with another worker holding 80% of the
    #: range, 16 all fail one call in 35).
    ATTEMPTS = 16

    def __init__(self, first: int, last: int) -> None:
        self.range = (first, last)
        ports = list(range(first, last + 1))
        secrets.SystemRandom().shuffle(ports)  # not guessable from outside
        self.free = collections.deque(ports)


async def bind_call(call: CallMedia, ports: RtpPorts, bind: str) -> int:
    """Open ``call``'s socket on a free port of ``ports``; the call gives
    it back as its socket closes.

    An IP address (the usual ``bind``) is bound on a socket of our own,
    handed to the loop: given an address instead, uvloop resolves it
    through libuv's thread pool for every call, which took 90 µs a socket
    against 19 here, and half of a media worker's time at 1,000 calls/s."""
    loop = asyncio.get_running_loop()
    family = _literal_family(bind)
    for _ in range(min(len(ports.free), ports.ATTEMPTS)):
        port = ports.free.popleft()
        try:
            if family is None:  # a host name: the loop resolves it
                await loop.create_datagram_endpoint(lambda: call, local_addr=(bind, port))
            else:
                await _open_on(loop, call, family, (bind, port))
        except OSError:
            ports.free.append(port)  # held by another process: tried after the rest
            continue
        call.holds(ports, port)
        return port
    first, last = ports.range
    raise OSError(f"no free RTP port in {first}-{last}")


async def _open_on(
    loop: asyncio.AbstractEventLoop, call: CallMedia, family: int, address: tuple[str, int]
) -> None:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind(address)
        await loop.create_datagram_endpoint(lambda: call, sock=sock)
    except OSError:
        sock.close()
        raise


@functools.lru_cache(maxsize=8)
def _literal_family(host: str) -> socket.AddressFamily | None:
    """The family of an IP address ("": IPv4's any address), None for a host name."""
    if not host:
        return socket.AF_INET
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    return socket.AF_INET6 if address.version == 6 else socket.AF_INET
