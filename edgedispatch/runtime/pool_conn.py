"""A native pool's connections: the zygote's, and each child's control and
output connections.  Every one starts with a ``Hello`` naming its role and
pid; after it, control connections carry framed messages
(``edgedispatch.runtime.messages``) and output connections raw bytes, cut
into lines here."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol, cast

import msgspec

from edgedispatch.runtime import messages as m
from edgedispatch.runtime.process import LineBuffer

log = logging.getLogger("edgedispatch.agents")

OUTPUT_ROLES = ("output", "zygote-output")
ROLES = ("zygote", "child", *OUTPUT_ROLES)


class ConnOwner(Protocol):
    """What a ``PoolConn`` reports to (the ``NativePool``)."""

    name: str

    def conn_made(self, conn: PoolConn) -> bool: ...  # False: refuse it

    def hello(self, conn: PoolConn) -> None: ...

    def message(self, conn: PoolConn, msg: m.Message) -> None: ...

    def output(self, conn: PoolConn, lines: list[str]) -> None: ...

    def conn_lost(self, conn: PoolConn) -> None: ...


class PoolConn(asyncio.Protocol):
    def __init__(self, owner: ConnOwner) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.reader = m.FrameReader()
        self.role = ""  # from its Hello
        self.pid = 0
        self.lines = LineBuffer()  # an output connection's

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)
        if not self.owner.conn_made(self):
            transport.close()

    def data_received(self, data: bytes) -> None:
        if self.role in OUTPUT_ROLES:
            self._output(self.lines.feed(data))
            return
        try:
            if not self.role:
                first = self.reader.feed(data, 1)
                if not first:
                    return
                hello = first[0]
                if not isinstance(hello, m.Hello) or hello.role not in ROLES:
                    raise ValueError(f"expected a Hello, got {hello!r}")
                self.role, self.pid = hello.role, hello.pid
                self.owner.hello(self)
                if self.role in OUTPUT_ROLES:
                    self._output(self.lines.feed(self.reader.rest()))
                    return
                data = b""
            for msg in self.reader.feed(data):
                self.owner.message(self, msg)
        except (ValueError, msgspec.DecodeError) as exc:
            log.error("native pool %s: bad message from pid %d: %s", self.owner.name, self.pid, exc)
            self.close()

    def _output(self, lines: list[str]) -> None:
        if lines:
            self.owner.output(self, lines)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.role in OUTPUT_ROLES:
            self._output(self.lines.flush())
        self.owner.conn_lost(self)

    def send(self, msg: m.Message) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(m.encode(msg))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
