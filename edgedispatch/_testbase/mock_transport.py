"""An asyncio transport that keeps what is written to it (uvicorn's
``MockTransport``): protocol adapters are tested on it without sockets."""

from __future__ import annotations

import asyncio
from typing import Any


class MockTransport(asyncio.Transport):
    def __init__(self, peer: tuple[str, int] = ("127.0.0.1", 50000)) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.eof_written = False
        self.reading = True
        self._peer = peer
        self._protocol: asyncio.BaseProtocol | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._peer if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "write after close"
        self.written += data

    def take(self) -> bytes:
        """What was written since the last take."""
        data = bytes(self.written)
        self.written.clear()
        return data

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self._protocol is not None:
                asyncio.get_running_loop().call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def connect(self, protocol: asyncio.BaseProtocol) -> None:
        """``protocol.connection_made(self)``, remembering it for close()."""
        self._protocol = protocol
        protocol.connection_made(self)
