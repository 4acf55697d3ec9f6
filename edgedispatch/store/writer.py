"""The store's writer process: ``python -m edgedispatch.store.writer PATH
SYNCHRONOUS``, with its end of a socket pair in ``FD_ENV``.

It takes the passes the server sends (``store.commit`` says what a frame
holds; ``store.link`` paces them), commits what has come as one
transaction (group commit), and says which passes are durable.  A
process, not a thread of the server: SQLite lets go of the GIL at each
step of each statement, and a writer thread then waited for the event
loop's thread at every row (thousands of hand-overs a second, each a
context switch), which made commits slow and took a quarter of the
server's throughput.  A process shares no GIL.

It ignores SIGINT and SIGTERM (systemd signals the whole service): it ends
when the server says stop, or when the server's end of the pair closes,
after committing what it has.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from edgedispatch import sched
from edgedispatch.obs import logs
from edgedispatch.store.commit import MAX_FRAME, STOP, Committer, Statements
from edgedispatch.store.sqlite import RETRY_INTERVAL, open_database
from edgedispatch.wire.frames import FrameReader, frame

log = logging.getLogger("edgedispatch.store")

FD_ENV = "EDGEDISPATCH_STORE_FD"
#: The server's log level and format ("info,json").
LOG_ENV = "EDGEDISPATCH_STORE_LOG"


class Writer:
    def __init__(self, sock: socket.socket, committer: Committer) -> None:
        self._sock = sock
        self._committer = committer
        self._statements = Statements()
        self._reader = FrameReader(MAX_FRAME)
        self._through = 0  # the last pass received
        self.stopping = False

    def run(self) -> None:
        acked = 0
        while not self.stopping:
            # The server paces the frames (``store.link``): what has come
            # commits at once, as one transaction.
            batch = self._take()
            start = time.monotonic()
            if not batch and not self._committer.kept:
                if self._through == acked:
                    continue
                # Passes with no writes (an answer waiting for earlier
                # ones, all committed by now): said at once, or nothing
                # would ever answer them.
                error, done = "", 0
            else:
                error, done = self._committer.commit(batch)
            acked = self._through
            took = time.monotonic() - start
            if self.stopping and error:
                log.error("store closed with %d writes it could not commit",
                          len(self._committer.kept))  # fmt: skip
            try:
                self._sock.sendall(frame([self._through, error, took, done]))
            except OSError:
                return  # the server is gone; what it sent is committed

    def _take(self) -> list[tuple[str, Any]]:
        """What has come: at least one frame, else (while a failed batch
        waits) whatever comes within RETRY_INTERVAL."""
        batch: list[tuple[str, Any]] = []
        sock = self._sock
        sock.settimeout(RETRY_INTERVAL if self._committer.kept else None)
        while True:
            try:
                data = sock.recv(1 << 20)
            except (BlockingIOError, TimeoutError):
                return batch
            if not data:  # the server closed its end (it stopped, or died)
                self.stopping = True
                return batch
            sock.settimeout(0)  # then whatever else is there, without waiting
            for item in self._reader.feed(data):
                if item[0] == STOP:
                    self.stopping = True
                    continue
                self._through = int(item[0])
                batch += self._statements.ops(item[1], item[2])


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sched.request_slice_from_env()
    level, fmt = os.environ.get(LOG_ENV, "info,text").split(",", 1)
    logs.setup(level, fmt)  # as the server logs
    path, synchronous = sys.argv[1], sys.argv[2]
    sock = socket.socket(fileno=int(os.environ[FD_ENV]))
    db = open_database(Path(path), synchronous)
    try:
        Writer(sock, Committer(db)).run()
    finally:
        db.close()
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
