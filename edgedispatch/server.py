"""``edgedispatch serve``: the composition root.

Builds the domain, its one timer, the routes and the HTTP listener on one
port, and the agents edgedispatch runs itself, then runs until
SIGTERM/SIGINT.  The first signal drains: no new dispatches (Twirp
``unavailable``), no new offers, and it waits for running jobs up to
``server.drain_timeout`` (with a store, only for local agents' jobs: the
store keeps remote ones for their workers to claim back).  A second signal
exits at once.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import resource
import secrets
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edgedispatch import _core, sched
from edgedispatch.api.app import App
from edgedispatch.calls.admission import Admission
from edgedispatch.calls.bridge import CallEvents, CallServices
from edgedispatch.calls.bridge import listing as call_listing
from edgedispatch.calls.inbound import InboundCalls
from edgedispatch.calls.outbound import OutboundCalls
from edgedispatch.calls.transfer import Transfers
from edgedispatch.config import Config
from edgedispatch.dispatch import ids
from edgedispatch.dispatch.domain import Domain
from edgedispatch.dispatch.events import DomainEvent, RoomClosed
from edgedispatch.dispatch.quotas import QuotaDesk
from edgedispatch.net import media_link, sip_tls
from edgedispatch.net.http import HttpProtocol, Limits, expire
from edgedispatch.net.media_pool import CallProxy, MediaPool
from edgedispatch.net.reclaim import Reclaimer
from edgedispatch.net.sip import SipEndpoint, resolve_host
from edgedispatch.net.systemd import NOTHING_INHERITED, Inherited, Notifier, Watchdog
from edgedispatch.net.timer import DeadlineTimer
from edgedispatch.net.webhooks import WebhookSender
from edgedispatch.obs import logs, metrics, status
from edgedispatch.rtc.room import RoomHub
from edgedispatch.rtc.webhooks import WebhookNotifier
from edgedispatch.runtime.contain import Containment
from edgedispatch.runtime.manager import AgentManager
from edgedispatch.sip.digest import DigestAuth
from edgedispatch.sip.directory import Directory
from edgedispatch.sip.refer import Event as TransferEvent
from edgedispatch.sip.refer import TransferAccepted, TransferEnded
from edgedispatch.sip.sdp import KEY_LENGTH
from edgedispatch.sip.uac import OUTBOUND_EVENTS, Ended, Failed, UserAgentClient
from edgedispatch.sip.uac import Event as OutboundEvent
from edgedispatch.sip.uas import UserAgentServer
from edgedispatch.sip.uas_calls import CallEnded, Event
from edgedispatch.store import MemoryStore, Store
from edgedispatch.store import sqlite as sqlite_store
from edgedispatch.store.journal import Journal
from edgedispatch.store.sqlite import SqliteStore
from edgedispatch.wire import convert
from edgedispatch.wire.tokens import Verifier

if TYPE_CHECKING:
    from edgedispatch.net.media import MediaFactory

log = logging.getLogger("edgedispatch.server")

#: Seconds between looks at whether much memory was freed (``net.reclaim``).
RECLAIM_INTERVAL = 1.0


class Server:
    """:param inherited: listening sockets passed by systemd (socket
    activation) or ``serve --fd``; the others are bound from the config."""

    def __init__(self, cfg: Config, inherited: Inherited = NOTHING_INHERITED) -> None:
        self.cfg = cfg
        self._inherited = inherited
        self._notifier = Notifier()
        self._watchdog = Watchdog(self._notifier)
        self.domain: Domain | None = None
        self._timer: DeadlineTimer | None = None
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._stop = asyncio.Event()
        self._signals = 0
        self.connections: set[HttpProtocol] = set()
        self.agents: AgentManager | None = None
        self.containment: Containment | None = None
        self.rooms: RoomHub | None = None
        self._media: MediaFactory | MediaPool | None = None
        self._webhooks: WebhookSender | None = None
        self.store: SqliteStore | None = None
        self._sip: asyncio.BaseTransport | None = None
        self.sip_endpoint: SipEndpoint | None = None
        self._sip_tcp: asyncio.Server | None = None
        self._sip_tls: sip_tls.TlsListener | None = None
        self.sip_port = 0
        self.sip_tls_port = 0
        self.sip_directory: Directory | None = None
        self._sources: metrics.Sources | None = None

    async def start(self, sock: socket.socket | None = None) -> None:
        loop = asyncio.get_running_loop()
        self._ask_for_slices()
        # First, off the loop: it probes the host (runs bwrap once), kills
        # what a crashed earlier run left in its cells, and may refuse to
        # start (sandbox.mode "required" on a host that lacks a protection).
        self.containment = await loop.run_in_executor(None, self._contain)
        verifier = Verifier(self.cfg.secrets(), self.cfg.key_tenants())
        self.domain = domain = Domain(self.cfg.dispatch, self.cfg.room)
        domain.rooms.quotas = QuotaDesk(self.cfg.tenants)
        domain.wall.offset = time.time() - loop.time()
        self._timer = DeadlineTimer(loop, domain.on_timer)
        domain.on_deadline = self._timer.arm
        store = self._open_store(domain, loop)
        app = App(domain, verifier, self.cfg.server)
        app.store = self.store
        app.sip = self.sip_directory = Directory(store, ids.new)
        if self.cfg.rtc.enabled:
            app.rooms = self.rooms = self._rooms(domain)
        sources = self._sources = self._metrics_sources(domain)
        if self.cfg.metrics.enabled:
            app.metrics = functools.partial(metrics.render, sources)
            app.metrics_token = self.cfg.metrics.token
        app.status_page = status.page
        app.state = functools.partial(status.snapshot, sources)
        targets = self.cfg.webhooks()
        if targets:
            hook = self.cfg.webhook
            self._webhooks = WebhookSender(hook.attempts, hook.timeout)
            WebhookNotifier(
                domain, self.rooms, targets, self._webhooks.post, lambda: domain.wall(loop.time())
            )
        max_size = self.cfg.server.max_message_size

        s = self.cfg.server
        limits = Limits(
            s.max_body_size,
            s.header_timeout,
            s.body_timeout,
            s.idle_timeout,
            s.max_connections,
            s.max_connections_per_peer,
        )

        def factory() -> HttpProtocol:
            return HttpProtocol(app, max_size, self.connections, limits)

        sock = sock or self._inherited.http
        if sock is not None:
            self._server = await loop.create_server(factory, sock=sock, backlog=4096)
        else:
            self._server = await loop.create_server(
                factory,
                self.cfg.server.bind,
                self.cfg.server.port,
                backlog=4096,
                reuse_address=True,
            )
        self.port = self._server.sockets[0].getsockname()[1]
        if self.cfg.sip.enabled:
            await self._listen_sip(loop, app)
        else:
            for unused in (self._inherited.sip_udp, self._inherited.sip_tcp):
                if unused is not None:
                    log.warning("a SIP socket was passed, but [sip] enabled is false: not served")
                    unused.close()
        loop.call_later(1.0, self._expire_connections)
        url = self.cfg.server.public_url or f"ws://127.0.0.1:{self.port}"
        self.agents = AgentManager(domain, self.cfg, url, store, verifier, self.containment)
        try:
            await self.agents.start(list(self.cfg.agents))
        except Exception:
            await self.close()
            raise
        app.agents = self.agents
        # A closed room's rendered message goes with it (see convert._ROOMS);
        # subscribed last, so that the others' handlers of the same event
        # (the room_finished webhook renders the room) have run.
        domain.subscribe(_room_closed, RoomClosed)

    async def _listen_sip(self, loop: asyncio.AbstractEventLoop, app: App) -> None:
        """SIP over UDP and TCP; calls are decided by ``calls.inbound``, and
        placed by ``calls.outbound`` (CreateSIPParticipant)."""
        sip = self.cfg.sip
        bind = sip.bind or self.cfg.server.bind
        assert self.domain is not None and self.sip_directory is not None
        host = bind if bind != "0.0.0.0" else "127.0.0.1"
        services = self._call_services(loop, bind, host)
        admission = Admission.from_config(self.cfg)
        calls = InboundCalls(
            self.sip_directory,
            self.domain,
            DigestAuth(secrets.token_bytes(32)),
            lambda: secrets.token_hex(6),
            services,
            admission,
            # The agents' manager is made after the listeners: looked up per call.
            on_demand=lambda tenant, name: (
                self.agents is not None and self.agents.on_demand(tenant, name)
            ),
        )
        if services is not None and self._sources is not None:
            self._sources.sip_calls = functools.partial(call_listing, services)
        if self._sources is not None:
            self._sources.sip_outcomes = self._sip_outcomes
        placed: OutboundCalls | None = None
        transfers: Transfers | None = None
        if services is not None:

            def uac() -> UserAgentClient | None:
                uas = self.sip_endpoint.uas if self.sip_endpoint is not None else None
                return uas.outbound if uas is not None else None

            def connect(
                address: tuple[str, int], then: Callable[[str | None], None], tls: str | None
            ) -> None:
                if self.sip_endpoint is None:
                    then("SIP is not listening")
                else:
                    self.sip_endpoint.connect(address, then, tls)

            placed = OutboundCalls(
                services, uac, resolve_host, lambda: secrets.token_hex(8), admission, connect
            )
            app.dialer = placed
            transfers = Transfers(
                services,
                lambda: self.sip_endpoint.uas if self.sip_endpoint is not None else None,
                lambda: secrets.token_hex(8),
            )
            app.transfers = transfers

        def on_event(
            ua: UserAgentServer, event: Event | OutboundEvent | TransferEvent, now: float
        ) -> None:
            if isinstance(event, (TransferAccepted, TransferEnded)):
                if transfers is not None:
                    transfers.on_event(event, now)
                return
            if transfers is not None and isinstance(event, (CallEnded, Ended, Failed)):
                transfers.call_ended(event.call_id)
            if placed is not None and isinstance(event, OUTBOUND_EVENTS):
                placed.on_event(event, now)
            else:
                calls.on_event(ua, event, now)

        given_udp, given_tcp = self._inherited.sip_udp, self._inherited.sip_tcp
        # Once, not per attempt below: it loads the system's CAs.
        client_tls = sip_tls.client_context(sip)
        # TCP on the same port number as UDP (as trunks expect).  With port
        # 0, the number UDP got may be taken for TCP: try another.
        for attempt in range(20):
            transport, endpoint = await loop.create_datagram_endpoint(
                lambda: SipEndpoint(
                    loop,
                    on_event,
                    host,
                    client_tls,
                    sip.max_connections,
                    sip.max_connections_per_peer,
                ),  # fmt: skip
                **({"sock": given_udp} if given_udp else {"local_addr": (bind, sip.port)}),
            )
            port = transport.get_extra_info("sockname")[1]
            try:
                if given_tcp is not None:
                    self._sip_tcp = await loop.create_server(endpoint.stream, sock=given_tcp)
                else:
                    self._sip_tcp = await loop.create_server(
                        endpoint.stream, bind, port, reuse_address=True
                    )
                break
            except OSError:
                transport.close()
                if sip.port or given_udp is not None or attempt == 19:
                    raise
        self._sip = transport
        self.sip_endpoint = endpoint
        self.sip_port = port
        log.info("SIP on udp and tcp %s:%d", bind, self.sip_port)
        if sip.tls_cert:
            context = sip_tls.server_context(sip)
            self._sip_tls = sip_tls.TlsListener(endpoint, context, bind, sip.tls_port)
            self.sip_tls_port = self._sip_tls.port
            assert endpoint.uas is not None
            endpoint.uas.listen_tls(self.sip_tls_port)
            log.info("SIP on tls %s:%d", bind, self.sip_tls_port)

    def _sip_outcomes(self) -> dict[str, Counter[int]]:
        uas = self.sip_endpoint.uas if self.sip_endpoint is not None else None
        if uas is None:
            return {}
        return {"inbound": uas.call_answers, "outbound": uas.outbound.call_outcomes}

    def _metrics_sources(self, domain: Domain) -> metrics.Sources:
        """What /metrics reads: the parts this server has (the agents'
        manager is made after the listener, so it is looked up per scrape)."""
        sources = metrics.Sources(domain)
        sources.agents = lambda: [
            metrics.AgentRow(*row) for row in (self.agents.metric_rows() if self.agents else [])
        ]
        if self.rooms is not None:
            sources.tracks = self.rooms.track_counts
        if isinstance(self._media, MediaPool):
            sources.media_packets = self._media.packet_totals
        sources.agent_details = lambda t: self.agents.list_scoped(t) if self.agents else []
        store = self.store
        if store is not None:
            sources.store_info = lambda: {
                "path": str(store.path),
                "schema_version": sqlite_store.SCHEMA_VERSION,
                "pending_writes": store.pending,
                "commits": store.commits,
                "failure": store.failure,
            }
            sources.store_commits = lambda: metrics.Histogram(
                sqlite_store.COMMIT_BOUNDS, list(store.commit_counts), store.commit_seconds
            )
            sources.store_pending = lambda: store.pending
        return sources

    def _call_services(
        self, loop: asyncio.AbstractEventLoop, bind: str, host: str
    ) -> CallServices | None:
        """How calls are bridged into rooms: in the media workers (none
        without rooms, or with the media in this process)."""
        pool, rooms, sip = self._media, self.rooms, self.cfg.sip
        if rooms is None or not isinstance(pool, MediaPool):
            log.warning("SIP calls cannot be answered: they need rooms in media workers")
            return None

        def flush(now: float) -> None:
            if self.sip_endpoint is not None:
                self.sip_endpoint.flush(now)

        def open_media(
            room: tuple[str, str], spec: dict[str, Any], events: CallEvents
        ) -> CallProxy:
            return pool.open_call(room, spec, bind, events)

        return CallServices(
            rooms=rooms,
            open_media=open_media,
            clock=loop.time,
            flush=flush,
            media_address=sip.media_address or host,
            rtp_ports=(sip.rtp_port_min, sip.rtp_port_max),
            media_timeout=sip.media_timeout,
            max_duration=sip.max_call_duration,
            new_key=functools.partial(secrets.token_bytes, KEY_LENGTH),
        )

    def _rooms(self, domain: Domain) -> RoomHub | None:
        """The live rooms, with aiortc for their media (in media worker
        processes, or here); none without aiortc."""
        rtc = self.cfg.rtc
        problem = media_link.aiortc_problem()
        if problem:
            log.warning("rooms are off: %s (pip install edgedispatch[rtc])", problem)
            return None
        if rtc.media_in_process:
            from edgedispatch.net.media import MediaFactory

            self._media = MediaFactory(rtc)
        else:
            self._media = MediaPool(rtc, rtc.media_workers)
        return RoomHub(domain, rtc, self._media)

    def _open_store(self, domain: Domain, loop: asyncio.AbstractEventLoop) -> Store:
        """The store, and the state it kept put back into the domain, before
        anything listens (so /readyz answers only after recovery)."""
        data_dir = self.cfg.server.data_dir or os.environ.get("STATE_DIRECTORY", "")
        if not data_dir:
            return MemoryStore()
        store = SqliteStore(data_dir, self.cfg.server.store_synchronous)
        journal = Journal(store, self.cfg.dispatch.queue_timeout)
        recovered = journal.recover_into(domain, loop.time())
        store.start(loop)
        self.store = store
        log.info("store %s: recovered %s", store.path, recovered.summary())
        return store

    def _contain(self) -> Containment:
        containment = Containment(self.cfg)
        containment.start()
        return containment

    def request_stop(self) -> None:
        """SIGTERM: the first drains, the second exits at once."""
        self._signals += 1
        if self._signals == 1:
            log.info("draining: no new work; waiting for running jobs")
            self._notifier.stopping("draining: no new work; waiting for running jobs")
            assert self.domain is not None
            now = asyncio.get_running_loop().time()
            self.domain.begin_drain(now)
            self.domain.step(now)
            if self.sip_endpoint is not None and self.sip_endpoint.uas is not None:
                self.sip_endpoint.uas.drain()  # new calls and probes: 503
            asyncio.get_running_loop().create_task(self._drain())
        else:
            log.warning("second signal: exiting now")
            self._stop.set()

    async def _drain(self) -> None:
        assert self.domain is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.server.drain_timeout
        while (self._running_jobs() or self._live_calls()) and loop.time() < deadline:
            await asyncio.sleep(0.2)
        left = self._running_jobs()
        if left:
            log.warning("drain timeout: exiting with %d jobs still running", left)
        if self._live_calls():
            log.warning("drain timeout: exiting with %d calls still up", self._live_calls())
        self._stop.set()

    def _expire_connections(self) -> None:
        """Every second: close the connections past their deadline (a head
        or body not sent in time, an idle keep-alive; ``net.http.Limits``)."""
        loop = asyncio.get_running_loop()
        expire(self.connections, loop.time())
        if self._server is not None and self._server.is_serving():
            loop.call_later(1.0, self._expire_connections)

    def _close_store(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None
        elif self.domain is not None:
            queued = self.domain.queued_jobs()
            if queued:
                log.warning(
                    "exiting with %d queued jobs, which are dropped: no data_dir to keep them",
                    queued,
                )

    def _live_calls(self) -> int:
        """The SIP calls a drain waits for: offered or up, not each
        transaction (a refused call's lasts 32 s for late copies, and the
        drain's own 503s would keep it going)."""
        endpoint = self.sip_endpoint
        return 0 if endpoint is None or endpoint.uas is None else endpoint.uas.live_calls()

    def _running_jobs(self) -> int:
        """What the drain waits for: every running job; with a store, only
        those of local workers, which end with the server.  A remote
        worker's job runs on without us: the store keeps it, and the worker
        claims it back when the server is up again (so an upgrade does not
        wait for the longest call)."""
        assert self.domain is not None
        if self.store is not None:
            return self.domain.local_running_jobs()
        return self.domain.running_jobs()

    def _housekeeping(self) -> None:
        """Every FLUSH_INTERVAL: write the buffered log lines, and keep the
        domain's wall clock in step with the system's (NTP may move it)."""
        logs.flush()
        loop = asyncio.get_running_loop()
        if self.domain is not None:
            self.domain.wall.offset = time.time() - loop.time()
        if not self._stop.is_set():
            loop.call_later(logs.DeferredStreamHandler.FLUSH_INTERVAL, self._housekeeping)

    def _reclaim(self, reclaimer: Reclaimer) -> None:
        """Every RECLAIM_INTERVAL: give memory back after a mass deletion
        (``net.reclaim``; most looks cost a few microseconds)."""
        reclaimer.check()
        if not self._stop.is_set():
            asyncio.get_running_loop().call_later(RECLAIM_INTERVAL, self._reclaim, reclaimer)

    async def wait_stopped(self) -> None:
        await self._stop.wait()
        self._watchdog.stop()
        self._notifier.stopping("stopping")
        await self.close()
        self._notifier.close()

    async def close(self) -> None:
        """Stop listening, stop local agents, and drop every connection."""
        # First: what is pending stays written as it is now (queued jobs
        # queued, running ones running), not as the shutdown ends them.
        self._close_store()
        # Rooms before SIP: their calls' BYEs go out while SIP still can.
        if self.rooms is not None:
            self.rooms.close_all(asyncio.get_running_loop().time())
        if self._sip is not None:
            self._sip.close()
            self._sip = None
        if self.sip_endpoint is not None:
            self.sip_endpoint.close_streams()  # inbound, and our trunks
        if self._sip_tcp is not None:
            self._sip_tcp.close()
            self._sip_tcp = None
        if self._sip_tls is not None:
            self._sip_tls.close()
            self._sip_tls = None
        if self._media is not None:
            await self._media.close()
            self._media = None
        if self._webhooks is not None:
            await self._webhooks.close()
            self._webhooks = None
        if self.agents is not None:
            await self.agents.close()
            self.agents = None
        if self.containment is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.containment.close)
            self.containment = None
        if self._timer is not None:
            self._timer.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.abort()
        if self.sip_endpoint is not None:
            self.sip_endpoint.abort_streams()
        if self._server is not None:
            await self._server.wait_closed()
        await asyncio.sleep(0)  # let connection_lost callbacks run

    def _ask_for_slices(self) -> None:
        """Short slices (``sched``) for the loop's thread; the media workers
        and the store's writer ask for theirs as they start (SLICE_ENV)."""
        seconds = self.cfg.server.sched_slice
        if seconds <= 0:
            return
        os.environ[sched.SLICE_ENV] = repr(seconds)
        if sched.request_slice(seconds):
            log.info("scheduler: %.2f ms slices for the event loop, the media workers and the"
                     " store's writer", seconds * 1000)  # fmt: skip
        else:
            log.info("scheduler: this kernel gives no custom slices (Linux 6.12 and later do)")

    async def run(self, announce: Callable[[str], None] = print) -> None:
        await self.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        host = self.cfg.server.bind
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
        announce(f"edgedispatch listening on http://{shown}:{self.port}")
        if self.cfg.dev:
            key, secret = next(iter(self.cfg.keys.items()))
            announce(
                f"dev mode: LIVEKIT_URL=ws://{shown}:{self.port} "
                f"LIVEKIT_API_KEY={key} LIVEKIT_API_SECRET={secret}"
            )
        log.info("serving (compiled core: %s)", _core.COMPILED)
        # Every listener is bound and the store's state recovered (start()):
        # systemd may now start what comes after us, and kick the watchdog.
        sip = f", SIP on port {self.sip_port}" if self.sip_port else ""
        self._notifier.ready(f"serving on port {self.port}{sip}")
        self._watchdog.start(loop)
        # Everything allocated so far (modules, protobuf descriptors) lives
        # as long as the process: keep the cyclic GC from walking it again
        # in every full collection, which otherwise pauses the loop ~30 ms.
        gc.collect()
        gc.freeze()
        self._housekeeping()
        self._reclaim(Reclaimer())
        sys.stdout.flush()
        await self.wait_stopped()


def _room_closed(event: DomainEvent) -> None:
    assert isinstance(event, RoomClosed)
    convert.forget_room(event.room)


def raise_fd_limit() -> None:
    """Thousands of idle workers need thousands of sockets; the usual soft
    limit of 1024 would refuse them while the hard limit allows more."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve(cfg: Config, use_uvloop: bool = True, inherited: Inherited = NOTHING_INHERITED) -> None:
    raise_fd_limit()
    if use_uvloop:
        import uvloop

        uvloop.run(Server(cfg, inherited).run())
    else:
        asyncio.run(Server(cfg, inherited).run())
