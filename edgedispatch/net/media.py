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
import json
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import aioice.ice
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.sdp import candidate_from_sdp

from edgedispatch.config import RtcConfig
from edgedispatch.errors import ConfigError

log = logging.getLogger("edgedispatch.media")

#: The aiortc release the private attributes below were verified on.
AIORTC_VERSION = "1.16.0"
#: DataPacket.Kind by the data channel labels the SDKs open.
CHANNEL_KINDS = {"_reliable": 0, "_lossy": 1}
#: Packets kept for a participant whose data channel is not open yet (its
#: connect() returns once ICE is up, a moment before the channels open);
#: beyond this the oldest go.
EARLY_PACKETS = 256


class MediaEvents(Protocol):
    """What a participant's signal session takes back (``rtc.session``)."""

    def on_answer(self, sdp: str, offer_id: int, mid_to_track: dict[str, str]) -> None: ...

    def on_data(self, payload: bytes, kind: int, now: float) -> None: ...

    def on_media_failed(self, why: str, now: float) -> None: ...


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

    if aiortc.__version__ != AIORTC_VERSION:
        raise ConfigError(
            f"rooms need aiortc {AIORTC_VERSION} (found {aiortc.__version__}): "
            "install edgedispatch[rtc]",
            "rtc",
        )
    if not callable(getattr(aioice.ice, "get_host_addresses", None)):
        raise ConfigError("aioice has no get_host_addresses to restrict interfaces", "rtc")


class MediaFactory:
    """Makes each participant's ``PeerMedia`` (``rtc.room.MediaFactory``)."""

    def __init__(self, cfg: RtcConfig) -> None:
        configure(cfg)
        self._servers = [
            RTCIceServer(urls=s.urls, username=s.username or None, credential=s.credential or None)
            for s in cfg.ice_servers
        ]
        self.peers: set[PeerMedia] = set()

    def __call__(self, events: MediaEvents) -> PeerMedia:
        peer = PeerMedia(events, RTCConfiguration(iceServers=list(self._servers)), self.peers)
        self.peers.add(peer)
        return peer

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
        self._tail: asyncio.Future[None] | None = None
        self.closed: asyncio.Task[None] | None = None
        self._pc.on("datachannel", self._on_channel)
        self._pc.on("connectionstatechange", self._on_state)

    # The session's commands ------------------------------------------------

    def negotiate(self, sdp: str, offer_id: int, target: int) -> None:
        self._chain(self._answer(sdp, offer_id))

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
        self._chain(self._pc.addIceCandidate(candidate))

    def send_data(self, packet: bytes, kind: int) -> None:
        channel = self._channels.get(kind) or self._channels.get(0)
        if channel is not None and channel.readyState == "open":
            channel.send(packet)
        elif self.closed is None:
            self._early.append((packet, kind))

    def close(self) -> None:
        if self.closed is None:
            self.closed = self._loop.create_task(self._close())

    # ------------------------------------------------------------------

    def _chain(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run ``work`` after everything asked before it."""
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
                self._events.on_media_failed(f"negotiation failed: {exc}", self._loop.time())

        self._tail = self._loop.create_task(run())

    async def _answer(self, sdp: str, offer_id: int) -> None:
        await self._pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await self._pc.setLocalDescription(await self._pc.createAnswer())
        local = self._pc.localDescription
        if self.closed is None and local is not None:
            self._events.on_answer(local.sdp, offer_id, {})

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
            await self._pc.close()
        except Exception:
            log.exception("closing a peer connection failed")
        finally:
            self._registry.discard(self)
