"""A Unix socket listener whose owner knows every connection it accepted.

Not ``loop.create_unix_server``: on Python 3.11 a connection accepted just
before ``Server.close()`` trips an assertion inside asyncio and its socket
leaks.  Here ``close()`` also waits for connections still being set up.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

log = logging.getLogger("edgedispatch.agents")


class UnixListener:
    """Accepts on ``path``; each connection gets a protocol from ``factory``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        path: str,
        factory: Callable[[], asyncio.Protocol],
        name: str,
    ) -> None:
        self._loop = loop
        self._factory = factory
        self._name = name  # for the log
        self._accepting: set[asyncio.Task[None]] = set()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock: socket.socket | None = sock
        loop.add_reader(sock.fileno(), self._accept)

    async def close(self) -> None:
        """Stop accepting; return once the connections accepted so far are
        set up (a protocol that is closing closes them in
        ``connection_made``), so that none leaks."""
        if self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._accepting:
            await asyncio.wait(self._accepting)

    def _accept(self) -> None:
        while self._sock is not None:
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of fds, say: the peer will retry or die
                log.error("%s: accept failed: %s", self._name, exc)
                return
            conn.setblocking(False)
            task = self._loop.create_task(self._adopt(conn))
            self._accepting.add(task)
            task.add_done_callback(self._accepting.discard)

    async def _adopt(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn)
        except Exception as exc:
            log.error("%s: connection set-up failed: %s", self._name, exc)
            conn.close()
