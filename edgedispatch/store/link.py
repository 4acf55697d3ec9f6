"""The server's end of the store's writer process (``store.writer``): it
starts the process, sends it the passes' writes, reads its answers, and
paces its commits (group commit).

Pacing is the server's, not the writer's: at most one frame is with the
writer at a time (one that failed stays there, retried by the writer, and
what follows waits here until it commits), and frames go out at least
``GROUP_WINDOW`` apart.  The writes of every pass of the event loop made
meanwhile then travel as one frame and commit as one transaction.  Before,
each pass sent its own frame (a system call, and a decode in the writer,
per pass: thousands a second under load, a tenth of the server's time per
dispatch), and the writer slept out the window itself.  Idle, the first
write goes at once.

Until a frame is sent its rows are still this process's lists: a later
change to a row queued but not yet sent (a new job assigned before its
insert went out) may be made in the row itself (``sends`` tells whether
one went out since; ``store.journal`` does this).

If the writer process dies, ``spawn`` (called again by the store) starts
another and sends it again, in order, what was not committed (every
statement is idempotent).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgedispatch.obs import logs
from edgedispatch.store.commit import MAX_FRAME, STOP
from edgedispatch.wire.frames import FrameReader, frame

log = logging.getLogger("edgedispatch.store")

#: Seconds between the starts of two commits, at least.  Under load the
#: writes of a few milliseconds then share one transaction and one fsync,
#: which are most of the store's cost (system time, a disk flush, a wake-up
#: of the loop); an answer waits at most this much longer.
GROUP_WINDOW = 0.003
#: (the last pass committed, why it failed or "", seconds, statements)
OnAck = Callable[[int, str, float, int], None]


class WriterLink:
    """:param on_ack: each answer of the writer.
    :param on_lost: the writer process ended (with its exit status)."""

    def __init__(
        self,
        path: Path,
        synchronous: str,
        loop: asyncio.AbstractEventLoop,
        on_ack: OnAck,
        on_lost: Callable[[int | None], None],
    ) -> None:
        self._path, self._synchronous = path, synchronous
        self._loop = loop
        self._on_ack, self._on_lost = on_ack, on_lost
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._reader = FrameReader(MAX_FRAME)
        self._unsent = bytearray()  # what the socket did not take yet
        #: Each statement's index in the writer's table (sent once).
        self._index: dict[str, int] = {}
        # The next frame: statements defined for the first time, the
        # writes, and the last pass they belong to (0: nothing waits).
        self._new: list[list[Any]] = []
        self._ops: list[list[Any]] = []
        self._through = 0
        #: Frames sent and not yet committed: sent again, in order, to a
        #: writer started after one died.
        self._unacked: collections.deque[tuple[int, bytes]] = collections.deque()
        self._last_send = -GROUP_WINDOW
        self._timer: asyncio.TimerHandle | None = None
        #: Frames sent so far (a row queued before the last one is no
        #: longer this process's to change).
        self.sends = 0

    @property
    def pid(self) -> int:
        return self._proc.pid if self._proc is not None and self._sock is not None else 0

    @property
    def idle(self) -> bool:
        """Nothing queued, sent or unanswered."""
        return not self._through and not self._unacked

    def add(self, through: int, ops: Sequence[tuple[str, Sequence[Any]]]) -> None:
        """Queue pass ``through``'s writes (maybe none: its answer then
        comes with those of the passes before it)."""
        index, named = self._index, self._ops
        for sql, params in ops:
            i = index.get(sql)
            if i is None:
                i = index[sql] = len(index)
                self._new.append([i, sql])
            named.append([i, params])
        self._through = through
        self._pace()

    def _pace(self) -> None:
        if not self._through or self._unacked or self._timer is not None or self._sock is None:
            return  # nothing to send, one with the writer, or sent when it is time
        due = self._last_send + GROUP_WINDOW
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._on_timer)
            return
        self._send_batch()

    def _on_timer(self) -> None:
        self._timer = None
        self._pace()

    def _send_batch(self) -> None:
        self._last_send = self._loop.time()
        self._send(self._take_batch())

    def _take_batch(self) -> bytes:
        """The queued writes as the next frame, kept until committed."""
        data = frame([self._through, self._new, self._ops])
        self._unacked.append((self._through, data))
        self._new, self._ops, self._through = [], [], 0
        self.sends += 1
        return data

    # The process --------------------------------------------------------

    def spawn(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "edgedispatch.store.writer", str(self._path), self._synchronous],
            pass_fds=(child.fileno(),),
            env={
                **os.environ,
                "EDGEDISPATCH_STORE_FD": str(child.fileno()),
                "EDGEDISPATCH_STORE_LOG": ",".join(logs.settings()),
            },
            stdin=subprocess.DEVNULL,
        )
        child.close()
        parent.setblocking(False)
        self._sock = parent
        self._reader = FrameReader(MAX_FRAME)
        self._unsent.clear()
        self._loop.add_reader(parent, self._on_readable)
        # A writer started after one died learns every statement first, then
        # gets what was not committed, in order.
        if self._index:
            self._send(frame([0, [[i, sql] for sql, i in self._index.items()], []]))
        for _, data in self._unacked:
            self._send(data)
        self._pace()

    def _send(self, data: bytes) -> None:
        sock = self._sock
        if sock is None:
            return  # no writer now: sent when the next one starts
        if self._unsent:
            self._unsent += data
            return
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._lost()
            return
        if sent < len(data):
            self._unsent += data[sent:]
            self._loop.add_writer(sock, self._on_writable)

    def _on_writable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            sent = sock.send(self._unsent)
        except BlockingIOError:
            return
        except OSError:
            self._lost()
            return
        del self._unsent[:sent]
        if not self._unsent:
            self._loop.remove_writer(sock)

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._lost()
            return
        for ack in self._reader.feed(data):
            self._acked(int(ack[0]), str(ack[1]), float(ack[2]), int(ack[3]))
        self._pace()

    def _acked(self, through: int, error: str, took: float, done: int) -> None:
        if not error:
            unacked = self._unacked
            while unacked and unacked[0][0] <= through:
                unacked.popleft()
        # A failed frame stays with the writer, which tries it again every
        # RETRY_INTERVAL; what comes meanwhile waits here until it commits.
        self._on_ack(through, error, took, done)

    def _lost(self) -> None:
        self._detach()
        code = self._proc.wait() if self._proc is not None else None
        self._proc = None
        self._on_lost(code)

    def _detach(self) -> None:
        sock, self._sock = self._sock, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if sock is None:
            return
        if not self._loop.is_closed():
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        sock.close()

    def close(self, on_ack: OnAck, timeout: float) -> None:
        """Send what is queued and STOP, wait (blocking) for the writer to
        commit it and end; each answer goes to ``on_ack``."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        sock = self._sock
        if sock is not None:
            if self._through:  # whatever the pace: the server stops
                self._unsent += self._take_batch()
            if not self._loop.is_closed():
                self._loop.remove_reader(sock)
                self._loop.remove_writer(sock)
            try:
                sock.setblocking(True)
                sock.sendall(bytes(self._unsent) + frame([STOP]))
                self._unsent.clear()
                sock.settimeout(timeout)
                while data := sock.recv(1 << 16):
                    for ack in self._reader.feed(data):
                        on_ack(int(ack[0]), str(ack[1]), float(ack[2]), int(ack[3]))
            except OSError as exc:
                log.error("store writer did not finish cleanly: %s", exc)
            self._detach()
        if self._proc is not None:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.error("store writer still running after %.0f s: killed", timeout)
                self._proc.kill()
                self._proc.wait()
            self._proc = None
