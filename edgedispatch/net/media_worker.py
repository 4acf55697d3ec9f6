"""A media worker process: the peer connections of the rooms given to it.

Started by the server (``net.media_pool``) as ``python -m
edgedispatch.net.media_worker`` with its end of a socket pair in
``EDGEDISPATCH_MEDIA_FD``, the rtc config in ``EDGEDISPATCH_MEDIA_CONFIG``
and the server's log level and format in ``EDGEDISPATCH_MEDIA_LOG``: its
lines go to the server's stderr as the server's do, with the ids of the
participant or call they are about (``open`` and ``sip_open`` bring them).
It runs ``net.media``'s ``PeerMedia`` for each participant the server opens
on it, forwards audio between them itself (a room lives wholly in one
worker), and sends back what the signal sessions wait for.  It exits when
the server goes (the link ends).

Commands in: ``open`` (peer, single_pc, fields), ``negotiate``,
``candidate``, ``data``, ``expect``, ``subscribe``, ``unsubscribe``,
``answer``, ``close``, ``stats``; for phone calls (``net.sip_media``)
``sip_open`` (peer, spec, bind, fields), ``sip_remote`` (peer, spec: a
placed call's answer) and ``sip_digit`` (peer, digit).  Events out:
``ready``, ``answer``, ``data``, ``track``, ``need``, ``offer``, ``failed``,
``refused``, ``gone``, ``stats``, ``totals`` (packets received and
forwarded since it started, every second); for calls ``sip_ready`` (peer,
port), ``sip_digit`` (peer, digit) and ``sip_end`` (peer, why).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import gc
import os
import signal
import socket
from typing import Any

import msgspec
import uvloop

from edgedispatch import sched
from edgedispatch.config import RtcConfig
from edgedispatch.net.media import MediaFactory, PeerMedia
from edgedispatch.net.media_fanout import CLOSED_TOTALS
from edgedispatch.net.media_link import CONFIG_ENV, FD_ENV, LOG_ENV, MediaLink
from edgedispatch.net.sip_media import CallClock, CallMedia, RtpPorts, bind_call
from edgedispatch.obs import logs

#: Seconds between two reports of the packet totals (``totals``).
TOTALS_INTERVAL = 1.0


class PeerEvents:
    """One participant's events, sent to the server (``MediaEvents``)."""

    def __init__(
        self, link: MediaLink, peer: int, single_pc: bool, fields: dict[str, object]
    ) -> None:
        self._link = link
        self._peer = peer
        self._single_pc = single_pc
        self._fields = fields

    def fields(self) -> dict[str, object]:
        return self._fields

    @property
    def single_pc(self) -> bool:
        return self._single_pc

    def on_answer(self, sdp: str, offer_id: int, mid_to_track: dict[str, str]) -> None:
        self._link.send("answer", self._peer, sdp, offer_id, mid_to_track)

    def on_data(self, payload: bytes, kind: int, now: float) -> None:
        self._link.send("data", self._peer, payload, kind)

    def on_track_received(self, track_sid: str, mid: str) -> None:
        self._link.send("track", self._peer, track_sid, mid)

    def on_track_unpublished(self, track_sid: str) -> None:
        self._link.send("gone", self._peer, track_sid)

    def request_offer(self, num_audios: int, num_videos: int) -> None:
        self._link.send("need", self._peer, num_audios, num_videos)

    def on_offer(self, sdp: str, offer_id: int) -> None:
        self._link.send("offer", self._peer, sdp, offer_id)

    def on_media_failed(self, why: str, now: float) -> None:
        self._link.send("failed", self._peer, why)

    def on_offer_refused(self, offer_id: int, why: str) -> None:
        self._link.send("refused", self._peer, offer_id, why)


