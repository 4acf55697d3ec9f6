"""HTTP routes of the one server port: Twirp under ``/twirp/``, the agent
worker WebSocket at ``/agent``, and health checks."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from edgedispatch.api import agents as agents_api
from edgedispatch.api import livekit as api
from edgedispatch.dispatch.dispatcher import Dispatcher
from edgedispatch.errors import EdgeDispatchError
from edgedispatch.net.http import Request, Response
from edgedispatch.net.ws import WebSocketConnection
from edgedispatch.runtime.manager import AgentManager
from edgedispatch.wire import twirp
from edgedispatch.wire.tokens import AuthError, Verifier, bearer
from edgedispatch.worker.session import AgentConnection

log = logging.getLogger("edgedispatch.http")


class App:
    def __init__(self, dispatcher: Dispatcher, verifier: Verifier) -> None:
        self.dispatcher = dispatcher
        self.verifier = verifier
        self.agents: AgentManager | None = None  # set once the agents are up

    def handle_http(self, req: Request) -> Response | Coroutine[Any, Any, Response]:
        if req.path.startswith(f"/twirp/{agents_api.SERVICE}/"):
            return self._agents_api(req)
        if req.path.startswith("/twirp/"):
            return self._twirp(req)
        if req.method == "GET" and req.path in ("/", "/healthz"):
            return Response(200, b"OK")
        if req.method == "GET" and req.path == "/readyz":
            ok = not self.dispatcher.draining
            return Response(200 if ok else 503, b"ready" if ok else b"draining")
        if req.path == "/agent":
            return Response(400, b"the agent endpoint takes WebSocket upgrades only\n")
        return Response(404, b"not found\n")

    def handle_upgrade(self, req: Request) -> Response | Callable[[WebSocketConnection], object]:
        if req.path != "/agent":
            return Response(404, b"not found\n")
        try:
            claims = self.verifier.verify(
                bearer(req.headers.get("authorization"), req.query.get("access_token")),
                time.time(),
            )
            claims.require("agent")
        except EdgeDispatchError as exc:
            log.info("worker refused: %s", exc.msg)
            return Response(401, f"{exc.msg}\n".encode())
        server = self.dispatcher.cfg.server

        def accept(conn: WebSocketConnection) -> AgentConnection:
            if server.ping_interval > 0:
                conn.keepalive(server.ping_interval, server.ping_timeout)
            return AgentConnection(conn, self.dispatcher, claims.api_key, claims.tenant)

        return accept

    async def _agents_api(self, req: Request) -> Response:
        try:
            if req.method != "POST" or self.agents is None:
                raise twirp.TwirpError("bad_route", f"no such method: {req.method} {req.path}")
            try:
                claims = self.verifier.verify(bearer(req.headers.get("authorization")), time.time())
            except AuthError as exc:
                raise twirp.TwirpError("unauthenticated", exc.msg) from exc
            method = req.path.rsplit("/", 1)[1]
            body = await agents_api.handle(self.agents, method, claims, req.body)
            return Response(200, body, twirp.JSON)
        except EdgeDispatchError as exc:
            status, body = twirp.error_body(exc)
            return Response(status, body, twirp.JSON)

    def _twirp(self, req: Request) -> Response:
        encoding = twirp.JSON
        try:
            _, _, service, method = (req.path.split("/") + ["", ""])[:4]
            route = api.ROUTES.get((service, method))
            if route is None or req.method != "POST":
                raise twirp.TwirpError("bad_route", f"no such method: {req.method} {req.path}")
            encoding = twirp.encoding_of(req.headers.get("content-type", ""))
            try:
                claims = self.verifier.verify(bearer(req.headers.get("authorization")), time.time())
            except AuthError as exc:
                raise twirp.TwirpError("unauthenticated", exc.msg) from exc
            cls, handler = route
            msg = twirp.decode(req.body, encoding, cls)
            answer = handler(self.dispatcher, claims, msg, req.headers)
            content_type = twirp.PROTOBUF if encoding == twirp.PROTOBUF else twirp.JSON
            return Response(200, twirp.encode(answer, encoding), content_type)
        except EdgeDispatchError as exc:
            status, body = twirp.error_body(exc)
            return Response(status, body, twirp.JSON)
        except Exception as exc:
            log.exception("twirp %s failed", req.path)
            status, body = twirp.error_body(twirp.TwirpError("internal", str(exc)))
            return Response(status, body, twirp.JSON)
