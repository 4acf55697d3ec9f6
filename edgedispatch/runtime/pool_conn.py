"""A native pool's connections: the zygote's, and each child's control and
output connections.  Every one starts with a ``Hello`` naming its role and
pid; after it, control connections carry framed messages
(``edgedispatch.runtime.messages``) and output connections raw bytes, cut
into lines here.

The connection routes what it reads to its owner's hooks (``ConnOwner``),
one hook per meaning, so the pool never looks at a role or a message type.
A peer that breaks the protocol (no ``Hello`` first, a frame that does not
decode, a move its state does not allow) loses its connection; the pool
learns of that as of any other lost connection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from typing import Protocol, cast

import msgspec

from edgedispatch.errors import Malformed
from edgedispatch.runtime import messages as m
from edgedispatch.runtime.process import LineBuffer

log = logging.getLogger("edgedispatch.agents")

_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid

ZYGOTE = "zygote"
ZYGOTE_OUTPUT = "zygote-output"
CHILD = "child"  # a child's control connection
OUTPUT = "output"  # a child's fds 1 and 2
OUTPUT_ROLES = (OUTPUT, ZYGOTE_OUTPUT)
ROLES = (ZYGOTE, CHILD, *OUTPUT_ROLES)


class ConnOwner(Protocol):
    """What a ``PoolConn`` reports to (the ``NativePool``).  ``pid`` is the
    child's, from its connection's ``Hello``."""

    name: str
    tenant: str

    def accepting(self) -> bool: ...  # False: refuse new connections

    def conn_made(self, conn: PoolConn) -> None: ...

    # A False return refuses the connection.  A hook may also raise
    # Malformed: the peer's fault, and its connection is closed.
    def zygote_hello(self, conn: PoolConn) -> bool: ...

    def child_hello(self, conn: PoolConn) -> None: ...  # role CHILD or OUTPUT

    # From the zygote.
    def loaded(self, threads: int) -> None: ...

    def load_failed(self, reason: str) -> None: ...

    def forked(self, pid: int) -> None: ...

    def fork_failed(self, error: str) -> None: ...

    def exited(self, pid: int, code: int) -> None: ...

    # From a child's control connection.
    def child_ready(self, pid: int) -> None: ...

    def job_started(self, pid: int) -> None: ...

    def prewarm_failed(self, pid: int, error: str) -> None: ...

    def job_done(self, pid: int, done: m.Done) -> None: ...

    # Lines from an output connection (a child's, or the zygote's).
    def output(self, conn: PoolConn, lines: list[str]) -> None: ...

    def conn_lost(self, conn: PoolConn) -> None: ...


class PoolConn(asyncio.Protocol):
    def __init__(self, owner: ConnOwner) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.reader = m.FrameReader()
        self.role = ""  # from its Hello
        self.pid = 0  # as it says: in the sandbox's PID namespace
        #: Its pid here, from the kernel (SO_PEERCRED): what signals and
        #: /proc reads use.  A hostile peer can claim any pid in its Hello,
        #: not this one.
        self.os_pid = 0
        self.lines = LineBuffer()  # an output connection's

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        with contextlib.suppress(OSError, AttributeError):
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size)
            self.os_pid = _CREDS.unpack(creds)[0]
        if self.owner.accepting():
            self.owner.conn_made(self)
        else:
            transport.close()  # accepted just before the pool closed

    def data_received(self, data: bytes) -> None:
        if self.role in OUTPUT_ROLES:
            self._output(self.lines.feed(data))
            return
        try:
            if not self.role:
                first = self.reader.feed(data, 1)
                if not first:
                    return
                if not self._hello(first[0]):
                    self.close()
                    return
                if self.role in OUTPUT_ROLES:
                    self._output(self.lines.feed(self.reader.rest()))
                    return
                data = b""
            route = self._from_zygote if self.role == ZYGOTE else self._from_child
            for msg in self.reader.feed(data):
                route(msg)
        except (ValueError, msgspec.DecodeError, Malformed) as exc:
            log.error(
                "native pool %s: bad message from pid %d: %s", self.owner.name, self.pid, exc,
                extra={"agent": self.owner.name, "tenant": self.owner.tenant},
            )  # fmt: skip
            self.close()

    def _hello(self, hello: m.Message) -> bool:
        if not isinstance(hello, m.Hello) or hello.role not in ROLES:
            raise ValueError(f"expected a Hello, got {hello!r}")
        self.role, self.pid = hello.role, hello.pid
        if not self.owner.accepting():
            return False
        if self.role == ZYGOTE:
            return self.owner.zygote_hello(self)
        if self.role != ZYGOTE_OUTPUT:
            self.owner.child_hello(self)
        return True

    def _from_zygote(self, msg: m.Message) -> None:
        owner = self.owner
        if isinstance(msg, m.Forked):
            owner.forked(msg.pid)
        elif isinstance(msg, m.Exited):
            owner.exited(msg.pid, msg.code)
        elif isinstance(msg, m.ForkFailed):
            owner.fork_failed(msg.error)
        elif isinstance(msg, m.Loaded):
            owner.loaded(msg.threads)
        elif isinstance(msg, m.LoadFailed):
            owner.load_failed(msg.reason)

    def _from_child(self, msg: m.Message) -> None:
        owner = self.owner
        if isinstance(msg, m.Ready):
            owner.child_ready(self.pid)
        elif isinstance(msg, m.Started):
            owner.job_started(self.pid)
        elif isinstance(msg, m.Failed):
            owner.prewarm_failed(self.pid, msg.error)
        elif isinstance(msg, m.Done):
            owner.job_done(self.pid, msg)

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
