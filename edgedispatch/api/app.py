"""The routes of the one server port: HTTP requests and WebSocket upgrades.

HTTP: Twirp under ``/twirp/`` (LiveKit's services, and edgedispatch's own
``AgentService``), the health checks, and the clients' ``/rtc/validate``.
Upgrades: the agent worker WebSocket at ``/agent``, and the clients' signal
connections at ``/rtc`` and ``/rtc/v1``.

Each Twirp call runs in one pass: decode, check the token, ask the domain,
step the domain once, render, encode.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import msgspec
from google.protobuf.message import Message

from edgedispatch.api import agents as agents_api
from edgedispatch.api import live_rooms, livekit
from edgedispatch.api import sip as sip_api
from edgedispatch.config import ServerConfig
from edgedispatch.dispatch.domain import Domain
from edgedispatch.errors import (
    EdgeDispatchError,
    Malformed,
    PermissionDenied,
    TwirpError,
    Unauthenticated,
)
from edgedispatch.rtc.room import RoomHub, resume_refused
from edgedispatch.sip.directory import Directory
from edgedispatch.wire import signal, twirp
from edgedispatch.wire.http import Later, Request, Response
from edgedispatch.wire.tokens import Claims, Verifier, bearer
from edgedispatch.worker.session import MessageSink, WorkerSession

log = logging.getLogger("edgedispatch.http")


class WebSocket(MessageSink, Protocol):
    """What an upgrade's handler factory gets: the accepted connection."""

    def keepalive(self, interval: float, timeout: float) -> None: ...


class MessageHandler(Protocol):
    """What the connection hands each message to (``net.ws`` drives it)."""

    def on_message(self, data: bytes, now: float) -> None: ...

    def on_closed(self, code: int, reason: str, now: float) -> None: ...

    def next_deadline(self) -> float | None: ...

    def on_timer(self, now: float) -> None: ...


#: An accepted upgrade: called with the open connection, returns its handler.
Accept = Callable[[WebSocket], MessageHandler]
HttpHandler = Callable[[Request], "Response | Later | Awaitable[Response | Later]"]

AGENT_SERVICE_PREFIX = f"/twirp/{agents_api.SERVICE}/"
#: The Twirp methods that only read (go on while the store cannot commit).
_READS = ("List", "Get")


def twirp_methods() -> set[tuple[str, str]]:
    """Every (service, method) routed under ``/twirp/``: what the
    authorisation matrix (tests/unit/test_authz_matrix.py) must have a row
    for, so that no RPC is added without its expected answers."""
    agent_methods = {(agents_api.SERVICE, method) for method in agents_api.METHODS}
    sip_methods = {(sip_api.SERVICE, method) for method in (*sip_api.ROUTES, *sip_api.CALLS)}
    return set(livekit.ROUTES) | set(live_rooms.ROUTES) | agent_methods | sip_methods


class Durable(Protocol):
    """The store, as the API sees it (``store.sqlite.SqliteStore``)."""

    @property
    def pending(self) -> int:
        """Writes queued and not yet committed."""
        ...

    @property
    def written(self) -> int:
        """Writes queued since start (a call compares it before and after)."""
        ...

    @property
    def failure(self) -> str:
        """Why commits fail now ("" while they do not)."""
        ...

    def unavailable(self) -> EdgeDispatchError:
        """The refusal of new work while commits fail."""
        ...

    def after_commit(self, fn: Callable[[], None], key: str = "") -> None:
        """Calls ``fn`` once what is queued now is committed (or failed);
        with the ``key`` of a marked write, once that write is."""
        ...

    def when_committed(self, fn: Callable[[EdgeDispatchError | None], None]) -> None:
        """Calls ``fn`` with None once what is queued now is committed, or
        with the error if that failed."""
        ...


#: Prometheus' text exposition format, version 0.0.4.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _loopback(peer: str) -> bool:
    try:
        return ipaddress.ip_address(peer.removeprefix("::ffff:")).is_loopback
    except ValueError:
        return peer == "" or peer.startswith("/")  # a Unix socket is local


