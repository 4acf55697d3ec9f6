"""systemd's two protocols, without libsystemd: readiness notification
(``sd_notify``: READY, STATUS, STOPPING, WATCHDOG) and socket activation
(``sd_listen_fds``).

Both are a few lines over what systemd puts in the environment: a
datagram socket's path in ``NOTIFY_SOCKET`` (an abstract one when it
starts with ``@``), and listening sockets from file descriptor 3 on, with
``LISTEN_FDS`` (how many), ``LISTEN_PID`` (for whom) and
``LISTEN_FDNAMES`` (the socket unit's ``FileDescriptorName=``).  Without
them (not run by systemd) everything here does nothing.

The watchdog is kicked from the event loop itself (``Watchdog``): a loop
that is stuck stops kicking, and systemd restarts the service.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import NamedTuple

log = logging.getLogger("edgedispatch.server")

#: The first file descriptor systemd passes (SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3
#: The names a socket unit gives its sockets (``FileDescriptorName=``).
HTTP, SIP_UDP, SIP_TCP = "http", "sip-udp", "sip-tcp"


class Notifier:
    """Sends state changes to systemd, if it asked for them."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + path[1:] if path.startswith("@") else path
        self._sock: socket.socket | None = None
        if self._address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        # Children (agents, media workers) must not notify in our name.
        os.environ.pop("NOTIFY_SOCKET", None)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields: str) -> None:
        """One datagram of ``KEY=value`` lines.  A failure is logged, never
        raised: the service runs on without its supervisor's notice."""
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            log.warning("systemd notify failed: %s", exc)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Watchdog:
    """Sends WATCHDOG=1 from the event loop at half systemd's
    ``WatchdogSec=`` (``WATCHDOG_USEC``), as sd_watchdog_enabled advises."""

    def __init__(self, notifier: Notifier, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._notifier = notifier
        self.interval = 0.0
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if notifier.enabled and usec.isdigit() and int(usec) > 0:
            if not pid or pid == str(os.getpid()):
                self.interval = int(usec) / 2e6
        os.environ.pop("WATCHDOG_USEC", None)
        os.environ.pop("WATCHDOG_PID", None)
        self._handle: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.interval > 0:
            self._kick(loop)

    def _kick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._notifier.send("WATCHDOG=1")
        self._handle = loop.call_later(self.interval, self._kick, loop)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class Inherited(NamedTuple):
    """The listening sockets systemd passed (socket activation), by role."""

    http: socket.socket | None = None
    sip_udp: socket.socket | None = None
    sip_tcp: socket.socket | None = None


NOTHING_INHERITED = Inherited()


def inherited_sockets(environ: dict[str, str] | None = None) -> Inherited:
    """The sockets passed for this process (``LISTEN_PID`` is ours): a
    datagram socket serves SIP over UDP; a stream socket named ``http`` or
    ``sip-tcp`` (``LISTEN_FDNAMES``) serves that, an unnamed one the first
    role still free, HTTP then SIP over TCP (the order of a socket unit's
    ``ListenStream=`` lines).  The variables are removed, so that children
    do not take the sockets for theirs."""
    env = os.environ if environ is None else environ
    count, pid = env.get("LISTEN_FDS", ""), env.get("LISTEN_PID", "")
    names = env.get("LISTEN_FDNAMES", "").split(":")
    for var in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    if not count.isdigit() or pid != str(os.getpid()):
        return NOTHING_INHERITED
    socks = [socket.socket(fileno=LISTEN_FDS_START + i) for i in range(int(count))]
    found: dict[str, socket.socket] = {}
    unnamed: list[socket.socket] = []
    for i, sock in enumerate(socks):
        os.set_inheritable(sock.fileno(), False)
        sock.setblocking(False)
        name = names[i] if i < len(names) else ""
        if sock.type == socket.SOCK_DGRAM:
            name = SIP_UDP
        elif name not in (HTTP, SIP_TCP):
            unnamed.append(sock)
            continue
        _take(found, name, sock)
    for sock in unnamed:
        free = [role for role in (HTTP, SIP_TCP) if role not in found]
        _take(found, free[0] if free else "", sock)
    return Inherited(found.get(HTTP), found.get(SIP_UDP), found.get(SIP_TCP))


def _take(found: dict[str, socket.socket], role: str, sock: socket.socket) -> None:
    if not role or role in found:
        log.warning("socket activation: fd %d is one socket too many: not used", sock.fileno())
        sock.close()
    else:
        found[role] = sock
