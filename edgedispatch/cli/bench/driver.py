"""The load of ``bench dispatch``: CreateDispatch at a fixed rate (open
loop) over keep-alive HTTP connections, one request at a time on each.

A protocol object per connection and one timer for the whole driver: each
time it fires it sends every request that is due on an idle connection and
sets itself for the next one; an answer frees its connection (and sends
what waited for one).  The driver shares the machine with the server it
measures, so it spends as little as it can: with a task per connection, an
``asyncio.sleep`` per request and stream readers it took ~120 µs of CPU
per request.

A request that finds no idle connection waits for one and is sent late;
its latency still counts from when it was due, so a slow server cannot
hide its queue in the driver's.
"""

from __future__ import annotations

import asyncio
import re
import time

from livekit.protocol import agent_dispatch

from edgedispatch.cli.bench.common import admin_token, read_response

PATH = "/twirp/livekit.AgentDispatchService/CreateDispatch"
ROOMS = 256
#: Keep-alive connections the driver sends on, each with one request at a
#: time.  Enough that the driver stays open-loop when answers wait a few
#: milliseconds for the store's commit: with 32, a run with the store was
#: held to 32 answers per commit round (about 2,400/s at 13 ms), so it
#: measured the driver rather than the server.  128 still did, at
#: saturation: answers that waited 30-40 ms for a commit on the server's
#: one core capped the run near 128 / 0.035 s, and the store measured 68-78%
#: of the plain figure; with 512 the plain server also went from about
#: 4,250 to 5,400 dispatches/s (its passes take more requests each).
CONNECTIONS = 512

_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")


class Driver:
    """Sends CreateDispatch at ``rate`` per second for ``duration`` seconds."""

    def __init__(
        self, host: str, port: int, rate: float, duration: float, scrape: float = 0.0
    ) -> None:
        self.host, self.port, self.rate, self.duration = host, port, rate, duration
        self.due: dict[str, float] = {}  # metadata (sequence number) -> due time
        self.errors = 0
        #: Seconds between scrapes of /metrics while sending (0: none), and
        #: how long each scrape took to answer.
        self.scrape = scrape
        self.scrape_ms: list[float] = []
        self._next = 0
        self._total = int(rate * duration)
        self._heads = [
            (
                f"POST {PATH} HTTP/1.1\r\nHost: {host}\r\n"
                f"Content-Type: application/protobuf\r\n"
                f"Authorization: Bearer {admin_token(f'bench-{r}')}\r\n"
            ).encode()
            for r in range(ROOMS)
        ]
        self._idle: list[_Connection] = []
        self._in_flight = 0
        self._timer: asyncio.TimerHandle | None = None
        self._t0 = 0.0
        #: When every connection was open (the first request is due 0.2 s later).
        self.opened_at = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._done: asyncio.Future[None] = loop.create_future()
        opened = await asyncio.gather(
            *(
                loop.create_connection(self._connection, self.host, self.port)
                for _ in range(CONNECTIONS)
            )  # fmt: skip
        )
        self.opened_at = time.monotonic()
        self._t0 = self.opened_at + 0.2
        self._pump()
        scraper = [self._scraper()] if self.scrape > 0 else []
        try:
            await asyncio.gather(self._done, *scraper)
        finally:
            for transport, _ in opened:
                transport.close()

    def _connection(self) -> _Connection:
        return _Connection(self)

    def _pump(self, timer_fired: bool = False) -> None:
        """Send what is due on the idle connections; wake again when the
        next request is due (or, with none idle, when one answers).

        The request a timer was set for goes when the timer fires, as after
        an ``asyncio.sleep``: uvloop's timers count whole milliseconds from
        the start of the loop's pass, and one fires up to half a
        millisecond early or late.  Set again for what is left (less than
        a millisecond), it fired at once, and again: the driver spun."""
        self._timer = None
        now = time.monotonic()
        while self._next < self._total and self._idle:
            due = self._t0 + self._next / self.rate
            if due > now and not timer_fired:
                self._timer = asyncio.get_running_loop().call_later(due - now, self._on_timer)
                return
            timer_fired = False
            self._send(self._idle.pop(), self._next, due)
            self._next += 1
        self._maybe_done()

    def _on_timer(self) -> None:
        self._pump(timer_fired=True)

    def _send(self, conn: _Connection, seq: int, due: float) -> None:
        room = seq % ROOMS
        body = agent_dispatch.CreateAgentDispatchRequest(
            agent_name="bench", room=f"bench-{room}", metadata=str(seq)
        ).SerializeToString()
        self.due[str(seq)] = due
        self._in_flight += 1
        conn.send(self._heads[room] + b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def opened(self, conn: _Connection) -> None:
        self._idle.append(conn)

    def answered(self, conn: _Connection, ok: bool) -> None:
        self._in_flight -= 1
        self.errors += not ok
        self._idle.append(conn)
        if self._timer is None:  # waiting for a connection, not for a due time
            self._pump()

    def lost(self, conn: _Connection, in_flight: bool) -> None:
        if in_flight:
            self._in_flight -= 1
            self.errors += 1
        if conn in self._idle:
            self._idle.remove(conn)
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self._in_flight or self._done.done():
            return
        if self._next >= self._total:
            self._done.set_result(None)
        elif not self._idle and self._timer is None:
            self._done.set_exception(ConnectionError("every connection to the server was lost"))

    async def _scraper(self) -> None:
        """GET /metrics every ``scrape`` seconds while the load runs, as
        Prometheus would (what metrics cost is read beside a run without)."""
        reader, writer = await asyncio.open_connection(self.host, self.port)
        request = f"GET /metrics HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode()
        # Until the last request is due (not until each is taken: with more
        # connections than requests, all are taken at the start).
        end = self._t0 + self._total / self.rate
        try:
            while time.monotonic() < end:
                await asyncio.sleep(self.scrape)
                started = time.monotonic()
                writer.write(request)
                head, _ = await read_response(reader)
                if head.startswith(b"HTTP/1.1 200"):
                    self.scrape_ms.append((time.monotonic() - started) * 1000)
        finally:
            writer.close()


class _Connection(asyncio.Protocol):
    """One keep-alive connection: a request out, its response parsed as it
    comes (a head with a Content-Length, then the body)."""

    def __init__(self, driver: Driver) -> None:
        self._driver = driver
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiting = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's are not subclasses
        self._driver.opened(self)

    def send(self, data: bytes) -> None:
        assert self._transport is not None
        self._waiting = True
        self._transport.write(data)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            found = _LENGTH.search(buffer, 0, end)
            size = end + 4 + (int(found.group(1)) if found else 0)
            if len(buffer) < size:
                return
            ok = buffer.startswith(b"HTTP/1.1 200")
            del buffer[:size]
            self._waiting = False
            self._driver.answered(self, ok)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._driver.lost(self, self._waiting)