class App:
    """:param agents: the agent definitions' manager, once it is up."""

    def __init__(self, domain: Domain, verifier: Verifier, server: ServerConfig) -> None:
        self.domain = domain
        self.verifier = verifier
        self._server = server
        self.agents: agents_api.AgentAdmin | None = None
        #: The live rooms, when this server serves /rtc.
        self.rooms: RoomHub | None = None
        #: The store: an answer that wrote to it waits for the commit.
        self.store: Durable | None = None
        #: The tenants' SIP trunks and dispatch rules (``livekit.SIP``).
        self.sip: Directory | None = None
        #: Places outbound calls (``CreateSIPParticipant``), when SIP and rooms are up.
        self.dialer: sip_api.Dialer | None = None
        #: Transfers calls (``TransferSIPParticipant``), when SIP and rooms are up.
        self.transfers: sip_api.Transferer | None = None
        #: ``/metrics``: renders the page (``obs.metrics``), and the token a
        #: scraper must send ("": loopback clients only).
        self.metrics: Callable[[], bytes] | None = None
        self.metrics_token = ""
        #: ``/status`` (the page) and ``/debug/state`` (its data: the state
        #: of one tenant, or of all with None, at a wall-clock time in ns).
        self.status_page: Callable[[], bytes] | None = None
        self.state: Callable[[str | None, int], dict[str, Any]] | None = None
        self._exact: dict[tuple[str, str], HttpHandler] = {
            ("GET", "/"): self._healthy,
            ("GET", "/healthz"): self._healthy,
            ("GET", "/readyz"): self._ready,
            ("GET", "/metrics"): self._metrics,
            ("GET", "/status"): self._status_page,
            ("GET", "/debug/state"): self._state,
            ("GET", "/rtc/validate"): self._rtc_validate,
            ("GET", "/rtc/v1/validate"): self._rtc_validate,
        }
        # Longest prefix first.
        self._prefixes: list[tuple[str, HttpHandler]] = [
            (AGENT_SERVICE_PREFIX, self._agent_service),
            ("/twirp/", self._twirp),
        ]
        self._upgrades: dict[str, Callable[[Request], Response | Accept]] = {
            "/agent": self._agent_upgrade,
            "/rtc": self._rtc_upgrade,
            "/rtc/v1": self._rtc_upgrade,
        }

    # The HTTP layer's Application ----------------------------------------

    def handle_http(self, req: Request) -> Response | Later | Awaitable[Response | Later]:
        handler = self._exact.get((req.method, req.path))
        if handler is not None:
            return handler(req)
        for prefix, handler in self._prefixes:
            if req.path.startswith(prefix):
                return handler(req)
        if req.path in self._upgrades:
            return Response(400, f"{req.path} takes WebSocket upgrades only\n".encode())
        return Response(404, b"not found\n")

    def handle_upgrade(self, req: Request) -> Response | Accept:
        """A Response refuses the upgrade; an ``Accept`` takes it."""
        route = self._upgrades.get(req.path)
        if route is None:
            return Response(404, b"not found\n")
        return route(req)

    # ------------------------------------------------------------------

    def _healthy(self, req: Request) -> Response:
        return Response(200, b"OK")

    def _ready(self, req: Request) -> Response:
        ok = not self.domain.draining
        return Response(200 if ok else 503, b"ready" if ok else b"draining")

    def _metrics(self, req: Request) -> Response:
        if self.metrics is None:
            return Response(404, b"metrics are off ([metrics] enabled = false)\n")
        if self.metrics_token:
            given = (req.headers.get("authorization") or "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), self.metrics_token.encode()):
                return Response(401, b"metrics need the bearer token of [metrics] token\n")
        elif not _loopback(req.peer):
            return Response(
                403, b"metrics are served to loopback clients only (or set [metrics] token)\n"
            )
        return Response(200, self.metrics(), METRICS_CONTENT_TYPE)

    def _status_page(self, req: Request) -> Response:
        """The page holds no data (it fetches /debug/state with the token
        the viewer gives it), so anyone may load it."""
        if self.status_page is None:
            return Response(404, b"not found\n")
        return Response(200, self.status_page(), "text/html; charset=utf-8")

    def _state(self, req: Request) -> Response:
        """A token with roomList (as ``lk room list`` needs): a key of the
        default tenant (the operator's) sees every tenant, a tenant's key
        only its own."""
        if self.state is None:
            return Response(404, b"not found\n")
        try:
            claims = self._claims(req)
            claims.require("roomList")
        except EdgeDispatchError as exc:
            return self._rtc_refusal(req, exc)
        scope = None if claims.tenant == "" and not claims.program else claims.tenant
        body = msgspec.json.encode(self.state(scope, self.domain.wall.ns(req.now)))
        return Response(200, body, "application/json")

    def _claims(self, req: Request, query_token: bool = False) -> Claims:
        token = bearer(
            req.headers.get("authorization"), req.query.get("access_token") if query_token else None
        )
        return self.verifier.verify(token, self.domain.wall(req.now))

    def _agent_upgrade(self, req: Request) -> Response | Accept:
        try:
            claims = self._claims(req, query_token=True)
            claims.require("agent")
        except EdgeDispatchError as exc:
            log.info("worker refused: %s", exc.msg)
            return Response(401, f"{exc.msg}\n".encode())
        server = self._server
        secret = self.verifier.secret(claims.api_key) or ""

        def accept(conn: WebSocket) -> WorkerSession:
            if server.ping_interval > 0:
                conn.keepalive(server.ping_interval, server.ping_timeout)
            return WorkerSession(
                conn,
                self.domain,
                api_key=claims.api_key,
                secret=secret,
                tenant=claims.tenant,
                public_url=server.public_url,
                now=req.now,
                after_commit=self._after_commit,
            )

        return accept

    def _after_commit(self, fn: Callable[[], None], key: str) -> None:
        """``fn`` once the store has committed the write marked ``key`` (or
        what is written so far); at once without a store."""
        if self.store is None:
            fn()
        else:
            self.store.after_commit(fn, key)

    def _rtc_check(self, req: Request) -> tuple[Claims, signal.Grant, signal.JoinParams]:
        """The join a client asks for, checked: 401 for a bad token, 403 for
        one that does not let it into the room, 400 for a malformed ask."""
        claims = self._claims(req, query_token=True)
        grant = signal.join_grant(claims.raw, claims.video, claims.identity)
        params = signal.parse_join(req.path.removesuffix("/validate"), req.query)
        _check_room(params.room, grant)
        return claims, grant, params

    def _rtc_refusal(self, req: Request, exc: EdgeDispatchError) -> Response:
        status = 401 if isinstance(exc, Unauthenticated) else 403
        if isinstance(exc, Malformed):
            status = 400
        log.info("client refused (%d): %s", status, exc.msg, extra={"peer": req.peer})
        return Response(status, f"{exc.msg}\n".encode())

    def _rtc_validate(self, req: Request) -> Response:
        if self.rooms is None:
            return Response(404, b"this server does not serve rooms\n")
        try:
            claims = self._claims(req, query_token=True)
            grant = signal.join_grant(claims.raw, claims.video, claims.identity)
            # As the join itself refuses it (the SDKs ask here why a join
            # failed; the join parameters are not needed to answer that).
            _check_room(req.query.get("room", ""), grant)
        except EdgeDispatchError as exc:
            return self._rtc_refusal(req, exc)
        return Response(200, b"success")

    def _rtc_upgrade(self, req: Request) -> Response | Accept:
        hub = self.rooms
        if hub is None:
            # The SDKs fall back from /rtc/v1 to /rtc on a 404, then fail.
            return Response(404, b"this server does not serve rooms (rtc.enabled)\n")
        try:
            claims, grant, params = self._rtc_check(req)
        except EdgeDispatchError as exc:
            return self._rtc_refusal(req, exc)

        who = {"room": grant.room, "participant": grant.identity, "tenant": claims.tenant}

        def accept(conn: WebSocket) -> MessageHandler:
            if params.reconnect:
                # aiortc cannot restart ICE: the client is told to rejoin.
                log.info("a resume was answered with leave(RECONNECT)", extra=who)
                conn.send(resume_refused())
                conn.close(1000, "resume is not supported: rejoin")
                return _Ended()
            try:
                return hub.join(conn, claims.tenant, grant, params, req.now)
            except EdgeDispatchError as exc:
                log.info("join refused: %s", exc.msg, extra=who)
                conn.close(1008, exc.msg)
                return _Ended()

        return accept

    async def _agent_service(self, req: Request) -> Response | Later:
        try:
            if req.method != "POST" or self.agents is None:
                raise TwirpError("bad_route", f"no such method: {req.method} {req.path}")
            claims = self._claims(req)
            method = req.path.rsplit("/", 1)[1]
            written = self._refuse_writes(method)
            body = await agents_api.handle(self.agents, method, claims, req.body)
            return self._durable(Response(200, body, twirp.JSON), written)
        except EdgeDispatchError as exc:
            status, body = twirp.error_body(exc)
            return Response(status, body, twirp.JSON)

    def _twirp(self, req: Request) -> Response | Later:
        written = self.store.written if self.store is not None else 0
        answer = self._twirp_call(req)
        if isinstance(answer, Later):
            return answer  # a call waiting for its callee: it wrote nothing
        return self._durable(answer, written)

    def _refuse_writes(self, method: str) -> int:
        """While the store cannot commit, a call that would write to it is
        refused (after its credentials are checked) before it changes
        anything: ``unavailable``, with the cause; reads go on.  Returns
        the store's write count, to tell afterwards whether the call
        wrote."""
        store = self.store
        if store is None:
            return 0
        if store.failure and method and not method.startswith(_READS):
            raise store.unavailable()
        return store.written

    def _durable(self, answer: Response, written: int) -> Response | Later:
        """``answer`` now, or once the store has committed what its call
        wrote (a failed commit answers ``unavailable`` instead).  A call
        that wrote nothing waits too while others' writes are pending (it
        may show them), except while the store fails: reads go on then.
        The calls of one loop pass share one commit, and each waits with a
        callback (``Later``), not a task."""
        store = self.store
        if store is None or not store.pending or answer.status != 200:
            return answer
        if store.failure and store.written == written:
            return answer
        later = Later()

        def settle(error: EdgeDispatchError | None) -> None:
            if error is None:
                later.settle(answer)
            else:
                status, body = twirp.error_body(error)
                later.settle(Response(status, body, twirp.JSON))

        store.when_committed(settle)
        return later

    def _twirp_call(self, req: Request) -> Response | Later:
        encoding = twirp.JSON
        try:
            _, _, service, method = (req.path.split("/") + ["", ""])[:4]
            route = livekit.ROUTES.get((service, method))
            live = live_rooms.ROUTES.get((service, method))
            request_type = route.request if route else live.request if live else None
            sip_route = sip_api.ROUTES.get(method) if service == sip_api.SERVICE else None
            if sip_route is not None:
                request_type = sip_route.request
            placing = sip_api.CALLS.get(method) if service == sip_api.SERVICE else None
            if placing is not None:
                request_type = placing
            if request_type is None or req.method != "POST":
                raise TwirpError("bad_route", f"no such method: {req.method} {req.path}")
            encoding = twirp.encoding_of(req.headers.get("content-type", ""))
            claims = self._claims(req)
            # Only these write to the store (live-room calls change no
            # stored state).
            self._refuse_writes(method if route is not None else "")
            msg = twirp.decode(req.body, encoding, request_type)
            try:
                if method == "TransferSIPParticipant" and placing is not None:
                    placed = sip_api.transfer_call(self.rooms, self.transfers, claims, msg, req.now)
                    if isinstance(placed, sip_api.Waiting):
                        return _when_answered(placed, encoding)
                    result = placed
                elif placing is not None:
                    placed = sip_api.place_call(self.sip, self.dialer, claims, msg, req.now)
                    if isinstance(placed, sip_api.Waiting):
                        return _when_answered(placed, encoding)
                    result = placed
                elif sip_route is not None:
                    wall = self.domain.wall(req.now)
                    result = sip_api.handle(self.sip, method, claims, msg, wall)
                elif route is not None:
                    result = route.call(self.domain, claims, msg, req)
                else:
                    assert live is not None
                    result = live.call(self.domain, self.rooms, claims, msg, req)
            finally:
                # Once per request, whatever the call did before it failed.
                self.domain.step(req.now)
            answer = route.render(self.domain, result) if route and route.render else result
            content_type = twirp.PROTOBUF if encoding == twirp.PROTOBUF else twirp.JSON
            return Response(200, twirp.encode(answer, encoding), content_type)
        except EdgeDispatchError as exc:
            status, body = twirp.error_body(exc)
            return Response(status, body, twirp.JSON)
        except Exception as exc:
            log.exception("twirp %s failed", req.path)
            status, body = twirp.error_body(TwirpError("internal", str(exc)))
            return Response(status, body, twirp.JSON)


def _when_answered(waiting: sip_api.Waiting, encoding: str) -> Later:
    """The answer of a call placed with ``wait_until_answered``."""
    later = Later()

    def settle(result: Message | EdgeDispatchError) -> None:
        if isinstance(result, EdgeDispatchError):
            status, body = twirp.error_body(result)
            later.settle(Response(status, body, twirp.JSON))
            return
        content_type = twirp.PROTOBUF if encoding == twirp.PROTOBUF else twirp.JSON
        later.settle(Response(200, twirp.encode(result, encoding), content_type))

    waiting.then(settle)
    return later


def _check_room(asked: str, grant: signal.Grant) -> None:
    """A client that names its room (``?room=``) must hold a token for it."""
    if asked and asked != grant.room:
        raise PermissionDenied(f"token is not valid for room {asked!r}")


class _Ended:
    """The handler of a connection refused after the upgrade (closing)."""

    def on_message(self, data: bytes, now: float) -> None:
        pass

    def on_closed(self, code: int, reason: str, now: float) -> None:
        pass

    def next_deadline(self) -> float | None:
        return None

    def on_timer(self, now: float) -> None:
        pass