class Worker:
    def __init__(self, cfg: RtcConfig) -> None:
        self.factory = MediaFactory(cfg)
        self.peers: dict[int, PeerMedia | CallMedia] = {}
        self.link = MediaLink(self.on_frame, self.on_lost)
        self.done = asyncio.get_running_loop().create_future()
        self.clock = CallClock()
        self._opening: set[asyncio.Task[None]] = set()
        #: The RTP port range calls name (one, in practice): the ports
        #: this worker does not hold.
        self._rtp_ports: dict[tuple[int, int], RtpPorts] = {}

    def packet_totals(self) -> list[int]:
        """Packets received from publishers and forwarded to subscribers,
        since the worker started (``/metrics``)."""
        totals = list(CLOSED_TOTALS)
        for media in self.peers.values():
            for fanout in media.fanouts.values():
                if not fanout.closed:
                    totals[0] += fanout.received
                    totals[1] += fanout.forwarded
        return totals

    def report_totals(self) -> None:
        """Tell the server the totals, every ``TOTALS_INTERVAL`` s."""
        self.link.send("totals", *self.packet_totals())
        asyncio.get_running_loop().call_later(TOTALS_INTERVAL, self.report_totals)

    def _close(self, peer: int) -> None:
        self.peers.pop(peer).close()  # its fan-outs' counts go to CLOSED_TOTALS

    def on_frame(self, frame: list[Any]) -> None:
        op, *args = frame
        if op == "open":
            peer, single_pc, fields = args
            self.peers[peer] = self.factory(PeerEvents(self.link, peer, single_pc, fields))
            return
        if op == "sip_open":
            peer, spec, bind, fields = args
            call = self.peers[peer] = CallMedia(peer, spec, self.link.send, self.clock, fields)
            self.clock.add(call)
            task = asyncio.get_running_loop().create_task(self._bind_call(call, spec, bind))
            self._opening.add(task)
            task.add_done_callback(self._opening.discard)
            return
        if op == "stats":
            stats = {str(p): m.stats() for p, m in self.peers.items()}
            self.link.send("stats", args[0], stats)
            return
        media = self.peers.get(args[0])
        if media is None:
            return  # closed meanwhile
        if isinstance(media, CallMedia):
            self._call_command(media, op, args)
        elif op == "negotiate":
            media.negotiate(args[1], args[2], args[3])
        elif op == "candidate":
            media.add_candidate(args[1], args[2])
        elif op == "data":
            media.send_data(args[1], args[2])
        elif op == "expect":
            media.expect_track(args[1], args[2], args[3])
        elif op == "subscribe":
            media.subscribe(args[1], self.peers.get(args[2]), args[3])
        elif op == "unsubscribe":
            media.unsubscribe(args[1])
        elif op == "answer":
            media.set_answer(args[1])
        elif op == "close":
            self._close(args[0])

    async def _bind_call(self, call: CallMedia, spec: dict[str, Any], bind: str) -> None:
        key = (int(spec["ports"][0]), int(spec["ports"][1]))
        ports = self._rtp_ports.get(key)
        if ports is None:
            ports = self._rtp_ports[key] = RtpPorts(*key)
        try:
            port = await bind_call(call, ports, bind)
        except OSError as exc:
            self.link.send("sip_end", call.peer, f"no RTP port: {exc}")
            return
        if call.closed:
            call.close_socket()  # the call ended while its socket opened
            return
        self.link.send("sip_ready", call.peer, port)

    def _call_command(self, call: CallMedia, op: str, args: list[Any]) -> None:
        if op == "expect":
            call.expect_track(args[1], args[2], args[3])
        elif op == "subscribe":
            call.subscribe(args[1], self.peers.get(args[2]), args[3])
        elif op == "unsubscribe":
            call.unsubscribe(args[1])
        elif op == "sip_digit":
            call.send_digit(args[1])
        elif op == "sip_remote":
            call.set_remote(args[1])
        elif op == "sip_ring":
            call.ring_caller(bool(args[1]))
        elif op == "sip_confirm":
            call.confirm()
        elif op == "close":
            self._close(args[0])

    def on_lost(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


class PortRangeLoop(uvloop.Loop):
    """The worker's event loop: the UDP sockets aioice opens for host
    candidates (any port on an address) take ports from ``rtc.udp_ports``,
    in turn, so that a firewall can let exactly those through."""

    port_range: tuple[int, int] | None = None
    _cursor = 0

    async def create_datagram_endpoint(
        self, protocol_factory: Any, local_addr: Any = None, remote_addr: Any = None, **kw: Any
    ) -> Any:
        wanted = self.port_range
        if wanted is None or local_addr is None or local_addr[1] != 0 or remote_addr:
            return await super().create_datagram_endpoint(
                protocol_factory, local_addr, remote_addr, **kw
            )
        first, last = wanted
        count = last - first + 1
        for i in range(count):
            port = first + (self._cursor + i) % count
            try:
                made = await super().create_datagram_endpoint(
                    protocol_factory, (local_addr[0], port), remote_addr, **kw
                )
            except OSError:
                continue  # taken: the next one
            self._cursor = (port - first + 1) % count
            return made
        raise OSError(errno.EADDRINUSE, f"no free UDP port in {first}-{last}")


def _die_with_parent() -> None:
    """SIGKILL when the server dies, however it dies (PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the link's end still stops it


def _flush_logs(loop: asyncio.AbstractEventLoop) -> None:
    """Every FLUSH_INTERVAL, as the server does (a warning goes at once)."""
    logs.flush()
    loop.call_later(logs.DeferredStreamHandler.FLUSH_INTERVAL, _flush_logs, loop)


async def main() -> None:
    cfg = msgspec.json.decode(os.environ.get(CONFIG_ENV, "{}"), type=RtcConfig)
    if cfg.media_nice > 0:
        os.nice(min(cfg.media_nice, 19))  # before aiortc starts threads: they inherit it
    sched.request_slice_from_env()  # this thread's only: aiortc's threads have the default
    loop = asyncio.get_running_loop()
    level, fmt = os.environ.get(LOG_ENV, "info,text").split(",", 1)
    logs.setup(level, fmt)  # as the server logs
    _flush_logs(loop)
    if cfg.udp_ports and isinstance(loop, PortRangeLoop):
        loop.port_range = (cfg.udp_ports[0], cfg.udp_ports[1])
    worker = Worker(cfg)
    # Everything loaded so far (aiortc, PyAV, protobuf descriptors) lives as
    # long as the process: keep the cyclic GC from walking it again in each
    # full collection, a pause of ~30 ms of every call's media.
    gc.collect()
    gc.freeze()
    sock = socket.socket(fileno=int(os.environ[FD_ENV]))
    await loop.connect_accepted_socket(lambda: worker.link, sock)
    worker.link.send("ready", os.getpid())
    worker.report_totals()
    await worker.done
    await worker.factory.close()


if __name__ == "__main__":
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server's Ctrl-C is the server's
    uvloop.run(main(), loop_factory=PortRangeLoop)
